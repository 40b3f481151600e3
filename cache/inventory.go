package cache

import (
	"sync"

	"github.com/cespare/xxhash/v2"
)

// maxDeltaLog bounds the change log an Inventory keeps for subscribers that
// fall behind; a subscriber further behind gets a fresh snapshot instead.
const maxDeltaLog = 65536

// Delta is one change to an inventory.
type Delta struct {
	Hash    Hash
	Removed bool
}

// Inventory is the set of store-path hashes this node offers to peers, with a
// sequence number per change so that subscribers (one per peer connection)
// can follow it with deltas. It is safe for concurrent use.
type Inventory struct {
	mu      sync.Mutex
	set     map[Hash]int // hash -> number of holders (store, disk cache)
	seq     uint64       // sequence number of the last change
	log     []Delta      // log[i] is change number seq-len(log)+1+i
	changed chan struct{}
	fp      uint64 // order-independent fingerprint of set, see Fingerprint
}

// NewInventory returns an empty inventory.
func NewInventory() *Inventory {
	return &Inventory{set: make(map[Hash]int), changed: make(chan struct{})}
}

// Add records that one more holder offers h. Adding a hash another holder
// already offers changes nothing that peers see.
func (inv *Inventory) Add(hs ...Hash) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	n := 0
	for _, h := range hs {
		inv.set[h]++
		if inv.set[h] == 1 {
			inv.record(Delta{Hash: h})
			n++
		}
	}
	inv.notifyLocked(n)
}

// Remove records that one holder no longer offers h.
func (inv *Inventory) Remove(hs ...Hash) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	n := 0
	for _, h := range hs {
		c, ok := inv.set[h]
		if !ok {
			continue
		}
		if c > 1 {
			inv.set[h] = c - 1
			continue
		}
		delete(inv.set, h)
		inv.record(Delta{Hash: h, Removed: true})
		n++
	}
	inv.notifyLocked(n)
}

func (inv *Inventory) record(d Delta) {
	inv.seq++
	inv.fp ^= hashKey(d.Hash)
	inv.log = append(inv.log, d)
	if len(inv.log) > maxDeltaLog {
		// Drop the older half at once so trimming is amortised O(1).
		inv.log = append(inv.log[:0:0], inv.log[len(inv.log)-maxDeltaLog/2:]...)
	}
}

func (inv *Inventory) notifyLocked(n int) {
	if n == 0 {
		return
	}
	close(inv.changed)
	inv.changed = make(chan struct{})
}

// Has reports whether h is offered.
func (inv *Inventory) Has(h Hash) bool {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.set[h] > 0
}

// Len is the number of distinct hashes offered.
func (inv *Inventory) Len() int {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return len(inv.set)
}

// Snapshot returns every hash offered, the sequence number it is current at,
// and the set's fingerprint.
func (inv *Inventory) Snapshot() (hs []Hash, seq uint64, fp uint64) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	hs = make([]Hash, 0, len(inv.set))
	for h := range inv.set {
		hs = append(hs, h)
	}
	return hs, inv.seq, inv.fp
}

// Since returns the changes after sequence number seq, the sequence number
// they bring the subscriber to, and the fingerprint at that point. ok is
// false when the log no longer reaches back to seq: take a new Snapshot.
func (inv *Inventory) Since(seq uint64) (ds []Delta, now uint64, fp uint64, ok bool) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if seq > inv.seq {
		return nil, inv.seq, inv.fp, false
	}
	first := inv.seq - uint64(len(inv.log)) + 1 // sequence number of log[0]
	if seq+1 < first {
		return nil, inv.seq, inv.fp, false
	}
	ds = append([]Delta(nil), inv.log[seq+1-first:]...)
	return ds, inv.seq, inv.fp, true
}

// Changed returns a channel that is closed at the next change.
func (inv *Inventory) Changed() <-chan struct{} {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.changed
}

// Fingerprint is the XOR of xxhash64 over every hash in the set: order
// independent and updatable per delta, so two peers can tell in one message
// whether their views of a set agree. It is bookkeeping only, never trust.
func (inv *Inventory) Fingerprint() uint64 {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.fp
}

// FingerprintOf computes the fingerprint of a set given as a slice (each hash
// once), for the receiving side of a snapshot.
func FingerprintOf(hs []Hash) uint64 {
	var fp uint64
	for _, h := range hs {
		fp ^= hashKey(h)
	}
	return fp
}

// HashKey is the xxhash64 of a hash: the key of in-memory indexes and the
// term of inventory fingerprints.
func HashKey(h Hash) uint64 { return hashKey(h) }

func hashKey(h Hash) uint64 { return xxhash.Sum64(h[:]) }
