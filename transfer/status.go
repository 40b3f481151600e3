package transfer

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lancache/lancache/cache"
)

// Peer states in PeerStatus.
const (
	StateConnected  = "connected"
	StateConnecting = "connecting"
	StateBackoff    = "backoff" // unreachable or refused; redialing later
)

// PeerStatus describes one peer for the status API and the TUI.
type PeerStatus struct {
	ID               string        `json:"id,omitempty"` // empty until first connected
	Name             string        `json:"name,omitempty"`
	Addr             string        `json:"addr"`
	State            string        `json:"state"`
	Dialed           bool          `json:"dialed"` // this node dialed it (a static peer)
	RTT              time.Duration `json:"rtt_ns"`
	Paths            int           `json:"paths"` // paths it advertises
	BytesIn          int64         `json:"bytes_in"`
	BytesOut         int64         `json:"bytes_out"`
	Active           int           `json:"active"` // requests in flight to it
	ConnectedSince   time.Time     `json:"connected_since,omitzero"`
	HashMismatches   int           `json:"hash_mismatches,omitempty"`
	BlocklistedUntil time.Time     `json:"blocklisted_until,omitzero"`
	LastError        string        `json:"last_error,omitempty"`
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
			State:          StateConnected,
			Dialed:         s.dialed,
			RTT:            s.conn.ConnectionStats().SmoothedRTT,
			Paths:          n.idx.paths(s),
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
		if st != StateBackoff {
			st = StateConnecting
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
		if c := strings.Compare(a.State, b.State); c != 0 {
			return c
		}
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.Addr, b.Addr)
	})
	return out
}

// IndexStatus describes the index of what peers offer.
type IndexStatus struct {
	Entries       int   `json:"entries"`        // distinct entries held (about 38 bytes each)
	MaxEntries    int   `json:"max_entries"`    // Config.MaxIndexEntries
	OffersDropped int64 `json:"offers_dropped"` // peer inventories dropped because the index was full
}

// PeerIndex describes the index of what peers offer.
func (n *Node) PeerIndex() IndexStatus {
	st := n.idx.stats()
	return IndexStatus{Entries: st.Entries, MaxEntries: st.Budget, OffersDropped: st.Dropped}
}

// HashMismatches is the number of NAR transfers from peers that failed
// verification since the node started.
func (n *Node) HashMismatches() int64 { return n.mismatches.Load() }

// Transfer results in TransferStatus.
const (
	ResultActive   = "active"
	ResultOK       = "ok"
	ResultMismatch = "hash mismatch"
	ResultFailed   = "failed"
)

// TransferStatus describes one NAR fetched from peers.
type TransferStatus struct {
	Hash       string    `json:"hash"`
	Name       string    `json:"name"`
	Peer       string    `json:"peer"` // id of the peer serving it (last one, after failovers)
	PeerName   string    `json:"peer_name,omitempty"`
	BytesDone  int64     `json:"bytes_done"`
	BytesTotal int64     `json:"bytes_total"`
	Rate       float64   `json:"rate"` // bytes per second since the start
	Failovers  int       `json:"failovers,omitempty"`
	Started    time.Time `json:"started"`
	Finished   time.Time `json:"finished,omitzero"`
	Result     string    `json:"result"`
	Error      string    `json:"error,omitempty"`
}

// Transfers lists the active transfers and the most recent finished ones,
// newest first.
func (n *Node) Transfers() []TransferStatus { return n.xfers.list() }

// recentTransfers is how many finished transfers Transfers keeps.
const recentTransfers = 64

// transfers tracks NAR fetches for status.
type transfers struct {
	mu     sync.Mutex
	active map[*transfer]struct{}
	recent []TransferStatus // ring, newest last
}

func (t *transfers) init() { t.active = make(map[*transfer]struct{}) }

// transfer is one WriteNAR in progress.
type transfer struct {
	ts    *transfers
	done  atomic.Int64
	mu    sync.Mutex // guards st
	st    TransferStatus
	start time.Time
}

func (t *transfers) start(h cache.Hash, name string, size int64) *transfer {
	x := &transfer{ts: t, start: time.Now()}
	x.st = TransferStatus{Hash: h.String(), Name: name, BytesTotal: size, Started: x.start, Result: ResultActive}
	t.mu.Lock()
	t.active[x] = struct{}{}
	t.mu.Unlock()
	return x
}

func (x *transfer) add(n int64) { x.done.Add(n) }

func (x *transfer) setPeer(s *session) {
	x.mu.Lock()
	x.st.Peer, x.st.PeerName = s.id, s.name
	x.mu.Unlock()
}

// restart starts the byte count again (a whole new attempt at the file).
func (x *transfer) restart() {
	x.done.Store(0)
	x.failover()
}

func (x *transfer) failover() {
	x.mu.Lock()
	x.st.Failovers++
	x.mu.Unlock()
}

func (x *transfer) status(now time.Time) TransferStatus {
	x.mu.Lock()
	st := x.st
	x.mu.Unlock()
	st.BytesDone = x.done.Load()
	end := now
	if !st.Finished.IsZero() {
		end = st.Finished
	}
	if d := end.Sub(x.start).Seconds(); d > 0 {
		st.Rate = float64(st.BytesDone) / d
	}
	return st
}

func (x *transfer) finish(err error) {
	now := time.Now()
	x.mu.Lock()
	x.st.Finished = now
	switch {
	case err == nil:
		x.st.Result = ResultOK
	case errors.Is(err, cache.ErrHashMismatch):
		x.st.Result = ResultMismatch
		x.st.Error = err.Error()
	default:
		x.st.Result = ResultFailed
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

func (t *transfers) list() []TransferStatus {
	now := time.Now()
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
