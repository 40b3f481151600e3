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
// Any holder serves any request, whatever form it keeps the path in (a
// store holds it uncompressed, a NAR cache as upstream's .nar.zst or
// .nar.xz). The Node hands Nix the NAR uncompressed (its narinfo says
// Compression: none, FileHash/FileSize those of the NAR): it has to decode
// the bytes anyway to check the NarHash, and Nix is spared a second
// decompression. NAR requests name positions in the uncompressed NAR, so a
// transfer resumes on a holder of another form at the same byte; each
// response says how its bytes are encoded: a held compressed file as it is
// (whole-NAR requests only), plain NAR bytes, or chunks that the holder
// compresses with zstd on the fly wherever the data compresses
// (encoding.go). The narinfo a peer sent is
// remembered for a while, with who sent it, so the NAR request that
// follows needs no second round trip.
//
// Blame follows libtorrent's smart ban: the Node records which peer sent
// which segment of a NAR, with a digest of it; a peer that sent all of a
// bad NAR, or bytes that do not decode, is blocklisted at once; when
// several contributed, the next copy that verifies tells whose bytes
// differed, and only they are blocklisted.
//
// transfer does not discover peers (discovery/ does, and calls AddPeer),
// read the Nix store or serve HTTP (cache/ does), or fetch from upstream
// caches (transfer/upstream does).
package transfer
