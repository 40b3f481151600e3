// Package transfer is the peer protocol of lancache: QUIC connections
// between the daemons of a LAN, over which they prove who they are (node
// key, optional fleet key), tell each other which store paths they offer
// (inventory snapshot, then deltas) and fetch narinfos and NAR files from
// each other.
//
// A Node owns one quic-go Transport on one UDP port, used both to listen
// and to dial. Its node id is derived from an ed25519 key kept in the state
// directory (see NodeID); the TLS 1.3 certificate carries that key, and a
// dialer that knows a peer's id pins it. The wire format is documented in
// wire.go, the inventory coding in gcs.go.
//
// The Node is also a cache.Source: NarInfo and WriteNAR answer from the
// peers whose inventories offer a path, pick the least busy and closest
// peer, verify narinfo signatures and NAR hashes, fail over and resume on
// another peer mid-stream, and blocklist peers that send bad bytes. A miss
// is answered from the in-memory index.
//
// transfer does not discover peers (discovery/ does, and calls AddPeer),
// read the Nix store or serve HTTP (cache/ does), or fetch from upstream
// caches (transfer/upstream does).
package transfer
