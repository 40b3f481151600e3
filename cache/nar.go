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

// DumpNAR writes the NAR serialisation of the file tree at path to w, byte
// identical to `nix-store --dump`, from byte offset for length bytes (length
// < 0: to the end). It stops early when ctx is cancelled.
func DumpNAR(ctx context.Context, w io.Writer, path string, offset, length int64) error {
	if offset < 0 {
		return fmt.Errorf("dump %s: negative offset %d", path, offset)
	}
	rw := &RangeWriter{Ctx: ctx, W: w, Skip: offset, Left: length, StopWhenDone: true}
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
	if errors.Is(err, ErrRangeDone) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dump %s: %w", path, err)
	}
	if rw.Skip > 0 || rw.Left > 0 {
		return fmt.Errorf("dump %s: NAR ended before the requested range: %w", path, io.ErrUnexpectedEOF)
	}
	return nil
}
