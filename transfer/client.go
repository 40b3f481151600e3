package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
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

var bufPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// fetchNAR asks the peer for the file bytes m names and writes them to
// sink, returning how many were written. Errors of sink come back as
// *errSink.
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
	var status byte
	var n uint64
	if err == nil {
		status, n, err = parseNarResp(p)
	}
	want := m.FileSize - m.Offset
	if m.Length != toEnd && m.Length < want {
		want = m.Length
	}
	if err == nil && status == statusOK && n != want {
		err = fmt.Errorf("%w: peer offers %d bytes, asked for %d", ErrProtocol, n, want)
	}
	if err != nil {
		st.CancelRead(streamCanceled)
		return 0, s.protocolError(fmt.Errorf("NAR %s from %s: %w", m.Hash, s, err))
	}
	if status != statusOK {
		return 0, fmt.Errorf("NAR %s from %s: %w", m.Hash, s, errPeerStatus(status))
	}

	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var got uint64
	last := time.Now()
	st.SetReadDeadline(last.Add(stall))
	for got < n {
		k, rerr := st.Read(buf[:min(uint64(len(buf)), n-got)])
		if k > 0 {
			got += uint64(k)
			s.bytesIn.Add(int64(k))
			if _, werr := sink.Write(buf[:k]); werr != nil {
				st.CancelRead(streamCanceled)
				return int64(got) - int64(k), &errSink{werr}
			}
			if now := time.Now(); now.Sub(last) > stall/8 {
				st.SetReadDeadline(now.Add(stall))
				last = now
			}
		}
		if rerr != nil {
			if got == n && errors.Is(rerr, io.EOF) {
				break
			}
			st.CancelRead(streamCanceled)
			if errors.Is(rerr, io.EOF) {
				rerr = io.ErrUnexpectedEOF
			}
			return int64(got), fmt.Errorf("NAR %s from %s after %d bytes: %w", m.Hash, s, m.Offset+got, rerr)
		}
	}
	if err := expectEOF(st); err != nil {
		st.CancelRead(streamCanceled)
		// The bytes asked for all arrived; only the ending was wrong.
		return int64(got), s.protocolError(fmt.Errorf("NAR %s from %s: %w", m.Hash, s, err))
	}
	return int64(got), nil
}
