package lancache_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/lancache/lancache"
	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/demo"
)

func TestDefaultTrustedKeyParses(t *testing.T) {
	keys, err := cache.ParsePublicKeys(lancache.DefaultTrustedPublicKeys)
	if err != nil || len(keys) != 1 || keys[0].Name != "cache.nixos.org-1" {
		t.Fatalf("default key: %v %v", keys, err)
	}
}

type testNode struct {
	*lancache.Node
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func startNode(t *testing.T, cfg lancache.Config) *testNode {
	t.Helper()
	cfg.HTTPAddr, cfg.QUICAddr, cfg.NoMDNS = "127.0.0.1:0", "127.0.0.1:0", true
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	if cfg.StoreRoot == "" {
		cfg.StoreRoot = "none"
	}
	ctx, cancel := context.WithCancel(context.Background())
	n, err := lancache.New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	tn := &testNode{Node: n, cancel: cancel, done: make(chan error, 1)}
	go func() { tn.done <- n.Run(ctx) }()
	select {
	case <-n.Ready():
	case err := <-tn.done:
		t.Fatalf("node stopped: %v", err)
	}
	t.Cleanup(tn.stop)
	return tn
}

func (tn *testNode) stop() {
	tn.once.Do(func() {
		tn.cancel()
		select {
		case <-tn.done:
		case <-time.After(10 * time.Second):
			panic("node did not stop within 10s")
		}
	})
}

func httpGet(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// Two nodes in one process: B has no store and no cache; a path in A's disk
// cache is served by B's endpoint over QUIC, verified; a miss is a 404;
// status and metrics report it; nothing leaks after shutdown.
func TestNodesServeEachOther(t *testing.T) {
	before := runtime.NumGoroutine()
	sk, pk, err := signature.GenerateKeypair("test-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	paths, err := demo.Populate(context.Background(), dir, sk, "pkg", 1, 3, 300_000)
	if err != nil {
		t.Fatal(err)
	}
	a := startNode(t, lancache.Config{CacheDir: dir, TrustedPublicKeys: pk.String(), Name: "a"})
	b := startNode(t, lancache.Config{TrustedPublicKeys: pk.String(), Name: "b", Peers: []string{a.QUICAddr().String()}})
	base := "http://" + b.HTTPAddr().String()

	var info *cache.NarInfo
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := httpGet(t, base+"/"+paths[0].Hash.String()+".narinfo")
		if code == 200 {
			if info, err = cache.ParseNarInfo(strings.NewReader(string(body))); err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("narinfo via peer: still %d", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !info.SignedBy([]signature.PublicKey{pk}) {
		t.Fatal("narinfo lost its signature")
	}
	code, nar := httpGet(t, base+"/"+info.URL)
	v, _ := cache.NewVerifier(info)
	v.Write(nar)
	if code != 200 || v.Close() != nil {
		t.Fatalf("NAR via peer: %d, %d bytes, verify %v", code, len(nar), v.Close())
	}
	// A miss is a 404. (It is fast because no peer offers it, so none is
	// asked; a clock on a shared CI machine would not prove that.)
	if code, _ := httpGet(t, base+"/00000000000000000000000000000000.narinfo"); code != 404 {
		t.Fatalf("miss: %d", code)
	}

	// Status JSON carries the documented fields.
	code, body := httpGet(t, base+"/_lancache/status")
	var st map[string]any
	if code != 200 || json.Unmarshal(body, &st) != nil {
		t.Fatalf("status: %d %s", code, body)
	}
	for _, k := range []string{"id", "name", "version", "uptime_seconds", "share", "store_paths", "peers", "transfers", "totals"} {
		if _, ok := st[k]; !ok {
			t.Errorf("status lacks %q", k)
		}
	}
	var typed lancache.Status
	json.Unmarshal(body, &typed)
	if len(typed.Peers) != 1 || typed.Peers[0].Name != "a" || typed.Peers[0].PathsAdvertised != 3 {
		t.Errorf("peers: %+v", typed.Peers)
	}
	if typed.Totals.BytesFromPeers != uint64(len(nar)) || typed.Totals.NarInfoMisses == 0 {
		t.Errorf("totals: %+v", typed.Totals)
	}
	for _, k := range []string{"peer", "bytes_done", "bytes_total", "rate_bytes_per_second", "result"} {
		if len(typed.Transfers) == 0 || !strings.Contains(string(body), `"`+k+`"`) {
			t.Errorf("transfers lack %q", k)
		}
	}
	code, body = httpGet(t, base+"/metrics")
	if code != 200 || !strings.Contains(string(body), "lancache_peer_received_bytes_total") {
		t.Fatalf("metrics: %d", code)
	}

	b.stop()
	a.stop()
	http.DefaultClient.CloseIdleConnections()
	deadline = time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The SSE stream sends status snapshots.
func TestStatusEvents(t *testing.T) {
	n := startNode(t, lancache.Config{TrustedPublicKeys: lancache.DefaultTrustedPublicKeys, Name: "ev"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.HTTPAddr().String()+"/_lancache/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	buf := make([]byte, 64<<10)
	got := ""
	for strings.Count(got, "data: ") < 2 {
		k, err := resp.Body.Read(buf)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got += string(buf[:k])
	}
	if !strings.Contains(got, `"name":"ev"`) {
		t.Fatalf("events: %q", got)
	}
}
