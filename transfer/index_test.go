package transfer

import (
	"bufio"
	"bytes"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
)

// sliceKeys is a keySource over sorted keys.
func sliceKeys(ks []uint64) keySource { return &sliceSource{ks: ks} }

type sliceSource struct{ ks []uint64 }

func (s *sliceSource) next() (uint64, error) {
	k := s.ks[0]
	s.ks = s.ks[1:]
	return k, nil
}

// randomKeys returns n sorted distinct keys drawn from seed.
func randomKeys(seed uint64, n int) []uint64 {
	r := rand.New(rand.NewPCG(seed, 2))
	seen := make(map[uint64]bool, n)
	ks := make([]uint64, 0, n)
	for len(ks) < n {
		k := r.Uint64() & keyMask
		if !seen[k] {
			seen[k] = true
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	return ks
}

func mustReplace(t *testing.T, x *index, s *session, ks []uint64) error {
	t.Helper()
	err := x.replace(s, len(ks), sliceKeys(ks))
	if err != nil && err != errOfferDropped {
		t.Fatal(err)
	}
	return err
}

// holds reports whether lookups of every key of ks find s.
func holds(x *index, s *session, ks []uint64) bool {
	for _, k := range ks {
		if !slices.Contains(x.lookup(k, nil), s) {
			return false
		}
	}
	return true
}

func TestIndexReplace(t *testing.T) {
	x := newIndex(1000, nil)
	a, b := &session{}, &session{}
	mustReplace(t, x, a, []uint64{1, 2, 3, 10})
	mustReplace(t, x, b, []uint64{2, 3})
	mustReplace(t, x, a, []uint64{0, 3, 4, 11, 12})
	if got := x.paths(a); got != 5 {
		t.Fatalf("a offers %d keys, want 5", got)
	}
	for k, want := range map[uint64][]*session{0: {a}, 1: nil, 2: {b}, 3: {a, b}, 10: nil, 12: {a}} {
		if got := x.lookup(k, nil); !sameSessions(got, want) {
			t.Errorf("lookup(%d) = %v, want %v", k, got, want)
		}
	}
	if st := x.stats(); st.Entries != 6 { // 0 2 3 4 11 12
		t.Errorf("%d entries, want 6", st.Entries)
	}
	x.release(a)
	x.release(b)
	if st := x.stats(); st.Entries != 0 || st.Dropped != 0 {
		t.Errorf("after release: %+v", st)
	}
}

func sameSessions(a, b []*session) bool {
	if len(a) != len(b) {
		return false
	}
	for _, s := range b {
		if !slices.Contains(a, s) {
			return false
		}
	}
	return true
}

// TestIndexReplaceDisjoint: a snapshot that shares nothing with the one it
// replaces, all its keys above or all below the old ones (the order a
// hostile peer picks), never makes the slot hold both.
func TestIndexReplaceDisjoint(t *testing.T) {
	const n = 10_000
	low, high := make([]uint64, n), make([]uint64, n)
	for i := range n {
		low[i], high[i] = uint64(i), uint64(n+i)
	}
	for _, tc := range []struct {
		name      string
		old, next []uint64
	}{{"up", low, high}, {"down", high, low}} {
		t.Run(tc.name, func(t *testing.T) {
			x := newIndex(n+chunk, nil) // room for one set and a little
			s := &session{}
			mustReplace(t, x, s, tc.old)
			if err := mustReplace(t, x, s, tc.next); err != nil {
				t.Fatalf("replace: %v (the slot held old and new together)", err)
			}
			if !holds(x, s, tc.next) || x.paths(s) != n || x.stats().Entries != n {
				t.Fatalf("after replace: %d paths, %+v", x.paths(s), x.stats())
			}
		})
	}
}

// TestIndexBudget: the index never holds more than its budget; the largest
// offer goes first, an equal newcomer is the one refused, and small offers
// stay.
func TestIndexBudget(t *testing.T) {
	x := newIndex(25_000, nil)
	honest := make([]*session, 5)
	for i := range honest {
		honest[i] = &session{}
		if err := mustReplace(t, x, honest[i], randomKeys(uint64(i), 1000)); err != nil {
			t.Fatalf("honest %d: %v", i, err)
		}
	}
	big := &session{}
	if err := mustReplace(t, x, big, randomKeys(100, 15_000)); err != nil {
		t.Fatalf("first big offer: %v", err)
	}
	// As big as the established one: refused.
	rogue := &session{}
	if err := mustReplace(t, x, rogue, randomKeys(101, 15_000)); err != errOfferDropped {
		t.Fatalf("second big offer: %v, want errOfferDropped", err)
	}
	if x.paths(rogue) != 0 || x.paths(big) != 15_000 {
		t.Fatalf("rogue %d paths, big %d", x.paths(rogue), x.paths(big))
	}
	// Larger than the established one: refused too. Smaller, but not
	// fitting: the established big one goes.
	if err := mustReplace(t, x, rogue, randomKeys(102, 20_000)); err != errOfferDropped {
		t.Fatalf("larger offer: %v, want errOfferDropped", err)
	}
	mid := &session{}
	if err := mustReplace(t, x, mid, randomKeys(103, 12_000)); err != nil {
		t.Fatalf("mid offer: %v", err)
	}
	if x.paths(big) != 0 || x.paths(mid) != 12_000 {
		t.Fatalf("big %d paths, mid %d: want the largest dropped", x.paths(big), x.paths(mid))
	}
	for i, s := range honest {
		if !holds(x, s, randomKeys(uint64(i), 1000)) {
			t.Errorf("honest %d lost keys", i)
		}
	}
	// A dropped offer ignores deltas until its next snapshot.
	if _, err := x.apply(big, []keyOp{{key: 1}}); err != errOfferDropped {
		t.Fatalf("delta to a dropped offer: %v", err)
	}
	// Deltas are held to the budget too.
	var ops []keyOp
	for _, k := range randomKeys(104, 22_000) {
		ops = append(ops, keyOp{key: k})
	}
	if _, err := x.apply(honest[0], ops); err != errOfferDropped {
		t.Fatalf("deltas over budget from the largest: %v, want errOfferDropped", err)
	}
	st := x.stats()
	if st.Entries > st.Budget || st.Dropped != 5 {
		t.Fatalf("stats %+v: want ≤ budget and 5 drops (mid went before the largest, honest 0)", st)
	}
	for _, s := range append(honest, big, rogue, mid) {
		x.release(s)
	}
	if st := x.stats(); st.Entries != 0 {
		t.Fatalf("after release: %+v", st)
	}
}

// TestIndexShrinks: the memory of a released offer is given back (Go maps
// keep theirs when entries are deleted).
func TestIndexShrinks(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates ~40 MB")
	}
	var freed int
	x := newIndex(1<<20, func(b int) { freed += b })
	small := &session{}
	mustReplace(t, x, small, randomKeys(1, 1000))
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	big := &session{}
	mustReplace(t, x, big, randomKeys(2, 500_000))
	during := heap()
	x.release(big)
	after := heap()
	t.Logf("heap: %d MB before, %d with 500k entries, %d after release; %d MB reported freed",
		before>>20, during>>20, after>>20, freed>>20)
	if after > before+(during-before)/4 {
		t.Errorf("heap after release is %d MB, before %d MB: the map kept its memory", after>>20, before>>20)
	}
	if freed < 10<<20 {
		t.Errorf("%d bytes reported freed", freed)
	}
	if !holds(x, small, randomKeys(1, 1000)) {
		t.Error("the remaining offer lost keys in the rebuild")
	}
	runtime.KeepAlive(x)
}

// TestSnapshotDecodeStreams: decoding a snapshot as it streams costs a
// fixed buffer, neither the payload nor a slice of its keys.
func TestSnapshotDecodeStreams(t *testing.T) {
	keys := randomKeys(7, 500_000)
	k, data := encodeKeys(keys)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	br := bufio.NewReaderSize(bytes.NewReader(data), 32<<10)
	d, err := newKeyDecoder(br, int64(len(data)), len(keys), k)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range keys {
		if got, err := d.next(); err != nil || got != want {
			t.Fatalf("key %d: %d, %v; want %d", i, got, err, want)
		}
	}
	if err := d.end(); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("decoded %d keys (%d bytes coded) with %d bytes allocated", len(keys), len(data), alloc)
	if alloc > 256<<10 {
		t.Errorf("decoding allocated %d bytes, want a fixed buffer (coded set: %d bytes)", alloc, len(data))
	}
}
