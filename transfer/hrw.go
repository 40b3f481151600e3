package transfer

import (
	"cmp"
	"slices"

	"github.com/cespare/xxhash/v2"

	"github.com/lancache/lancache/cache"
)

// rendezvous orders the node ids in ids by their rendezvous (highest random
// weight) score for store path h, best first: the first is the node elected
// to fetch h from upstream for the LAN, the rest the fallback chain.
//
// Every node computes the same order from the same set of ids, whatever
// order it lists them in, and a node joining or leaving moves only the
// paths it wins or won: the relative order of the others is unchanged
// (Kraken's lib/hrw; research/singleflight.md). The score is keyed by the
// store path hash alone, never by URL, compression or requester.
func rendezvous(h cache.Hash, ids []string) []string {
	type scored struct {
		id    string
		score uint64
	}
	s := make([]scored, len(ids))
	buf := make([]byte, 0, len(h)+maxIDLen)
	for i, id := range ids {
		buf = append(append(buf[:0], h[:]...), id...)
		s[i] = scored{id, xxhash.Sum64(buf)}
	}
	slices.SortFunc(s, func(a, b scored) int {
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id) // equal scores: still one order everywhere
	})
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = x.id
	}
	return out
}
