package transfer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Chunked encoding (encChunked): how a server sends NAR bytes that it holds
// uncompressed, compressing each chunk or not as it goes.
//
//	chunk = kind u8 | rawLen u32 | encLen u32 | encLen bytes
//
// kind is chunkRaw (the bytes are the NAR bytes, encLen = rawLen) or
// chunkZstd (one zstd frame decoding to exactly rawLen bytes). 0 < rawLen ≤
// maxChunk; FIN after a whole chunk ends the stream. Each chunk decodes on
// its own, so a receiver needs no more than maxChunk of memory for it and a
// compression bomb is refused at its header.
//
// Whether a chunk is compressed is decided chunk by chunk (see
// compressPolicy): chunks of data that compresses are, others go raw.
const (
	chunkRaw       byte = 0
	chunkZstd      byte = 1
	chunkHeaderLen      = 9
	maxChunk            = 1 << 20
	sendChunk           = 256 << 10 // the chunk size a server cuts
)

// codecs holds the zstd encoder and decoder a Node shares between its
// transfers. EncodeAll and DecodeAll may be called concurrently.
type codecs struct {
	enc *zstd.Encoder
	dec *zstd.Decoder
}

func newCodecs() (*codecs, error) {
	procs := runtime.GOMAXPROCS(0)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(procs), zstd.WithWindowSize(maxChunk),
		zstd.WithZeroFrames(true), zstd.WithEncoderCRC(false), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(procs),
		zstd.WithDecoderMaxMemory(maxChunk), zstd.WithDecoderMaxWindow(maxChunk))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &codecs{enc: enc, dec: dec}, nil
}

func (c *codecs) close() {
	c.enc.Close()
	c.dec.Close()
}

// compressPolicy decides per chunk whether to compress: every chunk, while
// the data compresses. Data that does not (random bytes, an already
// compressed file inside the NAR) is backed off from: after such a chunk
// the next 1, 2, 4, … (at most 4*probeEvery) chunks go raw, and a chunk
// that compresses again resets that.
//
// Measured (docs/benchmarks.md): on 517 MiB of /usr/lib and /usr/share at
// 1 Gbit/s, one core per host, compressing every chunk took the receiving
// daemon from 4.5 to 2.8 CPU-s/GB and `nix copy` from 1.04x nginx's time
// to 0.74x, and the sender spent less CPU too (fewer bytes for QUIC to
// send: 5.65 against 6.73 CPU-s/GB). zstd's fastest level costs less per
// byte than quic-go does, so a policy that measured the link and sent raw
// chunks where it seemed fast enough lost on both cores; that one was tried
// and dropped.
type compressPolicy struct {
	chunks   int
	skipTill int // no compression tried before this chunk (incompressible data)
	backoff  int // chunks skipped after the last incompressible one
}

const probeEvery = 16

// compress reports whether the next chunk should be compressed.
func (p *compressPolicy) compress() bool {
	i := p.chunks
	p.chunks++
	return i >= p.skipTill
}

// sawCompress records a compression attempt's ratio.
func (p *compressPolicy) sawCompress(in, out int) {
	if float64(in) < 1.1*float64(max(out, 1)) {
		p.backoff = min(max(1, 2*p.backoff), 4*probeEvery)
		p.skipTill = p.chunks + p.backoff
		return
	}
	p.backoff, p.skipTill = 0, 0
}

// chunkWriter cuts what is written to it into chunks on w (encChunked).
// Close writes the last chunk.
type chunkWriter struct {
	w      io.Writer
	codecs *codecs
	force  bool // compress every chunk that shrinks
	policy compressPolicy
	shared *sharedPolicy // where policy came from and goes back to, if any
	buf    []byte        // pending raw bytes
	out    []byte        // scratch: header + compressed chunk
}

// newChunkWriter returns a chunkWriter for about size bytes (its buffers
// are no larger than that: most NARs are small).
func newChunkWriter(w io.Writer, c *codecs, force bool, size int64) *chunkWriter {
	n := int(min(sendChunk, max(size, 1)))
	return &chunkWriter{w: w, codecs: c, force: force,
		buf: make([]byte, 0, n), out: make([]byte, 0, chunkHeaderLen+n+n/64+64)}
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if len(c.buf) == 0 && len(p) >= sendChunk {
			// A whole chunk in p: no copy.
			if err := c.emit(p[:sendChunk]); err != nil {
				return n - len(p), err
			}
			p = p[sendChunk:]
			continue
		}
		k := min(len(p), sendChunk-len(c.buf))
		if cap(c.buf) < sendChunk && len(c.buf)+k > cap(c.buf) {
			c.buf = append(make([]byte, 0, sendChunk), c.buf...) // larger than announced
			c.out = make([]byte, 0, chunkHeaderLen+sendChunk+sendChunk/64+64)
		}
		c.buf = append(c.buf, p[:k]...)
		p = p[k:]
		if len(c.buf) == sendChunk {
			if err := c.flush(); err != nil {
				return n - len(p) - k, err
			}
		}
	}
	return n, nil
}

func (c *chunkWriter) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	err := c.emit(c.buf)
	c.buf = c.buf[:0]
	return err
}

// emit writes raw as one chunk.
func (c *chunkWriter) emit(raw []byte) error {
	hdr := c.out[:chunkHeaderLen]
	hdr[0] = chunkRaw
	body := raw
	if c.force || c.policy.compress() {
		z := c.codecs.enc.EncodeAll(raw, c.out[chunkHeaderLen:chunkHeaderLen])
		c.policy.sawCompress(len(raw), len(z))
		if len(z) < len(raw) {
			hdr = c.out[:chunkHeaderLen] // EncodeAll may not have grown out: z is in place
			if cap(z) > cap(c.out)-chunkHeaderLen {
				// It grew beyond the scratch buffer: a fresh slice.
				c.out = append(make([]byte, chunkHeaderLen, chunkHeaderLen+len(z)), z...)
				hdr, z = c.out[:chunkHeaderLen], c.out[chunkHeaderLen:]
			}
			hdr[0] = chunkZstd
			body = z
		}
	}
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(raw)))
	binary.BigEndian.PutUint32(hdr[5:], uint32(len(body)))
	if _, err := c.w.Write(hdr); err != nil {
		return err
	}
	if _, err := c.w.Write(body); err != nil {
		return err
	}
	return nil
}

// Close writes what is pending as the last chunk, and hands what the
// policy learnt back to the session.
func (c *chunkWriter) Close() error {
	err := c.flush()
	if c.shared != nil {
		c.shared.put(c.policy)
	}
	return err
}

// sharedPolicy carries a compressPolicy from one response to the next on
// a session: the link and the CPUs are the same, so a new response starts
// from what the last one measured instead of probing again (which, for the
// many small NARs of a closure, would compress the first chunk of each).
type sharedPolicy struct {
	mu sync.Mutex
	p  compressPolicy
}

func (s *sharedPolicy) get() compressPolicy {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.p
	// Chunk counts are per response; what was measured carries over.
	p.skipTill -= p.chunks
	p.chunks = 0
	return p
}

func (s *sharedPolicy) put(p compressPolicy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.p = p
}

// chunkReader decodes encChunked bytes from r.
type chunkReader struct {
	r      io.Reader
	dec    *zstd.Decoder
	in     []byte // the current chunk as received
	out    []byte // decoded bytes of the current chunk
	off    int    // next byte of out to return
	hdr    [chunkHeaderLen]byte
	reused []byte
}

func newChunkReader(r io.Reader, dec *zstd.Decoder) *chunkReader {
	return &chunkReader{r: r, dec: dec}
}

// errChunk wraps malformed chunked encoding: the peer broke the protocol.
var errChunk = errors.New("bad chunk")

func (c *chunkReader) Read(p []byte) (int, error) {
	for c.off == len(c.out) {
		if err := c.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.out[c.off:])
	c.off += n
	return n, nil
}

// chunk returns the decoded bytes of the next chunk (valid until the next
// call), without copying them.
func (c *chunkReader) chunk() ([]byte, error) {
	if c.off == len(c.out) {
		if err := c.next(); err != nil {
			return nil, err
		}
	}
	p := c.out[c.off:]
	c.off = len(c.out)
	return p, nil
}

// next reads and decodes the next chunk. At a clean end of the stream
// (between chunks) it returns io.EOF.
func (c *chunkReader) next() error {
	_, err := io.ReadFull(c.r, c.hdr[:])
	if err != nil {
		if errors.Is(err, io.EOF) {
			return io.EOF
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: truncated chunk header", errChunk)
		}
		return err
	}
	kind := c.hdr[0]
	rawLen := binary.BigEndian.Uint32(c.hdr[1:])
	encLen := binary.BigEndian.Uint32(c.hdr[5:])
	switch {
	case rawLen == 0 || rawLen > maxChunk:
		return fmt.Errorf("%w: chunk of %d bytes", errChunk, rawLen)
	case kind == chunkRaw && encLen != rawLen:
		return fmt.Errorf("%w: raw chunk of %d bytes says %d", errChunk, rawLen, encLen)
	case kind == chunkZstd && encLen > rawLen+rawLen/8+1024:
		return fmt.Errorf("%w: compressed chunk of %d bytes for %d", errChunk, encLen, rawLen)
	case kind != chunkRaw && kind != chunkZstd:
		return fmt.Errorf("%w: chunk kind %d", errChunk, kind)
	}
	if cap(c.in) < int(encLen) {
		c.in = make([]byte, encLen)
	}
	c.in = c.in[:encLen]
	_, err = io.ReadFull(c.r, c.in)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	c.off = 0
	if kind == chunkRaw {
		c.out = c.in
		return nil
	}
	if cap(c.reused) < int(rawLen) {
		c.reused = make([]byte, 0, rawLen)
	}
	out, err := c.dec.DecodeAll(c.in, c.reused[:0])
	if err != nil {
		return fmt.Errorf("%w: zstd: %w", errChunk, err)
	}
	if len(out) != int(rawLen) {
		return fmt.Errorf("%w: chunk decodes to %d bytes, says %d", errChunk, len(out), rawLen)
	}
	c.out = out
	return nil
}
