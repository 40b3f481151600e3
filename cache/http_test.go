package cache

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// memSource serves files from memory; failAfter >= 0 makes WriteNAR fail
// after that many bytes.
type memSource struct {
	infos     map[Hash]*NarInfo
	files     map[Hash][]byte
	failAfter int
	calls     int
}

func newMemSource() *memSource {
	return &memSource{infos: map[Hash]*NarInfo{}, files: map[Hash][]byte{}, failAfter: -1}
}

func (m *memSource) add(info *NarInfo, file []byte) Hash {
	h, _ := info.Hash()
	m.infos[h], m.files[h] = info, file
	return h
}

func (m *memSource) NarInfo(_ context.Context, h Hash) (*NarInfo, error) {
	if i, ok := m.infos[h]; ok {
		c := *i
		return &c, nil
	}
	return nil, ErrNotFound
}

func (m *memSource) WriteNAR(_ context.Context, w io.Writer, info *NarInfo, off, n int64) error {
	m.calls++
	h, _ := info.Hash()
	f := m.files[h]
	if n < 0 {
		n = int64(len(f)) - off
	}
	part := f[off : off+n]
	if m.failAfter >= 0 && m.failAfter < len(part) {
		w.Write(part[:m.failAfter])
		return errors.New("source died")
	}
	_, err := w.Write(part)
	return err
}

func serveTest(t *testing.T, srcs ...Source) (*httptest.Server, *Handler) {
	t.Helper()
	h := NewHandler(HandlerConfig{}, srcs...)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, h
}

func get(t *testing.T, url string, hdr ...string) (*http.Response, []byte, error) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func TestHandlerServesNarInfoAndNAR(t *testing.T) {
	src := newMemSource()
	info, file := testFile(t, "zstd", 100_000)
	h := src.add(info, file)
	srv, hd := serveTest(t, src)

	resp, body, err := get(t, srv.URL+"/nix-cache-info")
	if err != nil || resp.StatusCode != 200 || !strings.Contains(string(body), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n") {
		t.Fatalf("nix-cache-info: %v %v %q", err, resp, body)
	}
	resp, body, err = get(t, srv.URL+"/"+h.String()+".narinfo")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("narinfo: %v %v", err, resp)
	}
	ni, err := ParseNarInfo(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ni.Compression != "zstd" || !strings.HasSuffix(ni.URL, ".nar.zst") || ni.Fingerprint() != info.Fingerprint() {
		t.Fatalf("served narinfo %+v", ni)
	}
	resp, body, err = get(t, srv.URL+"/"+ni.URL)
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, file) || resp.ContentLength != int64(len(file)) {
		t.Fatalf("nar: %v %v len %d", err, resp, len(body))
	}
	resp, body, err = get(t, srv.URL+"/"+ni.URL, "Range", "bytes=100-199")
	if err != nil || resp.StatusCode != 206 || !bytes.Equal(body, file[100:200]) {
		t.Fatalf("range: %v %v", err, resp)
	}
	resp, _, _ = get(t, srv.URL+"/"+ni.URL, "Range", fmt.Sprintf("bytes=%d-", len(file)))
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("range past end: %v", resp.Status)
	}
	// A NAR URL with another NarHash (a stale narinfo) is a 404.
	other := strings.Replace(ni.URL, info.NarHash.Base32()[:4], "0000", 1)
	if resp, _, _ := get(t, srv.URL+"/"+other); resp.StatusCode != 404 {
		t.Fatalf("stale NAR URL: %v", resp.Status)
	}
	if hd.Stats().NarInfoHits.Load() != 1 {
		t.Fatalf("hits = %d", hd.Stats().NarInfoHits.Load())
	}
}

func TestHandlerMissIs404(t *testing.T) {
	srv, hd := serveTest(t, newMemSource())
	resp, _, _ := get(t, srv.URL+"/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p.narinfo")
	if resp.StatusCode != 404 || hd.Stats().NarInfoMisses.Load() != 1 {
		t.Fatalf("miss: %v", resp.Status)
	}
}

// A failing first source falls through to the next before any byte is sent;
// a source failing mid-stream aborts the response (the client sees an error,
// never a short body that looks complete).
func TestHandlerSourceFailures(t *testing.T) {
	info, file := testFile(t, "none", 50_000)
	dead, good := newMemSource(), newMemSource()
	dead.failAfter = 0
	h := dead.add(info, file)
	good.add(info, file)
	srv, _ := serveTest(t, dead, good)
	u, _ := narURL(h, info)
	resp, body, err := get(t, srv.URL+"/"+u)
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, file) || dead.calls != 1 {
		t.Fatalf("fallthrough: %v %v %d", err, resp, dead.calls)
	}

	broken := newMemSource()
	broken.failAfter = 1000
	broken.add(info, file)
	srv2, hd := serveTest(t, broken)
	_, body, err = get(t, srv2.URL+"/"+u)
	if err == nil {
		t.Fatalf("mid-stream failure: got %d bytes and no error", len(body))
	}
	if hd.Stats().NarFailures.Load() != 1 {
		t.Fatal("failure not counted")
	}
}

// rawGet sends a request line byte for byte (Go's client would clean it).
func rawGet(t *testing.T, addr, target string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", target)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestHandlerRejectsHostilePaths(t *testing.T) {
	src := newMemSource()
	info, file := testFile(t, "none", 100)
	src.add(info, file)
	srv, _ := serveTest(t, src)
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, target := range []string{
		"/../etc/passwd", "/nar/../../etc/passwd", "/nar/..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/etc/passwd",
		"/nar/%2e%2e", "//etc/passwd", "/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8.narinfo", "/0RR10G8FQ2FBB6YD4MH3GR4FQY6VRQ8P.narinfo",
		"/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8e.narinfo", "/" + strings.Repeat("a", 9000) + ".narinfo", "/nar/x.nar",
		"/nar/" + strings.Repeat("0", 85) + ".nar", "/a/b.narinfo", "/nix-cache-info/..", "/nar", "/nar/",
		"/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p.narinfo%00", "/etc/passwd", "/_lancache/../etc/passwd",
	} {
		code := rawGet(t, addr, target)
		if code != 0 && code != 400 && code != 404 && code != 431 && code != 414 {
			t.Errorf("GET %s: status %d, want 400/404", clip(target), code)
		}
	}
	if code := rawGet(t, addr, "/nix-cache-info"); code != 200 {
		t.Fatalf("after hostile requests: %d", code)
	}
}

func FuzzRequestPath(f *testing.F) {
	f.Add("/nix-cache-info")
	f.Add("/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p.narinfo")
	f.Add("/nar/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-1jnhcscsw6xapfmf4sjjsyvflmgaqxh2n6qsqk4sgqpjpqj0b5lz.nar.zst")
	f.Add("/nar/..%2f..%2fetc%2fpasswd")
	src := newMemSource()
	info, file := testFile(f, "none", 100)
	src.add(info, file)
	hd := NewHandler(HandlerConfig{}, src)
	f.Fuzz(func(t *testing.T, target string) {
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n")))
		if err != nil {
			return
		}
		rec := httptest.NewRecorder()
		hd.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%q: status %d", target, rec.Code)
		}
		if rec.Code == 200 && req.URL.Path != "/nix-cache-info" && !strings.HasSuffix(req.URL.Path, ".narinfo") && !strings.HasPrefix(req.URL.Path, "/nar/") {
			t.Fatalf("%q served 200", target)
		}
	})
}

// The narinfo of an uncompressed path carries FileHash and FileSize (equal
// to NarHash and NarSize), as every cache Nix writes does.
func TestHandlerNarInfoFileFields(t *testing.T) {
	src := newMemSource()
	info, file := testFile(t, "none", 10_000)
	info.Compression = "" // as some sources leave it
	h := src.add(info, file)
	srv, _ := serveTest(t, src)
	resp, body, err := get(t, srv.URL+"/"+h.String()+".narinfo")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("narinfo: %v %v", err, resp)
	}
	for _, want := range []string{"Compression: none\n", "FileHash: " + info.NarHash.String() + "\n", fmt.Sprintf("FileSize: %d\n", info.NarSize)} {
		if !strings.Contains(string(body), want) {
			t.Errorf("narinfo lacks %q:\n%s", want, body)
		}
	}
}

// rawDo sends one request with the target byte for byte and returns the
// response, body read and closed.
func rawDo(t *testing.T, addr, method, target string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var extra strings.Builder
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&extra, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s\r\n", method, target, extra.String())
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// want404 fails the test unless GET and HEAD of target are 404.
func want404(t *testing.T, addr, target string) {
	t.Helper()
	for _, method := range []string{"GET", "HEAD"} {
		if resp, _ := rawDo(t, addr, method, target); resp.StatusCode != 404 {
			t.Errorf("%s %s: %s, want 404", method, target, resp.Status)
		}
	}
}

// The files Nix may ask a binary cache for that lancache never has (build
// logs, listings, realisations of CA derivations) are 404, which Nix reads as
// "none here"; a 400 would be a hard error for it.
func TestHandlerOptionalNixFilesAre404(t *testing.T) {
	srv, hd := serveTest(t, newMemSource())
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, target := range []string{
		"/log/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-hello-2.12.1.drv",
		"/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p.ls",
		// Nix 2.8 sends the realisation id as it is: "sha256:<hex>!<output>".
		"/realisations/sha256:1d0bc8bb1c2fd0e1dd2e6d6a2b9b0b8a8e9e0c3a3c7a5d7b3e5f6a7b8c9d0e1f!out.doi",
		"/build-trace-v2/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-hello-2.12.1.drv/out.json",
	} {
		want404(t, addr, target)
	}
	if n := hd.Stats().BadRequests.Load(); n != 0 {
		t.Errorf("%d requests counted as bad", n)
	}
}

// Every NAR response says Accept-Ranges: bytes (HEAD and 206 too), so that
// Nix resumes a broken download, and never carries a Content-Encoding, which
// Nix 2.8 would try to decode (identity included).
func TestHandlerNARHeaders(t *testing.T) {
	src := newMemSource()
	info, file := testFile(t, "zstd", 20_000)
	h := src.add(info, file)
	srv, _ := serveTest(t, src)
	addr := strings.TrimPrefix(srv.URL, "http://")
	u, _ := narURL(h, info)
	for _, tc := range []struct {
		method, rng string
		status      int
		body        []byte
	}{
		{"GET", "", 200, file},
		{"HEAD", "", 200, nil},
		{"GET", "bytes=1000-", 206, file[1000:]},
		{"HEAD", "bytes=1000-", 206, nil},
		{"GET", "bytes=10-19", 206, file[10:20]},
	} {
		hdr := []string{"Accept-Encoding", "gzip, deflate, br, zstd, identity"}
		if tc.rng != "" {
			hdr = append(hdr, "Range", tc.rng)
		}
		resp, body := rawDo(t, addr, tc.method, "/"+u, hdr...)
		what := tc.method + " " + tc.rng
		if resp.StatusCode != tc.status || !bytes.Equal(body, tc.body) {
			t.Errorf("%s: %s with %d bytes, want %d with %d", what, resp.Status, len(body), tc.status, len(tc.body))
		}
		if got := resp.Header.Get("Accept-Ranges"); got != "bytes" {
			t.Errorf("%s: Accept-Ranges %q, want bytes", what, got)
		}
		if ce, ok := resp.Header["Content-Encoding"]; ok {
			t.Errorf("%s: Content-Encoding %q; Nix 2.8 fails on any", what, ce)
		}
		if tc.status == 206 {
			start, _, _ := strings.Cut(strings.TrimPrefix(tc.rng, "bytes="), "-")
			if cr := resp.Header.Get("Content-Range"); !strings.HasPrefix(cr, "bytes "+start+"-") || !strings.HasSuffix(cr, fmt.Sprintf("/%d", len(file))) {
				t.Errorf("%s: Content-Range %q", what, cr)
			}
		}
	}
}

// fileSource is a memSource that also finds its files by FileHash.
type fileSource struct{ *memSource }

func (f fileSource) NarInfoByFile(_ context.Context, fh NarHash) (*NarInfo, error) {
	for _, info := range f.infos {
		if info.FileHash == fh.String() {
			c := *info
			return &c, nil
		}
	}
	return nil, ErrNotFound
}

// A NAR URL in Nix's own layout, nar/<filehash>.nar[.ext], as in upstream's
// narinfos, is served when a source holds that file, and is a 404 otherwise:
// a 400 would make Nix fail the substitution instead of falling back. Only
// names no binary cache uses are a 400.
func TestHandlerServesNixLayoutNARURLs(t *testing.T) {
	src := fileSource{newMemSource()}
	info, file := testFile(t, "zstd", 30_000)
	sum := sha256.Sum256(file)
	fh := NarHash(sum)
	info.FileHash = fh.String()
	src.add(info, file)
	plain, plainFile := testFile(t, "none", 3_000)
	plain.StorePath = "/nix/store/1rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-plain"
	plain.FileHash = plain.NarHash.String()
	src.add(plain, plainFile)
	srv, hd := serveTest(t, newMemSource(), src)
	addr := strings.TrimPrefix(srv.URL, "http://")

	held := "/nar/" + fh.Base32() + ".nar.zst"
	if resp, body := rawDo(t, addr, "GET", held); resp.StatusCode != 200 || !bytes.Equal(body, file) || resp.Header.Get("Accept-Ranges") != "bytes" {
		t.Errorf("GET %s: %s, %d bytes, Accept-Ranges %q; want 200 and the file", held, resp.Status, len(body), resp.Header.Get("Accept-Ranges"))
	}
	if resp, body := rawDo(t, addr, "HEAD", held); resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength != int64(len(file)) {
		t.Errorf("HEAD %s: %s, Content-Length %d", held, resp.Status, resp.ContentLength)
	}
	if resp, body := rawDo(t, addr, "GET", held+"?hash=whatever", "Range", "bytes=100-"); resp.StatusCode != 206 || !bytes.Equal(body, file[100:]) {
		t.Errorf("GET %s with Range: %s, %d bytes; want 206 and the rest", held, resp.Status, len(body))
	}
	plainURL := "/nar/" + plain.NarHash.Base32() + ".nar"
	if resp, body := rawDo(t, addr, "GET", plainURL); resp.StatusCode != 200 || !bytes.Equal(body, plainFile) {
		t.Errorf("GET %s: %s, %d bytes; want 200 and the NAR", plainURL, resp.Status, len(body))
	}

	other := NarHash(sha256.Sum256([]byte("not held")))
	for _, target := range []string{
		"/nar/" + other.Base32() + ".nar.xz",   // not held
		"/nar/" + fh.Base32() + ".nar.xz",      // held in another compression
		"/nar/" + fh.Base32() + ".nar",         // held compressed only
		"/nar/" + fh.Base32() + ".nar.br",      // a compression lancache does not keep
		"/nar/" + fh.Base32()[:51] + "e.nar",   // 'e' is not nixbase32
		"/nar/" + fh.Base32() + "0.nar.zst",    // too long for a sha256
		"/nar/whatever-another-cache-uses.nar", // someone's own layout
		"/nar/",
	} {
		want404(t, addr, target)
	}
	if n := hd.Stats().BadRequests.Load(); n != 0 {
		t.Errorf("%d well-formed NAR requests counted as bad", n)
	}
	for _, target := range []string{
		"/nar/" + fh.Base32() + ".nar;rm", "/nar/a!b.nar", "/nar/" + strings.Repeat("a", 300) + ".nar",
		"/nar/%2e%2e%2fetc", "/nar/..",
	} {
		if resp, _ := rawDo(t, addr, "GET", target); resp.StatusCode != 400 {
			t.Errorf("GET %s: %s, want 400", clip(target), resp.Status)
		}
	}
}

// harmonia's NAR URLs, nar/<narhash>.nar?hash=<hash>, name a path and its
// NarHash as the handler's own do: served by any source holding it.
func TestHandlerServesHarmoniaNARURLs(t *testing.T) {
	src := newMemSource()
	info, file := testFile(t, "none", 5_000)
	h := src.add(info, file)
	srv, _ := serveTest(t, src)
	addr := strings.TrimPrefix(srv.URL, "http://")
	u := "/nar/" + info.NarHash.Base32() + ".nar?hash=" + h.String()
	if resp, body := rawDo(t, addr, "GET", u, "Range", "bytes=10-"); resp.StatusCode != 206 || !bytes.Equal(body, file[10:]) {
		t.Errorf("GET %s: %s, %d bytes; want 206 and the rest of the NAR", u, resp.Status, len(body))
	}
	other := NarHash(sha256.Sum256([]byte("other")))
	for _, target := range []string{
		"/nar/" + other.Base32() + ".nar?hash=" + h.String(),            // another NAR of the path
		"/nar/" + info.NarHash.Base32() + ".nar?hash=" + h.String()[1:], // not a hash
		"/nar/" + info.NarHash.Base32() + ".nar.xz?hash=" + h.String(),  // not harmonia's
	} {
		want404(t, addr, target)
	}
}
