package transfer

import (
	"math/bits"
	"slices"
	"sync"
)

// index maps inventory keys to the peers that offer them.
//
// Every connected peer gets a slot; slots are grouped 64 to a map, whose
// value is a bitmask of the slots offering the key. A key offered by several
// peers of one group costs one map entry, so memory grows with distinct
// keys, not with (peer, key) pairs: about 20–40 bytes per distinct key (see
// BenchmarkIndexMemory). Lookups take a read lock and one map access per 64
// peers and do not allocate on a miss.
type index struct {
	mu     sync.RWMutex
	groups []map[uint64]uint64 // groups[g]: key -> bits of slots 64g..64g+63
	used   []uint64            // allocated slots (live or being cleared)
	live   []uint64            // slots whose keys count in lookups
	owner  []*session          // slot -> session while live
	count  []int               // slot -> number of keys
}

func newIndex() *index { return &index{} }

// alloc returns a free slot, live, owned by s.
func (x *index) alloc(s *session) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	for g, u := range x.used {
		if u != ^uint64(0) {
			b := bits.TrailingZeros64(^u)
			x.used[g] |= 1 << b
			x.live[g] |= 1 << b
			slot := g*64 + b
			x.owner[slot] = s
			x.count[slot] = 0
			return slot
		}
	}
	g := len(x.groups)
	x.groups = append(x.groups, make(map[uint64]uint64))
	x.used = append(x.used, 1)
	x.live = append(x.live, 1)
	x.owner = append(x.owner, make([]*session, 64)...)
	x.count = append(x.count, make([]int, 64)...)
	x.owner[g*64] = s
	return g * 64
}

// lookup appends the sessions offering key to dst.
func (x *index) lookup(key uint64, dst []*session) []*session {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for g, m := range x.groups {
		v := m[key] & x.live[g]
		for v != 0 {
			b := bits.TrailingZeros64(v)
			v &^= 1 << b
			dst = append(dst, x.owner[g*64+b])
		}
	}
	return dst
}

// has reports whether slot offers key.
func (x *index) has(slot int, key uint64) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.groups[slot/64][key]&(1<<(slot%64)) != 0
}

// paths is the number of keys slot offers.
func (x *index) paths(slot int) int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.count[slot]
}

// keyOp is one change to a slot's keys.
type keyOp struct {
	key    uint64
	remove bool
}

// apply applies ops to slot in order and returns its number of keys.
func (x *index) apply(slot int, ops []keyOp) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, op := range ops {
		x.setLocked(slot, op.key, !op.remove)
	}
	return x.count[slot]
}

// set sets or clears keys of slot.
func (x *index) set(slot int, keys []uint64, on bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, k := range keys {
		x.setLocked(slot, k, on)
	}
}

func (x *index) setLocked(slot int, k uint64, on bool) {
	m, bit := x.groups[slot/64], uint64(1)<<(slot%64)
	v := m[k]
	switch {
	case on && v&bit == 0:
		m[k] = v | bit
		x.count[slot]++
	case !on && v&bit != 0:
		if v &^= bit; v == 0 {
			delete(m, k)
		} else {
			m[k] = v
		}
		x.count[slot]--
	}
}

// chunk bounds how long one write-lock hold lasts while a slot's keys are
// replaced or cleared, so that lookups are not held up by a big inventory.
const chunk = 4096

// replace makes sorted distinct keys the whole set of slot. New keys are
// set before stale ones are cleared, so a key held before and after never
// disappears from lookups in between.
func (x *index) replace(slot int, keys []uint64) {
	old := x.keysOf(slot)
	for i := 0; i < len(keys); i += chunk {
		x.set(slot, keys[i:min(i+chunk, len(keys))], true)
	}
	var stale []uint64
	for _, k := range old {
		if _, found := slices.BinarySearch(keys, k); !found {
			stale = append(stale, k)
		}
	}
	for i := 0; i < len(stale); i += chunk {
		x.set(slot, stale[i:min(i+chunk, len(stale))], false)
	}
}

// keysOf collects slot's keys under the read lock.
func (x *index) keysOf(slot int) []uint64 {
	g, bit := slot/64, uint64(1)<<(slot%64)
	x.mu.RLock()
	defer x.mu.RUnlock()
	ks := make([]uint64, 0, x.count[slot])
	for k, v := range x.groups[g] {
		if v&bit != 0 {
			ks = append(ks, k)
		}
	}
	return ks
}

// release takes slot out of lookups at once, clears its keys in chunks and
// frees it.
func (x *index) release(slot int) {
	g, bit := slot/64, uint64(1)<<(slot%64)
	x.mu.Lock()
	x.live[g] &^= bit
	x.owner[slot] = nil
	x.mu.Unlock()
	ks := x.keysOf(slot)
	for i := 0; i < len(ks); i += chunk {
		x.set(slot, ks[i:min(i+chunk, len(ks))], false)
	}
	x.mu.Lock()
	x.used[g] &^= bit
	x.count[slot] = 0
	x.mu.Unlock()
}
