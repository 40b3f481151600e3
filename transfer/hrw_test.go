package transfer

import (
	"fmt"
	"slices"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/lancache/lancache/cache"
)

func hrwHash(i int) cache.Hash {
	var h cache.Hash
	x := xxhash.Sum64String(fmt.Sprint("path ", i))
	for j := range h {
		h[j] = byte(x >> (8 * (j % 8)))
		x = x*6364136223846793005 + 1442695040888963407
	}
	return h
}

func TestRendezvousSameEverywhere(t *testing.T) {
	ids := []string{"node-a", "node-b", "node-c", "node-d", "node-e", "node-f"}
	for i := range 200 {
		h := hrwHash(i)
		want := rendezvous(h, ids)
		rev := slices.Clone(ids)
		slices.Reverse(rev)
		if got := rendezvous(h, rev); !slices.Equal(got, want) {
			t.Fatalf("path %d: order %v from one listing, %v from another", i, want, got)
		}
		if !slices.Equal(slices.Sorted(slices.Values(want)), slices.Sorted(slices.Values(ids))) {
			t.Fatalf("order %v is not a permutation of %v", want, ids)
		}
	}
}

// A node leaving moves only the paths it won; the others keep their
// fetcher and fallback order.
func TestRendezvousMinimalMovement(t *testing.T) {
	ids := []string{"node-a", "node-b", "node-c", "node-d", "node-e", "node-f"}
	wins := map[string]int{}
	const paths = 6000
	for i := range paths {
		h := hrwHash(i)
		all := rendezvous(h, ids)
		wins[all[0]]++
		without := rendezvous(h, slices.DeleteFunc(slices.Clone(ids), func(s string) bool { return s == "node-c" }))
		if want := slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == "node-c" }); !slices.Equal(without, want) {
			t.Fatalf("path %d: with node-c gone the order is %v, want %v", i, without, want)
		}
	}
	// Each of 6 nodes fetches about a sixth; the hash is fixed, so this is
	// a fixed number, not a chance.
	for _, id := range ids {
		if w := wins[id]; w < paths/6*8/10 || w > paths/6*12/10 {
			t.Errorf("%s is elected for %d of %d paths, far from a sixth: %v", id, w, paths, wins)
		}
	}
}
