package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io/fs"
	"math/rand/v2"
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

	"github.com/lancache/lancache/internal/syncbuf"
)

// TestAppliance runs `lancache serve --store-root none --cache-dir ...
// --upstream ...` (the appliance of issue 5) on a LAN of network namespaces,
// between an upstream binary cache served over HTTP from a host of its own
// and real Nix clients on other hosts. The subtests share one fixture store.
func TestAppliance(t *testing.T) {
	fx := newStoreFixture(t)
	requireNetns(t)

	// The subnets are this test's: 10.231.100-104.
	t.Run("pull-through/zstd", func(t *testing.T) { testPullThrough(t, fx, 100, "zstd") })
	t.Run("pull-through/xz", func(t *testing.T) { testPullThrough(t, fx, 101, "xz") })
	t.Run("crash", func(t *testing.T) { testApplianceCrash(t, fx, 102) })
	t.Run("eviction", func(t *testing.T) { testApplianceEviction(t, fx, 103) })
	t.Run("untrusted", func(t *testing.T) { testApplianceUntrusted(t, fx, 104) })
}

// testPullThrough: four clients copy the fixture's closure through the
// appliance at the same time. Every NAR must cross the "WAN" once (upstream
// NAR bytes at most 1.05x the closure's compressed size, one request per NAR
// and per narinfo), every copy must verify, and the cache directory must be a
// binary cache Nix can read as file://. After a restart of the appliance a
// second round of four fresh clients is served from its disk alone.
func testPullThrough(t *testing.T, fx *storeFixture, subnet int, compression string) {
	bc := newBinaryCache(t, fx.Env, fx.Root, compression, fx.Top)
	l := newLAN(t, subnet)
	up := serveUpstream(t, l.addHost("upstream"), bc.Dir)
	// The largest NAR (8 MiB) takes half a second upstream, so that the
	// clients surely ask for it while it is being downloaded.
	up.setRate(bc.narURL(t, fx.EdgeCases), 16<<20)
	app := l.addHost("appliance")
	var clients []*host
	for i := 1; i <= 4; i++ {
		clients = append(clients, l.addHost(fmt.Sprintf("client%d", i)))
	}
	cacheDir, stateDir := filepath.Join(t.TempDir(), "cache"), t.TempDir()
	d := startAppliance(t, app, fx.Key, cacheDir, stateDir, "1GiB", up.URL)

	var compressed int64
	for _, p := range fx.Closure {
		compressed += bc.fileSize(t, p)
	}

	round := func(name string) {
		t.Helper()
		start := time.Now()
		dsts := copyConcurrently(t, clients, fx.Key, d.URL, fx.Top)
		for _, dst := range dsts {
			checkCopied(t, fx, dst, fx.Closure, true)
		}
		t.Logf("%s: 4 concurrent nix copy of %d paths (%d compressed bytes) in %v", name, len(fx.Closure), compressed, time.Since(start).Round(time.Millisecond))
	}

	round("round 1")
	st := up.stats()
	t.Logf("upstream after round 1: %s", st)
	if limit := compressed + compressed/20; st.NARBytes > limit {
		t.Errorf("upstream sent %d NAR bytes for a closure of %d compressed bytes; want at most 1.05x (%d): the downloads were not coalesced", st.NARBytes, compressed, limit)
	}
	for _, p := range fx.Closure {
		if n := st.NARRequests[bc.narURL(t, p)]; n != 1 {
			t.Errorf("upstream got %d requests for the NAR of %s; want 1", n, p)
		}
		if n := st.NarinfoRequests[hashPart(p)]; n != 1 {
			t.Errorf("upstream got %d requests for the narinfo of %s; want 1", n, p)
		}
	}
	entries := checkCacheDir(t, cacheDir)
	for _, p := range fx.Closure {
		ni, ok := entries[hashPart(p)]
		if !ok {
			t.Errorf("%s is not in the cache dir after round 1", p)
			continue
		}
		// The file on disk and on the wire is upstream's, compression and all.
		if got, want := one(ni, "Compression"), compression; got != want {
			t.Errorf("%s: Compression %q in the cache dir, want upstream's %q", p, got, want)
		}
		if got, want := one(ni, "FileHash"), one(bc.narinfo(t, p), "FileHash"); got != want {
			t.Errorf("%s: FileHash %s in the cache dir, upstream's is %s", p, got, want)
		}
	}
	if s, err := d.status(); err != nil {
		t.Errorf("status: %v", err)
	} else if s.Cache == nil || s.Cache.Entries != len(fx.Closure) || s.Totals.BytesFromUpstream != uint64(st.NARBytes) {
		t.Errorf("status: cache %+v, bytes_from_upstream %d; want %d entries and the %d bytes upstream sent", s.Cache, s.Totals.BytesFromUpstream, len(fx.Closure), st.NARBytes)
	}

	// The cache dir is a binary cache of its own.
	dst := filepath.Join(t.TempDir(), "from-file")
	mustRun(t, fx.Env, "nix", "copy", "--from", "file://"+cacheDir, "--to", dst, fx.Top)
	checkCopied(t, fx, dst, fx.Closure, true)

	// Round 2 after a clean restart: nothing may come from upstream, not
	// even a narinfo, so the disk index must have been rebuilt.
	d.Stop(syscall.SIGTERM)
	d = startAppliance(t, app, fx.Key, cacheDir, stateDir, "1GiB", up.URL)
	before := up.stats()
	round("round 2")
	after := up.stats()
	if after.NARBytes != before.NARBytes || after.narRequests() != before.narRequests() {
		t.Errorf("round 2 fetched %d NAR bytes in %d requests from upstream; want none, all from the cache", after.NARBytes-before.NARBytes, after.narRequests()-before.narRequests())
	}
	if n := after.narinfoRequests() - before.narinfoRequests(); n != 0 {
		t.Errorf("round 2 asked upstream for %d narinfos; want none", n)
	}
	checkCacheDir(t, cacheDir)
	d.Stop(syscall.SIGTERM)
}

// testApplianceCrash kills the appliance with SIGKILL while it pulls a large
// NAR through from a slow upstream, then restarts it on the same cache dir:
// the half-written entry must be gone (no partial file, no narinfo), and the
// path must be pulled through again, whole, on the next request.
func testApplianceCrash(t *testing.T, fx *storeFixture, subnet int) {
	big := fx.EdgeCases // about 8 MiB of random bytes, so zstd leaves them
	bc := newBinaryCache(t, fx.Env, fx.Root, "zstd", big)
	narURL, size := bc.narURL(t, big), bc.fileSize(t, big)
	const rate = 2 << 20
	if size < 3*rate {
		t.Fatalf("the NAR of %s is %d bytes; the test needs a download of several seconds at %d B/s", big, size, rate)
	}
	l := newLAN(t, subnet)
	up := serveUpstream(t, l.addHost("upstream"), bc.Dir)
	up.setRate(narURL, rate)
	app, client := l.addHost("appliance"), l.addHost("client")
	cacheDir, stateDir := filepath.Join(t.TempDir(), "cache"), t.TempDir()
	d := startAppliance(t, app, fx.Key, cacheDir, stateDir, "1GiB", up.URL)

	// One attempt: Nix's retries would meet the restarted appliance.
	dst := filepath.Join(t.TempDir(), "dst")
	copyCmd := startNixCopy(t, client, fx.Env, d.URL, dst, "--option", "download-attempts", "1", big)

	pollUntil(t, 60*time.Second, "upstream has sent 2 MiB of the NAR", func() bool {
		return up.stats().NARBytesOf[narURL] >= 2<<20
	})
	partials := func() []string {
		var found []string
		des, _ := os.ReadDir(filepath.Join(cacheDir, "nar"))
		for _, de := range des {
			if strings.HasPrefix(de.Name(), ".") {
				found = append(found, de.Name())
			}
		}
		return found
	}
	pollUntil(t, 30*time.Second, "a partial NAR file in the cache dir", func() bool { return len(partials()) > 0 })
	d.kill()
	sent := up.stats().NARBytesOf[narURL]
	if sent >= size {
		t.Fatalf("upstream had sent all %d bytes before the kill; the test did not crash mid-download", size)
	}
	t.Logf("SIGKILL after upstream sent %d of %d bytes; left behind: %q", sent, size, partials())
	if _, err := os.Stat(filepath.Join(cacheDir, hashPart(big)+".narinfo")); err == nil {
		t.Errorf("a narinfo for %s is in the cache dir although its download was killed", big)
	}
	if r := copyCmd.wait(); r.Err == nil {
		t.Errorf("nix copy succeeded although the appliance was killed mid-download")
	}
	if r := run(fx.Env, "nix", "path-info", "--store", dst, big); r.Err == nil {
		t.Errorf("%s is valid in the client's store after a killed download", big)
	}

	up.setRate(narURL, 0)
	d = startAppliance(t, app, fx.Key, cacheDir, stateDir, "1GiB", up.URL)
	if entries := checkCacheDir(t, cacheDir); len(entries) != 0 {
		t.Errorf("after the restart the cache dir holds %d entries, want none: %v", len(entries), entries)
	}

	// Asked again, the appliance pulls the path through again and serves
	// upstream's file whole.
	body := d.wantStatus(t, "GET", "/"+hashPart(big)+".narinfo", 200)
	ni, err := parseNarinfo(body)
	if err != nil {
		t.Fatalf("narinfo of %s: %v\n%s", big, err, body)
	}
	resp, nar := d.get(t, "GET", "/"+one(ni, "URL"))
	want, err := os.ReadFile(filepath.Join(bc.Dir, filepath.FromSlash(narURL)))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !bytes.Equal(nar, want) {
		t.Errorf("GET %s after the restart: %s, %d bytes; want 200 and upstream's %d bytes", one(ni, "URL"), resp.Status, len(nar), len(want))
	}
	dst2 := filepath.Join(t.TempDir(), "dst2")
	mustRun(t, fx.Env, "ip", "netns", "exec", client.NS, "nix", "copy", "--from", d.URL, "--to", dst2, big)
	checkCopied(t, fx, dst2, []string{big}, true)
	if n := up.stats().NARRequests[narURL]; n != 2 {
		t.Errorf("upstream got %d requests for the NAR; want 2 (the killed one and one after the restart)", n)
	}
	if entries := checkCacheDir(t, cacheDir); entries[hashPart(big)] == nil {
		t.Errorf("%s is not in the cache dir after it was fetched again", big)
	}
	d.Stop(syscall.SIGTERM)
}

// testApplianceEviction fills a small cache through the appliance and checks
// that its usage stays under --cache-max-size, that the least recently used
// entries go first (a path used again survives an older one), and that an
// evicted path is pulled through again when asked for.
func testApplianceEviction(t *testing.T, fx *storeFixture, subnet int) {
	// Five small paths and a big one in a store of their own, signed by the
	// fixture's key; random bytes, so that sizes are what they seem.
	src := filepath.Join(t.TempDir(), "store")
	payload := t.TempDir()
	var dirs []string
	for i, name := range []string{"evict-s1", "evict-s2", "evict-s3", "evict-s4", "evict-s5", "evict-big"} {
		n := 256 << 10
		if name == "evict-big" {
			n = 768 << 10
		}
		dir := filepath.Join(payload, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "data"), randomBytes(uint64(i), n), 0o644); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, dir)
	}
	paths := lines(mustRun(t, fx.Env, "nix-store", append([]string{"--store", src, "--add"}, dirs...)...))
	if len(paths) != len(dirs) {
		t.Fatalf("nix-store --add printed %q", paths)
	}
	mustRun(t, fx.Env, "nix", append([]string{"store", "sign", "--store", src, "-k", filepath.Join(fx.Dir, "test-1.sk")}, paths...)...)
	s1, s2, s3, s4, s5, big := paths[0], paths[1], paths[2], paths[3], paths[4], paths[5]
	bc := newBinaryCache(t, fx.Env, src, "none", paths...)

	// Room for the big path and one and a half small ones: four small paths
	// fit, five do not, and next to the big one only one small one fits.
	// Each file counts rounded up to 4 KiB, as du would; the bound holds
	// however the cache rounds, as long as it counts every byte.
	entryCost := func(p string) int64 { return roundUp4K(bc.fileSize(t, p)) + 4096 }
	maxSize := entryCost(big) + entryCost(s1)*3/2

	l := newLAN(t, subnet)
	up := serveUpstream(t, l.addHost("upstream"), bc.Dir)
	app, client := l.addHost("appliance"), l.addHost("client")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	d := startAppliance(t, app, fx.Key, cacheDir, t.TempDir(), strconv.FormatInt(maxSize, 10), up.URL)

	// Watch the disk usage all along, partial files included.
	peak := watchUsage(t, cacheDir)

	fetch := func(p string) {
		t.Helper()
		dst := filepath.Join(t.TempDir(), "dst")
		mustRun(t, fx.Env, "ip", "netns", "exec", client.NS, "nix", "copy", "--from", d.URL, "--to", dst, p)
		mustRun(t, fx.Env, "nix-store", "--store", dst, "--verify-path", p)
		st, err := d.status()
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		if st.Cache == nil || st.Cache.UsedBytes > maxSize || st.Cache.MaxBytes != maxSize {
			t.Errorf("after fetching %s: status cache %+v; want used_bytes at most max_bytes %d", path.Base(p), st.Cache, maxSize)
		}
		if n := dirUsage(cacheDir); n > maxSize {
			t.Errorf("after fetching %s: the cache dir holds %d bytes, more than --cache-max-size %d", path.Base(p), n, maxSize)
		}
	}
	holds := func(when string, in, out []string) {
		t.Helper()
		entries := checkCacheDir(t, cacheDir)
		for _, p := range in {
			if entries[hashPart(p)] == nil {
				t.Errorf("%s: %s was evicted; want it kept", when, path.Base(p))
			}
		}
		for _, p := range out {
			if entries[hashPart(p)] != nil {
				t.Errorf("%s: %s is still cached; want it evicted", when, path.Base(p))
			}
		}
	}

	for _, p := range []string{s1, s2, s3, s4} {
		fetch(p)
	}
	holds("after s1-s4", []string{s1, s2, s3, s4}, nil)
	before := up.stats().NARBytes
	fetch(s1) // the oldest becomes the most recently used
	if n := up.stats().NARBytes - before; n != 0 {
		t.Errorf("fetching s1 again took %d NAR bytes from upstream; want it served from the cache", n)
	}
	fetch(s5)
	holds("after s1 again and s5", []string{s1, s3, s4, s5}, []string{s2})
	fetch(big)
	holds("after big", []string{big, s5}, []string{s1, s2, s3, s4})
	fetch(s2) // evicted earlier: pulled through again
	holds("after s2 again", []string{big, s2}, []string{s1, s3, s4, s5})
	if n := up.stats().NARRequests[bc.narURL(t, s2)]; n != 2 {
		t.Errorf("upstream got %d requests for the NAR of s2; want 2 (before and after its eviction)", n)
	}

	n := peak()
	t.Logf("--cache-max-size %d; peak disk usage %d", maxSize, n)
	if n > maxSize {
		t.Errorf("the cache dir held %d bytes at some point, more than --cache-max-size %d", n, maxSize)
	}
	d.Stop(syscall.SIGTERM)
}

// testApplianceUntrusted: narinfos without a valid signature by a trusted
// key are answered 404 and their NARs never fetched; a NAR whose bytes do
// not match the signed NarHash reaches no client as a complete response and
// is never committed to the cache. Once upstream serves the right bytes, the
// same path is pulled through and verifies.
func testApplianceUntrusted(t *testing.T, fx *storeFixture, subnet int) {
	bc := newBinaryCache(t, fx.Env, fx.Root, "none", fx.Top, fx.Foreign, fx.Private)
	l := newLAN(t, subnet)
	up := serveUpstream(t, l.addHost("upstream"), bc.Dir)
	app, client := l.addHost("appliance"), l.addHost("client")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	d := startAppliance(t, app, fx.Key, cacheDir, t.TempDir(), "1GiB", up.URL)

	// The private path upstream carries a forged test-1 signature: the one
	// of another path, well-formed and by the trusted key's name.
	forged := append(bytes.TrimRight(bc.raw(t, fx.Private), "\n"), []byte("\nSig: "+one(bc.narinfo(t, fx.Top), "Sig")+"\n")...)
	up.override("/"+hashPart(fx.Private)+".narinfo", forged)

	for _, p := range []string{fx.Foreign, fx.Private} {
		d.wantStatus(t, "GET", "/"+hashPart(p)+".narinfo", 404)
		d.wantStatus(t, "HEAD", "/"+hashPart(p)+".narinfo", 404)
		dst := filepath.Join(t.TempDir(), "dst")
		if r := run(fx.Env, "ip", "netns", "exec", client.NS, "nix", "copy", "--no-check-sigs", "--from", d.URL, "--to", dst, p); r.Err == nil {
			t.Errorf("nix copy of %s (no trusted signature upstream) through the appliance succeeded", p)
		}
		if n := up.stats().NARRequests[bc.narURL(t, p)]; n != 0 {
			t.Errorf("the appliance fetched the NAR of %s (no trusted signature) %d times", p, n)
		}
	}

	// Corrupt one NAR upstream: same length, one byte flipped in the middle,
	// so that only the NarHash can tell.
	bad := fx.Closure[slices.IndexFunc(fx.Closure, func(p string) bool { return strings.HasSuffix(p, "-busybox") })]
	badURL := bc.narURL(t, bad)
	good, err := os.ReadFile(filepath.Join(bc.Dir, filepath.FromSlash(badURL)))
	if err != nil {
		t.Fatal(err)
	}
	corrupt := bytes.Clone(good)
	corrupt[len(corrupt)/2] ^= 0x55
	up.override(badURL, corrupt)

	// A plain HTTP client must not get the bad bytes as a complete response.
	ni, err := parseNarinfo(d.wantStatus(t, "GET", "/"+hashPart(bad)+".narinfo", 200))
	if err != nil {
		t.Fatal(err)
	}
	code, body, err := d.fetch("GET", "/"+one(ni, "URL"))
	if err == nil && code == 200 && len(body) == len(corrupt) {
		t.Errorf("GET the NAR of %s with bad bytes upstream: a complete 200 response of %d bytes (same as upstream's %t); want the response aborted before its last byte", bad, len(body), bytes.Equal(body, corrupt))
	} else {
		t.Logf("GET the NAR of %s with bad bytes upstream: status %d, %d bytes, %v", bad, code, len(body), err)
	}
	dst := filepath.Join(t.TempDir(), "dst")
	if r := run(fx.Env, "ip", "netns", "exec", client.NS, "nix", "copy", "--from", d.URL, "--to", dst, bad); r.Err == nil {
		t.Errorf("nix copy of %s succeeded although upstream serves bad bytes", bad)
	}
	if r := run(fx.Env, "nix", "path-info", "--store", dst, bad); r.Err == nil {
		t.Errorf("%s is valid in the client's store although upstream served bad bytes", bad)
	}
	if entries := checkCacheDir(t, cacheDir); entries[hashPart(bad)] != nil {
		t.Errorf("the bad NAR of %s was committed to the cache", bad)
	}
	if st, err := d.status(); err != nil || st.Totals.VerificationFailures == 0 {
		t.Errorf("status after bad bytes: %v; want totals.verification_failures > 0", err)
	}

	// Upstream repaired: the whole closure comes through and verifies.
	up.override(badURL, nil)
	dst = filepath.Join(t.TempDir(), "dst-after")
	mustRun(t, fx.Env, "ip", "netns", "exec", client.NS, "nix", "copy", "--from", d.URL, "--to", dst, fx.Top)
	checkCopied(t, fx, dst, fx.Closure, true)
	entries := checkCacheDir(t, cacheDir)
	for _, p := range []string{fx.Foreign, fx.Private} {
		if entries[hashPart(p)] != nil {
			t.Errorf("%s (no trusted signature upstream) is in the cache dir", p)
		}
	}
	d.Stop(syscall.SIGTERM)
}

// startAppliance starts `lancache serve --store-root none` with a NAR cache
// and one upstream on host h, listening on h's LAN address.
func startAppliance(t *testing.T, h *host, key, cacheDir, stateDir, maxSize, upstreamURL string) *daemon {
	t.Helper()
	return h.startDaemon(t, nsServe{
		HTTP:     h.IP + ":37515",
		Keys:     []string{key},
		StateDir: stateDir,
		Args:     []string{"--cache-dir", cacheDir, "--cache-max-size", maxSize, "--upstream", upstreamURL},
	})
}

// copyConcurrently runs `nix copy --from url` of paths on every client at
// once, trusting key, each into a fresh store with its own Nix state, and
// returns the stores once all have succeeded.
func copyConcurrently(t *testing.T, clients []*host, key, url string, paths ...string) []string {
	t.Helper()
	dsts := make([]string, len(clients))
	errs := make([]error, len(clients))
	envs := make([][]string, len(clients))
	for i := range clients {
		dsts[i] = filepath.Join(t.TempDir(), "dst")
		envs[i] = nixEnv(t, key)
	}
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			args := append([]string{"netns", "exec", c.NS, "nix", "copy", "--from", url, "--to", dsts[i]}, paths...)
			errs[i] = run(envs[i], "ip", args...).Err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("%s: %v", clients[i].Name, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return dsts
}

// bgCmd is a command running in the background of a test.
type bgCmd struct {
	cmd    *exec.Cmd
	stderr syncbuf.Buffer
	done   chan struct{}
	err    error
}

// startNixCopy starts `nix copy --from url --to dst args...` on h; it is
// killed when the test ends if it still runs.
func startNixCopy(t *testing.T, h *host, env []string, url, dst string, args ...string) *bgCmd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	b := &bgCmd{done: make(chan struct{})}
	b.cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, "nix", "copy", "--from", url, "--to", dst}, args...)...)
	b.cmd.Env = env
	b.cmd.Stderr = &b.stderr
	if err := b.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		b.err = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-b.done
	})
	return b
}

// wait waits for the command to end.
func (b *bgCmd) wait() cmdResult {
	<-b.done
	err := b.err
	if err != nil {
		err = fmt.Errorf("%s: %w\n%s", strings.Join(b.cmd.Args, " "), err, b.stderr.String())
	}
	return cmdResult{Stderr: b.stderr.String(), Err: err}
}

// pollUntil polls cond until it holds, failing the test after timeout.
func pollUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// binaryCache is a binary cache directory made by `nix copy --to file://`.
type binaryCache struct {
	Dir string
}

// newBinaryCache copies paths (and their closures) from the chroot store
// root into a new binary cache directory with the given compression.
func newBinaryCache(t *testing.T, env []string, root, compression string, paths ...string) *binaryCache {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "upstream-"+compression)
	args := append([]string{"copy", "--no-check-sigs", "--from", root, "--to", "file://" + dir + "?compression=" + compression}, paths...)
	mustRun(t, env, "nix", args...)
	return &binaryCache{Dir: dir}
}

// raw returns the narinfo file of p.
func (bc *binaryCache) raw(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(bc.Dir, hashPart(p)+".narinfo"))
	if err != nil {
		t.Fatalf("upstream narinfo of %s: %v", p, err)
	}
	return b
}

// narinfo returns the parsed narinfo of p.
func (bc *binaryCache) narinfo(t *testing.T, p string) map[string][]string {
	t.Helper()
	ni, err := parseNarinfo(bc.raw(t, p))
	if err != nil {
		t.Fatalf("upstream narinfo of %s: %v", p, err)
	}
	return ni
}

// narURL is the URL path of p's NAR file, "/nar/...".
func (bc *binaryCache) narURL(t *testing.T, p string) string {
	t.Helper()
	return "/" + one(bc.narinfo(t, p), "URL")
}

// fileSize is the size of p's (compressed) NAR file.
func (bc *binaryCache) fileSize(t *testing.T, p string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(one(bc.narinfo(t, p), "FileSize"), 10, 64)
	if err != nil {
		t.Fatalf("upstream narinfo of %s: FileSize: %v", p, err)
	}
	return n
}

// upstreamServer serves a binary cache directory over HTTP from inside a
// test host, as an upstream cache would. It counts what it is asked for and
// what it sends, and can serve a file slowly or serve other bytes instead.
type upstreamServer struct {
	dir  string
	URL  string // http://<host ip>:<port>
	stop func() // closes the listener and every connection; idempotent

	mu        sync.Mutex
	narinfos  map[string]int    // narinfo requests by store path hash
	narReqs   map[string]int    // GET requests by NAR URL path
	narBytes  map[string]int64  // NAR body bytes sent by URL path
	rates     map[string]int64  // bytes per second by URL path; absent: full speed
	overrides map[string][]byte // bodies served instead of the files
}

// serveUpstream starts an upstreamServer for dir on h; it is closed when the
// test ends.
func serveUpstream(t *testing.T, h *host, dir string) *upstreamServer {
	t.Helper()
	ln, err := h.listen(h.IP + ":0")
	if err != nil {
		t.Fatal(err)
	}
	return serveUpstreamOn(t, ln, dir)
}

// serveUpstreamOn starts an upstreamServer for dir on ln; it is closed when
// the test ends, or by stop.
func serveUpstreamOn(t *testing.T, ln net.Listener, dir string) *upstreamServer {
	t.Helper()
	u := &upstreamServer{
		dir: dir, URL: "http://" + ln.Addr().String(),
		narinfos: map[string]int{}, narReqs: map[string]int{}, narBytes: map[string]int64{},
		rates: map[string]int64{}, overrides: map[string][]byte{},
	}
	u.stop = serveHTTP(t, ln, u)
	return u
}

// setRate limits how fast urlPath is sent (bytes per second; 0: full speed).
// It applies to requests that start afterwards.
func (u *upstreamServer) setRate(urlPath string, bps int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if bps <= 0 {
		delete(u.rates, urlPath)
	} else {
		u.rates[urlPath] = bps
	}
}

// override serves body for urlPath instead of the file (nil: the file).
func (u *upstreamServer) override(urlPath string, body []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if body == nil {
		delete(u.overrides, urlPath)
	} else {
		u.overrides[urlPath] = body
	}
}

func (u *upstreamServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	p := path.Clean(r.URL.Path)
	isNAR := strings.HasPrefix(p, "/nar/")
	u.mu.Lock()
	if h, ok := strings.CutSuffix(p, ".narinfo"); ok {
		u.narinfos[strings.TrimPrefix(h, "/")]++
	}
	if isNAR && r.Method == http.MethodGet {
		u.narReqs[p]++
	}
	body, overridden := u.overrides[p]
	rate := u.rates[p]
	u.mu.Unlock()
	if !overridden {
		var err error
		body, err = os.ReadFile(filepath.Join(u.dir, filepath.FromSlash(p)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if strings.HasSuffix(p, ".narinfo") {
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
	} else {
		w.Header().Set("Content-Type", "application/octet-stream")
	}
	if r.Method == http.MethodHead {
		return
	}
	chunk := 64 << 10
	rc := http.NewResponseController(w)
	for len(body) > 0 {
		n := min(chunk, len(body))
		m, err := w.Write(body[:n])
		rc.Flush()
		if isNAR {
			u.mu.Lock()
			u.narBytes[p] += int64(m)
			u.mu.Unlock()
		}
		if err != nil {
			return
		}
		body = body[n:]
		if rate > 0 {
			select {
			case <-time.After(time.Duration(int64(n) * int64(time.Second) / rate)):
			case <-r.Context().Done():
				return
			}
		}
	}
}

// upstreamStats is a snapshot of an upstreamServer's counters.
type upstreamStats struct {
	NarinfoRequests map[string]int   // by store path hash
	NARRequests     map[string]int   // by NAR URL path
	NARBytesOf      map[string]int64 // by NAR URL path
	NARBytes        int64            // all NAR bytes sent
}

func (u *upstreamServer) stats() upstreamStats {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := upstreamStats{NarinfoRequests: map[string]int{}, NARRequests: map[string]int{}, NARBytesOf: map[string]int64{}}
	for k, v := range u.narinfos {
		s.NarinfoRequests[k] = v
	}
	for k, v := range u.narReqs {
		s.NARRequests[k] = v
	}
	for k, v := range u.narBytes {
		s.NARBytesOf[k] = v
		s.NARBytes += v
	}
	return s
}

func (s upstreamStats) narRequests() (n int) {
	for _, v := range s.NARRequests {
		n += v
	}
	return n
}

func (s upstreamStats) narinfoRequests() (n int) {
	for _, v := range s.NarinfoRequests {
		n += v
	}
	return n
}

func (s upstreamStats) String() string {
	return fmt.Sprintf("%d narinfo requests, %d NAR requests, %d NAR bytes", s.narinfoRequests(), s.narRequests(), s.NARBytes)
}

// checkCacheDir fails the test unless dir is a consistent binary cache with
// nothing half-done in it: only nix-cache-info, lancache's lock file,
// narinfos, nar/ (and Nix's log/ and realisations/); every narinfo names its own path and a NAR file of the
// size and sha256 it states; every NAR file belongs to exactly one narinfo;
// no partial, temporary or other stray file. It returns the narinfos by
// store path hash.
func checkCacheDir(t *testing.T, dir string) map[string]map[string][]string {
	t.Helper()
	entries := map[string]map[string][]string{}
	claimed := map[string]string{}
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("cache dir: %v", err)
	}
	for _, de := range des {
		name := de.Name()
		switch {
		case name == "nix-cache-info" || name == ".lock":
			continue
		case name == "nar" && de.IsDir():
			continue
		case (name == "log" || name == "realisations") && de.IsDir():
			continue // made by Nix when it opens the dir as file://
		case !strings.HasSuffix(name, ".narinfo") || !de.Type().IsRegular():
			t.Errorf("cache dir: stray %s", name)
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("cache dir: %v", err)
			continue
		}
		ni, err := parseNarinfo(b)
		if err != nil {
			t.Errorf("cache dir: %s: %v", name, err)
			continue
		}
		h := strings.TrimSuffix(name, ".narinfo")
		if hashPart(one(ni, "StorePath")) != h {
			t.Errorf("cache dir: %s names %s", name, one(ni, "StorePath"))
		}
		file, ok := strings.CutPrefix(one(ni, "URL"), "nar/")
		if !ok || strings.Contains(file, "/") {
			t.Errorf("cache dir: %s: URL %q is not a file in nar/", name, one(ni, "URL"))
			continue
		}
		if other, dup := claimed[file]; dup {
			t.Errorf("cache dir: %s and %s share the NAR file %s", other, name, file)
		}
		claimed[file] = name
		data, err := os.ReadFile(filepath.Join(dir, "nar", file))
		if err != nil {
			t.Errorf("cache dir: %s: %v", name, err)
			continue
		}
		if fs := one(ni, "FileSize"); fs != strconv.Itoa(len(data)) {
			t.Errorf("cache dir: %s: FileSize %s, the file has %d bytes", name, fs, len(data))
		}
		sum := sha256.Sum256(data)
		if want, err := decodeHash(one(ni, "FileHash")); err != nil || !bytes.Equal(want, sum[:]) {
			t.Errorf("cache dir: %s: FileHash %s does not match its file (%v)", name, one(ni, "FileHash"), err)
		}
		entries[h] = ni
	}
	nars, err := os.ReadDir(filepath.Join(dir, "nar"))
	if err != nil {
		t.Fatalf("cache dir: %v", err)
	}
	for _, de := range nars {
		if _, ok := claimed[de.Name()]; !ok {
			t.Errorf("cache dir: nar/%s belongs to no narinfo (partial or orphaned)", de.Name())
		}
	}
	return entries
}

// dirUsage is the sum of the sizes of all files under dir.
func dirUsage(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return nil // gone meanwhile, or a directory
		}
		if fi, err := de.Info(); err == nil {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// watchUsage samples dirUsage(dir) every 10ms until the returned function
// is called (or the test ends); that returns the largest sample.
func watchUsage(t *testing.T, dir string) func() int64 {
	var (
		peak int64
		once sync.Once
		stop = make(chan struct{})
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, dirUsage(dir))
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	end := func() int64 {
		once.Do(func() {
			close(stop)
			<-done
		})
		return peak
	}
	t.Cleanup(func() { end() })
	return end
}

func roundUp4K(n int64) int64 { return (n + 4095) / 4096 * 4096 }

// randomBytes returns n pseudo-random bytes, different for each seed.
func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n+8)
	rng := rand.New(rand.NewPCG(seed, 0x6c616e6361636865))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b[:n]
}
