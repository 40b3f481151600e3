package integration

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestHTTPSecurity reviews the HTTP listener as an appliance exposes it to
// the LAN (issue 8): request smuggling and malformed framing, header and
// body size limits, a timeout on every connection, no directory listing, a
// read-only status API and no secrets in it. Path traversal and hostile
// request targets are TestBadInput's. The subtests share one daemon with a
// fleet key, so that there is a secret to leak.
func TestHTTPSecurity(t *testing.T) {
	fx := newStoreFixture(t)
	state := t.TempDir()
	fleet := filepath.Join(t.TempDir(), "fleet.key")
	if out, code := runLancache(t, nixEnv(t), "keygen", "--fleet", fleet); code != 0 {
		t.Fatalf("lancache keygen: exit %d\n%s", code, out)
	}
	d := startDaemonWith(t, func(httpPort, quicPort int) ([]string, []string) {
		args := serveArgs(t, serveOpts{StoreRoot: fx.Root, Keys: []string{fx.Key}}, httpPort, quicPort)
		for i := range args {
			if args[i] == "--state-dir" {
				args[i+1] = state
			}
		}
		return append(args, "--fleet-key", fleet), nil
	})
	h := hashPart(fx.Top)
	ni, err := parseNarinfo(d.wantStatus(t, "GET", "/"+h+".narinfo", 200))
	if err != nil {
		t.Fatal(err)
	}
	narURL := "/" + one(ni, "URL")

	t.Run("smuggling", func(t *testing.T) { testSmuggling(t, d, h) })
	t.Run("size-limits", func(t *testing.T) { testSizeLimits(t, d) })
	t.Run("ranges", func(t *testing.T) { testHostileRanges(t, d, narURL) })
	t.Run("no-listing", func(t *testing.T) { testNoListing(t, d) })
	t.Run("read-only", func(t *testing.T) { testReadOnly(t, d) })
	t.Run("no-secrets", func(t *testing.T) { testNoSecrets(t, d, fleet, state) })
	t.Run("timeouts", func(t *testing.T) { testConnTimeouts(t, d) })

	if !d.alive() {
		t.Fatal("the daemon died during the review")
	}
	d.wantStatus(t, "GET", "/"+h+".narinfo", 200)
	d.Stop(syscall.SIGTERM)
}

// exchange writes raw to a new connection and reads every response until
// the server closes it or 5 s pass; it returns the status codes in order.
func exchange(t *testing.T, addr, raw string) []int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	go io.WriteString(c, raw)
	br := bufio.NewReader(c)
	var codes []int
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return codes
		}
		codes = append(codes, resp.StatusCode)
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.Close {
			return codes
		}
	}
}

// testSmuggling sends requests whose framing a proxy and the daemon could
// read differently. The daemon must refuse them (400/501) rather than
// guess, or frame them as RFC 9112 says; never answer a request hidden in a
// body, never 5xx.
func testSmuggling(t *testing.T, d *daemon, h string) {
	hidden := "GET /" + h + ".narinfo HTTP/1.1\r\nHost: x\r\n\r\n"
	cases := []struct {
		name, raw string
		ok        func(codes []int) bool
	}{
		{name: "Content-Length and Transfer-Encoding",
			raw: "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden,
			// Refused, and the connection closed after it (RFC 9112 6.3):
			// the hidden request is never answered.
			ok: func(c []int) bool { return len(c) == 1 && c[0] == 400 }},
		{name: "GET with a body",
			raw: "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nContent-Length: " + fmt.Sprint(len(hidden)) + "\r\n\r\n" + hidden,
			ok:  func(c []int) bool { return len(c) == 1 && c[0] == 400 }},
		{name: "two different Content-Lengths",
			raw: "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: " + fmt.Sprint(len(hidden)) + "\r\n\r\n" + hidden,
			ok:  func(c []int) bool { return len(c) == 1 && c[0] == 400 }},
		{name: "TE other than chunked",
			raw: "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n" + hidden,
			ok:  func(c []int) bool { return len(c) == 1 && (c[0] == 400 || c[0] == 501) }},
		{name: "TE chunked twice",
			raw: "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
			ok:  func(c []int) bool { return len(c) == 1 && (c[0] == 400 || c[0] == 501) }},
		{name: "negative Content-Length",
			raw: "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
			ok:  func(c []int) bool { return len(c) == 1 && c[0] == 400 }},
		{name: "obs-fold header",
			raw: "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nConnection: close\r\n\r\n",
			ok:  func(c []int) bool { return len(c) <= 1 && (len(c) == 0 || c[0] == 400 || c[0] == 200) }},
		{name: "space before colon",
			raw: "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nContent-Length : 40\r\n\r\n" + hidden,
			ok:  func(c []int) bool { return len(c) == 1 && c[0] == 400 }},
		{name: "NUL in a header",
			raw: "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
			ok:  func(c []int) bool { return len(c) == 1 && c[0] == 400 }},
		{name: "no Host",
			raw: "GET /nix-cache-info HTTP/1.1\r\n\r\n",
			ok:  func(c []int) bool { return len(c) == 1 && c[0] == 400 }},
		{name: "two Hosts",
			raw: "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
			ok:  func(c []int) bool { return len(c) == 1 && c[0] == 400 }},
		{name: "space in target",
			raw: "GET /nix-cache-info /x HTTP/1.1\r\nHost: x\r\n\r\n",
			ok:  func(c []int) bool { return len(c) == 1 && c[0] == 400 }},
		{name: "HTTP/2 preface without h2c",
			raw: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
			ok:  func(c []int) bool { return len(c) <= 1 && (len(c) == 0 || c[0] >= 400 && c[0] < 500 || c[0] == 505) }},
		{name: "HTTP/1.0 keep-alive pipeline",
			raw: "GET /nix-cache-info HTTP/1.0\r\n\r\nGET /nix-cache-info HTTP/1.0\r\n\r\n",
			ok:  func(c []int) bool { return len(c) == 1 && c[0] == 200 }},
	}
	for _, c := range cases {
		codes := exchange(t, d.Addr, c.raw)
		t.Logf("%s: %v", c.name, codes)
		if !c.ok(codes) {
			t.Errorf("%s: answered %v", c.name, codes)
		}
		for _, code := range codes {
			if code >= 500 && code != 501 && code != 505 {
				t.Errorf("%s: a %d", c.name, code)
			}
		}
	}
}

// testSizeLimits: headers beyond MaxHeaderBytes are refused with 431; a
// request body (nothing here takes one) is never read into memory.
func testSizeLimits(t *testing.T, d *daemon) {
	for _, n := range []int{20 << 10, 1 << 20} {
		raw := "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", n) + "\r\n\r\n"
		codes := exchange(t, d.Addr, raw)
		if len(codes) > 0 && codes[0] != 431 {
			t.Errorf("header of %d bytes: %v, want 431", n, codes)
		}
		t.Logf("header of %d bytes: %v", n, codes)
	}
	many := "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-A: b\r\n", 4000) + "\r\n"
	if codes := exchange(t, d.Addr, many); len(codes) > 0 && codes[0] != 431 {
		t.Errorf("4000 header lines: %v, want 431", codes)
	}
	// A huge declared body on every path: answered at once (no wait for
	// the body), and the connection is not kept to drain it.
	for _, target := range []string{"/_lancache/status", "/nix-cache-info", "/metrics"} {
		for _, method := range []string{"POST", "GET"} {
			start := time.Now()
			codes := exchange(t, d.Addr, method+" "+target+" HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\npartial")
			took := time.Since(start)
			if len(codes) != 1 || took > 3*time.Second {
				t.Errorf("%s %s with a 1 GiB body announced: %v after %v; want one answer at once and a close", method, target, codes, took.Round(time.Millisecond))
			}
		}
	}
}

// testHostileRanges sends Range headers that are odd, huge or many: a NAR
// response is a 206 inside the file, a 200 of the whole file, or a 416.
func testHostileRanges(t *testing.T, d *daemon, narURL string) {
	_, whole := d.get(t, "GET", narURL)
	size := int64(len(whole))
	for _, r := range []string{
		"bytes=0-0", "bytes=-1", "bytes=0-", fmt.Sprintf("bytes=%d-", size-1), fmt.Sprintf("bytes=%d-", size),
		"bytes=99999999999999999999-", "bytes=-99999999999999999999", "bytes=5-1", "bytes=--1", "bytes=1-2-3",
		"bytes=" + strings.Repeat("0-0,", 2000) + "0-0", "bytes=0-0, 1-1", "bits=0-1", "bytes= 0-1",
	} {
		req, _ := http.NewRequest("GET", d.URL+narURL, nil)
		req.Header.Set("Range", r)
		resp, err := d.client.Do(req)
		if err != nil {
			t.Errorf("Range %.40q: %v", r, err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
			t.Errorf("Range %.40q: %s, body: %v", r, resp.Status, err)
		case resp.StatusCode == 200:
			if !bytes.Equal(body, whole) {
				t.Errorf("Range %.40q: 200 but not the whole file", r)
			}
		case resp.StatusCode == 206:
			var a, b, n int64
			if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/%d", &a, &b, &n); err != nil || n != size || a < 0 || b < a || b >= size || !bytes.Equal(body, whole[a:b+1]) {
				t.Errorf("Range %.40q: 206 %q with %d bytes does not match the file", r, resp.Header.Get("Content-Range"), len(body))
			}
		case resp.StatusCode == 416:
		default:
			t.Errorf("Range %.40q: %s", r, resp.Status)
		}
	}
}

// testNoListing: no URL lists what the cache holds, except the binary-cache
// API itself (one narinfo per known hash).
func testNoListing(t *testing.T, d *daemon) {
	for _, target := range []string{"/", "/nar", "/nar/", "/_lancache", "/_lancache/", "/nix", "/nix/store", "/nix/store/", "/.", "/index.html", "/?C=M;O=D"} {
		resp, body, err := rawRequest(d.Addr, "GET", target)
		if err != nil {
			t.Errorf("GET %s: %v", target, err)
			continue
		}
		if resp.StatusCode != 404 && resp.StatusCode != 400 {
			t.Errorf("GET %s: %s, want 404", target, resp.Status)
		}
		for _, leak := range []string{"href", ".narinfo", "/nix/store/", "Index of"} {
			if bytes.Contains(body, []byte(leak)) {
				t.Errorf("GET %s: body contains %q: %q", target, leak, clip(body))
			}
		}
	}
}

// testReadOnly: the status API, the event stream and the metrics accept
// GET and HEAD only; TRACE does not echo the request.
func testReadOnly(t *testing.T, d *daemon) {
	for _, target := range []string{"/_lancache/status", "/_lancache/events", "/metrics", "/nix-cache-info"} {
		for _, method := range []string{"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "MKCOL"} {
			resp, body, err := rawRequest(d.Addr, method, target)
			if err != nil {
				t.Errorf("%s %s: %v", method, target, err)
				continue
			}
			if resp.StatusCode != 405 {
				t.Errorf("%s %s: %s, want 405", method, target, resp.Status)
			}
			if allow := resp.Header.Get("Allow"); allow != "GET, HEAD" {
				t.Errorf("%s %s: Allow %q", method, target, allow)
			}
			if bytes.Contains(body, []byte("Host:")) {
				t.Errorf("%s %s echoes the request: %q", method, target, clip(body))
			}
		}
	}
	// Writes through query strings or odd spellings of the path are not
	// a back door either.
	for _, target := range []string{"/_lancache/status?share=all", "/_lancache/status/", "/_lancache//status", "/_lancache/%73tatus"} {
		resp, _, err := rawRequest(d.Addr, "POST", target)
		if err != nil {
			t.Errorf("POST %s: %v", target, err)
		} else if resp.StatusCode != 405 && resp.StatusCode != 400 && resp.StatusCode != 404 {
			t.Errorf("POST %s: %s", target, resp.Status)
		}
	}
	if st, err := d.status(); err != nil || st.Share != "signed" {
		t.Errorf("status after the writes: share %v, %v", st, err)
	}
}

// testNoSecrets: neither the fleet key nor the node's private key, in any
// encoding, appears in the status, the event stream or the metrics.
func testNoSecrets(t *testing.T, d *daemon, fleetFile, stateDir string) {
	var secrets [][]byte
	fleetText, err := os.ReadFile(fleetFile)
	if err != nil {
		t.Fatal(err)
	}
	fleetRaw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(fleetText)))
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, fleetRaw)
	pemText, err := os.ReadFile(filepath.Join(stateDir, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pemText)
	if blk == nil {
		t.Fatal("node.key is not PEM")
	}
	// The ed25519 seed is the last 32 bytes of the PKCS#8 DER.
	secrets = append(secrets, blk.Bytes[len(blk.Bytes)-32:])
	var needles []string
	for _, s := range secrets {
		for _, enc := range []func([]byte) string{hex.EncodeToString, base64.StdEncoding.EncodeToString, base64.RawStdEncoding.EncodeToString, base64.URLEncoding.EncodeToString, base64.RawURLEncoding.EncodeToString} {
			e := enc(s)
			needles = append(needles, e[:24]) // a prefix: no field would hold a part
		}
	}
	var pages []string
	for _, p := range []string{"/_lancache/status", "/metrics"} {
		_, body := d.get(t, "GET", p)
		pages = append(pages, string(body))
	}
	pages = append(pages, firstEvent(t, d))
	for i, page := range pages {
		for _, n := range needles {
			if strings.Contains(page, n) {
				t.Errorf("page %d exposes a secret (%s…)", i, n[:8])
			}
		}
		if strings.Contains(page, "PRIVATE KEY") || strings.Contains(page, "fleet.key") {
			t.Errorf("page %d mentions a key file", i)
		}
	}
}

// firstEvent returns the first server-sent event of /_lancache/events.
func firstEvent(t *testing.T, d *daemon) string {
	c, err := net.DialTimeout("tcp", d.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /_lancache/events HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			return data
		}
	}
	t.Fatalf("no event: %v", sc.Err())
	return ""
}

// testConnTimeouts: connections that send nothing, trickle their headers
// (slowloris) or trickle a body are closed by the daemon within
// ReadHeaderTimeout (10 s) plus slack, all at once in parallel.
func testConnTimeouts(t *testing.T, d *daemon) {
	const limit = 14 * time.Second
	cases := []struct {
		name    string
		first   string
		trickle string // sent one byte a second after first
	}{
		{"silent", "", ""},
		{"slow headers", "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n", strings.Repeat("X-Slow: loris\r\n", 100)},
		{"partial request line", "GET /nix-cache-in", strings.Repeat("f", 100)},
		{"slow body", "POST /_lancache/status HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", strings.Repeat("b", 100)},
		{"idle after a response", "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\nGET /nix-cache-info HTTP/1.1\r\nHost: x\r\n", strings.Repeat("X-Slow: loris\r\n", 100)},
	}
	var wg sync.WaitGroup
	for _, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.DialTimeout("tcp", d.Addr, 5*time.Second)
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
				return
			}
			defer conn.Close()
			start := time.Now()
			conn.SetDeadline(start.Add(limit + 5*time.Second))
			closed := make(chan time.Duration, 1)
			go func() {
				io.Copy(io.Discard, conn) // until the daemon closes
				closed <- time.Since(start)
			}()
			io.WriteString(conn, c.first)
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case took := <-closed:
					if took > limit {
						t.Errorf("%s: closed after %v, want within %v", c.name, took.Round(time.Millisecond), limit)
					} else {
						t.Logf("%s: closed by the daemon after %v", c.name, took.Round(time.Millisecond))
					}
					return
				case <-tick.C:
					if i < len(c.trickle) {
						conn.Write([]byte{c.trickle[i]})
					}
				}
			}
		}()
	}
	wg.Wait()
}
