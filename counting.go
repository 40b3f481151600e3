package lancache

import (
	"context"
	"errors"
	"io"
	"sync/atomic"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/internal/xfers"
	"github.com/lancache/lancache/statusapi"
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

// trackedSource records each NAR a local source (store, NAR cache,
// upstream) serves to Nix, for the status API's transfers. The peer
// transport records its own, with the peers it used.
type trackedSource struct {
	cache.Source
	kind statusapi.Source
	t    *xfers.Tracker
}

func (s trackedSource) WriteNAR(ctx context.Context, w io.Writer, info *cache.NarInfo, offset, length int64) error {
	h, err := info.Hash()
	if err != nil {
		return s.Source.WriteNAR(ctx, w, info, offset, length)
	}
	size := length
	if size < 0 {
		size = cache.FileSize(info) - offset
	}
	tw := &trackingWriter{w: w, x: s.t.Start(s.kind, h.String(), info.Name(), size)}
	err = s.Source.WriteNAR(ctx, tw, info, offset, length)
	if errors.Is(err, cache.ErrNotFound) && tw.n == 0 {
		tw.x.Discard() // not there after all: no transfer happened
		return err
	}
	tw.x.Finish(err)
	return err
}

type trackingWriter struct {
	w io.Writer
	x *xfers.Transfer
	n int64
}

func (t *trackingWriter) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	t.n += int64(n)
	t.x.Add(int64(n))
	return n, err
}

// NarInfoByFile passes the lookup on to a source that can find a file by
// its hash (cache.FileFinder: the NAR cache), so that wrapping it does not
// hide that.
func (s trackedSource) NarInfoByFile(ctx context.Context, fileHash cache.NarHash) (*cache.NarInfo, error) {
	ff, ok := s.Source.(cache.FileFinder)
	if !ok {
		return nil, cache.ErrNotFound
	}
	return ff.NarInfoByFile(ctx, fileHash)
}

// ReadFrom keeps the destination's ReadFrom (sendfile, for the NAR cache's
// files) while counting: a file's bytes go in pieces, so the count is live.
func (t *trackingWriter) ReadFrom(r io.Reader) (int64, error) {
	rf, ok := t.w.(io.ReaderFrom)
	if !ok {
		return io.Copy(struct{ io.Writer }{t}, r)
	}
	return cache.ReadFromInPieces(rf, struct{ io.Writer }{t}, r, trackPiece, nil, func(n int64) {
		t.n += n
		t.x.Add(n)
	})
}

// trackPiece is how much of a file ReadFrom sends between two counts.
const trackPiece = 4 << 20
