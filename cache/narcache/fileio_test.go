package narcache

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// blockNarinfo makes the next write of it's narinfo fail, past the NAR's
// rename: a non-empty directory where the narinfo goes cannot be renamed
// over, not even by root.
func blockNarinfo(t *testing.T, c *Cache, it item) (unblock func()) {
	t.Helper()
	p := filepath.Join(c.Dir(), it.hash().String()+narinfoSuffix)
	if err := os.MkdirAll(filepath.Join(p, "obstacle"), 0o755); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
	}
}

// A reader of a write whose Commit failed after the rename (the narinfo could
// not be written) must not, when it ends, delete the NAR of a later entry of
// the same path, which has the same file name.
func TestFailedCommitReaderSparesNewerEntry(t *testing.T) {
	dir := t.TempDir()
	c := openCache(t, dir, 1<<30, nil)
	it := newItem(t, "again", "zstd", 200_000)

	w, err := c.Begin(it.info)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(it.file); err != nil {
		t.Fatal(err)
	}
	g := newGate()
	done := make(chan error, 1)
	go func() { done <- c.WriteNAR(context.Background(), g, it.info, 0, -1) }()
	<-g.started // the reader holds the file open, parked in its first Write

	unblock := blockNarinfo(t, c, it)
	if err := w.Commit(); err == nil {
		t.Fatal("Commit succeeded with the narinfo's name taken")
	}
	unblock()
	put(t, c, it) // the same path again: the same NAR file name

	close(g.release)
	if err := <-done; err == nil {
		t.Fatal("reader of a failed write got no error")
	}
	if !c.Has(it.hash()) {
		t.Fatal("newer entry gone")
	}
	if got, err := read(t, c, it, 0, -1); err != nil || !bytes.Equal(got, it.file) {
		t.Fatalf("newer entry after the old reader ended: %v", err)
	}
	if files := narFiles(t, dir); len(files) != 1 {
		t.Fatalf("nar/ holds %v, want the newer entry's NAR", files)
	}
}

// lockWatch records the file-system operations a Cache runs while its lock
// is held. Only valid while no other goroutine of the test is inside the
// Cache: then a failed TryLock means the operation's own goroutine holds it.
type lockWatch struct {
	mu   sync.Mutex
	held []string
}

func watchLock(c *Cache) *lockWatch {
	lw := &lockWatch{}
	c.fsHook = func(op, path string) {
		if c.mu.TryLock() {
			c.mu.Unlock()
			return
		}
		lw.mu.Lock()
		lw.held = append(lw.held, op+" "+filepath.Base(path))
		lw.mu.Unlock()
	}
	return lw
}

func (lw *lockWatch) check(t *testing.T, step string) {
	t.Helper()
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if len(lw.held) > 0 {
		t.Errorf("%s: file I/O under the cache lock: %v", step, lw.held)
		lw.held = nil
	}
}

// No file is opened, created, renamed or removed under the cache's lock, so
// that narinfo lookups (answered from memory under it) never wait for a slow
// disk: writes, commits, evictions with and without readers, the last
// reader's deletion, a failed commit and a vanished file.
func TestFileIOOutsideLock(t *testing.T) {
	dir := t.TempDir()
	a := newItem(t, "a", "zstd", 300_000)
	b := newItem(t, "b", "zstd", 300_000)
	d := newItem(t, "d", "none", 300_000)
	c := openCache(t, dir, cost(int64(len(d.nar)), 1024)+1024, nil)
	lw := watchLock(c)

	put(t, c, a)
	lw.check(t, "commit")
	if _, err := read(t, c, a, 0, -1); err != nil {
		t.Fatal(err)
	}
	lw.check(t, "read")

	g := newGate()
	done := make(chan error, 1)
	go func() { done <- c.WriteNAR(context.Background(), g, a.info, 0, -1) }()
	<-g.started
	put(t, c, b) // evicts a, which is being read: moved aside
	lw.check(t, "eviction of a file being read")
	close(g.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	lw.check(t, "last reader of an evicted file")

	put(t, c, d) // evicts b, which nobody reads
	lw.check(t, "eviction")

	dInfo, err := c.NarInfo(context.Background(), d.hash())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, dInfo.URL)); err != nil {
		t.Fatal(err)
	}
	if _, err := read(t, c, d, 0, -1); err == nil {
		t.Fatal("read of a vanished file succeeded")
	}
	lw.check(t, "vanished file")
	if c.Has(d.hash()) {
		t.Fatal("entry of a vanished file kept")
	}

	w, err := c.Begin(a.info)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(a.file)
	unblock := blockNarinfo(t, c, a)
	if err := w.Commit(); err == nil {
		t.Fatal("Commit succeeded with the narinfo's name taken")
	}
	unblock()
	lw.check(t, "failed commit")
}

// While an eviction waits for the disk, lookups of other entries are
// answered.
func TestLookupDuringSlowEviction(t *testing.T) {
	dir := t.TempDir()
	a := newItem(t, "a", "none", 100_000)
	b := newItem(t, "b", "none", 100_000)
	k := newItem(t, "k", "none", 1000)
	c := openCache(t, dir, cost(int64(len(a.nar)), 1024)+cost(int64(len(k.nar)), 1024)+1024, nil)
	put(t, c, a)
	put(t, c, k)
	c.NarInfo(context.Background(), k.hash()) // a is least recently used

	aNarinfo := filepath.Join(dir, a.hash().String()+narinfoSuffix)
	parked, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.fsHook = func(op, path string) {
		if path == aNarinfo {
			once.Do(func() {
				close(parked)
				<-resume
			})
		}
	}
	errc := make(chan error, 1)
	go func() {
		w, err := c.Begin(b.info) // evicts a
		if err == nil {
			if _, err = w.Write(b.file); err == nil {
				err = w.Commit()
			}
		}
		errc <- err
	}()
	<-parked // the eviction is inside a file-system call
	if !c.mu.TryLock() {
		close(resume)
		<-errc
		t.Fatal("the cache lock is held while an eviction waits for the disk")
	}
	c.mu.Unlock()
	if _, err := c.NarInfo(context.Background(), k.hash()); err != nil {
		t.Errorf("lookup during eviction: %v", err)
	}
	if c.Has(a.hash()) {
		t.Error("a still listed while it is being evicted")
	}
	close(resume)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !c.Has(b.hash()) || !c.Has(k.hash()) || c.Has(a.hash()) {
		t.Fatalf("after eviction: a=%v b=%v k=%v", c.Has(a.hash()), c.Has(b.hash()), c.Has(k.hash()))
	}
}
