package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lancache/lancache/cache"
)

// serveRanges makes the binCache answer Range requests for p with 206, as
// a real binary cache (nginx, S3, cache.nixos.org's CDN) does.
func serveRanges(bc *binCache, p path) {
	bc.hook(p.narURL(), func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(rangeCounter{w, bc, p.narURL()}, r, "", time.Time{}, bytes.NewReader(p.file))
	})
}

// rangeCounter counts the body bytes the binCache sends.
type rangeCounter struct {
	http.ResponseWriter
	bc *binCache
	p  string
}

func (c rangeCounter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.bc.mu.Lock()
	c.bc.sent[c.p] += int64(n)
	c.bc.mu.Unlock()
	return n, err
}

func fetchFile(f *fixture, info *cache.NarInfo, off int64) ([]byte, error) {
	var buf bytes.Buffer
	n, err := f.up.FetchFile(context.Background(), &buf, info, off)
	if n != int64(buf.Len()) {
		return nil, fmt.Errorf("FetchFile says %d bytes, wrote %d", n, buf.Len())
	}
	return buf.Bytes(), err
}

func TestFetchFile(t *testing.T) {
	for _, ranges := range []bool{true, false} {
		t.Run(fmt.Sprintf("ranges=%v", ranges), func(t *testing.T) {
			f := newFixture(t, false, nil)
			p := f.bc.add("big", "zstd", 3<<20)
			if ranges {
				serveRanges(f.bc, p)
			}
			got, err := fetchFile(f, p.info, 0)
			if err != nil || !bytes.Equal(got, p.file) {
				t.Fatalf("whole file: %d bytes, err %v; want %d bytes", len(got), err, len(p.file))
			}
			sentWhole := f.bc.bytesSent(p.narURL())
			off := int64(len(p.file)) / 3
			got, err = fetchFile(f, p.info, off)
			if err != nil || !bytes.Equal(got, p.file[off:]) {
				t.Fatalf("from %d: %d bytes, err %v; want %d bytes", off, len(got), err, int64(len(p.file))-off)
			}
			sent := f.bc.bytesSent(p.narURL()) - sentWhole
			st := f.up.Stats()
			if ranges {
				if sent != int64(len(p.file))-off || st.RangeResumes != 1 || st.RestartResumes != 0 {
					t.Errorf("upstream sent %d bytes for the tail of %d, stats %+v", sent, int64(len(p.file))-off, st)
				}
			} else if sent != int64(len(p.file)) || st.RestartResumes != 1 || st.RangeResumes != 0 {
				t.Errorf("upstream ignoring ranges sent %d bytes of %d, stats %+v", sent, len(p.file), st)
			}
			if want := uint64(sentWhole + sent); st.NARBytes != want {
				t.Errorf("NARBytes %d, upstream sent %d", st.NARBytes, want)
			}
			// From the very end: nothing to write, and no error.
			if got, err := fetchFile(f, p.info, int64(len(p.file))); err != nil || len(got) != 0 {
				t.Errorf("from the end: %d bytes, err %v", len(got), err)
			}
		})
	}
}

func TestFetchFileRefuses(t *testing.T) {
	f := newFixture(t, false, nil)
	p := f.bc.add("a", "xz", 200<<10)
	size := int64(len(p.file))

	other := *p.info
	other.NarHash[0] ^= 1
	if got, err := fetchFile(f, &other, 0); !errors.Is(err, cache.ErrNotFound) || len(got) != 0 {
		t.Errorf("another NarHash: %d bytes, err %v; want ErrNotFound and nothing", len(got), err)
	}
	other = *p.info
	other.FileHash = "sha256:" + strings.Repeat("0", 52)
	if _, err := fetchFile(f, &other, 0); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("another FileHash: err %v, want ErrNotFound", err)
	}
	missing := f.bc.add("gone", "xz", 1000)
	f.bc.mu.Lock()
	delete(f.bc.files, missing.narinfoURL())
	f.bc.mu.Unlock()
	if _, err := fetchFile(f, missing.info, 0); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("path upstream lacks: err %v, want ErrNotFound", err)
	}
	if _, err := fetchFile(f, p.info, -1); err == nil {
		t.Error("negative offset accepted")
	}
	if _, err := fetchFile(f, p.info, size+1); err == nil {
		t.Error("offset beyond the file accepted")
	}

	// A 206 that does not start where asked is refused, not spliced in.
	for name, cr := range map[string]string{
		"wrong start": fmt.Sprintf("bytes %d-%d/%d", 10, size-1, size),
		"short":       fmt.Sprintf("bytes %d-%d/%d", 100, size-2, size),
		"wrong total": fmt.Sprintf("bytes %d-%d/%d", 100, size, size+1),
		"garbage":     "pages 1-2",
	} {
		f.bc.hook(p.narURL(), func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", cr)
			w.WriteHeader(http.StatusPartialContent)
			w.Write(p.file[100:])
		})
		if got, err := fetchFile(f, p.info, 100); err == nil || len(got) != 0 {
			t.Errorf("%s Content-Range %q: %d bytes, err %v; want an error and nothing", name, cr, len(got), err)
		}
	}
	f.bc.hook(p.narURL(), func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusRequestedRangeNotSatisfiable)
	})
	if _, err := fetchFile(f, p.info, 100); err == nil {
		t.Error("416 accepted")
	}
	// A file shorter than the offset, from an upstream ignoring Range.
	f.bc.hook(p.narURL(), func(w http.ResponseWriter, r *http.Request) { w.Write(p.file[:50]) })
	if _, err := fetchFile(f, p.info, 100); err == nil {
		t.Error("a file ending before the offset accepted")
	}
}

type failWriter struct{ after int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, errors.New("disk full")
	}
	w.after -= len(p)
	return len(p), nil
}

func TestFetchFileFailures(t *testing.T) {
	f := newFixture(t, false, func(c *Config) { c.NARIdleTimeout = 200 * time.Millisecond })
	p := f.bc.add("a", "zstd", 2<<20)

	_, err := f.up.FetchFile(context.Background(), &failWriter{after: 1}, p.info, 0)
	if !errors.Is(err, ErrWrite) {
		t.Errorf("failing writer: err %v, want ErrWrite", err)
	}
	if st := f.up.Stats(); st.NARErrors != 0 {
		t.Errorf("a local write failure counted as an upstream error: %+v", st)
	}

	release, _ := f.bc.stallHalf(p)
	if _, err := fetchFile(f, p.info, 0); err == nil || errors.Is(err, ErrWrite) || !errors.Is(err, errIdle) {
		t.Errorf("silent upstream: err %v, want the idle timeout", err)
	}
	release()

	f.bc.mu.Lock()
	delete(f.bc.stall, p.narURL())
	f.bc.mu.Unlock()
	held := make(chan struct{})
	f.bc.hookHeld(p.narURL(), held)
	defer close(held)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := f.up.FetchFile(ctx, &bytes.Buffer{}, p.info, 0)
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled: err %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("FetchFile did not end when its context did")
	}
}
