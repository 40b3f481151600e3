package transfer

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/statusapi"
)

// PeerStatus describes one peer for the status API and the TUI.
type PeerStatus struct {
	ID               string              `json:"id,omitempty"` // empty until first connected
	Name             string              `json:"name,omitempty"`
	Addr             string              `json:"addr"`
	State            statusapi.PeerState `json:"state"`
	Dialed           bool                `json:"dialed"` // this node dialed it (a static peer)
	RTT              time.Duration       `json:"rtt_ns"`
	Paths            int                 `json:"paths"` // paths it advertises
	BytesIn          int64               `json:"bytes_in"`
	BytesOut         int64               `json:"bytes_out"`
	Active           int                 `json:"active"` // requests in flight to it
	ConnectedSince   time.Time           `json:"connected_since,omitzero"`
	HashMismatches   int                 `json:"hash_mismatches,omitempty"`
	BlocklistedUntil time.Time           `json:"blocklisted_until,omitzero"`
	LastError        string              `json:"last_error,omitempty"`
}

// Peers lists the connected peers and the static peers not connected, by
// state then name.
func (n *Node) Peers() []PeerStatus {
	now := time.Now()
	n.mu.Lock()
	var out []PeerStatus
	seen := make(map[*target]bool)
	for _, s := range n.sessions {
		ps := PeerStatus{
			ID:             s.id,
			Name:           s.name,
			Addr:           s.addr.String(),
			State:          statusapi.StateConnected,
			Dialed:         s.dialed,
			RTT:            s.conn.ConnectionStats().SmoothedRTT,
			Paths:          n.idx.paths(s.slot),
			BytesIn:        s.bytesIn.Load(),
			BytesOut:       s.bytesOut.Load(),
			Active:         int(s.active.Load()),
			ConnectedSince: s.since,
		}
		for _, t := range n.targets {
			if t.id == s.id {
				seen[t] = true
			}
		}
		out = append(out, ps)
	}
	for _, t := range n.targets {
		if seen[t] {
			continue
		}
		st := t.state
		if st != statusapi.StateBackoff {
			st = statusapi.StateConnecting
		}
		out = append(out, PeerStatus{ID: t.id, Addr: t.addr, State: st, Dialed: true, LastError: t.lastErr})
	}
	for i := range out {
		if ps := n.peerInfo[out[i].ID]; out[i].ID != "" && ps != nil {
			out[i].HashMismatches = ps.mismatches
			if now.Before(ps.blockedUntil) {
				out[i].BlocklistedUntil = ps.blockedUntil
			}
		}
	}
	n.mu.Unlock()
	slices.SortFunc(out, func(a, b PeerStatus) int {
		if c := strings.Compare(string(a.State), string(b.State)); c != 0 {
			return c
		}
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.Addr, b.Addr)
	})
	return out
}

// HashMismatches is the number of NAR transfers from peers that failed
// verification since the node started.
func (n *Node) HashMismatches() int64 { return n.mismatches.Load() }

// TransferStatus describes one NAR fetched from peers.
type TransferStatus struct {
	Hash       string           `json:"hash"`
	Name       string           `json:"name"`
	Peer       string           `json:"peer"` // id of the peer serving it (last one, after failovers)
	PeerName   string           `json:"peer_name,omitempty"`
	BytesDone  int64            `json:"bytes_done"`
	BytesTotal int64            `json:"bytes_total"`
	Rate       float64          `json:"rate"` // bytes per second: over the last rateWindow while active, the average once finished
	Failovers  int              `json:"failovers,omitempty"`
	Started    time.Time        `json:"started"`
	Finished   time.Time        `json:"finished,omitzero"`
	Result     statusapi.Result `json:"result,omitempty"` // ResultActive ("") until finished
	Error      string           `json:"error,omitempty"`
}

// Transfers lists the active transfers and the most recent finished ones,
// newest first.
func (n *Node) Transfers() []TransferStatus { return n.xfers.list() }

// recentTransfers is how many finished transfers Transfers keeps.
const recentTransfers = 64

// transfers tracks NAR fetches for status.
type transfers struct {
	now    func() time.Time // the clock; a test hook
	mu     sync.Mutex
	active map[*transfer]struct{}
	recent []TransferStatus // ring, newest last
}

func (t *transfers) init() {
	t.active = make(map[*transfer]struct{})
	if t.now == nil {
		t.now = time.Now
	}
}

// transfer is one WriteNAR in progress.
type transfer struct {
	ts    *transfers
	start time.Time
	mu    sync.Mutex // guards the fields below
	st    TransferStatus
	done  int64
	rate  rateMeter
}

func (t *transfers) start(h cache.Hash, name string, size int64) *transfer {
	now := t.now()
	x := &transfer{ts: t, start: now, rate: rateMeter{start: now}}
	x.st = TransferStatus{Hash: h.String(), Name: name, BytesTotal: size, Started: now, Result: statusapi.ResultActive}
	t.mu.Lock()
	t.active[x] = struct{}{}
	t.mu.Unlock()
	return x
}

// add counts n bytes received.
func (x *transfer) add(n int64) {
	now := x.ts.now()
	x.mu.Lock()
	x.done += n
	x.rate.add(now, n)
	x.mu.Unlock()
}

func (x *transfer) setPeer(s *session) {
	x.mu.Lock()
	x.st.Peer, x.st.PeerName = s.id, s.name
	x.mu.Unlock()
}

// restart starts the byte count again (a whole new attempt at the file).
// The rate keeps counting: it measures what arrives, attempt or not.
func (x *transfer) restart() {
	x.mu.Lock()
	x.done = 0
	x.st.Failovers++
	x.mu.Unlock()
}

func (x *transfer) failover() {
	x.mu.Lock()
	x.st.Failovers++
	x.mu.Unlock()
}

func (x *transfer) status(now time.Time) TransferStatus {
	x.mu.Lock()
	defer x.mu.Unlock()
	st := x.st
	st.BytesDone = x.done
	if st.Finished.IsZero() {
		st.Rate = x.rate.rate(now)
	} else if d := st.Finished.Sub(x.start).Seconds(); d > 0 {
		st.Rate = float64(st.BytesDone) / d
	}
	return st
}

func (x *transfer) finish(err error) {
	now := x.ts.now()
	x.mu.Lock()
	x.st.Finished = now
	x.st.Result = result(err)
	if err != nil {
		x.st.Error = err.Error()
	}
	x.mu.Unlock()
	st := x.status(now)
	t := x.ts
	t.mu.Lock()
	delete(t.active, x)
	t.recent = append(t.recent, st)
	if len(t.recent) > 2*recentTransfers {
		t.recent = append(t.recent[:0:0], t.recent[len(t.recent)-recentTransfers:]...)
	}
	t.mu.Unlock()
}

// result classifies how a transfer ended.
func result(err error) statusapi.Result {
	switch {
	case err == nil:
		return statusapi.ResultOK
	case errors.Is(err, cache.ErrHashMismatch):
		return statusapi.ResultHashMismatch
	case errors.Is(err, context.Canceled):
		return statusapi.ResultCanceled
	default:
		return statusapi.ResultFailed
	}
}

func (t *transfers) list() []TransferStatus {
	now := t.now()
	t.mu.Lock()
	out := make([]TransferStatus, 0, len(t.active)+recentTransfers)
	for x := range t.active {
		out = append(out, x.status(now))
	}
	slices.SortFunc(out, func(a, b TransferStatus) int { return b.Started.Compare(a.Started) })
	for i := len(t.recent) - 1; i >= 0 && len(out) < len(t.active)+recentTransfers; i-- {
		out = append(out, t.recent[i])
	}
	t.mu.Unlock()
	return out
}

// The current rate of a transfer is the bytes received in a sliding window
// of rateWindow, counted in rateBuckets buckets: a transfer that stalls
// shows its rate falling to zero within rateWindow, one that speeds up shows
// the new speed, instead of an average since the start that hides both.
const (
	rateWindow  = 4 * time.Second
	rateBuckets = 16
	rateBucket  = rateWindow / rateBuckets
)

// rateMeter measures bytes per second over the last rateWindow. The zero
// value needs start set. It is not safe for concurrent use.
type rateMeter struct {
	start   time.Time
	buckets [rateBuckets]int64 // bytes per bucket; bucket i counts slot i mod rateBuckets
	head    int64              // newest slot counted in buckets
}

// slot is the number of the bucket-long interval since start that holds t.
func (m *rateMeter) slot(t time.Time) int64 {
	return max(0, int64(t.Sub(m.start)/rateBucket))
}

// add counts n bytes received at now.
func (m *rateMeter) add(now time.Time, n int64) {
	s := m.slot(now)
	if s > m.head {
		// Clear the buckets of the slots skipped since head: they are
		// reused for the slots after it.
		for i := m.head + 1; i <= s && i <= m.head+rateBuckets; i++ {
			m.buckets[i%rateBuckets] = 0
		}
		m.head = s
	}
	m.buckets[m.head%rateBuckets] += n
}

// rate is bytes per second over the window that ends at now: the last
// rateBuckets-1 whole buckets and the current part of one, or less just
// after start.
func (m *rateMeter) rate(now time.Time) float64 {
	s := max(m.slot(now), m.head)
	oldest := max(0, s-rateBuckets+1)
	var sum int64
	for i := oldest; i <= m.head; i++ {
		sum += m.buckets[i%rateBuckets]
	}
	span := now.Sub(m.start.Add(time.Duration(oldest) * rateBucket)).Seconds()
	if span <= 0 {
		return 0
	}
	return float64(sum) / span
}
