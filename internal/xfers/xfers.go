// Package xfers records NAR transfers for the status API: the ones in
// progress, with their current rate, and the most recent finished ones.
// The peer transport records what it fetches from peers; the node records
// what its own store, NAR cache and upstreams serve to Nix. It does no I/O.
package xfers

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/statusapi"
)

// Status describes one transfer.
type Status struct {
	Hash       string           `json:"hash"`
	Name       string           `json:"name"`
	Source     statusapi.Source `json:"source"`
	Peer       string           `json:"peer,omitempty"` // id of the peer serving it (last one, after failovers)
	PeerName   string           `json:"peer_name,omitempty"`
	BytesDone  int64            `json:"bytes_done"`
	BytesTotal int64            `json:"bytes_total"`
	Rate       float64          `json:"rate"` // bytes per second: over the last RateWindow while active, the average once finished
	Failovers  int              `json:"failovers,omitempty"`
	Started    time.Time        `json:"started"`
	Finished   time.Time        `json:"finished,omitzero"`
	Result     statusapi.Result `json:"result,omitempty"` // ResultActive ("") until finished
	Error      string           `json:"error,omitempty"`
}

// Recent is how many finished transfers a Tracker lists.
const Recent = 64

// Tracker records transfers. It is safe for concurrent use.
type Tracker struct {
	now    func() time.Time
	mu     sync.Mutex
	active map[*Transfer]struct{}
	recent []Status // ring, newest last
}

// NewTracker returns an empty Tracker reading the clock now (nil:
// time.Now).
func NewTracker(now func() time.Time) *Tracker {
	if now == nil {
		now = time.Now
	}
	return &Tracker{now: now, active: make(map[*Transfer]struct{})}
}

// Transfer is one transfer in progress. Its methods are safe for
// concurrent use.
type Transfer struct {
	t     *Tracker
	start time.Time
	mu    sync.Mutex // guards the fields below
	st    Status
	done  int64
	rate  rateMeter
}

// Start records a transfer from src of size bytes (0: unknown) of the
// path h, name.
func (t *Tracker) Start(src statusapi.Source, h, name string, size int64) *Transfer {
	now := t.now()
	x := &Transfer{t: t, start: now, rate: rateMeter{start: now}}
	x.st = Status{Hash: h, Name: name, Source: src, BytesTotal: size, Started: now, Result: statusapi.ResultActive}
	t.mu.Lock()
	t.active[x] = struct{}{}
	t.mu.Unlock()
	return x
}

// Add counts n bytes received.
func (x *Transfer) Add(n int64) {
	now := x.t.now()
	x.mu.Lock()
	x.done += n
	x.rate.add(now, n)
	x.mu.Unlock()
}

// SetPeer names the peer now serving the transfer.
func (x *Transfer) SetPeer(id, name string) {
	x.mu.Lock()
	x.st.Peer, x.st.PeerName = id, name
	x.mu.Unlock()
}

// Restart starts the byte count again (a whole new attempt at the file),
// counting a failover. The rate keeps counting: it measures what arrives,
// attempt or not.
func (x *Transfer) Restart() {
	x.mu.Lock()
	x.done = 0
	x.st.Failovers++
	x.mu.Unlock()
}

// Failover counts a resumption on another source.
func (x *Transfer) Failover() {
	x.mu.Lock()
	x.st.Failovers++
	x.mu.Unlock()
}

func (x *Transfer) status(now time.Time) Status {
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

// Finish records how the transfer ended (see Result) and moves it to the
// recent ones.
func (x *Transfer) Finish(err error) {
	now := x.t.now()
	x.mu.Lock()
	x.st.Finished = now
	x.st.Result = Result(err)
	if err != nil {
		x.st.Error = err.Error()
	}
	x.mu.Unlock()
	st := x.status(now)
	t := x.t
	t.mu.Lock()
	delete(t.active, x)
	t.recent = append(t.recent, st)
	if len(t.recent) > 2*Recent {
		t.recent = append(t.recent[:0:0], t.recent[len(t.recent)-Recent:]...)
	}
	t.mu.Unlock()
}

// Discard forgets the transfer: it did not happen (the source turned out
// not to have the file).
func (x *Transfer) Discard() {
	x.t.mu.Lock()
	delete(x.t.active, x)
	x.t.mu.Unlock()
}

// Result classifies how a transfer ended.
func Result(err error) statusapi.Result {
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

// List returns the active transfers, newest first, then up to Recent
// finished ones, most recently finished first.
func (t *Tracker) List() []Status {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Status, 0, len(t.active)+Recent)
	for x := range t.active {
		out = append(out, x.status(now))
	}
	slices.SortFunc(out, func(a, b Status) int { return b.Started.Compare(a.Started) })
	for i := len(t.recent) - 1; i >= 0 && len(out) < len(t.active)+Recent; i-- {
		out = append(out, t.recent[i])
	}
	return out
}

// The current rate of a transfer is the bytes received in a sliding window
// of RateWindow, counted in rateBuckets buckets: a transfer that stalls
// shows its rate falling to zero within RateWindow, one that speeds up shows
// the new speed, instead of an average since the start that hides both.
const (
	RateWindow  = 4 * time.Second
	rateBuckets = 16
	rateBucket  = RateWindow / rateBuckets
)

// rateMeter measures bytes per second over the last RateWindow. The zero
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
