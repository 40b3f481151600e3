package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/lancache/lancache/cache"
)

// errPeerStatus is a non-OK answer of a peer.
type errPeerStatus byte

func (e errPeerStatus) Error() string {
	switch byte(e) {
	case statusNotFound:
		return "peer does not have it"
	case statusBusy:
		return "peer is busy"
	case statusOtherFile:
		return "peer holds a different file for it"
	case statusBadRequest:
		return "peer rejected the request"
	case statusInternal:
		return "peer failed to read it"
	}
	return fmt.Sprintf("peer answered status %d", byte(e))
}

// request opens a stream, sends one request frame and half-closes. Until
// stop is called, ctx ending resets the stream.
func (s *session) request(ctx context.Context, t byte, payload []byte) (st *quic.Stream, stop func(), err error) {
	st, err = s.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("open stream to %s: %w", s, err)
	}
	stopAfter := context.AfterFunc(ctx, func() {
		st.CancelRead(streamCanceled)
		st.CancelWrite(streamCanceled)
	})
	stop = func() { stopAfter() }
	st.SetWriteDeadline(time.Now().Add(requestTimeout))
	if err := writeFrame(st, t, payload); err != nil {
		stop()
		st.CancelRead(streamCanceled)
		return nil, nil, fmt.Errorf("send request to %s: %w", s, err)
	}
	if err := st.Close(); err != nil {
		stop()
		st.CancelRead(streamCanceled)
		return nil, nil, fmt.Errorf("send request to %s: %w", s, err)
	}
	return st, stop, nil
}

// protocolError disconnects a peer that broke the protocol and returns err.
func (s *session) protocolError(err error) error {
	if errors.Is(err, ErrProtocol) {
		s.cancel(err)
	}
	return err
}

// fetchNarInfo asks the peer for the narinfo of h. A peer that does not
// have it answers cache.ErrNotFound.
func (s *session) fetchNarInfo(ctx context.Context, h cache.Hash) (*cache.NarInfo, error) {
	s.active.Add(1)
	defer s.active.Add(-1)
	st, stop, err := s.request(ctx, typeNarInfoReq, h[:])
	if err != nil {
		return nil, err
	}
	defer stop()
	if d, ok := ctx.Deadline(); ok {
		st.SetReadDeadline(d)
	} else {
		st.SetReadDeadline(time.Now().Add(requestTimeout))
	}
	t, p, err := readFrame(st)
	if err == nil && t != typeNarInfoResp {
		err = fmt.Errorf("%w: frame type %#x in answer to a narinfo request", ErrProtocol, t)
	}
	var status byte
	var text []byte
	if err == nil {
		status, text, err = parseNarInfoResp(p)
	}
	if err == nil {
		err = expectEOF(st)
	}
	if err != nil {
		st.CancelRead(streamCanceled)
		return nil, s.protocolError(fmt.Errorf("narinfo %s from %s: %w", h, s, err))
	}
	switch status {
	case statusOK:
	case statusNotFound:
		return nil, cache.ErrNotFound
	default:
		return nil, fmt.Errorf("narinfo %s from %s: %w", h, s, errPeerStatus(status))
	}
	info, err := cache.ParseNarInfo(bytes.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("narinfo %s from %s: %w", h, s, err)
	}
	return info, nil
}

// errSink wraps an error of the writer bytes were fetched into, so that it
// is not taken for a failure of the peer.
type errSink struct{ err error }

func (e *errSink) Error() string { return e.err.Error() }
func (e *errSink) Unwrap() error { return e.err }

// errBadData wraps a response whose bytes do not decode in the encoding the
// peer announced: proof that this peer sent bad bytes.
var errBadData = errors.New("peer sent bytes that do not decode")

// fetchNAR asks the peer for the NAR bytes m names and writes them, decoded,
// to sink, returning how many were written. Errors of sink come back as
// *errSink; bytes that do not decode as errBadData.
func (s *session) fetchNAR(ctx context.Context, m *narReq, sink io.Writer) (int64, error) {
	s.active.Add(1)
	defer s.active.Add(-1)
	st, stop, err := s.request(ctx, typeNarReq, m.marshal())
	if err != nil {
		return 0, err
	}
	defer stop()
	stall := s.n.cfg.StallTimeout
	st.SetReadDeadline(time.Now().Add(min(stall, requestTimeout)))
	t, p, err := readFrame(st)
	if err == nil && t != typeNarResp {
		err = fmt.Errorf("%w: frame type %#x in answer to a NAR request", ErrProtocol, t)
	}
	var resp *narResp
	if err == nil {
		resp, err = parseNarResp(p)
	}
	want := m.want()
	if err == nil && resp.Status == statusOK {
		switch {
		case resp.Encoding == encNone && resp.Length != want:
			err = fmt.Errorf("%w: peer offers %d bytes, asked for %d", ErrProtocol, resp.Length, want)
		case resp.Encoding == encZstd && m.Accept&acceptZstd == 0,
			resp.Encoding == encXZ && m.Accept&acceptXZ == 0,
			resp.Encoding == encChunked && m.Accept&acceptCompress == 0:
			err = fmt.Errorf("%w: peer answered in encoding %d, not asked for", ErrProtocol, resp.Encoding)
		case (resp.Encoding == encZstd || resp.Encoding == encXZ) && (m.Offset != 0 || want != m.NarSize):
			err = fmt.Errorf("%w: peer sent a whole compressed file for a part of the NAR", ErrProtocol)
		}
	}
	if err != nil {
		st.CancelRead(streamCanceled)
		return 0, s.protocolError(fmt.Errorf("NAR %s from %s: %w", m.Hash, s, err))
	}
	if resp.Status != statusOK {
		return 0, fmt.Errorf("NAR %s from %s: %w", m.Hash, s, errPeerStatus(resp.Status))
	}

	sr := &stallReader{st: st, stall: stall, count: &s.bytesIn}
	sr.extend(time.Now())
	var src io.Reader = sr
	var limit uint64 = want // decoded bytes accepted
	switch resp.Encoding {
	case encNone:
	case encChunked:
		src = newChunkReader(sr, s.n.codecs.dec)
	default:
		comp := "zstd"
		if resp.Encoding == encXZ {
			comp = "xz"
		}
		d, err := s.n.decomp.Reader(comp, sr, m.NarSize)
		if err != nil {
			st.CancelRead(streamCanceled)
			return 0, fmt.Errorf("NAR %s from %s: %w", m.Hash, s, err)
		}
		defer d.Close()
		src = d
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	next := func() ([]byte, error) {
		k, err := src.Read(*bp)
		return (*bp)[:k], err
	}
	if cr, ok := src.(*chunkReader); ok {
		next = cr.chunk // decoded chunks go to the sink without a copy
	}
	var got uint64
	for {
		buf, rerr := next()
		if k := len(buf); k > 0 {
			if got+uint64(k) > limit {
				st.CancelRead(streamCanceled)
				return int64(got), fmt.Errorf("NAR %s from %s: %w: more than the %d bytes asked for", m.Hash, s, errBadData, limit)
			}
			got += uint64(k)
			if _, werr := sink.Write(buf[:k]); werr != nil {
				st.CancelRead(streamCanceled)
				return int64(got) - int64(k), &errSink{werr}
			}
		}
		if rerr == nil {
			continue
		}
		if errors.Is(rerr, io.EOF) && sr.eof {
			break
		}
		st.CancelRead(streamCanceled)
		switch {
		case errors.Is(rerr, io.EOF) && !sr.eof:
			// The decoder ended before the stream did: trailing bytes.
			rerr = fmt.Errorf("%w: data after the end of the %s stream", errBadData, encName(resp.Encoding))
		case errors.Is(rerr, io.EOF), errors.Is(rerr, io.ErrUnexpectedEOF):
			rerr = io.ErrUnexpectedEOF
		case sr.err == nil && resp.Encoding != encNone:
			// Not the stream's error: the decoder's.
			rerr = fmt.Errorf("%w: %w", errBadData, rerr)
		}
		return int64(got), fmt.Errorf("NAR %s from %s after %d bytes: %w", m.Hash, s, m.Offset+got, rerr)
	}
	if got != want {
		return int64(got), fmt.Errorf("NAR %s from %s: %w: %d bytes, asked for %d", m.Hash, s, errBadData, got, want)
	}
	if resp.Encoding != encNone && resp.Length != toEnd && uint64(sr.n) != resp.Length {
		return int64(got), fmt.Errorf("NAR %s from %s: %w: %d bytes on the wire, announced %d", m.Hash, s, errBadData, sr.n, resp.Length)
	}
	return int64(got), nil
}

func encName(e byte) string {
	switch e {
	case encZstd:
		return "zstd"
	case encXZ:
		return "xz"
	case encChunked:
		return "chunked"
	}
	return "raw"
}

// stallReader reads a response stream, pushing its read deadline forward as
// bytes arrive (a peer that stops sending is given up after the stall
// timeout), counting them, and remembering whether the stream ended cleanly.
type stallReader struct {
	st    *quic.Stream
	stall time.Duration
	last  time.Time
	count *atomic.Int64
	n     int64
	eof   bool
	err   error // the stream's own error, other than EOF
}

func (r *stallReader) extend(now time.Time) {
	r.st.SetReadDeadline(now.Add(r.stall))
	r.last = now
}

func (r *stallReader) Read(p []byte) (int, error) {
	k, err := r.st.Read(p)
	if k > 0 {
		r.n += int64(k)
		r.count.Add(int64(k))
		if now := time.Now(); now.Sub(r.last) > r.stall/8 {
			r.extend(now)
		}
	}
	switch {
	case errors.Is(err, io.EOF):
		r.eof = true
	case err != nil:
		r.err = err
	}
	return k, err
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}
