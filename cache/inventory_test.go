package cache

import (
	"testing"
)

func hashN(i int) Hash {
	var h Hash
	h[0], h[1], h[2] = byte(i), byte(i>>8), byte(i>>16)
	return h
}

func TestInventoryDeltas(t *testing.T) {
	inv := NewInventory()
	_, seq0, fp0 := inv.Snapshot()
	changed := inv.Changed()
	inv.Add(hashN(1), hashN(2), hashN(3))
	select {
	case <-changed:
	default:
		t.Fatal("Changed not closed after Add")
	}
	inv.Add(hashN(2)) // a second holder: no visible change
	inv.Remove(hashN(1))
	inv.Remove(hashN(2)) // one of two holders left
	ds, seq, fp, ok := inv.Since(seq0)
	if !ok || len(ds) != 4 || seq != 4 {
		t.Fatalf("Since = %v %d %v", ds, seq, ok)
	}
	// Replaying the deltas on the old view reaches the new fingerprint.
	view := map[Hash]bool{}
	for _, d := range ds {
		view[d.Hash] = !d.Removed
	}
	var hs []Hash
	for h, in := range view {
		if in {
			hs = append(hs, h)
		}
	}
	if FingerprintOf(hs) != fp || fp == fp0 {
		t.Fatalf("fingerprint mismatch: %x vs %x", FingerprintOf(hs), fp)
	}
	if !inv.Has(hashN(2)) || inv.Has(hashN(1)) || inv.Len() != 2 {
		t.Fatal("membership wrong")
	}
	snap, _, sfp := inv.Snapshot()
	if FingerprintOf(snap) != sfp {
		t.Fatal("snapshot fingerprint mismatch")
	}
	if _, _, _, ok := inv.Since(seq + 10); ok {
		t.Fatal("Since from the future: want !ok")
	}
}

func TestInventoryLogTrim(t *testing.T) {
	inv := NewInventory()
	for i := range maxDeltaLog + 10 {
		inv.Add(hashN(i))
	}
	if _, _, _, ok := inv.Since(0); ok {
		t.Fatal("log should no longer reach back to 0")
	}
	_, seq, _ := inv.Snapshot()
	inv.Add(hashN(1 << 20))
	ds, _, _, ok := inv.Since(seq)
	if !ok || len(ds) != 1 {
		t.Fatalf("recent delta lost: %v %v", ds, ok)
	}
}
