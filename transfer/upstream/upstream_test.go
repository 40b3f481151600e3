package upstream

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/cache/narcache"
	"github.com/lancache/lancache/internal/syncbuf"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/ulikunitz/xz"
)

// binCache is a generated Nix binary cache served over loopback HTTP. It
// counts requests and body bytes sent per URL path, and lets a test change
// how a path is answered.
type binCache struct {
	t   testing.TB
	srv *httptest.Server
	sk  signature.SecretKey
	pk  signature.PublicKey

	mu     sync.Mutex
	files  map[string][]byte // URL path -> body
	hooks  map[string]func(w http.ResponseWriter, r *http.Request)
	reqs   map[string]int
	sent   map[string]int64
	stall  map[string]chan struct{} // NAR paths: send half, wait for the channel
	halfOK map[string]chan struct{} // closed when the first half of a stalled path is sent
}

func newBinCache(t testing.TB) *binCache {
	t.Helper()
	sk, pk, err := signature.GenerateKeypair("upstream.test-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	bc := &binCache{
		t: t, sk: sk, pk: pk,
		files:  map[string][]byte{"/nix-cache-info": []byte("StoreDir: /nix/store\n")},
		hooks:  map[string]func(http.ResponseWriter, *http.Request){},
		reqs:   map[string]int{},
		sent:   map[string]int64{},
		stall:  map[string]chan struct{}{},
		halfOK: map[string]chan struct{}{},
	}
	bc.srv = httptest.NewServer(http.HandlerFunc(bc.serve))
	t.Cleanup(bc.srv.Close)
	return bc
}

func (bc *binCache) serve(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	bc.mu.Lock()
	bc.reqs[p]++
	hook, body, ok := bc.hooks[p], bc.files[p], false
	if body != nil {
		ok = true
	}
	stall, halfOK := bc.stall[p], bc.halfOK[p]
	bc.mu.Unlock()
	if hook != nil {
		hook(w, r)
		return
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if stall != nil {
		half := len(body) / 2
		bc.write(w, p, body[:half])
		w.(http.Flusher).Flush()
		close(halfOK)
		select {
		case <-stall:
		case <-r.Context().Done():
			return
		}
		body = body[half:]
	}
	// Several writes so that followers see a growing file.
	for len(body) > 0 {
		n := min(len(body), 64<<10)
		if !bc.write(w, p, body[:n]) {
			return
		}
		body = body[n:]
	}
}

func (bc *binCache) write(w http.ResponseWriter, p string, b []byte) bool {
	n, err := w.Write(b)
	bc.mu.Lock()
	bc.sent[p] += int64(n)
	bc.mu.Unlock()
	return err == nil
}

func (bc *binCache) requests(p string) int {
	bc.mu.Lock()
	defer bc.mu.Unlock()
	return bc.reqs[p]
}

func (bc *binCache) bytesSent(p string) int64 {
	bc.mu.Lock()
	defer bc.mu.Unlock()
	return bc.sent[p]
}

func (bc *binCache) hook(p string, f func(http.ResponseWriter, *http.Request)) {
	bc.mu.Lock()
	defer bc.mu.Unlock()
	bc.hooks[p] = f
}

// hookHeld makes requests for p wait until release is closed, then get
// p's file.
func (bc *binCache) hookHeld(p string, release <-chan struct{}) {
	bc.mu.Lock()
	body := bc.files[p]
	bc.mu.Unlock()
	bc.hook(p, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Write(body)
	})
}

// path is one generated store path of a binCache.
type path struct {
	info *cache.NarInfo
	hash cache.Hash
	nar  []byte
	file []byte
}

func (p path) narinfoURL() string { return "/" + p.hash.String() + ".narinfo" }
func (p path) narURL() string     { return "/" + p.info.URL }

type addOpt func(*cache.NarInfo, *[]byte)

// signedBy signs with another key than the cache's trusted one.
func signedBy(sk signature.SecretKey) addOpt {
	return func(info *cache.NarInfo, _ *[]byte) {
		sig, err := sk.Sign(nil, info.Fingerprint())
		if err != nil {
			panic(err)
		}
		info.Sigs = []string{sig.String()}
	}
}

func unsigned(info *cache.NarInfo, _ *[]byte) { info.Sigs = nil }

// corrupt serves NAR bytes that do not match the signed NarHash.
func corrupt(info *cache.NarInfo, nar *[]byte) {
	b := bytes.Clone(*nar)
	b[len(b)-20] ^= 0xff
	*nar = b
}

func (bc *binCache) add(name, comp string, size int, opts ...addOpt) path {
	t := bc.t
	t.Helper()
	var h cache.Hash
	rand.Read(h[:])
	n := makeNAR(t, content(size))
	info := &cache.NarInfo{
		StorePath:   cache.StoreDir + "/" + h.String() + "-" + name,
		Compression: comp,
		NarHash:     sha256.Sum256(n),
		NarSize:     uint64(len(n)),
		References:  []string{h.String() + "-" + name},
	}
	sig, err := bc.sk.Sign(nil, info.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	info.Sigs = []string{sig.String()}
	served := n
	for _, o := range opts {
		o(info, &served)
	}
	f := compress(t, comp, served)
	fh := sha256.Sum256(f)
	ext, _ := cache.CompressionExt(comp)
	info.URL = "nar/" + nixbase32.EncodeToString(fh[:]) + ".nar" + ext
	info.FileHash = "sha256:" + nixbase32.EncodeToString(fh[:])
	info.FileSize = uint64(len(f))
	text, _ := info.MarshalText()
	p := path{info: info, hash: h, nar: n, file: f}
	bc.mu.Lock()
	bc.files[p.narinfoURL()] = text
	bc.files[p.narURL()] = f
	bc.mu.Unlock()
	return p
}

// stallHalf makes the NAR of p stop after half its bytes until the returned
// release func is called; halfSent is closed once the half is out.
func (bc *binCache) stallHalf(p path) (release func(), halfSent <-chan struct{}) {
	ch, half := make(chan struct{}), make(chan struct{})
	bc.mu.Lock()
	bc.stall[p.narURL()] = ch
	bc.halfOK[p.narURL()] = half
	bc.mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	bc.t.Cleanup(release)
	return release, half
}

func makeNAR(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	nw, err := nar.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	nw.Write(data)
	if err := nw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// content returns n bytes that compress about as well as typical binaries.
func content(n int) []byte {
	b := make([]byte, n)
	rand.Read(b[:n/3])
	for i := n / 3; i < n; i++ {
		const pat = "ELF lancache nix store path \x00\x00\x01\x02"
		b[i] = pat[i%len(pat)] + byte(i>>12)
	}
	return b
}

func compress(t testing.TB, comp string, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	switch comp {
	case "none":
		return bytes.Clone(b)
	case "zstd":
		zw, err := zstd.NewWriter(&buf)
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

type fixture struct {
	bc    *binCache
	store *narcache.Cache
	up    *Upstream
}

func newFixture(t *testing.T, withStore bool, tweak func(*Config)) *fixture {
	t.Helper()
	checkGoroutines(t)
	bc := newBinCache(t)
	f := &fixture{bc: bc}
	if withStore {
		s, err := narcache.Open(context.Background(), narcache.Config{Dir: t.TempDir(), MaxSize: 1 << 30})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		f.store = s
	}
	client := &http.Client{Transport: &http.Transport{}}
	cfg := Config{
		URLs:           []string{bc.srv.URL},
		TrustedKeys:    []signature.PublicKey{bc.pk},
		Client:         client,
		NarInfoTimeout: 2 * time.Second,
		NARIdleTimeout: 2 * time.Second,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	up, err := New(cfg, f.store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		up.Close()
		client.CloseIdleConnections()
	})
	f.up = up
	return f
}

// checkGoroutines fails the test if it leaves goroutines behind. Cleanups
// run last-registered first, so this one runs after everything else closed.
func checkGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("%d goroutines left behind, %d before:\n%s", runtime.NumGoroutine(), before, buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func fetch(t *testing.T, up *Upstream, info *cache.NarInfo, off, n int64) ([]byte, error) {
	t.Helper()
	var buf bytes.Buffer
	err := up.WriteNAR(context.Background(), &buf, info, off, n)
	return buf.Bytes(), err
}

func TestPullThrough(t *testing.T) {
	for _, comp := range []string{"none", "zstd", "xz"} {
		t.Run(comp, func(t *testing.T) {
			f := newFixture(t, true, nil)
			p := f.bc.add("hello-"+comp, comp, 300_000)
			info, err := f.up.NarInfo(context.Background(), p.hash)
			if err != nil {
				t.Fatal(err)
			}
			if info.NarHash != p.info.NarHash || info.URL != p.info.URL || info.Compression != comp {
				t.Fatalf("narinfo %+v", info)
			}
			got, err := fetch(t, f.up, info, 0, -1)
			if err != nil || !bytes.Equal(got, p.file) {
				t.Fatalf("WriteNAR: %v (%d bytes, want %d)", err, len(got), len(p.file))
			}
			if !f.store.Has(p.hash) {
				t.Fatal("not committed to the NAR cache")
			}
			// Served from the cache from now on, ranges included.
			got, err = fetch(t, f.up, info, 100, 1000)
			if err != nil || !bytes.Equal(got, p.file[100:1100]) {
				t.Fatalf("range from cache: %v", err)
			}
			local, _ := f.store.NarInfo(context.Background(), p.hash)
			got, err = fetch(t, f.up, local, 0, -1)
			if err != nil || !bytes.Equal(got, p.file) {
				t.Fatalf("WriteNAR with the cache's narinfo: %v", err)
			}
			if n := f.bc.requests(p.narURL()); n != 1 {
				t.Fatalf("%d upstream NAR requests, want 1", n)
			}
			if n := f.bc.requests(p.narinfoURL()); n != 1 {
				t.Fatalf("%d upstream narinfo requests, want 1", n)
			}
			st := f.up.Stats()
			if st.NARBytes != uint64(len(p.file)) || st.NARDownloads != 1 || st.NarInfoFetches != 1 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestCoalescedDownload(t *testing.T) {
	for _, comp := range []string{"zstd", "xz", "none"} {
		t.Run(comp, func(t *testing.T) {
			f := newFixture(t, true, nil)
			p := f.bc.add("big-"+comp, comp, 3<<20)
			release, halfSent := f.bc.stallHalf(p)

			// Eight requesters ask for the narinfo at once: one request. The
			// upstream holds its answer until all eight are waiting for it,
			// so none is answered from the positive cache instead.
			const n = 8
			var waiting atomic.Int32
			f.up.onWait = func() { waiting.Add(1) }
			answer := make(chan struct{})
			f.bc.hookHeld(p.narinfoURL(), answer)
			infos := make([]*cache.NarInfo, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					info, err := f.up.NarInfo(context.Background(), p.hash)
					if err != nil {
						t.Error(err)
					}
					infos[i] = info
				})
			}
			for deadline := time.Now().Add(10 * time.Second); waiting.Load() != n; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d lookups waiting for the narinfo", waiting.Load(), n)
				}
			}
			close(answer)
			wg.Wait()
			if t.Failed() {
				return
			}
			if r := f.bc.requests(p.narinfoURL()); r != 1 {
				t.Fatalf("%d narinfo requests upstream, want 1", r)
			}

			outs := make([]*syncbuf.Buffer, n)
			errs := make([]error, n)
			for i := range n {
				outs[i] = &syncbuf.Buffer{}
				wg.Go(func() { errs[i] = f.up.WriteNAR(context.Background(), outs[i], infos[i], 0, -1) })
			}
			// Every requester streams the first half while the upstream is
			// still holding back the second (but for the last byte written,
			// which waits for the NarHash verdict).
			<-halfSent
			half := len(p.file) / 2
			deadline := time.Now().Add(10 * time.Second)
			for i, o := range outs {
				for o.Len() < half-1 {
					if time.Now().After(deadline) {
						t.Fatalf("requester %d has %d bytes of the %d sent so far", i, o.Len(), half)
					}
					time.Sleep(time.Millisecond)
				}
			}
			release()
			wg.Wait()
			for i := range n {
				if errs[i] != nil {
					t.Fatalf("requester %d: %v", i, errs[i])
				}
				if !bytes.Equal(outs[i].Bytes(), p.file) {
					t.Fatalf("requester %d got different bytes", i)
				}
			}
			if r := f.bc.requests(p.narURL()); r != 1 {
				t.Fatalf("%d NAR requests upstream, want 1", r)
			}
			if s := f.bc.bytesSent(p.narURL()); s != int64(len(p.file)) {
				t.Fatalf("upstream sent %d bytes, file has %d", s, len(p.file))
			}
			if !f.store.Has(p.hash) {
				t.Fatal("not committed")
			}
		})
	}
}

func TestRequesterLeavingDoesNotCancelDownload(t *testing.T) {
	f := newFixture(t, true, nil)
	p := f.bc.add("leave", "zstd", 2<<20)
	release, halfSent := f.bc.stallHalf(p)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- f.up.WriteNAR(ctx, io.Discard, p.info, 0, -1) }()
	<-halfSent
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled requester: %v", err)
	}
	// A second requester joins the same download after the first left.
	var buf bytes.Buffer
	errc2 := make(chan error, 1)
	go func() { errc2 <- f.up.WriteNAR(context.Background(), &buf, p.info, 0, -1) }()
	time.Sleep(20 * time.Millisecond)
	release()
	if err := <-errc2; err != nil || !bytes.Equal(buf.Bytes(), p.file) {
		t.Fatalf("second requester: %v", err)
	}
	if r := f.bc.requests(p.narURL()); r != 1 {
		t.Fatalf("%d NAR requests upstream, want 1", r)
	}
	if !f.store.Has(p.hash) {
		t.Fatal("download was not finished and committed")
	}
}

func TestUntrustedRefused(t *testing.T) {
	f := newFixture(t, true, nil)
	other, _, err := signature.GenerateKeypair("evil-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// Same key name as the trusted one, different key.
	sameName, _, _ := signature.GenerateKeypair("upstream.test-1", rand.Reader)
	for _, p := range []path{
		f.bc.add("untrusted", "zstd", 1000, signedBy(other)),
		f.bc.add("forged", "zstd", 1000, signedBy(sameName)),
		f.bc.add("unsigned", "zstd", 1000, unsigned),
	} {
		if _, err := f.up.NarInfo(context.Background(), p.hash); !errors.Is(err, cache.ErrNotFound) {
			t.Fatalf("%s: %v, want ErrNotFound", p.info.StorePath, err)
		}
		if err := f.up.WriteNAR(context.Background(), io.Discard, p.info, 0, -1); !errors.Is(err, cache.ErrNotFound) {
			t.Fatalf("%s NAR: %v, want ErrNotFound", p.info.StorePath, err)
		}
		if f.bc.requests(p.narURL()) != 0 {
			t.Fatal("NAR of an untrusted narinfo was downloaded")
		}
	}
	if st := f.up.Stats(); st.NarInfoUntrusted != 3 || st.NarInfoHits != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMismatchNeverCommitted(t *testing.T) {
	for _, withStore := range []bool{true, false} {
		for _, comp := range []string{"zstd", "xz", "none"} {
			t.Run(fmt.Sprintf("%s/store=%v", comp, withStore), func(t *testing.T) {
				f := newFixture(t, withStore, nil)
				p := f.bc.add("bad", comp, 200_000, corrupt)
				info, err := f.up.NarInfo(context.Background(), p.hash)
				if err != nil {
					t.Fatal(err)
				}
				var wg sync.WaitGroup
				for range 3 {
					wg.Go(func() {
						if err := f.up.WriteNAR(context.Background(), io.Discard, info, 0, -1); !errors.Is(err, cache.ErrHashMismatch) {
							t.Errorf("WriteNAR: %v, want ErrHashMismatch", err)
						}
					})
				}
				wg.Wait()
				if f.store != nil {
					if f.store.Has(p.hash) || f.store.Len() != 0 {
						t.Fatal("bad NAR committed")
					}
					des, _ := os.ReadDir(filepath.Join(f.store.Dir(), "nar"))
					if len(des) != 0 {
						t.Fatalf("nar/ holds %d files", len(des))
					}
				}
				if st := f.up.Stats(); st.VerifyFailures == 0 {
					t.Fatalf("stats %+v", st)
				}
			})
		}
	}
}

func TestNoStoreStreamsDirectly(t *testing.T) {
	f := newFixture(t, false, nil)
	p := f.bc.add("direct", "xz", 100_000)
	got, err := fetch(t, f.up, p.info, 0, -1)
	if err != nil || !bytes.Equal(got, p.file) {
		t.Fatalf("direct: %v", err)
	}
	got, err = fetch(t, f.up, p.info, 50, 500)
	if err != nil || !bytes.Equal(got, p.file[50:550]) {
		t.Fatalf("direct range: %v", err)
	}
	if _, err := fetch(t, f.up, p.info, int64(len(p.file))-1, 2); err == nil {
		t.Fatal("range past the end accepted")
	}
}

func TestTooLargeForStoreStreamsDirectly(t *testing.T) {
	checkGoroutines(t)
	bc := newBinCache(t)
	store, err := narcache.Open(context.Background(), narcache.Config{Dir: t.TempDir(), MaxSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	up, err := New(Config{URLs: []string{bc.srv.URL}, TrustedKeys: []signature.PublicKey{bc.pk}, Client: client}, store)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	p := bc.add("huge", "none", 200_000)
	got, err := fetch(t, up, p.info, 0, -1)
	if err != nil || !bytes.Equal(got, p.file) {
		t.Fatalf("too large for the cache: %v", err)
	}
	if store.Has(p.hash) {
		t.Fatal("committed a file larger than the cache")
	}
}

// A download whose Commit fails for a local reason (here the narinfo cannot
// be written: a non-empty directory has its name, which even root cannot
// rename over) is a local write error like a full disk: later requests
// stream the path directly instead of downloading it into the cache again
// and failing the same way.
func TestCommitFailureStreamsDirectly(t *testing.T) {
	f := newFixture(t, true, nil)
	p := f.bc.add("commit-fails", "zstd", 200_000)
	if err := os.MkdirAll(filepath.Join(f.store.Dir(), p.hash.String()+".narinfo", "obstacle"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The first request follows the download and may get its error.
	fetch(t, f.up, p.info, 0, -1)
	for i := range 2 {
		got, err := fetch(t, f.up, p.info, 0, -1)
		if err != nil || !bytes.Equal(got, p.file) {
			t.Fatalf("request %d after the failed commit: %v", i+2, err)
		}
	}
	if f.store.Has(p.hash) {
		t.Fatal("committed")
	}
	if st := f.up.Stats(); st.NARDownloads > 3 {
		// One into the cache, then direct streams only.
		t.Fatalf("%d NAR downloads for 3 requests: the cache was tried again", st.NARDownloads)
	}
	f.up.mu.Lock()
	_, direct := f.up.uncacheable[p.hash]
	f.up.mu.Unlock()
	if !direct {
		t.Fatal("path not marked for direct streaming")
	}
}

// FileSize is optional in a narinfo: a compressed NAR without it is pulled
// through (into the cache, or directly) and verified all the same.
func TestNarInfoWithoutFileSize(t *testing.T) {
	for _, withStore := range []bool{true, false} {
		t.Run(fmt.Sprintf("store=%v", withStore), func(t *testing.T) {
			f := newFixture(t, withStore, nil)
			p := f.bc.add("no-filesize", "xz", 200_000)
			stripped := *p.info
			stripped.FileSize = 0
			text, _ := stripped.MarshalText()
			f.bc.mu.Lock()
			f.bc.files[p.narinfoURL()] = text
			f.bc.mu.Unlock()
			info, err := f.up.NarInfo(context.Background(), p.hash)
			if err != nil || info.FileSize != 0 {
				t.Fatalf("narinfo: %v, FileSize %d", err, info.FileSize)
			}
			got, err := fetch(t, f.up, info, 0, -1)
			if err != nil || !bytes.Equal(got, p.file) {
				t.Fatalf("WriteNAR: %v (%d bytes, want %d)", err, len(got), len(p.file))
			}
			if f.store != nil {
				local, err := f.store.NarInfo(context.Background(), p.hash)
				if err != nil || local.FileSize != uint64(len(p.file)) {
					t.Fatalf("NAR cache's narinfo: %v, FileSize %d", err, local.FileSize)
				}
			}
		})
	}
}

func TestUpstreamFailuresBecomeNotFound(t *testing.T) {
	f := newFixture(t, true, func(c *Config) {
		c.NarInfoTimeout = 200 * time.Millisecond
		c.DownBackoff = time.Hour
	})
	p500 := f.bc.add("e500", "zstd", 1000)
	f.bc.hook(p500.narinfoURL(), func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) })
	start := time.Now()
	if _, err := f.up.NarInfo(context.Background(), p500.hash); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("500: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("500 took %v", d)
	}
	// The upstream is now skipped: the next lookup does not ask it.
	pOK := f.bc.add("fine", "zstd", 1000)
	start = time.Now()
	if _, err := f.up.NarInfo(context.Background(), pOK.hash); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("lookup while upstream is down: %v", err)
	}
	if d := time.Since(start); d > 50*time.Millisecond || f.bc.requests(pOK.narinfoURL()) != 0 {
		t.Fatalf("down upstream asked anyway (%v, %d requests)", d, f.bc.requests(pOK.narinfoURL()))
	}
	// Errors are not remembered as misses: once it is back, it is asked.
	f.up.ups[0].downUntil.Store(0)
	if _, err := f.up.NarInfo(context.Background(), pOK.hash); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	if st := f.up.Stats(); st.NarInfoErrors != 1 || st.NarInfoHits != 1 || st.NarInfoMisses != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestNarInfoHangBoundedByDeadline(t *testing.T) {
	f := newFixture(t, true, func(c *Config) { c.NarInfoTimeout = 200 * time.Millisecond })
	p := f.bc.add("hang", "zstd", 1000)
	f.bc.hook(p.narinfoURL(), func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	start := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := f.up.NarInfo(context.Background(), p.hash); !errors.Is(err, cache.ErrNotFound) {
				t.Errorf("hang: %v", err)
			}
		})
	}
	wg.Wait()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("hanging upstream held the lookup for %v", d)
	}
	if r := f.bc.requests(p.narinfoURL()); r != 1 {
		t.Fatalf("%d requests for one narinfo", r)
	}
	// A body that stops half way is bounded the same way.
	p2 := f.bc.add("slowbody", "zstd", 1000)
	f.up.ups[0].downUntil.Store(0)
	f.bc.hook(p2.narinfoURL(), func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("StorePath: " + p2.info.StorePath + "\n"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	start = time.Now()
	if _, err := f.up.NarInfo(context.Background(), p2.hash); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("slow body: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("slow body held the lookup for %v", d)
	}
}

func TestUpstreamsTriedInOrder(t *testing.T) {
	checkGoroutines(t)
	first, second := newBinCache(t), newBinCache(t)
	hang := newBinCache(t)
	p := second.add("only-second", "zstd", 50_000)
	hang.mu.Lock()
	hang.hooks[p.narinfoURL()] = func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }
	hang.mu.Unlock()
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	store, err := narcache.Open(context.Background(), narcache.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	up, err := New(Config{
		URLs:           []string{first.srv.URL, hang.srv.URL + "/", second.srv.URL},
		TrustedKeys:    []signature.PublicKey{first.pk, second.pk},
		Client:         client,
		NarInfoTimeout: 200 * time.Millisecond,
	}, store)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	info, err := up.NarInfo(context.Background(), p.hash)
	if err != nil {
		t.Fatal(err)
	}
	if first.requests(p.narinfoURL()) != 1 || hang.requests(p.narinfoURL()) != 1 {
		t.Fatal("upstreams before the one that has it were not asked")
	}
	got, err := fetch(t, up, info, 0, -1)
	if err != nil || !bytes.Equal(got, p.file) {
		t.Fatalf("NAR from the second upstream: %v", err)
	}
	if second.requests(p.narURL()) != 1 {
		t.Fatal("NAR not fetched from the upstream that gave the narinfo")
	}
}

func TestNARFailures(t *testing.T) {
	cases := map[string]func(p path) func(http.ResponseWriter, *http.Request){
		"500": func(p path) func(http.ResponseWriter, *http.Request) {
			return func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) }
		},
		"404": func(p path) func(http.ResponseWriter, *http.Request) {
			return func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }
		},
		"truncated": func(p path) func(http.ResponseWriter, *http.Request) {
			return func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(len(p.file)))
				w.Write(p.file[:len(p.file)/2])
				// Returning early with fewer bytes than promised closes the
				// connection.
			}
		},
		"short-close-delimited": func(p path) func(http.ResponseWriter, *http.Request) {
			return func(w http.ResponseWriter, r *http.Request) {
				conn, bw, _ := w.(http.Hijacker).Hijack()
				defer conn.Close()
				bw.WriteString("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
				bw.Write(p.file[:len(p.file)/2])
				bw.Flush()
			}
		},
		"hang-before-headers": func(p path) func(http.ResponseWriter, *http.Request) {
			return func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }
		},
		"hang-mid-body": func(p path) func(http.ResponseWriter, *http.Request) {
			return func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(len(p.file)))
				w.Write(p.file[:len(p.file)/2])
				w.(http.Flusher).Flush()
				<-r.Context().Done()
			}
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, true, func(c *Config) { c.NARIdleTimeout = 300 * time.Millisecond })
			p := f.bc.add("fail-"+name, "zstd", 300_000)
			f.bc.hook(p.narURL(), mk(p))
			start := time.Now()
			var wg sync.WaitGroup
			for range 3 {
				wg.Go(func() {
					if err := f.up.WriteNAR(context.Background(), io.Discard, p.info, 0, -1); err == nil {
						t.Error("WriteNAR succeeded")
					}
				})
			}
			wg.Wait()
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("failure took %v", d)
			}
			if f.store.Has(p.hash) {
				t.Fatal("committed")
			}
			if st := f.up.Stats(); st.NARErrors+st.VerifyFailures == 0 {
				t.Fatalf("not counted: %+v", st)
			}
			// A later request tries again (the failure is not remembered).
			f.bc.hook(p.narURL(), nil)
			if got, err := fetch(t, f.up, p.info, 0, -1); err != nil || !bytes.Equal(got, p.file) {
				t.Fatalf("retry: %v", err)
			}
		})
	}
}

func TestNegativeTTL(t *testing.T) {
	f := newFixture(t, true, func(c *Config) { c.NegativeTTL = time.Minute })
	clock := &fakeClock{t: time.Now()}
	f.up.now = clock.Now
	var h cache.Hash
	rand.Read(h[:])
	url := "/" + h.String() + ".narinfo"
	for range 3 {
		if _, err := f.up.NarInfo(context.Background(), h); !errors.Is(err, cache.ErrNotFound) {
			t.Fatal(err)
		}
	}
	if r := f.bc.requests(url); r != 1 {
		t.Fatalf("%d requests within the negative TTL, want 1", r)
	}
	clock.Add(59 * time.Second)
	f.up.NarInfo(context.Background(), h)
	if r := f.bc.requests(url); r != 1 {
		t.Fatalf("%d requests within the negative TTL, want 1", r)
	}
	clock.Add(2 * time.Second)
	f.up.NarInfo(context.Background(), h)
	if r := f.bc.requests(url); r != 2 {
		t.Fatalf("%d requests after the negative TTL, want 2", r)
	}
	if st := f.up.Stats(); st.NarInfoMisses != 5 || st.NarInfoFetches != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPositiveCacheBounded(t *testing.T) {
	f := newFixture(t, false, func(c *Config) { c.MaxNarInfos = 3 })
	var ps []path
	for i := range 5 {
		ps = append(ps, f.bc.add(fmt.Sprintf("p%d", i), "none", 100))
	}
	for _, p := range ps {
		if _, err := f.up.NarInfo(context.Background(), p.hash); err != nil {
			t.Fatal(err)
		}
	}
	f.up.mu.Lock()
	n := len(f.up.known)
	f.up.mu.Unlock()
	if n != 3 {
		t.Fatalf("%d narinfos remembered, bound 3", n)
	}
	f.up.NarInfo(context.Background(), ps[4].hash)
	f.up.NarInfo(context.Background(), ps[0].hash)
	if f.bc.requests(ps[4].narinfoURL()) != 1 || f.bc.requests(ps[0].narinfoURL()) != 2 {
		t.Fatal("LRU order of remembered narinfos not kept")
	}
}

func TestNewValidates(t *testing.T) {
	_, pk, _ := signature.GenerateKeypair("k-1", rand.Reader)
	for _, cfg := range []Config{
		{},
		{URLs: []string{"https://cache.nixos.org"}},
		{URLs: []string{"ftp://x"}, TrustedKeys: []signature.PublicKey{pk}},
		{URLs: []string{"cache.nixos.org"}, TrustedKeys: []signature.PublicKey{pk}},
	} {
		if _, err := New(cfg, nil); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

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

// BenchmarkVerify measures how fast a NAR in each compression is checked
// against its NarHash (decompression plus sha256), in NAR bytes per second:
// the ceiling of a pull-through download. The NAR holds real machine code
// (this test binary), which compresses like the binaries in a Nix store.
func BenchmarkVerify(b *testing.B) {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		b.Fatal(err)
	}
	n := makeNAR(b, data[:min(len(data), 16<<20)])
	info := cache.NarInfo{StorePath: cache.StoreDir + "/" + strings.Repeat("0", 32) + "-bench", NarHash: sha256.Sum256(n), NarSize: uint64(len(n))}
	for _, comp := range []string{"none", "zstd", "xz"} {
		f := compress(b, comp, n)
		info := info
		info.Compression = comp
		info.FileSize = uint64(len(f))
		b.Run(comp, func(b *testing.B) {
			b.SetBytes(int64(len(n)))
			for b.Loop() {
				v, err := cache.NewVerifier(&info)
				if err != nil {
					b.Fatal(err)
				}
				for p := f; len(p) > 0; {
					m := min(len(p), copyBufSize)
					if _, err := v.Write(p[:m]); err != nil {
						b.Fatal(err)
					}
					p = p[m:]
				}
				if err := v.Close(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(f))/float64(len(n)), "file/nar")
		})
	}
}
