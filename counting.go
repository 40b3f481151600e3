package lancache

import (
	"context"
	"io"
	"sync/atomic"

	"github.com/lancache/lancache/cache"
)

// countingSource counts the file bytes a source writes: wrapped around the
// peer transport it counts bytes from peers, around the local sources handed
// to the transport it counts bytes served to peers. The counts survive peers
// coming and going, unlike per-connection figures.
type countingSource struct {
	cache.Source
	n *atomic.Uint64
}

func (c countingSource) WriteNAR(ctx context.Context, w io.Writer, info *cache.NarInfo, offset, length int64) error {
	return c.Source.WriteNAR(ctx, &countingWriter{w: w, n: c.n}, info, offset, length)
}

type countingWriter struct {
	w io.Writer
	n *atomic.Uint64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(uint64(n))
	return n, err
}
