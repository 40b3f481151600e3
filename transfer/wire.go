package transfer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/lancache/lancache/cache"
)

// Wire format.
//
// Every message on every stream is one frame:
//
//	 0        1        2                 6
//	+--------+--------+-----------------+----------------------+
//	| ver u8 | type u8| length u32 (BE) | payload (length B)   |
//	+--------+--------+-----------------+----------------------+
//
// ver is frameVersion. Each type has a hard upper bound on length
// (maxPayload); a frame of an unknown version or type, or longer than its
// bound, is a protocol error and closes the connection before the payload is
// read. Integers are big-endian. A payload must be consumed exactly: trailing
// bytes are a protocol error too.
//
// Streams:
//   - The dialer opens the first bidirectional stream, the control stream,
//     and sends Hello; the acceptor answers with its own Hello. Then each
//     side sends its inventory on it (one Snapshot, then Deltas and Pings)
//     and may ask for a new Snapshot with Resync.
//   - Every other bidirectional stream carries one request (NarInfoReq or
//     NarReq, then FIN) and one response. A NarResp with status OK is
//     followed by exactly its length in raw file bytes and FIN.
const (
	frameVersion   = 1
	frameHeaderLen = 6
)

// Frame types.
const (
	typeHello       byte = 0x01
	typeSnapshot    byte = 0x02
	typeDelta       byte = 0x03
	typePing        byte = 0x04
	typeResync      byte = 0x05
	typeFlightAd    byte = 0x06
	typeNarInfoReq  byte = 0x10
	typeNarInfoResp byte = 0x11
	typeNarReq      byte = 0x12
	typeNarResp     byte = 0x13
	typeFlightReq   byte = 0x14
)

// Bounds of individual fields.
const (
	maxIDLen        = 64
	maxNameLen      = 64
	maxDeltaEntries = 4096
	proofLen        = 32
	// maxSnapshotPayload bounds one inventory snapshot: about 4 million
	// paths at 48-bit keys.
	maxSnapshotPayload = 16 << 20
)

// maxPayload is the hard bound per frame type; types not listed are
// rejected.
var maxPayload = [256]uint32{
	typeHello:       2 + 8 + 1 + maxIDLen + 1 + maxNameLen + 1 + proofLen,
	typeSnapshot:    8 + 8 + 4 + 1 + maxSnapshotPayload,
	typeDelta:       8 + 8 + 8 + 2 + maxDeltaEntries*(1+20),
	typePing:        8 + 8,
	typeResync:      0,
	typeNarInfoReq:  20,
	typeNarInfoResp: 1 + cache.MaxNarInfoSize,
	typeNarReq:      20 + 32 + 8 + 8 + 8 + 1,
	typeNarResp:     1 + 1 + 8,
	typeFlightAd:    2 + maxFlightAds*flightAdLen,
	typeFlightReq:   20 + 32 + 8 + 32 + 8 + 1 + maxCompLen + 8 + 1,
}

// known reports whether t is a frame type this version understands.
func known(t byte) bool {
	switch t {
	case typeHello, typeSnapshot, typeDelta, typePing, typeResync,
		typeNarInfoReq, typeNarInfoResp, typeNarReq, typeNarResp,
		typeFlightAd, typeFlightReq:
		return true
	}
	return false
}

// ErrProtocol is wrapped by every error caused by bytes a peer sent that do
// not follow the protocol (garbled, oversized, unexpected). The connection
// they came on is closed.
var ErrProtocol = errors.New("protocol violation")

// writeFrame writes one frame. The payload must respect maxPayload[t].
func writeFrame(w io.Writer, t byte, payload []byte) error {
	if uint64(len(payload)) > uint64(maxPayload[t]) || !known(t) {
		return fmt.Errorf("frame type %#x: payload of %d bytes exceeds its bound", t, len(payload))
	}
	buf := make([]byte, frameHeaderLen, frameHeaderLen+len(payload))
	buf[0] = frameVersion
	buf[1] = t
	binary.BigEndian.PutUint32(buf[2:], uint32(len(payload)))
	// One write per frame: small frames go out in one packet.
	_, err := w.Write(append(buf, payload...))
	return err
}

// readFrame reads one frame, checking version, type and bound before the
// payload is read. The payload buffer grows with what actually arrives, so
// a peer announcing a large frame and sending nothing costs no memory.
//
// Only bytes that break the protocol are ErrProtocol: a stream that ends
// inside a frame. A read that fails (a deadline, a reset) returns that
// error, whether before the header or inside the payload, so that the
// caller resets the stream and keeps the connection of a peer that was
// merely slow.
func readFrame(r io.Reader) (byte, []byte, error) {
	t, n, err := readHeader(r)
	if err != nil {
		return 0, nil, err
	}
	p, err := readPayload(r, t, n)
	return t, p, err
}

// readPayload reads the n-byte payload of a frame of type t.
func readPayload(r io.Reader, t byte, n uint32) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	var b bytes.Buffer
	if n <= 64<<10 {
		b.Grow(int(n))
	}
	m, err := b.ReadFrom(io.LimitReader(r, int64(n)))
	if err != nil {
		return nil, fmt.Errorf("frame type %#x: read after %d of %d bytes: %w", t, m, n, err)
	}
	if m != int64(n) {
		return nil, fmt.Errorf("%w: frame type %#x truncated after %d of %d bytes", ErrProtocol, t, m, n)
	}
	return b.Bytes(), nil
}

// readHeader reads a frame header and checks version, type and bound; the
// payload of the returned length follows.
func readHeader(r io.Reader) (byte, uint32, error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, 0, fmt.Errorf("%w: truncated frame header", ErrProtocol)
		}
		return 0, 0, err
	}
	if hdr[0] != frameVersion {
		return 0, 0, fmt.Errorf("%w: frame version %d, want %d", ErrProtocol, hdr[0], frameVersion)
	}
	t := hdr[1]
	if !known(t) {
		return 0, 0, fmt.Errorf("%w: unknown frame type %#x", ErrProtocol, t)
	}
	n := binary.BigEndian.Uint32(hdr[2:])
	if n > maxPayload[t] {
		return 0, 0, fmt.Errorf("%w: frame type %#x of %d bytes exceeds bound %d", ErrProtocol, t, n, maxPayload[t])
	}
	return t, n, nil
}

// decoder reads fixed fields from a payload; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
	}
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.fail("payload too short")
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) u8() byte {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if p := d.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

// str reads a u8 length and that many bytes of printable UTF-8, at most max.
func (d *decoder) str(max int, what string) string {
	n := int(d.u8())
	if n > max {
		d.fail("%s of %d bytes exceeds %d", what, n, max)
		return ""
	}
	p := d.take(n)
	if d.err != nil {
		return ""
	}
	if !printable(p) {
		d.fail("%s is not printable UTF-8", what)
		return ""
	}
	return string(p)
}

// end checks that the payload was consumed exactly.
func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}

func printable(p []byte) bool {
	if !utf8.Valid(p) {
		return false
	}
	for _, r := range string(p) {
		// C0, DEL and C1 controls: a name reaches logs and terminals.
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return false
		}
	}
	return true
}

func appendStr(b []byte, s string) []byte {
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// hello is the first message on the control stream, in each direction.
//
//	version u16 | caps u64 | idLen u8 | id | nameLen u8 | name | proofLen u8 | proof
//
// id is the sender's node id (must match its certificate), name its
// human-readable name, proof the fleet proof (0 bytes without a fleet key,
// else 32 bytes, see fleetProof).
type hello struct {
	Version uint16
	Caps    uint64
	ID      string
	Name    string
	Proof   []byte
}

// protocolVersion is the version of the messages (not of the framing).
//
// Version 2: NAR requests name positions in the uncompressed NAR and the
// response says how the bytes are encoded (see narReq).
const protocolVersion = 2

// Capability bits in hello.Caps. None are defined yet; unknown bits are
// ignored so that later versions can add some.
const capsNone = 0

func (h *hello) marshal() []byte {
	b := binary.BigEndian.AppendUint16(nil, h.Version)
	b = binary.BigEndian.AppendUint64(b, h.Caps)
	b = appendStr(b, h.ID)
	b = appendStr(b, h.Name)
	b = append(b, byte(len(h.Proof)))
	return append(b, h.Proof...)
}

func parseHello(p []byte) (*hello, error) {
	d := decoder{b: p}
	h := &hello{Version: d.u16(), Caps: d.u64()}
	h.ID = d.str(maxIDLen, "node id")
	h.Name = d.str(maxNameLen, "name")
	n := int(d.u8())
	if n != 0 && n != proofLen {
		d.fail("fleet proof of %d bytes", n)
	}
	if pr := d.take(n); n > 0 && pr != nil {
		h.Proof = append([]byte(nil), pr...)
	}
	return h, d.end()
}

// snapshot is a whole inventory.
//
//	seq u64 | fp u64 | count u32 | k u8 | rice-coded keys
//
// seq is the sender's inventory sequence number, fp its fingerprint (see
// cache.Inventory.Fingerprint) and count the number of distinct 48-bit keys,
// coded as described at encodeKeys.
type snapshot struct {
	Seq   uint64
	FP    uint64
	Count uint32
	K     uint8
	Data  []byte
}

func (s *snapshot) marshal() []byte {
	b := make([]byte, 0, 21+len(s.Data))
	b = binary.BigEndian.AppendUint64(b, s.Seq)
	b = binary.BigEndian.AppendUint64(b, s.FP)
	b = binary.BigEndian.AppendUint32(b, s.Count)
	b = append(b, s.K)
	return append(b, s.Data...)
}

// snapshotHeaderLen is the length of a snapshot's fixed fields.
const snapshotHeaderLen = 8 + 8 + 4 + 1

func parseSnapshot(p []byte) (*snapshot, error) {
	s, err := parseSnapshotHeader(p[:min(len(p), snapshotHeaderLen)])
	if err != nil {
		return nil, err
	}
	s.Data = p[snapshotHeaderLen:]
	return s, nil
}

// parseSnapshotHeader parses the fixed fields of a snapshot, without Data.
func parseSnapshotHeader(p []byte) (*snapshot, error) {
	d := decoder{b: p}
	s := &snapshot{Seq: d.u64(), FP: d.u64(), Count: d.u32(), K: d.u8()}
	if d.err == nil && s.K >= keyBits {
		d.fail("rice parameter %d", s.K)
	}
	return s, d.end()
}

// delta is a batch of inventory changes.
//
//	from u64 | to u64 | fp u64 | n u16 | n × (op u8 | hash [20]u8)
//
// It moves the receiver's copy from sequence number from to to (to-from =
// n, one number per change); fp is the fingerprint after it. op is 1 for added, 0 for removed. n ≤ 4096: larger
// batches are split, each part with its own to and fp.
type delta struct {
	From, To uint64
	FP       uint64
	Changes  []cache.Delta
}

func (m *delta) marshal() []byte {
	b := make([]byte, 0, 26+21*len(m.Changes))
	b = binary.BigEndian.AppendUint64(b, m.From)
	b = binary.BigEndian.AppendUint64(b, m.To)
	b = binary.BigEndian.AppendUint64(b, m.FP)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Changes)))
	for _, c := range m.Changes {
		op := byte(1)
		if c.Removed {
			op = 0
		}
		b = append(b, op)
		b = append(b, c.Hash[:]...)
	}
	return b
}

func parseDelta(p []byte) (*delta, error) {
	d := decoder{b: p}
	m := &delta{From: d.u64(), To: d.u64(), FP: d.u64()}
	n := int(d.u16())
	if n > maxDeltaEntries {
		d.fail("delta of %d entries", n)
	}
	if d.err == nil && m.To-m.From != uint64(n) {
		// Every change is one sequence number.
		d.fail("delta from %d to %d has %d entries", m.From, m.To, n)
	}
	if d.err == nil && len(d.b) != n*21 {
		d.fail("delta of %d entries has %d bytes", n, len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	m.Changes = make([]cache.Delta, n)
	for i := range m.Changes {
		op := d.u8()
		if op > 1 {
			d.fail("delta op %d", op)
			break
		}
		m.Changes[i].Removed = op == 0
		copy(m.Changes[i].Hash[:], d.take(20))
	}
	return m, d.end()
}

// ping is the keepalive on the control stream.
//
//	seq u64 | fp u64
//
// It repeats the sequence number and fingerprint of the last inventory
// message sent, so that the receiver can check its copy.
type ping struct {
	Seq, FP uint64
}

func (m *ping) marshal() []byte {
	b := binary.BigEndian.AppendUint64(nil, m.Seq)
	return binary.BigEndian.AppendUint64(b, m.FP)
}

func parsePing(p []byte) (*ping, error) {
	d := decoder{b: p}
	m := &ping{Seq: d.u64(), FP: d.u64()}
	return m, d.end()
}

// Response status codes (first byte of NarInfoResp and NarResp).
const (
	statusOK         byte = 0
	statusNotFound   byte = 1 // not offered (not in the inventory) or gone
	statusBusy       byte = 2 // too many concurrent transfers for this peer
	statusOtherFile  byte = 3 // held, but as a different file (compression, size, hash)
	statusBadRequest byte = 4
	statusInternal   byte = 5
)

// narInfoReq asks for the narinfo of a store path.
//
//	hash [20]u8
func parseNarInfoReq(p []byte) (cache.Hash, error) {
	var h cache.Hash
	d := decoder{b: p}
	copy(h[:], d.take(20))
	return h, d.end()
}

// narInfoResp answers a narInfoReq.
//
//	status u8 | narinfo text (status OK only, at most cache.MaxNarInfoSize)
func parseNarInfoResp(p []byte) (byte, []byte, error) {
	d := decoder{b: p}
	st := d.u8()
	text := d.take(len(d.b))
	if d.err == nil && st != statusOK && len(text) != 0 {
		d.fail("status %d with a body", st)
	}
	return st, text, d.end()
}

// narReq asks for a byte range of the NAR of a store path.
//
//	hash [20]u8 | narHash [32]u8 | narSize u64 | offset u64 | length u64 |
//	accept u8
//
// narHash and narSize name the NAR wanted (they are from its signed
// narinfo); offset and length are positions in the uncompressed NAR, so a
// transfer may resume on any holder whatever form each keeps the path in (a
// store holds it uncompressed, a NAR cache as upstream's .nar.zst or
// .nar.xz). A server whose copy is of another NAR answers statusOtherFile.
// length toEnd means "to the end". accept says which encodings the
// requester can take besides encNone (see the accept bits).
type narReq struct {
	Hash    cache.Hash
	NarHash cache.NarHash
	NarSize uint64
	Offset  uint64
	Length  uint64
	Accept  byte
}

// Accept bits of a narReq.
const (
	// acceptZstd and acceptXZ: send a held .nar.zst / .nar.xz as it is
	// (whole-file requests only: a compressed file cannot start mid-NAR).
	acceptZstd byte = 1 << 0
	acceptXZ   byte = 1 << 1
	// acceptCompress: a server holding the path uncompressed may send it
	// encChunked, compressing the chunks that compress.
	acceptCompress byte = 1 << 2
	// acceptForce, with acceptCompress: try compressing every chunk, with no
	// back-off from data that did not compress.
	acceptForce byte = 1 << 3
	acceptAll        = acceptZstd | acceptXZ | acceptCompress | acceptForce
)

// Encodings of the bytes that follow a NarResp.
const (
	encNone byte = 0 // the NAR bytes themselves
	encZstd byte = 1 // one or more zstd frames decoding to the NAR bytes
	encXZ   byte = 2 // an xz stream decoding to the NAR bytes
	// encChunked: chunks, each raw or zstd-compressed, decoding to the
	// NAR bytes (see chunkWriter).
	encChunked byte = 3
	// encFile: bytes of an upstream's NAR file (compressed as its narinfo
	// says), in answer to a flightReq.
	encFile byte = 4
)

const toEnd = ^uint64(0)

func (m *narReq) marshal() []byte {
	b := make([]byte, 0, 20+32+8+8+8+1)
	b = append(b, m.Hash[:]...)
	b = append(b, m.NarHash[:]...)
	b = binary.BigEndian.AppendUint64(b, m.NarSize)
	b = binary.BigEndian.AppendUint64(b, m.Offset)
	b = binary.BigEndian.AppendUint64(b, m.Length)
	return append(b, m.Accept)
}

func parseNarReq(p []byte) (*narReq, error) {
	d := decoder{b: p}
	m := &narReq{}
	copy(m.Hash[:], d.take(20))
	copy(m.NarHash[:], d.take(32))
	m.NarSize = d.u64()
	m.Offset = d.u64()
	m.Length = d.u64()
	m.Accept = d.u8()
	if d.err == nil && m.Accept&^acceptAll != 0 {
		d.fail("accept bits %#x", m.Accept)
	}
	if d.err == nil && m.Offset > m.NarSize {
		d.fail("offset %d beyond the %d-byte NAR", m.Offset, m.NarSize)
	}
	return m, d.end()
}

// want is the number of NAR bytes m asks for.
func (m *narReq) want() uint64 {
	n := m.NarSize - m.Offset
	if m.Length != toEnd && m.Length < n {
		n = m.Length
	}
	return n
}

// narResp answers a narReq.
//
//	status u8 | encoding u8 | length u64
//
// With status OK, length bytes in the encoding follow, then FIN; length
// toEnd means the server does not know it in advance (on-the-fly
// compression) and FIN ends the bytes. Decoded, they are exactly the NAR
// bytes asked for; with encNone length is their number. A server that
// fails after the header resets the stream instead of finishing it.
type narResp struct {
	Status   byte
	Encoding byte
	Length   uint64
}

func (m *narResp) marshal() []byte {
	return binary.BigEndian.AppendUint64([]byte{m.Status, m.Encoding}, m.Length)
}

func parseNarResp(p []byte) (*narResp, error) {
	d := decoder{b: p}
	m := &narResp{Status: d.u8(), Encoding: d.u8(), Length: d.u64()}
	if d.err == nil && m.Encoding > encFile {
		d.fail("encoding %d", m.Encoding)
	}
	return m, d.end()
}

// LAN-wide single-flight (issue 11): one node downloads a NAR file from
// upstream for the whole LAN, the others stream it from that growing
// download, in upstream's file coordinates, so that whoever takes over a
// download continues it with an HTTP Range request from the byte it holds.

// Bounds of the flight messages.
const (
	maxCompLen   = 8   // "bzip2" is the longest compression name Nix uses
	maxFlightAds = 256 // entries of one flightAds message
	flightAdLen  = 20 + 1 + 8 + 8
)

// flightReq asks a peer for an upstream NAR file from a byte offset:
//
//	hash [20]u8 | narHash [32]u8 | narSize u64 | fileHash [32]u8 |
//	fileSize u64 | compLen u8 | comp | offset u64 | flags u8
//
// narHash, narSize, fileHash, fileSize and comp are from the requester's
// signed narinfo; fileHash all zero and fileSize 0 mean "not known". With
// flagFetch the peer may start the download from upstream if it is not
// fetching or following it already; without it, it only serves what it
// has or is receiving. A peer never forwards the request: it answers from
// its own download or says no (statusNotFound, statusOtherFile). The
// answer is a narResp, encFile, followed by the file's bytes from offset,
// as they arrive, then FIN.
type flightReq struct {
	Hash     cache.Hash
	NarHash  cache.NarHash
	NarSize  uint64
	FileHash cache.NarHash
	FileSize uint64
	Comp     string
	Offset   uint64
	Flags    byte
}

// Flags of a flightReq.
const (
	flagFetch   byte = 1 << 0
	flightFlags      = flagFetch
)

func (m *flightReq) marshal() []byte {
	b := make([]byte, 0, maxPayload[typeFlightReq])
	b = append(b, m.Hash[:]...)
	b = append(b, m.NarHash[:]...)
	b = binary.BigEndian.AppendUint64(b, m.NarSize)
	b = append(b, m.FileHash[:]...)
	b = binary.BigEndian.AppendUint64(b, m.FileSize)
	b = appendStr(b, m.Comp)
	b = binary.BigEndian.AppendUint64(b, m.Offset)
	return append(b, m.Flags)
}

func parseFlightReq(p []byte) (*flightReq, error) {
	d := decoder{b: p}
	m := &flightReq{}
	copy(m.Hash[:], d.take(20))
	copy(m.NarHash[:], d.take(32))
	m.NarSize = d.u64()
	copy(m.FileHash[:], d.take(32))
	m.FileSize = d.u64()
	m.Comp = d.str(maxCompLen, "compression")
	m.Offset = d.u64()
	m.Flags = d.u8()
	switch {
	case d.err != nil:
	case m.Flags&^flightFlags != 0:
		d.fail("flight flags %#x", m.Flags)
	case m.NarSize == 0:
		d.fail("flight request without a NarSize")
	case m.FileSize != 0 && m.Offset > m.FileSize:
		d.fail("offset %d beyond the %d-byte file", m.Offset, m.FileSize)
	}
	if d.err == nil {
		if _, err := cache.CompressionExt(m.Comp); err != nil {
			d.fail("compression %q", m.Comp)
		}
	}
	return m, d.end()
}

// flightAd tells peers about one download this node takes part in, on the
// control stream, so that a node about to fetch a path follows a download
// already running instead of starting its own (membership views differ),
// and status shows who fetches what.
//
//	n u16 | n × (hash [20]u8 | role u8 | have u64 | fileSize u64)
//
// role is adFetching (downloading from upstream), adFollowing (streaming
// from a peer) or adDone (no longer taking part); have is the file bytes
// held so far, fileSize 0 when not known.
type flightAd struct {
	Hash     cache.Hash
	Role     byte
	Have     uint64
	FileSize uint64
}

// Roles of a flightAd.
const (
	adDone      byte = 0
	adFetching  byte = 1
	adFollowing byte = 2
)

func marshalFlightAds(ads []flightAd) []byte {
	b := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(ads)*flightAdLen), uint16(len(ads)))
	for _, a := range ads {
		b = append(b, a.Hash[:]...)
		b = append(b, a.Role)
		b = binary.BigEndian.AppendUint64(b, a.Have)
		b = binary.BigEndian.AppendUint64(b, a.FileSize)
	}
	return b
}

func parseFlightAds(p []byte) ([]flightAd, error) {
	d := decoder{b: p}
	n := int(d.u16())
	if n > maxFlightAds {
		d.fail("%d flight ads", n)
	}
	if d.err == nil && len(d.b) != n*flightAdLen {
		d.fail("%d flight ads in %d bytes", n, len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	ads := make([]flightAd, n)
	for i := range ads {
		a := &ads[i]
		copy(a.Hash[:], d.take(20))
		a.Role = d.u8()
		a.Have = d.u64()
		a.FileSize = d.u64()
		switch {
		case a.Role > adFollowing:
			d.fail("flight role %d", a.Role)
		case a.FileSize != 0 && a.Have > a.FileSize:
			d.fail("flight ad holds %d bytes of a %d-byte file", a.Have, a.FileSize)
		}
	}
	return ads, d.end()
}
