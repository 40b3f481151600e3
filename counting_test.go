package lancache

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/internal/xfers"
	"github.com/lancache/lancache/statusapi"
)

// fileSource serves one file with io.CopyN, as the NAR cache does.
type fileSource struct{ path string }

func (fileSource) NarInfo(context.Context, cache.Hash) (*cache.NarInfo, error) {
	return nil, cache.ErrNotFound
}

func (s fileSource) WriteNAR(_ context.Context, w io.Writer, _ *cache.NarInfo, offset, length int64) error {
	f, err := os.Open(s.path)
	if err != nil {
		return err
	}
	defer f.Close()
	f.Seek(offset, io.SeekStart)
	_, err = io.CopyN(w, f, length)
	return err
}

// fileSink records whether the bytes reached it as a file (what sendfile
// needs) and keeps them.
type fileSink struct {
	bytes.Buffer
	asFile bool
}

func (s *fileSink) ReadFrom(r io.Reader) (int64, error) {
	if lr, ok := r.(*io.LimitedReader); ok {
		if _, ok := lr.R.(*os.File); ok {
			s.asFile = true
		}
	}
	return s.Buffer.ReadFrom(r)
}

// Tracking what a source serves must not hide the file from the response
// (sendfile), nor the NAR cache's file lookup from the HTTP face.
func TestTrackedSourceKeepsSendfile(t *testing.T) {
	data := bytes.Repeat([]byte("nar"), 3<<20)
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	tr := xfers.NewTracker(nil)
	src := trackedSource{Source: fileSource{p}, kind: statusapi.SourceCache, t: tr}
	var sink fileSink
	info := &cache.NarInfo{StorePath: "/nix/store/00000000000000000000000000000000-x", Compression: "none", NarSize: uint64(len(data))}
	if err := src.WriteNAR(context.Background(), &sink, info, 5, int64(len(data)-5)); err != nil {
		t.Fatal(err)
	}
	if !sink.asFile || !bytes.Equal(sink.Bytes(), data[5:]) {
		t.Fatalf("as a file: %v, %d bytes", sink.asFile, sink.Len())
	}
	if l := tr.List(); len(l) != 1 || l[0].BytesDone != int64(len(data)-5) {
		t.Fatalf("tracked %+v", l)
	}
	var _ cache.FileFinder = src
}
