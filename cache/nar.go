package cache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/nix-community/go-nix/pkg/nar"
)

// narBufSize is the buffer between go-nix's NAR writer (many tiny writes) and
// the destination; 1 MiB measured 1.4x faster than unbuffered.
const narBufSize = 1 << 20

var narBufPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, narBufSize) }}

// errRangeDone stops the dump once the requested range has been written.
var errRangeDone = errors.New("range done")

// DumpNAR writes the NAR serialisation of the file tree at path to w, byte
// identical to `nix-store --dump`, from byte offset for length bytes (length
// < 0: to the end). It stops early when ctx is cancelled.
func DumpNAR(ctx context.Context, w io.Writer, path string, offset, length int64) error {
	if offset < 0 {
		return fmt.Errorf("dump %s: negative offset %d", path, offset)
	}
	rw := &rangeWriter{ctx: ctx, w: w, skip: offset, remain: length}
	if length == 0 {
		return nil
	}
	bw := narBufPool.Get().(*bufio.Writer)
	bw.Reset(rw)
	defer func() {
		bw.Reset(nil)
		narBufPool.Put(bw)
	}()
	err := nar.DumpPath(bw, path)
	if err == nil {
		err = bw.Flush()
	}
	if errors.Is(err, errRangeDone) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dump %s: %w", path, err)
	}
	if rw.skip > 0 || rw.remain > 0 {
		return fmt.Errorf("dump %s: NAR ended before the requested range: %w", path, io.ErrUnexpectedEOF)
	}
	return nil
}

// rangeWriter passes on the bytes of [skip, skip+remain) of what is written
// to it and reports errRangeDone after the last one.
type rangeWriter struct {
	ctx    context.Context
	w      io.Writer
	skip   int64
	remain int64 // < 0: unbounded
}

func (r *rangeWriter) Write(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n := len(p)
	if r.skip > 0 {
		if int64(len(p)) <= r.skip {
			r.skip -= int64(len(p))
			return n, nil
		}
		p = p[r.skip:]
		r.skip = 0
	}
	if r.remain >= 0 && int64(len(p)) > r.remain {
		p = p[:r.remain]
	}
	if _, err := r.w.Write(p); err != nil {
		return 0, err
	}
	if r.remain >= 0 {
		r.remain -= int64(len(p))
		if r.remain == 0 {
			return n, errRangeDone
		}
	}
	return n, nil
}
