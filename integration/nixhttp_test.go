package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// TestNixHTTPChecklist walks the checklist of what the Nix client expects
// from an HTTP binary cache (shared/research/nix-http.md, rows 1-12), one
// subtest per row, against a store node (a chroot Nix store, uncompressed
// NARs dumped on the fly) and an appliance (no store, a NAR cache filled from
// a stand-in upstream whose files are xz, zstd, bzip2 and none), with curl for
// the server's answers and the real Nix client where the row is about what
// Nix does with them. Everything is on loopback.
func TestNixHTTPChecklist(t *testing.T) {
	fx := newStoreFixture(t)
	if _, err := exec.LookPath("curl"); err != nil {
		skipOrFail(t, "needs curl (apt-get install curl): %v", err)
	}
	byName := func(suffix string) string {
		i := slices.IndexFunc(fx.Closure, func(p string) bool { return strings.HasSuffix(p, suffix) })
		if i < 0 {
			t.Fatalf("no *%s in the fixture closure %q", suffix, fx.Closure)
		}
		return fx.Closure[i]
	}
	leaf, mid := byName("-leaf"), byName("-mid")

	// Upstream: one compression per layer; a later copy skips the paths an
	// earlier one wrote.
	bc := &binaryCache{Dir: filepath.Join(t.TempDir(), "upstream")}
	layers := []struct{ compression, path string }{
		{"xz", leaf}, {"zstd", fx.EdgeCases}, {"bzip2", mid}, {"none", fx.Top},
	}
	for _, l := range layers {
		mustRun(t, fx.Env, "nix", "copy", "--no-check-sigs", "--from", fx.Root, "--to", "file://"+bc.Dir+"?compression="+l.compression, l.path)
	}
	for _, l := range layers {
		if c := one(bc.narinfo(t, l.path), "Compression"); c != l.compression {
			t.Fatalf("upstream has %s as %s, want %s", l.path, c, l.compression)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := serveUpstreamOn(t, ln, bc.Dir)

	// Row 12's client meets upstream at this address first and keeps its
	// narinfos (with their NAR URLs) for narinfo-cache-positive-ttl.
	oldClient := nixEnvCaching(t, fx.Key)
	mustRun(t, oldClient, "nix", "path-info", "--store", up.URL, "-r", fx.Top)

	store := startDaemon(t, serveOpts{StoreRoot: fx.Root, Keys: []string{fx.Key}})
	cacheDir := filepath.Join(t.TempDir(), "cache")
	appOpts := serveOpts{StoreRoot: "none", Keys: []string{fx.Key}, Args: []string{"--cache-dir", cacheDir, "--upstream", up.URL}}
	app := startDaemon(t, appOpts)
	// The appliance holds mid's closure, pulled through; top and busybox
	// stay upstream only, for row 12.
	mustRun(t, fx.Env, "nix", "copy", "--from", app.URL, "--to", filepath.Join(t.TempDir(), "fill"), mid)
	held := []string{leaf, fx.EdgeCases, mid}
	for _, p := range held {
		if _, err := os.Stat(filepath.Join(cacheDir, hashPart(p)+".narinfo")); err != nil {
			t.Fatalf("the appliance did not cache %s: %v", p, err)
		}
	}

	nodes := []*checkNode{
		{name: "store", d: store, root: fx.Top, paths: fx.Closure},
		{name: "appliance", d: app, root: mid, paths: held},
	}
	for _, n := range nodes {
		n.narinfos = map[string]map[string][]string{}
		for _, p := range n.paths {
			r := curl(t, n.d.URL+"/"+hashPart(p)+".narinfo")
			if r.Code != 200 {
				t.Fatalf("%s: narinfo of %s: %d", n.name, p, r.Code)
			}
			ni, err := parseNarinfo(r.Body)
			if err != nil {
				t.Fatalf("%s: narinfo of %s: %v\n%s", n.name, p, err, r.Body)
			}
			n.narinfos[p] = ni
		}
	}
	x, y := sha256.Sum256([]byte("x")), sha256.Sum256([]byte("y"))
	randomHash, randomFileHash := nixbase32.EncodeToString(x[:20]), nixbase32.EncodeToString(y[:])

	t.Run("01-nix-cache-info", func(t *testing.T) {
		for _, n := range nodes {
			r := curl(t, n.d.URL+"/nix-cache-info")
			info := map[string]string{}
			for _, l := range lines(r.Body) {
				k, v, _ := strings.Cut(l, ": ")
				info[k] = v
			}
			if r.Code != 200 || info["StoreDir"] != "/nix/store" || info["WantMassQuery"] != "1" {
				t.Errorf("%s: /nix-cache-info %d: %q; want 200, StoreDir /nix/store, WantMassQuery 1", n.name, r.Code, r.Body)
			}
			if _, err := strconv.Atoi(info["Priority"]); err != nil {
				t.Errorf("%s: Priority %q is not an integer (Nix parses it with stoi)", n.name, info["Priority"])
			}
			if r := curl(t, "-I", n.d.URL+"/nix-cache-info"); r.Code != 200 {
				t.Errorf("%s: HEAD /nix-cache-info: %d", n.name, r.Code)
			}
			// The real client accepts it as a binary cache.
			mustRun(t, fx.Env, "nix", "store", "ping", "--store", n.d.URL)
		}
	})

	t.Run("02-missing-is-404", func(t *testing.T) {
		for _, n := range nodes {
			for _, target := range []string{
				"/" + randomHash + ".narinfo",
				"/nar/" + randomHash + "-" + randomFileHash + ".nar",
				"/nar/" + randomHash + "-" + randomFileHash + ".nar.zst",
				"/nar/" + randomFileHash + ".nar",
				"/nar/" + randomFileHash + ".nar.xz",
				"/nar/" + randomFileHash + ".nar.zst",
				"/nar/" + randomFileHash + ".nar.bz2",
				"/nar/" + randomFileHash + ".nar.br",
				"/nar/some-other-cache-layout.nar",
			} {
				for _, head := range []bool{false, true} {
					if r := curlMethod(t, head, n.d.URL+target); r.Code != 404 {
						t.Errorf("%s: %s %s: %d, want 404 (Nix: not here)", n.name, method(head), target, r.Code)
					}
				}
			}
			// 400 only for what no binary cache would be asked.
			for _, target := range []string{"/nar/..%2f..%2fetc%2fpasswd", "/nar/a;b.nar", "/nar/" + strings.Repeat("a", 300) + ".nar", "/" + randomHash[:31] + "e.narinfo"} {
				if r := curl(t, n.d.URL+target); r.Code != 400 {
					t.Errorf("%s: GET %s: %d, want 400", n.name, clip([]byte(target)), r.Code)
				}
			}
			// The real client reads a narinfo 404 as "not valid there".
			r := run(fx.Env, "nix", "path-info", "--store", n.d.URL, "/nix/store/"+randomHash+"-missing")
			if r.Err == nil || !strings.Contains(r.Stderr, "is not valid") || strings.Contains(r.Stderr, "HTTP error") {
				t.Errorf("%s: nix path-info of a missing path: %v; want \"is not valid\", no HTTP error", n.name, r.Err)
			}
		}
	})

	t.Run("03-narinfo-format", func(t *testing.T) {
		for _, n := range nodes {
			for _, p := range n.paths {
				raw := curl(t, n.d.URL+"/"+hashPart(p)+".narinfo").Body
				if !bytes.HasSuffix(raw, []byte("\n")) {
					t.Errorf("%s: narinfo of %s does not end in a newline", n.name, p)
				}
				for _, l := range strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n") {
					if k, _, ok := strings.Cut(l, ": "); !ok || k == "" {
						t.Errorf("%s: narinfo of %s: line %q is not \"Key: value\"", n.name, p, l)
					}
				}
				ni := n.narinfos[p]
				for _, k := range []string{"StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize"} {
					if one(ni, k) == "" {
						t.Errorf("%s: narinfo of %s has no %s:\n%s", n.name, p, k, raw)
					}
				}
				if one(ni, "StorePath") != p || one(ni, "NarSize") != strconv.FormatInt(fx.Info[p].NarSize, 10) {
					t.Errorf("%s: narinfo of %s names %s, NarSize %s", n.name, p, one(ni, "StorePath"), one(ni, "NarSize"))
				}
				// FileHash and FileSize describe the file at URL.
				file := curl(t, n.d.URL+"/"+one(ni, "URL")).Body
				sum := sha256.Sum256(file)
				if fh, err := decodeHash(one(ni, "FileHash")); err != nil || !bytes.Equal(fh, sum[:]) || one(ni, "FileSize") != strconv.Itoa(len(file)) {
					t.Errorf("%s: %s: FileHash %s, FileSize %s do not describe the %d bytes at its URL", n.name, p, one(ni, "FileHash"), one(ni, "FileSize"), len(file))
				}
				if one(ni, "Compression") == "none" {
					nh, _ := decodeHash(one(ni, "NarHash"))
					if !bytes.Equal(nh, sum[:]) {
						t.Errorf("%s: %s: Compression none, but FileHash %s differs from NarHash %s", n.name, p, one(ni, "FileHash"), one(ni, "NarHash"))
					}
				}
			}
			// Tools see them through the real client too.
			for p, pi := range pathInfosJSON(t, fx.Env, n.d.URL, n.paths...) {
				if pi["downloadHash"] == nil || pi["downloadSize"] == nil {
					t.Errorf("%s: nix path-info --json %s: no downloadHash/downloadSize: %v", n.name, p, pi)
				}
			}
		}
	})

	t.Run("04-signature-covers-fingerprint-only", func(t *testing.T) {
		for _, n := range nodes {
			for _, p := range n.paths {
				if got, want := n.narinfos[p]["Sig"], fx.Info[p].Signatures; !sameSet(got, want) {
					t.Errorf("%s: %s: Sig %q, want the store's %q", n.name, p, got, want)
				}
			}
			// The appliance rewrote URL (and this node's FileHash/FileSize are
			// its own): Nix still verifies the signatures, trusting only the key.
			dst := filepath.Join(t.TempDir(), "dst")
			mustRun(t, fx.Env, "nix", "copy", "--from", n.d.URL, "--to", dst, n.root)
			checkCopied(t, fx, dst, n.paths, true)
		}
	})

	t.Run("05-url-and-compression", func(t *testing.T) {
		for _, n := range nodes {
			for _, p := range n.paths {
				ni := n.narinfos[p]
				u := one(ni, "URL")
				if strings.HasPrefix(u, "/") || strings.Contains(u, "://") {
					t.Errorf("%s: %s: URL %q is not relative to the cache", n.name, p, u)
				}
				// A query string (as harmonia's URLs have) changes nothing.
				plain, query := curl(t, n.d.URL+"/"+u), curl(t, n.d.URL+"/"+u+"?hash="+hashPart(p))
				if query.Code != 200 || !bytes.Equal(plain.Body, query.Body) {
					t.Errorf("%s: GET %s?hash=...: %d, %d bytes; want the %d bytes without the query", n.name, u, query.Code, len(query.Body), len(plain.Body))
				}
				want := "none"
				if n.name == "appliance" {
					want = one(bc.narinfo(t, p), "Compression") // kept as upstream's
				}
				if c := one(ni, "Compression"); c != want {
					t.Errorf("%s: %s: Compression %q, want %q", n.name, p, c, want)
				}
			}
		}
		// xz, zstd and bzip2 from the appliance: Nix decoded them all in
		// row 4 and verified the NarHash.
	})

	// Rows 7, 8 and 11 through a proxy that cuts the first answer for each NAR
	// short: Nix must resume it with a Range request.
	proxied := map[string][]proxyEntry{}
	var proxyOnce sync.Once
	runProxied := func(t *testing.T) {
		proxyOnce.Do(func() {
			for _, n := range nodes {
				px := startBreakingProxy(t, n.d.URL)
				dst := filepath.Join(t.TempDir(), "dst")
				r := run(fx.Env, "nix", "copy", "--from", px.URL, "--to", dst, n.root)
				if r.Err != nil {
					t.Errorf("%s: nix copy through a proxy that cuts each NAR short once: %v", n.name, r.Err)
				} else {
					checkCopied(t, fx, dst, n.paths, true)
				}
				proxied[n.name] = px.entries()
			}
		})
	}

	t.Run("06-no-content-encoding", func(t *testing.T) {
		for _, n := range nodes {
			for _, p := range n.paths {
				u := n.d.URL + "/" + one(n.narinfos[p], "URL")
				for _, r := range []curlResult{
					curl(t, "--compressed", u), curl(t, "--compressed", "-I", u), curl(t, "--compressed", "-r", "1-", u),
					curl(t, "-H", "Accept-Encoding: identity", u),
				} {
					if ce := r.Header.Values("Content-Encoding"); len(ce) > 0 {
						t.Errorf("%s: %s: Content-Encoding %q (status %d); Nix 2.8 fails on any", n.name, u, ce, r.Code)
					}
				}
			}
		}
	})

	t.Run("07-resume-with-range", func(t *testing.T) {
		for _, n := range nodes {
			for _, p := range n.paths {
				u := n.d.URL + "/" + one(n.narinfos[p], "URL")
				full := curl(t, u)
				for _, r := range []curlResult{full, curl(t, "-I", u), curl(t, "-r", "7-", u)} {
					if r.Header.Get("Accept-Ranges") != "bytes" {
						t.Errorf("%s: %s (status %d): Accept-Ranges %q, want bytes", n.name, u, r.Code, r.Header.Get("Accept-Ranges"))
					}
				}
				part := curl(t, "-r", "7-", u)
				wantCR := fmt.Sprintf("bytes 7-%d/%d", len(full.Body)-1, len(full.Body))
				if part.Code != 206 || part.Header.Get("Content-Range") != wantCR || !bytes.Equal(part.Body, full.Body[7:]) {
					t.Errorf("%s: %s Range bytes=7-: %d, Content-Range %q, %d bytes; want 206, %q and the rest", n.name, u, part.Code, part.Header.Get("Content-Range"), len(part.Body), wantCR)
				}
			}
		}
		// The real client: every NAR cut short once, resumed with a Range.
		runProxied(t)
		for _, n := range nodes {
			for _, p := range n.paths {
				u := "/" + one(n.narinfos[p], "URL")
				size := int64(-1) // of the answer that was cut
				resumed := false
				for _, e := range proxied[n.name] {
					switch {
					case e.Path != u || e.Method != "GET":
					case e.Cut:
						size = e.ContentLength
					case e.Range != "":
						resumed = true
						start := strings.TrimSuffix(strings.TrimPrefix(e.Range, "bytes="), "-")
						want := fmt.Sprintf("bytes %s-%d/%d", start, size-1, size)
						if e.Status != 206 || e.ContentRange != want {
							t.Errorf("%s: Nix resumed %s with Range %q: status %d, Content-Range %q; want 206, %q", n.name, u, e.Range, e.Status, e.ContentRange, want)
						}
					}
				}
				cut := size >= 0
				if !cut || !resumed {
					t.Errorf("%s: %s: cut short %v, resumed with a Range request %v; want both", n.name, u, cut, resumed)
				}
			}
		}
	})

	t.Run("08-short-body-is-retried", func(t *testing.T) {
		runProxied(t)
		for _, n := range nodes {
			for _, e := range proxied[n.name] {
				// A cut answer is recognisable as short only with its length.
				if e.Cut && e.ContentLength <= 0 {
					t.Errorf("%s: GET %s: no Content-Length, so a cut body looks complete", n.name, e.Path)
				}
			}
		}
		// Stalls (stalled-download-timeout, 300 s) are Nix's own timer; not
		// exercised here.
	})

	t.Run("09-content-type", func(t *testing.T) {
		for _, n := range nodes {
			p := n.paths[0]
			for target, want := range map[string]string{
				"/nix-cache-info":               "text/x-nix-cache-info",
				"/" + hashPart(p) + ".narinfo":  "text/x-nix-narinfo",
				"/" + one(n.narinfos[p], "URL"): "application/x-nix-nar",
			} {
				if ct := curl(t, n.d.URL+target).Header.Get("Content-Type"); ct != want {
					t.Errorf("%s: %s: Content-Type %q, want %q", n.name, target, ct, want)
				}
			}
		}
	})

	t.Run("10-optional-files-are-404", func(t *testing.T) {
		for _, n := range nodes {
			p := n.root
			drv := path.Base(fx.Info[p].Deriver)
			for _, target := range []string{
				"/log/" + drv,
				"/" + hashPart(p) + ".ls",
				"/realisations/sha256:" + strings.Repeat("0a", 32) + "!out.doi",
				"/build-trace-v2/" + drv + "/out.json",
			} {
				for _, head := range []bool{false, true} {
					if r := curlMethod(t, head, n.d.URL+target); r.Code != 404 {
						t.Errorf("%s: %s %s: %d, want 404", n.name, method(head), target, r.Code)
					}
				}
			}
			// The real client: no log here, not an HTTP error.
			r := run(fx.Env, "nix", "log", "--store", n.d.URL, p)
			if r.Err == nil || strings.Contains(r.Stderr, "HTTP error") || !strings.Contains(r.Stderr, "not available") {
				t.Errorf("%s: nix log %s: %v; want \"not available\", no HTTP error", n.name, p, r.Err)
			}
		}
	})

	t.Run("11-http1.1", func(t *testing.T) {
		for _, n := range nodes {
			r := curl(t, n.d.URL+"/nix-cache-info")
			if r.Version != "1.1" {
				t.Errorf("%s: curl got HTTP/%s, want 1.1", n.name, r.Version)
			}
		}
		runProxied(t)
		for _, n := range nodes {
			for _, e := range proxied[n.name] {
				if e.Proto != "HTTP/1.1" {
					t.Errorf("%s: %s %s answered in %s", n.name, e.Method, e.Path, e.Proto)
				}
				if !strings.Contains(e.UserAgent, "Nix/") {
					t.Errorf("%s: %s %s: User-Agent %q has no Nix/<version>", n.name, e.Method, e.Path, e.UserAgent)
				}
			}
			if len(proxied[n.name]) > 0 {
				t.Logf("%s: Nix's User-Agent: %q", n.name, proxied[n.name][0].UserAgent)
			}
		}
	})

	t.Run("12-urls-never-issued", func(t *testing.T) {
		// Upstream's own NAR URLs, as a client that knew upstream at this
		// address has them: the appliance serves the files it holds.
		for _, p := range held {
			u := bc.narURL(t, p)
			want, err := os.ReadFile(filepath.Join(bc.Dir, filepath.FromSlash(u)))
			if err != nil {
				t.Fatal(err)
			}
			if r := curl(t, app.URL+u); r.Code != 200 || !bytes.Equal(r.Body, want) || r.Header.Get("Accept-Ranges") != "bytes" {
				t.Errorf("appliance: GET %s (upstream's URL of %s): %d, %d bytes; want 200 and upstream's %d bytes", u, p, r.Code, len(r.Body), len(want))
			}
			if r := curl(t, "-I", app.URL+u); r.Code != 200 {
				t.Errorf("appliance: HEAD %s: %d", u, r.Code)
			}
			if r := curl(t, "-r", "3-", app.URL+u); r.Code != 206 || !bytes.Equal(r.Body, want[3:]) {
				t.Errorf("appliance: GET %s bytes=3-: %d, %d bytes", u, r.Code, len(r.Body))
			}
		}
		// Upstream's URLs of files a node does not hold are a 404 (Nix:
		// the substitute is gone), never a 400: everything on the store
		// node (it keeps no files), top and busybox on the appliance.
		for _, n := range nodes {
			for _, p := range fx.Closure {
				if n.name == "appliance" && slices.Contains(held, p) {
					continue
				}
				u := bc.narURL(t, p)
				if r := curl(t, n.d.URL+u); r.Code != 404 {
					t.Errorf("%s: GET %s (upstream's URL of %s): %d, want 404", n.name, u, p, r.Code)
				}
			}
		}

		// harmonia's URLs name the path and its uncompressed NAR: the store
		// node serves them; the appliance, holding compressed files only,
		// answers 404.
		for _, n := range nodes {
			for _, p := range n.paths {
				nh, err := decodeHash(fx.Info[p].NarHash)
				if err != nil {
					t.Fatal(err)
				}
				u := "/nar/" + nixbase32.EncodeToString(nh) + ".nar?hash=" + hashPart(p)
				r := curl(t, n.d.URL+u)
				sum := sha256.Sum256(r.Body)
				if n.name == "store" && (r.Code != 200 || !bytes.Equal(sum[:], nh)) {
					t.Errorf("%s: GET %s (harmonia's URL of %s): %d, %d bytes; want 200 and the NAR", n.name, u, p, r.Code, len(r.Body))
				}
				if n.name == "appliance" && r.Code != 404 {
					t.Errorf("%s: GET %s (harmonia's URL of %s, held compressed): %d, want 404", n.name, u, p, r.Code)
				}
			}
		}

		// The appliance replaces upstream at its address. The client's kept
		// narinfos send it to upstream's URLs: the files the appliance holds
		// substitute mid and leaf; top's NAR is a 404, so Nix builds it
		// instead of failing (a 400 would fail the build).
		app.Stop(syscall.SIGTERM)
		upAddr := strings.TrimPrefix(up.URL, "http://")
		up.stop()
		_, portStr, _ := net.SplitHostPort(upAddr)
		port, _ := strconv.Atoi(portStr)
		replaced := startDaemonOnPort(t, serveOpts{StoreRoot: "none", Keys: []string{fx.Key}, Args: []string{"--cache-dir", cacheDir}}, port)
		if replaced.URL != up.URL {
			t.Fatalf("the appliance listens on %s, upstream was %s", replaced.URL, up.URL)
		}
		dst := filepath.Join(t.TempDir(), "dst")
		nixFile := filepath.Join(fx.Dir, "src", "fixture.nix")
		out := mustRun(t, oldClient, "nix-build", "--store", dst, nixFile, "-A", "top", "--no-out-link",
			"--option", "substituters", replaced.URL, "--option", "trusted-substituters", replaced.URL)
		if got := strings.TrimSpace(string(out)); got != fx.Top {
			t.Fatalf("nix-build printed %q, want %s", got, fx.Top)
		}
		// Nix asked no narinfo (it had them all) and got NARs: through
		// upstream's URLs only.
		if st, err := replaced.status(); err != nil {
			t.Errorf("status: %v", err)
		} else if st.Totals.NarInfoHits+st.Totals.NarInfoMisses != 0 || st.Totals.BytesServedToNix == 0 {
			t.Errorf("the replacing appliance answered %d narinfos and served %d NAR bytes; want no narinfo (Nix kept upstream's) and some bytes",
				st.Totals.NarInfoHits+st.Totals.NarInfoMisses, st.Totals.BytesServedToNix)
		}
		// mid and leaf came from the appliance (signed), top was built.
		checkCopied(t, fx, dst, []string{mid, leaf}, true)
		checkCopied(t, fx, dst, []string{fx.Top}, false)
		if got := pathInfos(t, fx.Env, dst, fx.Top)[fx.Top]; len(got.Signatures) != 0 {
			t.Errorf("%s in the client's store is signed %q: substituted, not built; the test did not see the 404", fx.Top, got.Signatures)
		}
		replaced.Stop(syscall.SIGTERM)
	})
	store.Stop(syscall.SIGTERM)
}

// checkNode is one daemon of TestNixHTTPChecklist and the paths it holds.
type checkNode struct {
	name     string
	d        *daemon
	root     string                         // paths is its closure
	paths    []string                       // what the node holds
	narinfos map[string]map[string][]string // served, by store path
}

// nixEnvCaching is nixEnv with Nix's default narinfo cache TTLs (a 404 kept
// an hour, a hit 30 days), as a real user has them.
func nixEnvCaching(t testing.TB, keys ...string) []string {
	env := nixEnv(t, keys...)
	for i, kv := range env {
		if conf, ok := strings.CutPrefix(kv, "NIX_CONFIG="); ok {
			var keep []string
			for _, l := range strings.Split(conf, "\n") {
				if !strings.HasPrefix(l, "narinfo-cache-") {
					keep = append(keep, l)
				}
			}
			env[i] = "NIX_CONFIG=" + strings.Join(keep, "\n")
		}
	}
	return env
}

// startDaemonOnPort is startDaemon on a given HTTP port of 127.0.0.1.
func startDaemonOnPort(t testing.TB, o serveOpts, port int) *daemon {
	t.Helper()
	d := startProcess(t, serveArgs(t, o, port, freePort(t, "udp")), nil)
	d.Addr = fmt.Sprintf("127.0.0.1:%d", port)
	d.URL = "http://" + d.Addr
	if err := d.waitReady(readyTimeout); err != nil {
		t.Fatalf("lancache on port %d: %v\n--- daemon output ---\n%s", port, err, d.Logs())
	}
	return d
}

// pathInfosJSON returns the raw objects of `nix path-info --json --store
// store paths...`, keyed by path (Nix 2.8's array form).
func pathInfosJSON(t testing.TB, env []string, store string, paths ...string) map[string]map[string]any {
	t.Helper()
	out := mustRun(t, env, "nix", append([]string{"path-info", "--json", "--store", store}, paths...)...)
	var list []map[string]any
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("nix path-info --json: %v\n%s", err, out)
	}
	m := map[string]map[string]any{}
	for _, o := range list {
		if p, ok := o["path"].(string); ok {
			m[p] = o
		}
	}
	if len(m) != len(paths) {
		t.Fatalf("nix path-info --json printed %d paths, want %d:\n%s", len(m), len(paths), out)
	}
	return m
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func method(head bool) string {
	if head {
		return "HEAD"
	}
	return "GET"
}

// curlResult is one response as curl saw it.
type curlResult struct {
	Code    int
	Version string // "1.1", "2", ...
	Header  http.Header
	Body    []byte
}

// curl runs curl with args (the URL last) and returns the response. Only
// loopback URLs are passed; proxies from the environment are ignored.
func curl(t testing.TB, args ...string) curlResult {
	t.Helper()
	dir := t.TempDir()
	hdr, body := filepath.Join(dir, "header"), filepath.Join(dir, "body")
	base := []string{"-sS", "--noproxy", "*", "--path-as-is", "-g", "--max-time", "60", "-D", hdr, "-o", body, "-w", "%{http_code} %{http_version}"}
	out := mustRun(t, os.Environ(), "curl", append(base, args...)...)
	var r curlResult
	if _, err := fmt.Sscanf(string(out), "%d %s", &r.Code, &r.Version); err != nil {
		t.Fatalf("curl %q printed %q: %v", args, out, err)
	}
	r.Header = http.Header{}
	hb, _ := os.ReadFile(hdr)
	for _, l := range strings.Split(string(hb), "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && !strings.HasPrefix(l, "HTTP/") {
			r.Header.Add(k, strings.TrimSpace(v))
		}
	}
	r.Body, _ = os.ReadFile(body)
	return r
}

// curlMethod is curl of url with GET, or HEAD when head is set.
func curlMethod(t testing.TB, head bool, url string) curlResult {
	t.Helper()
	if head {
		return curl(t, "-I", url)
	}
	return curl(t, url)
}

// proxyEntry is one request a breakingProxy passed on, and its answer.
type proxyEntry struct {
	Method, Path, Range, UserAgent string
	Status                         int
	Proto                          string // of the daemon's answer
	ContentRange, ContentEncoding  string
	ContentLength                  int64
	Cut                            bool // the body was cut short on purpose
}

// breakingProxy passes requests to a daemon and cuts the first 200 answer
// for each NAR path short, half way through its body, as a broken link
// would. It records every request and answer.
type breakingProxy struct {
	URL    string
	target string
	client *http.Client

	mu  sync.Mutex
	cut map[string]bool
	log []proxyEntry
}

func startBreakingProxy(t testing.TB, target string) *breakingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &breakingProxy{
		URL: "http://" + ln.Addr().String(), target: target, cut: map[string]bool{},
		// No transparent gzip: the proxy must pass what the daemon sends.
		client: &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableCompression: true}},
	}
	t.Cleanup(p.client.CloseIdleConnections) // after the server stopped
	serveHTTP(t, ln, p)
	return p
}

func (p *breakingProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, p.target+r.URL.RequestURI(), nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	for _, k := range []string{"Range", "User-Agent", "Accept-Encoding"} {
		if v := r.Header.Get(k); v != "" {
			req.Header.Set(k, v)
		}
	}
	resp, err := p.client.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	e := proxyEntry{
		Method: r.Method, Path: r.URL.Path, Range: r.Header.Get("Range"), UserAgent: r.Header.Get("User-Agent"),
		Status: resp.StatusCode, Proto: resp.Proto, ContentRange: resp.Header.Get("Content-Range"),
		ContentEncoding: resp.Header.Get("Content-Encoding"), ContentLength: resp.ContentLength,
	}
	p.mu.Lock()
	if strings.HasPrefix(r.URL.Path, "/nar/") && r.Method == http.MethodGet && resp.StatusCode == 200 && resp.ContentLength > 1 && !p.cut[r.URL.Path] {
		p.cut[r.URL.Path] = true
		e.Cut = true
	}
	p.log = append(p.log, e)
	p.mu.Unlock()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	if !e.Cut {
		io.Copy(w, resp.Body)
		return
	}
	io.CopyN(w, resp.Body, resp.ContentLength/2)
	http.NewResponseController(w).Flush()
	panic(http.ErrAbortHandler) // the client sees a body shorter than Content-Length
}

func (p *breakingProxy) entries() []proxyEntry {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.log)
}
