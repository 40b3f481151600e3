package narcache

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/internal/syncbuf"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/ulikunitz/xz"
)

// item is one generated store path: its narinfo and the file bytes of its
// NAR in the narinfo's compression.
type item struct {
	info *cache.NarInfo
	file []byte
	nar  []byte
}

// makeNAR returns a real NAR of a single regular file with content.
func makeNAR(t testing.TB, content []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	nw, err := nar.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(content))}); err != nil {
		t.Fatal(err)
	}
	if _, err := nw.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := nw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func compress(t testing.TB, comp string, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	switch comp {
	case "none":
		return b
	case "zstd":
		zw, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest))
		if err != nil {
			t.Fatal(err)
		}
		zw.Write(b)
		zw.Close()
	case "xz":
		xw, err := xz.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		xw.Write(b)
		xw.Close()
	default:
		t.Fatalf("compression %q", comp)
	}
	return buf.Bytes()
}

// content returns n bytes, half random and half compressible.
func content(n int) []byte {
	b := make([]byte, n)
	rand.Read(b[:n/2])
	for i := n / 2; i < n; i++ {
		b[i] = byte("lancache "[i%9])
	}
	return b
}

func newItem(t testing.TB, name, comp string, size int) item {
	t.Helper()
	var h cache.Hash
	rand.Read(h[:])
	n := makeNAR(t, content(size))
	f := compress(t, comp, n)
	info := &cache.NarInfo{
		StorePath:   cache.StoreDir + "/" + h.String() + "-" + name,
		URL:         "nar/upstream-name.nar",
		Compression: comp,
		NarHash:     sha256.Sum256(n),
		NarSize:     uint64(len(n)),
		References:  []string{h.String() + "-" + name},
		Sigs:        []string{"test-1:AAAA"},
	}
	if comp != "none" {
		info.FileSize = uint64(len(f))
	}
	return item{info: info, file: f, nar: n}
}

func (it item) hash() cache.Hash {
	h, err := it.info.Hash()
	if err != nil {
		panic(err)
	}
	return h
}

func openCache(t testing.TB, dir string, max int64, inv *cache.Inventory) *Cache {
	t.Helper()
	c, err := Open(context.Background(), Config{Dir: dir, MaxSize: max, Inventory: inv})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// put writes it in chunks and commits it.
func put(t testing.TB, c *Cache, it item) {
	t.Helper()
	w, err := c.Begin(it.info)
	if err != nil {
		t.Fatalf("Begin %s: %v", it.info.StorePath, err)
	}
	for b := it.file; len(b) > 0; {
		n := min(len(b), 1000+mrand.IntN(9000))
		if _, err := w.Write(b[:n]); err != nil {
			t.Fatalf("Write: %v", err)
		}
		b = b[n:]
	}
	if err := w.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

func read(t testing.TB, c *Cache, it item, off, n int64) ([]byte, error) {
	t.Helper()
	var buf bytes.Buffer
	err := c.WriteNAR(context.Background(), &buf, it.info, off, n)
	return buf.Bytes(), err
}

func narFiles(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(dir, narDirName))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func TestCommitAndReopen(t *testing.T) {
	dir := t.TempDir()
	inv := cache.NewInventory()
	c := openCache(t, dir, 1<<30, inv)
	var items []item
	for _, comp := range []string{"none", "zstd", "xz"} {
		it := newItem(t, "pkg-"+comp, comp, 200_000)
		put(t, c, it)
		items = append(items, it)
	}
	check := func(c *Cache) {
		t.Helper()
		if c.Len() != len(items) {
			t.Fatalf("Len = %d, want %d", c.Len(), len(items))
		}
		for _, it := range items {
			h := it.hash()
			if !c.Has(h) || !inv.Has(h) {
				t.Fatalf("%s: Has=%v inventory=%v", h, c.Has(h), inv.Has(h))
			}
			info, err := c.NarInfo(context.Background(), h)
			if err != nil {
				t.Fatal(err)
			}
			if info.NarHash != it.info.NarHash || info.NarSize != it.info.NarSize || info.StorePath != it.info.StorePath ||
				cache.NormCompression(info.Compression) != it.info.Compression || info.FileSize != uint64(len(it.file)) ||
				!strings.HasPrefix(info.URL, "nar/"+h.String()+"-") || len(info.Sigs) != 1 {
				t.Fatalf("narinfo %+v does not describe %+v", info, it.info)
			}
			if cache.FileSize(info) != int64(len(it.file)) {
				t.Fatalf("FileSize %d, want %d", cache.FileSize(info), len(it.file))
			}
			fh := sha256.Sum256(it.file)
			if info.FileHash != "sha256:"+nixbase32.EncodeToString(fh[:]) {
				t.Fatalf("FileHash %s", info.FileHash)
			}
			// The file on disk is where the narinfo says, as Nix would read it.
			onDisk, err := os.ReadFile(filepath.Join(dir, info.URL))
			if err != nil || !bytes.Equal(onDisk, it.file) {
				t.Fatalf("file at %s differs (%v)", info.URL, err)
			}
			got, err := read(t, c, it, 0, -1)
			if err != nil || !bytes.Equal(got, it.file) {
				t.Fatalf("WriteNAR whole: %v, %d bytes, want %d", err, len(got), len(it.file))
			}
			got, err = read(t, c, it, 10, 100)
			if err != nil || !bytes.Equal(got, it.file[10:110]) {
				t.Fatalf("WriteNAR range: %v", err)
			}
			got, err = read(t, c, it, int64(len(it.file))-5, -1)
			if err != nil || !bytes.Equal(got, it.file[len(it.file)-5:]) {
				t.Fatalf("WriteNAR tail: %v", err)
			}
			if _, err := read(t, c, it, int64(len(it.file))-5, 6); err == nil {
				t.Fatal("range past the end accepted")
			}
			// The narinfo on disk parses to the same thing.
			f, err := os.Open(filepath.Join(dir, h.String()+".narinfo"))
			if err != nil {
				t.Fatal(err)
			}
			disk, err := cache.ParseNarInfo(f)
			f.Close()
			if err != nil || disk.URL != info.URL || disk.NarHash != info.NarHash {
				t.Fatalf("narinfo on disk: %v %+v", err, disk)
			}
		}
	}
	check(c)
	usage := c.Usage()
	if usage <= 0 {
		t.Fatalf("Usage = %d", usage)
	}
	ci, err := os.ReadFile(filepath.Join(dir, "nix-cache-info"))
	if err != nil || !strings.Contains(string(ci), "StoreDir: /nix/store\n") {
		t.Fatalf("nix-cache-info: %q %v", ci, err)
	}
	c.Close()

	inv = cache.NewInventory()
	c = openCache(t, dir, 1<<30, inv)
	check(c)
	if c.Usage() != usage {
		t.Fatalf("Usage after reopen %d, before %d", c.Usage(), usage)
	}
	// A path with a different compression or NAR is not this entry.
	other := *items[1].info
	other.Compression = "xz"
	if err := c.WriteNAR(context.Background(), io.Discard, &other, 0, -1); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("other compression: %v", err)
	}
	missing := newItem(t, "missing", "none", 10)
	if _, err := c.NarInfo(context.Background(), missing.hash()); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("NarInfo of missing path: %v", err)
	}
	if _, err := read(t, c, missing, 0, -1); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("WriteNAR of missing path: %v", err)
	}
}

func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	openCache(t, dir, 1<<20, nil)
	if c, err := Open(context.Background(), Config{Dir: dir}); err == nil {
		c.Close()
		t.Fatal("second Open of the same directory succeeded")
	}
}

func TestCrashLeftoversCleaned(t *testing.T) {
	dir := t.TempDir()
	c := openCache(t, dir, 1<<30, nil)
	good := newItem(t, "good", "zstd", 50_000)
	short := newItem(t, "short", "xz", 50_000)
	lost := newItem(t, "lost", "none", 50_000)
	put(t, c, good)
	put(t, c, short)
	put(t, c, lost)
	shortInfo, _ := c.NarInfo(context.Background(), short.hash())
	lostInfo, _ := c.NarInfo(context.Background(), lost.hash())
	// A write that was interrupted: partial file and a pending Writer.
	inflight := newItem(t, "inflight", "zstd", 50_000)
	w, err := c.Begin(inflight.info)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(inflight.file[:1000])
	c.Close()

	// What a crash can leave: a NAR whose narinfo was never written, a
	// narinfo temp file, a truncated NAR, a narinfo whose NAR is gone, an
	// evicted NAR still being read.
	orphan := filepath.Join(dir, "nar", "orphan-0000.nar.zst")
	os.WriteFile(orphan, []byte("orphan"), 0o644)
	os.WriteFile(filepath.Join(dir, ".tmp-x.narinfo-123"), []byte("StorePath: /nix"), 0o644)
	os.WriteFile(filepath.Join(dir, "nar", ".evicted-foo"), []byte("x"), 0o644)
	if err := os.Truncate(filepath.Join(dir, shortInfo.URL), 100); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, lostInfo.URL)); err != nil {
		t.Fatal(err)
	}
	// Unrelated files are left alone.
	os.WriteFile(filepath.Join(dir, "README"), []byte("mine"), 0o644)
	// A narinfo that does not parse.
	var bad cache.Hash
	bad[0] = 1
	os.WriteFile(filepath.Join(dir, bad.String()+".narinfo"), []byte("garbage"), 0o644)
	if partials := narFiles(t, dir); len(partials) < 4 {
		t.Fatalf("setup: nar/ has %v", partials)
	}

	inv := cache.NewInventory()
	c = openCache(t, dir, 1<<30, inv)
	if c.Len() != 1 || !c.Has(good.hash()) || inv.Len() != 1 {
		t.Fatalf("after reopen: Len=%d has good=%v inventory=%d", c.Len(), c.Has(good.hash()), inv.Len())
	}
	for _, it := range []item{short, lost, inflight} {
		if _, err := c.NarInfo(context.Background(), it.hash()); !errors.Is(err, cache.ErrNotFound) {
			t.Fatalf("%s served after crash: %v", it.info.StorePath, err)
		}
		if _, err := os.Stat(filepath.Join(dir, it.hash().String()+".narinfo")); !os.IsNotExist(err) {
			t.Fatalf("narinfo of %s still on disk: %v", it.info.StorePath, err)
		}
	}
	goodInfo, _ := c.NarInfo(context.Background(), good.hash())
	if files := narFiles(t, dir); len(files) != 1 || "nar/"+files[0] != goodInfo.URL {
		t.Fatalf("nar/ holds %v, want only %s", files, goodInfo.URL)
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp-x.narinfo-123")); !os.IsNotExist(err) {
		t.Fatal("temp narinfo not removed")
	}
	if _, err := os.Stat(filepath.Join(dir, bad.String()+".narinfo")); !os.IsNotExist(err) {
		t.Fatal("bad narinfo not removed")
	}
	if _, err := os.Stat(filepath.Join(dir, "README")); err != nil {
		t.Fatal("unrelated file removed")
	}
	// The interrupted path can be written again.
	put(t, c, inflight)
	if got, err := read(t, c, inflight, 0, -1); err != nil || !bytes.Equal(got, inflight.file) {
		t.Fatalf("rewrite after crash: %v", err)
	}
}

// fakeClock is a settable time source.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) Now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeClock) Add(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

func TestEvictionLRU(t *testing.T) {
	dir := t.TempDir()
	inv := cache.NewInventory()
	const size = 20_000
	items := make([]item, 8)
	for i := range items {
		items[i] = newItem(t, fmt.Sprintf("p%d", i), "none", size)
	}
	per := cost(int64(len(items[0].file)), 1024)
	max := 4*per + per/2
	c := openCache(t, dir, max, inv)
	clock := &fakeClock{t: time.Now()}
	c.now = clock.Now

	for i := 0; i < 4; i++ {
		put(t, c, items[i])
		clock.Add(2 * touchInterval)
	}
	if c.Len() != 4 {
		t.Fatalf("Len = %d, want 4", c.Len())
	}
	// Use p0 (narinfo) and p1 (NAR): p2 and p3 are now least recent.
	if _, err := c.NarInfo(context.Background(), items[0].hash()); err != nil {
		t.Fatal(err)
	}
	clock.Add(2 * touchInterval)
	if _, err := read(t, c, items[1], 0, -1); err != nil {
		t.Fatal(err)
	}
	clock.Add(2 * touchInterval)
	put(t, c, items[4])
	put(t, c, items[5])
	if u := c.Usage(); u > max {
		t.Fatalf("Usage %d > max %d", u, max)
	}
	want := map[int]bool{0: true, 1: true, 4: true, 5: true}
	for i := 0; i < 6; i++ {
		h := items[i].hash()
		if c.Has(h) != want[i] || inv.Has(h) != want[i] {
			t.Fatalf("p%d: Has=%v inventory=%v, want %v", i, c.Has(h), inv.Has(h), want[i])
		}
		_, err := os.Stat(filepath.Join(dir, h.String()+".narinfo"))
		if (err == nil) != want[i] {
			t.Fatalf("p%d: narinfo on disk: %v", i, err)
		}
	}
	if n := len(narFiles(t, dir)); n != 4 {
		t.Fatalf("%d NAR files on disk, want 4", n)
	}

	// Recency survives a restart: use p0, then p4; they are the two most
	// recently used when the cache reopens with room for two.
	clock.Add(2 * touchInterval)
	if _, err := c.NarInfo(context.Background(), items[0].hash()); err != nil {
		t.Fatal(err)
	}
	clock.Add(2 * touchInterval)
	if _, err := c.NarInfo(context.Background(), items[4].hash()); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// Reopen with room for two: the two most recently used stay.
	c = openCache(t, dir, 2*per+per/2, cache.NewInventory())
	if c.Len() != 2 || !c.Has(items[0].hash()) || !c.Has(items[4].hash()) {
		t.Fatalf("after reopen with a smaller bound: Len=%d p0=%v p4=%v", c.Len(), c.Has(items[0].hash()), c.Has(items[4].hash()))
	}
	if u := c.Usage(); u > 2*per+per/2 {
		t.Fatalf("Usage %d over the bound", u)
	}
	if n := len(narFiles(t, dir)); n != 2 {
		t.Fatalf("%d NAR files on disk, want 2", n)
	}
}

// gate is a writer that blocks every Write until released.
type gate struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

func newGate() *gate { return &gate{started: make(chan struct{}), release: make(chan struct{})} }

func (g *gate) Write(p []byte) (int, error) {
	g.once.Do(func() { close(g.started) })
	<-g.release
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.buf.Write(p)
}

func TestEvictionDuringReadDefersDeletion(t *testing.T) {
	dir := t.TempDir()
	a := newItem(t, "a", "zstd", 300_000)
	b := newItem(t, "b", "zstd", 300_000)
	c := openCache(t, dir, cost(int64(len(a.file)), 1024)+1024, nil)
	put(t, c, a)
	aInfo, _ := c.NarInfo(context.Background(), a.hash())

	g := newGate()
	done := make(chan error, 1)
	go func() { done <- c.WriteNAR(context.Background(), g, a.info, 0, -1) }()
	<-g.started

	put(t, c, b) // evicts a, which is being read
	if c.Has(a.hash()) || !c.Has(b.hash()) {
		t.Fatalf("a=%v b=%v after eviction", c.Has(a.hash()), c.Has(b.hash()))
	}
	if _, err := os.Stat(filepath.Join(dir, aInfo.URL)); !os.IsNotExist(err) {
		t.Fatalf("evicted NAR still under its name: %v", err)
	}
	var evicted []string
	for _, n := range narFiles(t, dir) {
		if strings.HasPrefix(n, evictedPrefix) {
			evicted = append(evicted, n)
		}
	}
	if len(evicted) != 1 {
		t.Fatalf("nar/ holds %v: want the read file kept aside", narFiles(t, dir))
	}
	// A new reader does not find it.
	if _, err := read(t, c, a, 0, -1); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("evicted entry served to a new reader: %v", err)
	}
	close(g.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g.buf.Bytes(), a.file) {
		t.Fatal("reader of an evicted entry got different bytes")
	}
	if files := narFiles(t, dir); len(files) != 1 || strings.HasPrefix(files[0], ".") {
		t.Fatalf("after the read nar/ holds %v", files)
	}
}

func TestVerifyFailureNeverCommits(t *testing.T) {
	for _, comp := range []string{"none", "zstd", "xz"} {
		t.Run(comp, func(t *testing.T) {
			dir := t.TempDir()
			inv := cache.NewInventory()
			c := openCache(t, dir, 1<<30, inv)
			it := newItem(t, "bad", comp, 100_000)
			it.info.NarHash[0] ^= 1
			w, err := c.Begin(it.info)
			if err != nil {
				t.Fatal(err)
			}
			follower := make(chan error, 1)
			go func() {
				follower <- c.WriteNAR(context.Background(), io.Discard, it.info, 0, -1)
			}()
			if _, err := w.Write(it.file); err != nil {
				t.Fatal(err)
			}
			err = w.Commit()
			if !errors.Is(err, cache.ErrHashMismatch) {
				t.Fatalf("Commit: %v, want ErrHashMismatch", err)
			}
			if ferr := <-follower; ferr == nil || (!errors.Is(ferr, cache.ErrHashMismatch) && !errors.Is(ferr, cache.ErrNotFound)) {
				t.Fatalf("follower: %v", ferr)
			}
			if c.Has(it.hash()) || inv.Len() != 0 || c.Len() != 0 || c.Usage() != 0 {
				t.Fatal("bad NAR committed")
			}
			if files := narFiles(t, dir); len(files) != 0 {
				t.Fatalf("nar/ holds %v", files)
			}
			if _, err := os.Stat(filepath.Join(dir, it.hash().String()+".narinfo")); !os.IsNotExist(err) {
				t.Fatal("narinfo written for a bad NAR")
			}
			// The correct bytes can be written afterwards.
			it.info.NarHash[0] ^= 1
			put(t, c, it)
		})
	}
}

func TestTooManyBytes(t *testing.T) {
	c := openCache(t, t.TempDir(), 1<<30, nil)
	it := newItem(t, "long", "none", 1000)
	w, err := c.Begin(it.info)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(it.file)
	if _, err := w.Write([]byte("x")); !errors.Is(err, cache.ErrHashMismatch) {
		t.Fatalf("extra byte: %v", err)
	}
	if err := w.Commit(); err == nil {
		t.Fatal("Commit after failed Write succeeded")
	}
	if c.Has(it.hash()) {
		t.Fatal("committed")
	}
}

func TestFollowInProgressWrite(t *testing.T) {
	dir := t.TempDir()
	c := openCache(t, dir, 1<<30, nil)
	it := newItem(t, "big", "zstd", 2_000_000)
	w, err := c.Begin(it.info)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		buf *syncbuf.Buffer
		off int64
		n   int64
		err chan error
	}
	var rs []*result
	for i := 0; i < 6; i++ {
		r := &result{buf: &syncbuf.Buffer{}, n: -1, err: make(chan error, 1)}
		if i == 5 {
			r.off, r.n = 1000, int64(len(it.file))/2
		}
		rs = append(rs, r)
		go func() { r.err <- c.WriteNAR(context.Background(), r.buf, it.info, r.off, r.n) }()
	}
	half := len(it.file) / 2
	if _, err := w.Write(it.file[:half]); err != nil {
		t.Fatal(err)
	}
	// Followers get the first half while the write is still open, but for
	// the last byte written, which waits for the verdict.
	deadline := time.Now().Add(10 * time.Second)
	for _, r := range rs[:5] {
		for r.buf.Len() < half-1 {
			if time.Now().After(deadline) {
				t.Fatalf("follower has %d of %d written bytes", r.buf.Len(), half)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if c.Has(it.hash()) {
		t.Fatal("Has before Commit")
	}
	if _, err := c.NarInfo(context.Background(), it.hash()); !errors.Is(err, cache.ErrNotFound) {
		t.Fatal("narinfo served before Commit")
	}
	if _, err := w.Write(it.file[half:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		if err := <-r.err; err != nil {
			t.Fatalf("follower %d: %v", i, err)
		}
		want := it.file
		if r.n >= 0 {
			want = it.file[r.off : r.off+r.n]
		}
		if !bytes.Equal(r.buf.Bytes(), want) {
			t.Fatalf("follower %d got %d bytes, want %d (same bytes)", i, r.buf.Len(), len(want))
		}
	}
	// A follower that gives up leaves the write alone.
	it2 := newItem(t, "other", "none", 10_000)
	w2, err := c.Begin(it2.info)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := c.WriteNAR(ctx, io.Discard, it2.info, 0, -1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("follower with a deadline: %v", err)
	}
	w2.Write(it2.file)
	if err := w2.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestAbortReachesFollowers(t *testing.T) {
	c := openCache(t, t.TempDir(), 1<<30, nil)
	it := newItem(t, "gone", "xz", 10_000)
	w, err := c.Begin(it.info)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(it.file[:100])
	errc := make(chan error, 1)
	go func() { errc <- c.WriteNAR(context.Background(), io.Discard, it.info, 0, -1) }()
	cause := errors.New("upstream went away")
	time.Sleep(10 * time.Millisecond)
	w.Abort(cause)
	if err := <-errc; !errors.Is(err, cause) && !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("follower: %v", err)
	}
	if files := narFiles(t, c.Dir()); len(files) != 0 {
		t.Fatalf("nar/ holds %v", files)
	}
}

func TestDiskFull(t *testing.T) {
	dir := t.TempDir()
	c := openCache(t, dir, 1<<30, nil)
	keep := newItem(t, "keep", "zstd", 10_000)
	put(t, c, keep)
	it := newItem(t, "full", "zstd", 100_000)
	w, err := c.Begin(it.info)
	if err != nil {
		t.Fatal(err)
	}
	writes := 0
	c.writeFault = func() error {
		writes++
		if writes == 3 {
			return &os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}
		}
		return nil
	}
	var werr error
	for b := it.file; len(b) > 0 && werr == nil; {
		n := min(len(b), 4096)
		_, werr = w.Write(b[:n])
		b = b[n:]
	}
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("Write: %v, want ENOSPC", werr)
	}
	if err := w.Commit(); err == nil {
		t.Fatal("Commit after disk full succeeded")
	}
	c.writeFault = nil
	if c.Has(it.hash()) {
		t.Fatal("committed")
	}
	if files := narFiles(t, dir); len(files) != 1 {
		t.Fatalf("nar/ holds %v", files)
	}
	if got, err := read(t, c, keep, 0, -1); err != nil || !bytes.Equal(got, keep.file) {
		t.Fatalf("cache stopped serving after disk full: %v", err)
	}
}

func TestBeginConflicts(t *testing.T) {
	c := openCache(t, t.TempDir(), 1<<20, nil)
	it := newItem(t, "x", "none", 1000)
	w, err := c.Begin(it.info)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Begin(it.info); !errors.Is(err, ErrBusy) {
		t.Fatalf("second Begin: %v", err)
	}
	w.Write(it.file)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Begin(it.info); !errors.Is(err, ErrExists) {
		t.Fatalf("Begin after commit: %v", err)
	}
	big := newItem(t, "big", "none", 10)
	big.info.NarSize = 2 << 20
	if _, err := c.Begin(big.info); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Begin too large: %v", err)
	}
	bad := *it.info
	bad.Compression = "lz4"
	bad.StorePath = cache.StoreDir + "/" + newItem(t, "y", "none", 1).hash().String() + "-y"
	if _, err := c.Begin(&bad); !errors.Is(err, cache.ErrUnsupportedCompression) {
		t.Fatalf("Begin lz4: %v", err)
	}
	c.Close()
	if _, err := c.Begin(newItem(t, "z", "none", 1).info); !errors.Is(err, ErrClosed) {
		t.Fatalf("Begin after Close: %v", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	dir := t.TempDir()
	items := make([]item, 16)
	for i := range items {
		items[i] = newItem(t, fmt.Sprintf("c%d", i), []string{"none", "zstd"}[i%2], 20_000+i*1000)
	}
	max := int64(6 * 32 << 10)
	c := openCache(t, dir, max, cache.NewInventory())
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Go(func() {
			for i := 0; i < 40; i++ {
				it := items[(g*7+i)%len(items)]
				if w, err := c.Begin(it.info); err == nil {
					w.Write(it.file)
					if err := w.Commit(); err != nil {
						t.Error(err)
					}
				}
				var buf bytes.Buffer
				err := c.WriteNAR(context.Background(), &buf, it.info, 0, -1)
				if err == nil && !bytes.Equal(buf.Bytes(), it.file) {
					t.Error("wrong bytes")
				}
				if u := c.Usage(); u > max {
					t.Errorf("Usage %d > %d", u, max)
				}
			}
		})
	}
	wg.Wait()
	c.Close()
	c = openCache(t, dir, max, nil)
	if files := narFiles(t, dir); len(files) != c.Len() {
		t.Fatalf("%d NAR files for %d entries", len(files), c.Len())
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"200GiB", 200 << 30, true},
		{"50GB", 50e9, true},
		{"10 GiB", 10 << 30, true},
		{"1.5TiB", 3 << 39, true},
		{"512MiB", 512 << 20, true},
		{"4KiB", 4096, true},
		{"1TB", 1e12, true},
		{"1048576", 1 << 20, true},
		{"0", 0, false},
		{"", 0, false},
		{"lots", 0, false},
		{"-1GiB", 0, false},
		{"100EiB", 0, false},
	} {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// BenchmarkTouchPersist measures what persisting recency costs per update
// (an mtime change, no fsync). Updates are throttled to one per entry per
// touchInterval, so this is the cost of at most one hit a minute per path.
func BenchmarkTouchPersist(b *testing.B) {
	c := openCache(b, b.TempDir(), 1<<30, nil)
	it := newItem(b, "t", "none", 1000)
	put(b, c, it)
	path := filepath.Join(c.Dir(), it.hash().String()+".narinfo")
	for b.Loop() {
		c.persistTouch(path)
	}
}

// BenchmarkNarInfoHit measures a narinfo lookup from memory.
func BenchmarkNarInfoHit(b *testing.B) {
	c := openCache(b, b.TempDir(), 1<<30, nil)
	it := newItem(b, "t", "none", 1000)
	put(b, c, it)
	h := it.hash()
	for b.Loop() {
		if _, err := c.NarInfo(context.Background(), h); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteNARHit measures serving a committed 8 MiB file.
func BenchmarkWriteNARHit(b *testing.B) {
	c := openCache(b, b.TempDir(), 1<<30, nil)
	it := newItem(b, "t", "none", 8<<20)
	put(b, c, it)
	b.SetBytes(int64(len(it.file)))
	for b.Loop() {
		if err := c.WriteNAR(context.Background(), io.Discard, it.info, 0, -1); err != nil {
			b.Fatal(err)
		}
	}
}

// NarInfoByFile finds a committed entry by the sha256 of its file (what a
// NAR URL in Nix's layout names), after a reopen too, and no longer once the
// entry is evicted; a pending entry is not found.
func TestNarInfoByFile(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	a, b := newItem(t, "a", "zstd", 100_000), newItem(t, "b", "none", 100_000)
	c := openCache(t, dir, 1<<30, nil)
	put(t, c, a)
	put(t, c, b)
	p := newItem(t, "pending", "xz", 10_000)
	w, err := c.Begin(p.info)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(p.file)
	find := func(c *Cache, it item) (*cache.NarInfo, error) {
		return c.NarInfoByFile(ctx, sha256.Sum256(it.file))
	}
	check := func(c *Cache) {
		t.Helper()
		for _, it := range []item{a, b} {
			info, err := find(c, it)
			if err != nil {
				t.Fatalf("%s: %v", it.info.StorePath, err)
			}
			if info.StorePath != it.info.StorePath || info.NarHash != it.info.NarHash {
				t.Fatalf("found %s for the file of %s", info.StorePath, it.info.StorePath)
			}
		}
		if _, err := c.NarInfoByFile(ctx, a.info.NarHash); !errors.Is(err, cache.ErrNotFound) {
			t.Fatalf("a compressed entry found by its NarHash: %v", err)
		}
	}
	check(c)
	if _, err := find(c, p); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("pending entry found by its file: %v", err)
	}
	w.Abort(nil)
	c.Close()

	c = openCache(t, dir, 1<<30, nil)
	check(c)
	// Room for b only: a, the least recently used, goes.
	c.Close()
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(dir, a.hash().String()+narinfoSuffix), old, old); err != nil {
		t.Fatal(err)
	}
	c = openCache(t, dir, int64(len(b.file))+8192, nil)
	if _, err := find(c, a); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("evicted entry found by its file: %v", err)
	}
	if _, err := find(c, b); err != nil {
		t.Fatalf("kept entry: %v", err)
	}
}
