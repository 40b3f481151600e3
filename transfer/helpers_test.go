package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/statusapi"
)

// memSource is a cache.Source over files in memory, with faults to inject.
type memSource struct {
	mu    sync.Mutex
	paths map[cache.Hash]*memPath
}

type memPath struct {
	info *cache.NarInfo
	data []byte // the file bytes served (may differ from what info signs)
	// failAt, if > 0, makes a request starting before it fail once it has
	// written up to that file position; failures counts down how many
	// requests fail (negative: all).
	failAt    int64
	failures  int
	freshOnly bool // only requests from byte 0 fail
	// gate, if set, makes a failing request wait at failAt until it is
	// closed, so that a test can see the bytes before failAt arrive before
	// the failure resets the stream (which discards bytes in flight).
	gate   chan struct{}
	served int // requests answered
}

func newMemSource() *memSource { return &memSource{paths: make(map[cache.Hash]*memPath)} }

func (m *memSource) put(info *cache.NarInfo, data []byte) *memPath {
	h, err := info.Hash()
	if err != nil {
		panic(err)
	}
	p := &memPath{info: info, data: data}
	m.mu.Lock()
	m.paths[h] = p
	m.mu.Unlock()
	return p
}

func (m *memSource) get(h cache.Hash) *memPath {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.paths[h]
}

func (m *memSource) NarInfo(ctx context.Context, h cache.Hash) (*cache.NarInfo, error) {
	p := m.get(h)
	if p == nil {
		return nil, cache.ErrNotFound
	}
	return p.info, nil
}

var errInjected = errors.New("injected failure")

func (m *memSource) WriteNAR(ctx context.Context, w io.Writer, info *cache.NarInfo, offset, length int64) error {
	h, _ := info.Hash()
	p := m.get(h)
	if p == nil {
		return cache.ErrNotFound
	}
	m.mu.Lock()
	p.served++
	fail := p.failAt > 0 && offset < p.failAt && p.failures != 0 && (!p.freshOnly || offset == 0)
	if fail && p.failures > 0 {
		p.failures--
	}
	m.mu.Unlock()
	end := int64(len(p.data))
	if length >= 0 && offset+length < end {
		end = offset + length
	}
	if fail {
		end = min(end, p.failAt)
	}
	// Write in pieces, as a NAR dump would.
	for pos := offset; pos < end; {
		n := min(end-pos, 64<<10)
		if _, err := w.Write(p.data[pos : pos+n]); err != nil {
			return err
		}
		pos += n
	}
	if fail {
		if p.gate != nil {
			select {
			case <-p.gate:
			case <-ctx.Done():
			}
		}
		return errInjected
	}
	return nil
}

// testKey is a binary-cache signing key for the tests.
type testKey struct {
	sk signature.SecretKey
	pk signature.PublicKey
}

func newTestKey(t testing.TB, name string) testKey {
	sk, pk, err := signature.GenerateKeypair(name, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{sk, pk}
}

// makePath returns random file bytes of size and a narinfo (uncompressed)
// for them, signed by key unless key is nil.
func makePath(t testing.TB, key *testKey, name string, size int) (*cache.NarInfo, []byte) {
	data := make([]byte, size)
	rand.Read(data)
	var hb [20]byte
	rand.Read(hb[:])
	info := &cache.NarInfo{
		StorePath:   "/nix/store/" + nixbase32.EncodeToString(hb[:]) + "-" + name,
		Compression: "none",
		NarHash:     sha256.Sum256(data),
		NarSize:     uint64(size),
	}
	info.URL = "nar/" + info.NarHash.Base32() + ".nar"
	if key != nil {
		sig, err := key.sk.Sign(rand.Reader, info.Fingerprint())
		if err != nil {
			t.Fatal(err)
		}
		info.Sigs = []string{sig.String()}
	}
	return info, data
}

func hashOf(t testing.TB, info *cache.NarInfo) cache.Hash {
	h, err := info.Hash()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// testNode is a Node running for the duration of a test.
type testNode struct {
	*Node
	src  *memSource
	inv  *cache.Inventory
	stop func()
}

// startNode starts a node on loopback; edit adjusts its config.
func startNode(t testing.TB, name string, key *testKey, edit func(*Config)) *testNode {
	t.Helper()
	cfg := Config{
		ListenAddr: "127.0.0.1:0",
		StateDir:   t.TempDir(),
		Name:       name,
		Logger:     testLogger(t, name),
		KeepAlive:  time.Second,
	}
	if key != nil {
		cfg.TrustedKeys = []signature.PublicKey{key.pk}
	}
	if edit != nil {
		edit(&cfg)
	}
	src, inv := newMemSource(), cache.NewInventory()
	n, err := New(cfg, src, inv)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	var once sync.Once
	tn := &testNode{Node: n, src: src, inv: inv}
	tn.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: Run: %v", name, err)
			}
		})
	}
	t.Cleanup(tn.stop)
	return tn
}

// share makes the node hold and offer a path.
func (tn *testNode) share(info *cache.NarInfo, data []byte) *memPath {
	p := tn.src.put(info, data)
	h, _ := info.Hash()
	tn.inv.Add(h)
	return p
}

// connect makes a dial b.
func connect(a, b *testNode) { a.AddPeer(b.LocalAddr().String(), b.ID()) }

// waitFor polls cond until it holds; it fails the test after a long time
// (a hang, not a performance check).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func connected(n *testNode, ids ...string) bool {
	have := make(map[string]bool)
	for _, p := range n.Peers() {
		if p.State == statusapi.StateConnected {
			have[p.ID] = true
		}
	}
	for _, id := range ids {
		if !have[id] {
			return false
		}
	}
	return true
}

// offers reports whether n's index says peer offers h.
func offers(n *testNode, peer string, h cache.Hash) bool {
	for _, s := range n.holders(h, nil) {
		if s.id == peer {
			return true
		}
	}
	return false
}

// testLogger logs through t when -v is given, else discards.
func testLogger(t testing.TB, name string) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(&tWriter{t: t, prefix: name + ": "}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct {
	t      testing.TB
	prefix string
	mu     sync.Mutex
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	defer func() { recover() }() // logging after the test ended
	w.t.Log(w.prefix + strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// checkGoroutines fails if goroutines started after base are still running
// once everything was stopped.
func checkGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines leaked (base %d):\n%s", n-base, base, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fetch fetches a path through n as the endpoint would.
func fetch(ctx context.Context, n *testNode, h cache.Hash) ([]byte, *cache.NarInfo, error) {
	info, err := n.NarInfo(ctx, h)
	if err != nil {
		return nil, nil, err
	}
	var buf bytes.Buffer
	err = n.WriteNAR(ctx, &buf, info, 0, -1)
	return buf.Bytes(), info, err
}
