package transfer

import (
	"errors"
	"math/bits"
	"slices"
	"sync"
)

// index maps inventory keys to the peers that offer them.
//
// A peer's offer takes a slot; slots are grouped 64 to a map, whose value
// is a bitmask of the slots offering the key. A key offered by several
// peers of one group costs one map entry, so memory grows with distinct
// keys, not with (peer, key) pairs: about 20–40 bytes per map entry (see
// BenchmarkIndexMemory). Lookups take a read lock and one map access per 64
// slots and do not allocate on a miss.
//
// Memory is bounded as a whole, not only per peer: the index never holds
// more than budget map entries over all groups (Config.MaxIndexEntries).
// When an offer needs an entry the budget does not have, the largest offer
// (most keys) is dropped: its keys leave the index, the peer stays
// connected, its deltas are ignored, and it is asked for a new snapshot
// once the index has room for all of it (see readControl). The largest goes first because what a hostile host grows is size,
// and one big offer frees the most for the many small honest ones; an offer
// at least as large as every other is itself the one dropped, so a
// newcomer cannot displace an established peer of the same size. Dropped
// offers are counted (indexStats).
//
// A snapshot replaces an offer in one sorted walk that clears stale keys
// as it sets new ones, so the slot never holds much more than the larger
// of the two sets (see replace). Go maps never shrink, so a group map that
// has lost most of its entries is rebuilt (see shrinkLocked).
type index struct {
	budget int
	freed  func(bytes int) // called without the lock after maps were dropped; may be nil

	mu      sync.RWMutex
	groups  []group
	used    []uint64         // allocated slots (offered, or being cleared)
	live    []uint64         // slots whose keys count in lookups
	owner   []*session       // slot -> session while live
	count   []int            // slot -> number of keys
	slotOf  map[*session]int // live offers
	entries int              // map entries over all groups
	drops   int64            // offers dropped to stay within budget
}

type group struct {
	m    map[uint64]uint64 // key -> bits of slots 64g..64g+63
	peak int               // len(m) at its largest since m was made
}

// indexEntryBytes is the measured heap cost of one map entry (docs/benchmarks.md),
// used to report and budget memory.
const indexEntryBytes = 38

// errOfferDropped says that a peer's offer was dropped to keep the index
// within its budget; the peer stays connected.
var errOfferDropped = errors.New("inventory index full: offer dropped")

// newIndex returns an index of at most budget entries. freed, if set, is
// told the approximate bytes given back when maps are dropped, so that the
// node can return them to the OS.
func newIndex(budget int, freed func(bytes int)) *index {
	return &index{budget: budget, freed: freed, slotOf: make(map[*session]int)}
}

// indexStats describes the index for status and metrics.
type indexStats struct {
	Entries int   // map entries held
	Budget  int   // the most entries it may hold
	Dropped int64 // offers dropped to stay within the budget
}

func (x *index) stats() indexStats {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return indexStats{Entries: x.entries, Budget: x.budget, Dropped: x.drops}
}

// allocLocked gives s a new live slot.
func (x *index) allocLocked(s *session) int {
	slot := -1
	for g, u := range x.used {
		if u != ^uint64(0) {
			slot = g*64 + bits.TrailingZeros64(^u)
			break
		}
	}
	if slot < 0 {
		slot = len(x.groups) * 64
		x.groups = append(x.groups, group{m: make(map[uint64]uint64)})
		x.used = append(x.used, 0)
		x.live = append(x.live, 0)
		x.owner = append(x.owner, make([]*session, 64)...)
		x.count = append(x.count, make([]int, 64)...)
	}
	g, bit := slot/64, uint64(1)<<(slot%64)
	x.used[g] |= bit
	x.live[g] |= bit
	x.owner[slot] = s
	x.count[slot] = 0
	x.slotOf[s] = slot
	return slot
}

// lookup appends the sessions offering key to dst.
func (x *index) lookup(key uint64, dst []*session) []*session {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for g := range x.groups {
		v := x.groups[g].m[key] & x.live[g]
		for v != 0 {
			b := bits.TrailingZeros64(v)
			v &^= 1 << b
			dst = append(dst, x.owner[g*64+b])
		}
	}
	return dst
}

// paths is the number of keys s offers (0 when dropped or not yet sent).
func (x *index) paths(s *session) int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if slot, ok := x.slotOf[s]; ok {
		return x.count[slot]
	}
	return 0
}

// offered reports whether s has an offer in the index.
func (x *index) offered(s *session) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.slotOf[s]
	return ok
}

// fits reports whether s has no offer and the index has room for one of n
// keys.
func (x *index) fits(s *session, n int) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.slotOf[s]
	return !ok && x.budget-x.entries >= n
}

// keyOp is one change to a slot's keys.
type keyOp struct {
	key    uint64
	remove bool
}

// apply applies ops to s's offer in order and returns its number of keys.
// It fails with errOfferDropped, changing nothing, when s has no offer
// (dropped, or before its first snapshot), and when the budget made it drop
// s's offer on the way.
func (x *index) apply(s *session, ops []keyOp) (int, error) {
	x.mu.Lock()
	slot, ok := x.slotOf[s]
	if !ok {
		x.mu.Unlock()
		return 0, errOfferDropped
	}
	for i := 0; i < len(ops); i++ {
		op := ops[i]
		if op.remove {
			x.clearLocked(slot, op.key)
			continue
		}
		if x.setLocked(slot, op.key) {
			continue
		}
		// Over budget: make room, then retry this op.
		victim := x.victimLocked(slot, x.count[slot]+1)
		x.dropLocked(victim)
		x.mu.Unlock()
		x.clear(victim)
		if victim == slot {
			return 0, errOfferDropped
		}
		x.mu.Lock()
		if x.slotOf[s] != slot || x.owner[slot] != s {
			x.mu.Unlock()
			return 0, errOfferDropped
		}
		i--
	}
	n := x.count[slot]
	x.mu.Unlock()
	return n, nil
}

// setLocked adds key to slot. It returns false, changing nothing, when
// that needs a new map entry and the budget has none left.
func (x *index) setLocked(slot int, k uint64) bool {
	g := &x.groups[slot/64]
	bit := uint64(1) << (slot % 64)
	v, ok := g.m[k]
	if v&bit != 0 {
		return true
	}
	if !ok {
		if x.entries >= x.budget {
			return false
		}
		x.entries++
	}
	g.m[k] = v | bit
	g.peak = max(g.peak, len(g.m))
	x.count[slot]++
	return true
}

func (x *index) clearLocked(slot int, k uint64) {
	m, bit := x.groups[slot/64].m, uint64(1)<<(slot%64)
	v := m[k]
	if v&bit == 0 {
		return
	}
	if v &^= bit; v == 0 {
		delete(m, k)
		x.entries--
	} else {
		m[k] = v
	}
	x.count[slot]--
}

// victimLocked picks the offer to drop when one more entry is needed for
// slot, whose offer is about to hold want keys: the largest offer, slot
// itself on a tie.
func (x *index) victimLocked(slot, want int) int {
	victim, size := slot, max(want, x.count[slot])
	for _, sl := range x.slotOf {
		if sl != slot && x.count[sl] > size {
			victim, size = sl, x.count[sl]
		}
	}
	return victim
}

// dropLocked takes slot out of lookups and of its session, to be cleared
// by the caller (clear), and counts the drop.
func (x *index) dropLocked(slot int) {
	x.takeLocked(slot)
	x.drops++
}

// takeLocked takes slot out of lookups and of its session.
func (x *index) takeLocked(slot int) {
	g, bit := slot/64, uint64(1)<<(slot%64)
	x.live[g] &^= bit
	if s := x.owner[slot]; s != nil && x.slotOf[s] == slot {
		delete(x.slotOf, s)
	}
	x.owner[slot] = nil
}

// chunk bounds how long one write-lock hold lasts while a slot's keys are
// replaced or cleared, so that lookups are not held up by a big inventory.
const chunk = 4096

// keySource yields the keys of a snapshot in increasing order.
type keySource interface {
	next() (uint64, error)
}

// replace makes the n keys of src, sorted and distinct, the whole offer of
// s, allocating a slot if s has none. It walks the old keys (sorted) and
// the new ones together: an old key below the next new key is stale and
// cleared at once, a key in both is left alone (it never disappears from
// lookups), a new key is set. While the walk runs the slot would hold the
// old keys not yet passed as well as the new ones already set; it is kept
// to at most max(old, n) keys by clearing the highest old keys first (set
// again if the snapshot has them). Keys are read from src in batches
// outside the lock, so a peer that stalls mid-snapshot holds up nothing
// but itself. On a source error the offer is left partly replaced: the
// caller closes the connection, which releases it.
func (x *index) replace(s *session, n int, src keySource) error {
	x.mu.Lock()
	slot, ok := x.slotOf[s]
	if !ok {
		slot = x.allocLocked(s)
	}
	x.mu.Unlock()
	old := x.keysOf(slot)
	slices.Sort(old)
	limit := max(len(old), n)
	lo, hi := 0, len(old) // old[lo:hi] are neither passed nor cleared yet

	// lock takes the write lock; it fails if s lost its offer meanwhile.
	lock := func() bool {
		x.mu.Lock()
		if x.slotOf[s] != slot || x.owner[slot] != s {
			x.mu.Unlock()
			return false
		}
		return true
	}
	ops := 0
	// pause lets lookups in after every chunk operations.
	pause := func() bool {
		if ops++; ops < chunk {
			return true
		}
		ops = 0
		x.mu.Unlock()
		return lock()
	}
	batch := make([]uint64, 0, min(n, chunk))
	for done := 0; done < n; done += len(batch) {
		batch = batch[:0]
		for len(batch) < cap(batch) && done+len(batch) < n {
			k, err := src.next()
			if err != nil {
				return err
			}
			batch = append(batch, k)
		}
		if !lock() {
			return errOfferDropped
		}
		for _, k := range batch {
			for lo < hi && old[lo] < k {
				x.clearLocked(slot, old[lo])
				lo++
				if !pause() {
					return errOfferDropped
				}
			}
			if lo < hi && old[lo] == k {
				lo++
				continue
			}
			for x.count[slot] >= limit && lo < hi {
				hi--
				x.clearLocked(slot, old[hi])
			}
			for !x.setLocked(slot, k) {
				victim := x.victimLocked(slot, n)
				x.dropLocked(victim)
				x.mu.Unlock()
				x.clear(victim)
				if victim == slot || !lock() {
					return errOfferDropped
				}
			}
			if !pause() {
				return errOfferDropped
			}
		}
		x.mu.Unlock()
	}
	if !lock() {
		return errOfferDropped
	}
	for ; lo < hi; lo++ {
		x.clearLocked(slot, old[lo])
		if !pause() {
			return errOfferDropped
		}
	}
	bytes := x.shrinkLocked(slot / 64)
	x.mu.Unlock()
	x.tellFreed(bytes)
	return nil
}

// keysOf collects slot's keys under the read lock.
func (x *index) keysOf(slot int) []uint64 {
	g, bit := slot/64, uint64(1)<<(slot%64)
	x.mu.RLock()
	defer x.mu.RUnlock()
	ks := make([]uint64, 0, x.count[slot])
	for k, v := range x.groups[g].m {
		if v&bit != 0 {
			ks = append(ks, k)
		}
	}
	return ks
}

// release drops s's offer, if it has one, and frees its slot.
func (x *index) release(s *session) {
	x.mu.Lock()
	slot, ok := x.slotOf[s]
	if ok {
		x.takeLocked(slot)
	}
	x.mu.Unlock()
	if ok {
		x.clear(slot)
	}
}

// clear clears the keys of slot, already out of lookups, in chunks, frees
// the slot and shrinks its group's map if it lost most of its entries.
func (x *index) clear(slot int) {
	g, bit := slot/64, uint64(1)<<(slot%64)
	ks := x.keysOf(slot)
	for i := 0; i < len(ks); i += chunk {
		x.mu.Lock()
		for _, k := range ks[i:min(i+chunk, len(ks))] {
			x.clearLocked(slot, k)
		}
		x.mu.Unlock()
	}
	x.mu.Lock()
	x.used[g] &^= bit
	x.count[slot] = 0
	bytes := x.shrinkLocked(g)
	x.mu.Unlock()
	x.tellFreed(bytes)
}

// shrinkMin is the smallest map peak worth rebuilding a map for.
const shrinkMin = 1 << 14

// shrinkLocked rebuilds group g's map when it holds a quarter of its peak
// or less: Go maps keep their memory when entries are deleted. The copy
// costs the entries left, at most a quarter of what was freed. It returns
// the approximate bytes given up.
func (x *index) shrinkLocked(g int) int {
	gr := &x.groups[g]
	if gr.peak < shrinkMin || len(gr.m) > gr.peak/4 {
		return 0
	}
	m := make(map[uint64]uint64, len(gr.m))
	for k, v := range gr.m {
		m[k] = v
	}
	freed := (gr.peak - len(m)) * indexEntryBytes
	gr.m, gr.peak = m, len(m)
	return freed
}

func (x *index) tellFreed(bytes int) {
	if bytes > 0 && x.freed != nil {
		x.freed(bytes)
	}
}
