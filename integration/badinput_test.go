package integration

import (
	"bytes"
	"crypto/rand"
	"path"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// TestBadInput sends hostile and malformed request targets over raw TCP
// (so that no client normalises them): each must get 400 or 404, never a
// 5xx, never a byte of a file outside the served content, and the daemon
// must keep serving afterwards.
func TestBadInput(t *testing.T) {
	fx := newStoreFixture(t)
	d := startDaemon(t, serveOpts{StoreRoot: fx.Root, Keys: []string{fx.Key}})

	h := hashPart(fx.Top)
	top := path.Base(fx.Top)
	nul := "\x00"
	long := func(n int) string { return strings.Repeat("a", n) }
	clientErr := []int{400, 404}
	methodErr := []int{400, 404, 405}
	tooLarge := []int{400, 404, 414, 431}

	cases := []struct {
		method, target string
		allow          []int
	}{
		// Traversal, plain and encoded.
		{"GET", "/../etc/passwd", clientErr},
		{"GET", "/../../../../../../../../etc/passwd", clientErr},
		{"GET", "/nar/../../../../../../etc/passwd", clientErr},
		{"GET", "/nar/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd", clientErr},
		{"GET", "/nar/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", clientErr},
		{"GET", "/nar/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", clientErr},
		{"GET", "/nar/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", clientErr},
		{"GET", "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", clientErr},
		{"GET", "/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", clientErr},
		{"GET", "/nar/%252e%252e%252f%252e%252e%252fetc%252fpasswd", clientErr},
		{"GET", "/nar/..%5c..%5c..%5cetc%5cpasswd", clientErr},
		{"GET", "/nar/....//....//....//etc/passwd", clientErr},
		{"GET", "/nar/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd", clientErr},
		{"GET", "http://127.0.0.1/../../../../etc/passwd", clientErr},
		{"GET", "/nar/x.nar?../../../../etc/passwd", clientErr},
		// Files just outside the store (each holds the sentinel) and the DB.
		{"GET", "/SENTINEL", clientErr},
		{"GET", "/nix/SENTINEL", clientErr},
		{"GET", "/../SENTINEL", clientErr},
		{"GET", "/nar/..%2fSENTINEL", clientErr},
		{"GET", "/nar/..%2f..%2fSENTINEL", clientErr},
		{"GET", "/nar/..%2f..%2f..%2fSENTINEL", clientErr},
		{"GET", "/nix/var/nix/db/db.sqlite", clientErr},
		{"GET", "/nar/..%2f..%2fvar%2fnix%2fdb%2fdb.sqlite", clientErr},
		{"GET", "/nar/..%2f..%2f..%2fnix%2fvar%2fnix%2fdb%2fdb.sqlite", clientErr},
		// Store paths and files inside them are not URLs of this API.
		{"GET", "/nix/store/" + top + "/refs", clientErr},
		{"GET", "/nar/" + top + "/refs", clientErr},
		{"GET", "/nar/" + top, clientErr},
		{"GET", "/" + top, clientErr},
		{"GET", "/" + h, clientErr},
		// Malformed hashes.
		{"GET", "/.narinfo", clientErr},
		{"GET", "/" + h[:31] + ".narinfo", clientErr},
		{"GET", "/" + h + "0.narinfo", clientErr},
		{"GET", "/" + h[:20] + ".narinfo", clientErr},
		{"GET", "/" + strings.ToUpper(h) + ".narinfo", clientErr},
		{"GET", "/e" + h[1:] + ".narinfo", clientErr},
		{"GET", "/" + h[:31] + "u.narinfo", clientErr},
		{"GET", "/" + h[:16] + "-" + h[17:] + ".narinfo", clientErr},
		{"GET", "/" + h + ".narinfox", clientErr},
		{"GET", "/" + h + ".NARINFO", clientErr},
		{"GET", "/" + h + ".narinfo/", clientErr},
		{"GET", "/" + h + ".narinfo/..", clientErr},
		{"GET", "/" + hashPart(fx.Private) + ".narinfo", clientErr},
		{"GET", "/nar/", clientErr},
		{"GET", "/nar", clientErr},
		{"GET", "/nar/x.nar", clientErr},
		{"GET", "/nar/" + strings.Repeat("0", 52) + ".nar", clientErr},
		{"GET", "/nar/" + strings.Repeat("z", 52) + ".nar.xz", clientErr},
		{"GET", "/nar/" + strings.ToUpper(h) + ".nar", clientErr},
		// NUL, encoded and raw.
		{"GET", "/%00", clientErr},
		{"GET", "/%00.narinfo", clientErr},
		{"GET", "/" + h[:16] + "%00" + h[17:] + ".narinfo", clientErr},
		{"GET", "/" + h + "%00.narinfo", clientErr},
		{"GET", "/" + h + ".narinfo%00", clientErr},
		{"GET", "/nar/%00.nar", clientErr},
		{"GET", "/nar/..%00/..%00/etc/passwd", clientErr},
		{"GET", "/" + h[:16] + nul + h[17:] + ".narinfo", clientErr},
		// Double slashes.
		{"GET", "//x", clientErr},
		{"GET", "//etc/passwd", clientErr},
		{"GET", "/nar//etc/passwd", clientErr},
		// Overlong.
		{"GET", "/" + long(8<<10) + ".narinfo", clientErr},
		{"GET", "/" + strings.Repeat(h, 300) + ".narinfo", clientErr},
		{"GET", "/nar/" + long(8<<10) + ".nar", clientErr},
		{"GET", "/nar/" + strings.Repeat("../", 3000) + "etc/passwd", clientErr},
		{"GET", "/" + long(64<<10), tooLarge}, // may exceed the server's header limit
		{"GET", "/" + long(2<<20), tooLarge},
		// Methods that write.
		{"POST", "/nix-cache-info", methodErr},
		{"PUT", "/" + h + ".narinfo", methodErr},
		{"DELETE", "/" + h + ".narinfo", methodErr},
		{"PATCH", "/nar/x.nar", methodErr},
		{"PUT", "/../etc/passwd", methodErr},
	}
	// NAR URLs in the shape the daemon hands out: for a hash it does not
	// have, and for the unsigned path that --share signed keeps private
	// (its NAR must be as unreachable as its narinfo).
	ni, err := parseNarinfo(d.wantStatus(t, "GET", "/"+h+".narinfo", 200))
	if err != nil {
		t.Fatal(err)
	}
	topURL := one(ni, "URL")
	topNarHash, _ := decodeHash(fx.Info[fx.Top].NarHash)
	privNarHash, _ := decodeHash(fx.Info[fx.Private].NarHash)
	if strings.Contains(topURL, h) {
		unknown := strings.Replace(topURL, h, randomHash(), 1)
		private := strings.Replace(topURL, h, hashPart(fx.Private), 1)
		private = strings.Replace(private, nixbase32.EncodeToString(topNarHash), nixbase32.EncodeToString(privNarHash), 1)
		for _, u := range []string{unknown, private} {
			cases = append(cases, struct {
				method, target string
				allow          []int
			}{"GET", "/" + strings.TrimPrefix(u, "/"), clientErr})
		}
	} else {
		t.Logf("NAR URL %q does not contain the store hash; not guessing NAR URLs", topURL)
	}

	for _, c := range cases {
		name := c.method + " " + string(clip([]byte(c.target)))
		resp, body, err := rawRequest(d.Addr, c.method, c.target)
		// A server may answer an oversized request early and hang up on
		// the unread rest; the kernel's reset can then cut the response
		// short or destroy it. Both are refusals, not failures.
		oversized := len(c.target) >= 64<<10
		switch {
		case err == nil:
		case oversized && resp != nil:
			t.Logf("%q: %s, then %v", name, resp.Status, err)
		case oversized && !d.alive():
			t.Fatalf("the daemon died on %q", name)
		case oversized:
			t.Logf("%q: no response: %v", name, err)
			continue
		default:
			t.Errorf("%q: %v", name, err)
			if !d.alive() {
				t.Fatalf("the daemon died on %q", name)
			}
			continue
		}
		allowed := false
		for _, s := range c.allow {
			allowed = allowed || resp.StatusCode == s
		}
		if !allowed {
			t.Errorf("%q: status %s, want one of %v; body %q", name, resp.Status, c.allow, clip(body))
		}
		for _, leak := range []string{sentinel, "root:x:0:0", "SQLite format 3", "hello\n"} {
			if bytes.Contains(body, []byte(leak)) {
				t.Errorf("%q: the body contains %q: %q", name, leak, clip(body))
			}
		}
	}

	if !d.alive() {
		t.Fatal("the daemon exited during the bad requests")
	}
	d.wantStatus(t, "GET", "/nix-cache-info", 200)
	d.wantStatus(t, "GET", "/"+h+".narinfo", 200)
	d.Stop(syscall.SIGTERM)
}

// TestMissIsFast checks that many concurrent lookups of unknown but
// well-formed hashes are all prompt 404s: Nix treats anything else as a
// broken substituter.
func TestMissIsFast(t *testing.T) {
	fx := newStoreFixture(t)
	d := startDaemon(t, serveOpts{StoreRoot: fx.Root, Keys: []string{fx.Key}})

	const workers, perWorker = 8, 25
	var (
		mu      sync.Mutex
		slowest time.Duration
		wg      sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				var b [20]byte
				rand.Read(b[:])
				p := "/" + nixbase32.EncodeToString(b[:]) + ".narinfo"
				t0 := time.Now()
				code, body, err := d.fetch("GET", p)
				took := time.Since(t0)
				if err != nil {
					t.Errorf("GET %s (unknown hash): %v", p, err)
				} else if code != 404 {
					t.Errorf("GET %s (unknown hash): status %d, want 404; body %q", p, code, clip(body))
				}
				mu.Lock()
				slowest = max(slowest, took)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	total := time.Since(start)
	t.Logf("%d misses in %v, slowest %v", workers*perWorker, total.Round(time.Millisecond), slowest.Round(time.Microsecond))
	if slowest > 2*time.Second {
		t.Errorf("slowest miss took %v; a miss must be a fast 404", slowest)
	}
	d.Stop(syscall.SIGTERM)
}
