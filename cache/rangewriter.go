package cache

import (
	"context"
	"errors"
	"io"
)

// ErrRangeDone is what a RangeWriter with StopWhenDone returns once the last
// byte of its range is written: a producer that can stop early (a NAR dump
// walking a tree) stops there; the caller treats it as success.
var ErrRangeDone = errors.New("range done")

// RangeWriter passes on bytes [Skip, Skip+Left) of the stream written to it
// (Left < 0: to the end) and swallows the rest, holding back the last Hold
// bytes of the range (of what it has passed so far, when the range is
// unbounded) until Release. A writer that cannot take back
// what it sent (an HTTP response with a Content-Length) thus never gets the
// whole of a file whose check has not passed yet: the caller checks, then
// releases. With Hold at least the range's length, nothing goes out before
// Release.
//
// Its fields are set before the first Write. It is not safe for concurrent
// use.
type RangeWriter struct {
	W    io.Writer
	Skip int64 // stream bytes to swallow first
	Left int64 // range bytes still to pass on; < 0: unbounded
	Hold int64 // range bytes to hold back until Release
	// StopWhenDone makes Write return ErrRangeDone once the range is done.
	StopWhenDone bool
	// Ctx, if set, is checked at every Write.
	Ctx context.Context

	held    []byte // the last range bytes passed in, at most Hold
	written int64  // bytes written to W
	err     error  // the error W returned
}

// Write implements io.Writer. It reports all of p as consumed unless W
// failed (then Err returns W's error) or the context ended.
func (r *RangeWriter) Write(p []byte) (int, error) {
	if r.Ctx != nil {
		if err := r.Ctx.Err(); err != nil {
			return 0, err
		}
	}
	n := len(p)
	if r.Skip > 0 {
		s := min(r.Skip, int64(len(p)))
		p, r.Skip = p[s:], r.Skip-s
	}
	if r.Left >= 0 && int64(len(p)) > r.Left {
		p = p[:r.Left]
	}
	if len(p) > 0 {
		if err := r.pass(p); err != nil {
			r.err = err
			return 0, err
		}
		if r.Left >= 0 {
			r.Left -= int64(len(p))
		}
	}
	if r.StopWhenDone && r.Left == 0 {
		return n, ErrRangeDone
	}
	return n, nil
}

// pass writes the range bytes p but for those it holds back: with a known
// end (Left >= 0, counting p), the last Hold bytes of the range, and all
// before them go out at once; with an unbounded range, the last Hold bytes
// seen so far.
func (r *RangeWriter) pass(p []byte) error {
	if r.Hold <= 0 {
		return r.out(p)
	}
	if r.held == nil {
		r.held = make([]byte, 0, min(r.Hold, 32<<20))
	}
	if r.Left >= 0 {
		cut := min(max(r.Left-r.Hold, 0), int64(len(p)))
		if err := r.out(p[:cut]); err != nil {
			return err
		}
		r.held = append(r.held, p[cut:]...)
		return nil
	}
	if int64(len(p)) >= r.Hold {
		// All that was held, and p but its tail, go out.
		if err := r.out(r.held); err != nil {
			return err
		}
		cut := int64(len(p)) - r.Hold
		if err := r.out(p[:cut]); err != nil {
			return err
		}
		r.held = append(r.held[:0], p[cut:]...)
		return nil
	}
	if over := int64(len(r.held)+len(p)) - r.Hold; over > 0 {
		if err := r.out(r.held[:over]); err != nil {
			return err
		}
		r.held = append(r.held[:0], r.held[over:]...)
	}
	r.held = append(r.held, p...)
	return nil
}

func (r *RangeWriter) out(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	k, err := r.W.Write(p)
	r.written += int64(k)
	return err
}

// Release writes the held-back bytes.
func (r *RangeWriter) Release() error {
	err := r.out(r.held)
	r.held = r.held[:0]
	if err != nil {
		r.err = err
	}
	return err
}

// Untouched reports whether nothing has been written to W yet.
func (r *RangeWriter) Untouched() bool { return r.written == 0 }

// Done reports whether the whole range went through Write (Skip and Left
// are used up; an unbounded range is never done).
func (r *RangeWriter) Done() bool { return r.Skip == 0 && r.Left == 0 }

// Err is the error W returned, if any: a failure of the destination, not
// of the producer.
func (r *RangeWriter) Err() error { return r.err }
