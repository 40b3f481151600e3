// Package narcache is the on-disk NAR cache of a node (--cache-dir,
// --cache-max-size): NARs fetched from upstreams or peers, kept in upstream's
// compression and laid out as an ordinary Nix binary cache
//
//	<dir>/nix-cache-info
//	<dir>/<hash>.narinfo
//	<dir>/nar/<hash>-<filehash>.nar[.xz|.zst|.bz2]
//
// so that `nix copy --from file://<dir>` works on it directly.
//
// Writes are crash-safe: bytes stream into a partial file through a
// cache.Verifier, which is fsynced and renamed to its final name only when the
// NarHash matched; the narinfo is written the same way after it. An entry
// exists only when its narinfo exists and its NAR file has the size the
// narinfo says. Open rebuilds the index from disk and removes anything else.
//
// The size is bounded by LRU eviction. Recency survives restarts as the
// narinfo files' modification times, updated at most once per minute per
// entry. A file being read is never deleted under its reader, and a reader
// never deletes a file a newer entry of the same path may hold.
//
// Lookups are answered from memory under the index lock, which is never held
// across file I/O: evictions take entries out of the index under it and
// remove their files after, while their names stay reserved (Begin answers
// ErrBusy for the path until then).
//
// The package does not fetch anything; transfer/upstream and the peer
// protocol feed it through Begin.
package narcache
