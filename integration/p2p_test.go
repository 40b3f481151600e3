package integration

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lancache/lancache"
	"github.com/lancache/lancache/statusapi"
)

// The acceptance tests of peer-to-peer transfer (issue 3): three hosts on a
// LAN of network namespaces, each running `lancache serve` with static
// peers, and the real Nix client substituting through the endpoint of host
// h2. Subnets 10..19 of newLAN are this file's.

// quicPeer is the --peer argument for h's daemon.
func quicPeer(h *host) string { return h.IP + ":37516" }

// peerArgs returns --peer flags for each of hs.
func peerArgs(hs ...*host) []string {
	var args []string
	for _, h := range hs {
		args = append(args, "--peer", quicPeer(h))
	}
	return args
}

// nixCopyIn runs `nix copy --from URL --to dst paths...` inside h's
// namespace, where URL is that host's own endpoint.
func nixCopyIn(h *host, env []string, d *daemon, dst string, paths ...string) cmdResult {
	return run(env, "ip", append([]string{"netns", "exec", h.NS, "nix", "copy", "--from", d.URL, "--to", dst}, paths...)...)
}

// waitPeerConnected waits until d reports the peer named name connected
// with a non-empty inventory.
func waitPeerConnected(t testing.TB, d *daemon, name string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := d.status()
		if err == nil {
			if p := findPeer(st, name); p != nil && p.State == "connected" && p.PathsAdvertised > 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon %s: peer %s not connected with an inventory after 20s (%v); status %+v", d.Addr, name, err, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitMesh waits until each of ds reports exactly the other len(ds)-1
// daemons as connected peers, and no static peer it is still dialing, twice
// in a row. Nodes that are each other's static peers dial each other; a dial
// still pending when its peer came up completes later as a duplicate
// connection, which (see TestDuplicateConnectionKeepsTransfers) may tear
// down a session already in use. Tests that are not about that wait here.
func waitMesh(t testing.TB, ds ...*daemon) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	settled := func() (bool, string) {
		for _, d := range ds {
			st, err := d.status()
			if err != nil {
				return false, err.Error()
			}
			if len(st.Peers) != len(ds)-1 {
				return false, fmt.Sprintf("%s lists %d peers: %+v", st.Name, len(st.Peers), st.Peers)
			}
			for _, p := range st.Peers {
				if p.State != "connected" {
					return false, fmt.Sprintf("%s: peer %s (%s) is %s", st.Name, p.Name, p.Address, p.State)
				}
			}
		}
		return true, ""
	}
	stable := 0
	for stable < 2 {
		ok, why := settled()
		if ok {
			stable++
		} else {
			stable = 0
		}
		if time.Now().After(deadline) {
			t.Fatalf("peers not settled after 30s: %s", why)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("peer mesh of %d settled after %v", len(ds), time.Since(start).Round(time.Millisecond))
}

func findPeer(st *lancache.Status, name string) *lancache.PeerStatus {
	for i := range st.Peers {
		if st.Peers[i].Name == name {
			return &st.Peers[i]
		}
	}
	return nil
}

// findTransfer returns the newest transfer from a peer of the store path
// hash h in st.
func findTransfer(st *lancache.Status, h string) *lancache.TransferStatus {
	var best *lancache.TransferStatus
	for i := range st.Transfers {
		x := &st.Transfers[i]
		if x.Hash == h && x.Source == statusapi.SourcePeer && (best == nil || x.Started.After(best.Started)) {
			best = x
		}
	}
	return best
}

func mustStatus(t testing.TB, d *daemon) *lancache.Status {
	t.Helper()
	st, err := d.status()
	if err != nil {
		t.Fatalf("status of %s: %v", d.Addr, err)
	}
	return st
}

// addSignedPath imports dir into the chroot store root with
// `nix-store --add` and signs it with the secret key file sk; it returns
// the store path.
func addSignedPath(t testing.TB, env []string, root, dir, sk string) string {
	t.Helper()
	out := lines(mustRun(t, env, "nix-store", "--store", root, "--add", dir))
	if len(out) != 1 {
		t.Fatalf("nix-store --add %s printed %q", dir, out)
	}
	p := out[0]
	mustRun(t, env, "nix", "store", "sign", "--store", root, "-k", sk, p)
	return p
}

// TestPeerSubstitution: h1 holds the fixture closure, h3 a path of its
// own, h2 has no store; all three are static peers of each other. Nix on
// h2 substitutes the closure through h2's endpoint (so from h1, the only
// holder) and h3's path (from h3); every path verifies with the source's
// NarHash. A miss at h2's endpoint, with both peers' inventories loaded,
// is a prompt 404.
func TestPeerSubstitution(t *testing.T) {
	fx := newStoreFixture(t)

	// h3's own path, signed with the fixture key.
	src := filepath.Join(t.TempDir(), "h3-only")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "data"), []byte("held by h3 only\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	root3 := filepath.Join(t.TempDir(), "store3")
	own3 := addSignedPath(t, fx.Env, root3, src, filepath.Join(fx.Dir, "test-1.sk"))
	info3 := pathInfos(t, fx.Env, root3, own3)[own3]

	l := newLAN(t, 10)
	h1, h2, h3 := l.addHost("h1"), l.addHost("h2"), l.addHost("h3")
	keys := []string{fx.Key}
	d1 := h1.startDaemon(t, nsServe{StoreRoot: fx.Root, Keys: keys, Args: peerArgs(h2, h3)})
	d2 := h2.startDaemon(t, nsServe{Keys: keys, Args: peerArgs(h1, h3)})
	d3 := h3.startDaemon(t, nsServe{StoreRoot: root3, Keys: keys, Args: peerArgs(h1, h2)})
	waitMesh(t, d1, d2, d3)
	waitPeerConnected(t, d2, "h1")
	waitPeerConnected(t, d2, "h3")

	t.Run("closure-from-h1", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "dst")
		if r := nixCopyIn(h2, fx.Env, d2, dst, fx.Top); r.Err != nil {
			t.Fatal(r.Err)
		}
		checkCopied(t, fx, dst, fx.Closure, true)
		st := mustStatus(t, d2)
		for _, p := range fx.Closure {
			x := findTransfer(st, hashPart(p))
			switch {
			case x == nil:
				t.Errorf("h2 status lists no transfer of %s", p)
			case x.Peer != "h1" || x.Result != "ok":
				t.Errorf("h2 transfer of %s: peer %q result %q, want h1 ok", p, x.Peer, x.Result)
			}
		}
		if st.Totals.BytesFromPeers == 0 || st.Totals.VerificationFailures != 0 {
			t.Errorf("h2 totals %+v: want bytes from peers and no verification failures", st.Totals)
		}
		if p := findPeer(mustStatus(t, d3), "h2"); p == nil || p.BytesToPeer != 0 {
			t.Errorf("h3 sent bytes to h2 for paths it does not hold: %+v", p)
		}
	})

	t.Run("path-from-h3", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "dst")
		if r := nixCopyIn(h2, fx.Env, d2, dst, own3); r.Err != nil {
			t.Fatal(r.Err)
		}
		mustRun(t, fx.Env, "nix-store", "--store", dst, "--verify-path", own3)
		got := pathInfos(t, fx.Env, dst, own3)[own3]
		if !sameHash(t, got.NarHash, info3.NarHash) {
			t.Errorf("%s: narHash in the copy %s, source %s", own3, got.NarHash, info3.NarHash)
		}
		if x := findTransfer(mustStatus(t, d2), hashPart(own3)); x == nil || x.Peer != "h3" || x.Result != "ok" {
			t.Errorf("h2 transfer of %s: %+v, want from h3, ok", own3, x)
		}
	})

	t.Run("miss-is-a-fast-404", func(t *testing.T) {
		st := mustStatus(t, d2)
		for _, name := range []string{"h1", "h3"} {
			if p := findPeer(st, name); p == nil || p.State != "connected" {
				t.Fatalf("h2's peer %s is not connected: %+v", name, p)
			}
		}
		const n = 200
		lat := make([]time.Duration, 0, n)
		for i := range n {
			method := http.MethodGet
			if i%2 == 1 {
				method = http.MethodHead
			}
			p := "/" + randomHash() + ".narinfo"
			t0 := time.Now()
			code, body, err := d2.fetch(method, p)
			took := time.Since(t0)
			if err != nil || code != http.StatusNotFound {
				t.Fatalf("%s %s (nobody has it): %d %v %q; want 404", method, p, code, err, clip(body))
			}
			lat = append(lat, took)
		}
		slices.Sort(lat)
		t.Logf("h2: %d narinfo misses with 2 peers connected: median %v, p99 %v, max %v",
			n, lat[n/2], lat[n*99/100], lat[n-1])
		if lat[n-1] > time.Second {
			t.Errorf("slowest miss took %v; a miss must be a prompt 404 (bound 1s)", lat[n-1])
		}
		if after := mustStatus(t, d2); after.Totals.NarInfoMisses < st.Totals.NarInfoMisses+n {
			t.Errorf("narinfo_misses went from %d to %d after %d misses", st.Totals.NarInfoMisses, after.Totals.NarInfoMisses, n)
		}
	})
}

// sameHash reports whether two spellings of a sha256 hash are equal.
func sameHash(t testing.TB, a, b string) bool {
	t.Helper()
	ha, err1 := decodeHash(a)
	hb, err2 := decodeHash(b)
	if err1 != nil || err2 != nil {
		t.Errorf("decode hashes %q %q: %v %v", a, b, err1, err2)
		return false
	}
	return bytes.Equal(ha, hb)
}

// failoverSize is the size of the failover test's path: $LANCACHE_FAILOVER_MIB
// MiB, by default 1 GiB, or 256 MiB when the daemon is built with -race
// (its sha256 and QUIC crypto run several times slower, and the test must
// stay well under the CI time budget).
func failoverSize(t testing.TB) int64 {
	t.Helper()
	mib := int64(1024)
	if raceEnabled {
		mib = 256
	}
	if s := os.Getenv("LANCACHE_FAILOVER_MIB"); s != "" {
		if _, err := fmt.Sscan(s, &mib); err != nil || mib < 16 {
			t.Fatalf("LANCACHE_FAILOVER_MIB=%q: want a size in MiB, at least 16", s)
		}
	}
	return mib << 20
}

// TestPeerFailover: a large path held by h1 and h3; Nix on h2 copies it
// through h2's endpoint; once h2 reports the transfer under way, the
// daemon serving it is killed (SIGKILL). h2 resumes at the same byte on the
// other holder, Nix sees one uninterrupted response, and the copy verifies.
func TestPeerFailover(t *testing.T) {
	requireNix(t)
	requireNetns(t)
	size := failoverSize(t)
	env := nixEnv(t)
	dir := t.TempDir()
	key := genKey(t, env, dir, "failover-1")
	env = nixEnv(t, key)

	start := time.Now()
	payload := filepath.Join(dir, "payload")
	writeRandomTree(t, payload, size, 8)
	root1, root3 := filepath.Join(dir, "store1"), filepath.Join(dir, "store3")
	big := addSignedPath(t, env, root1, payload, filepath.Join(dir, "failover-1.sk"))
	if err := os.RemoveAll(payload); err != nil {
		t.Fatal(err)
	}
	// h3's store is a copy of h1's: the same DB rows, signatures and files.
	if out, err := exec.Command("cp", "-a", root1, root3).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", root1, root3, err, out)
	}
	want := pathInfos(t, env, root1, big)[big]
	t.Logf("%s (%d MiB NAR) in the stores of h1 and h3 after %v", big, want.NarSize>>20, time.Since(start).Round(time.Millisecond))

	l := newLAN(t, 11)
	h1, h2, h3 := l.addHost("h1"), l.addHost("h2"), l.addHost("h3")
	keys := []string{key}
	daemons := map[string]*daemon{
		"h1": h1.startDaemon(t, nsServe{StoreRoot: root1, Keys: keys, Args: peerArgs(h2, h3)}),
		"h3": h3.startDaemon(t, nsServe{StoreRoot: root3, Keys: keys, Args: peerArgs(h1, h2)}),
	}
	d2 := h2.startDaemon(t, nsServe{Keys: keys, Args: peerArgs(h1, h3)})
	waitMesh(t, daemons["h1"], d2, daemons["h3"])
	waitPeerConnected(t, d2, "h1")
	waitPeerConnected(t, d2, "h3")

	dst := filepath.Join(t.TempDir(), "dst")
	copied := make(chan cmdResult, 1)
	copyStart := time.Now()
	go func() { copied <- nixCopyIn(h2, env, d2, dst, big) }()
	var res *cmdResult
	defer func() {
		if res == nil {
			<-copied // the copy is bounded by cmdTimeout
		}
	}()

	// Kill the serving daemon once a few MiB have arrived.
	threshold := min(size/8, 32<<20)
	var killed string
	var killedAt int64
	for killed == "" {
		select {
		case r := <-copied:
			res = &r
			t.Fatalf("nix copy ended before the serving daemon was killed: %v", r.Err)
		case <-time.After(20 * time.Millisecond):
		}
		st, err := d2.status()
		if err != nil {
			t.Fatalf("h2 status: %v", err)
		}
		x := findTransfer(st, hashPart(big))
		if x == nil || x.Result != "" || x.BytesDone < threshold {
			continue
		}
		d, ok := daemons[x.Peer]
		if !ok {
			t.Fatalf("h2 transfer of %s is served by %q, want h1 or h3", big, x.Peer)
		}
		d.kill()
		killed, killedAt = x.Peer, x.BytesDone
		t.Logf("killed %s (SIGKILL) after %d MiB of %d MiB, %v into the copy", killed, killedAt>>20, size>>20, time.Since(copyStart).Round(time.Millisecond))
	}

	r := <-copied
	res = &r
	if r.Err != nil {
		t.Fatalf("nix copy after %s was killed: %v", killed, r.Err)
	}
	t.Logf("nix copy of %d MiB took %v", want.NarSize>>20, time.Since(copyStart).Round(time.Millisecond))
	for _, l := range strings.Split(d2.Logs(), "\n") {
		if strings.Contains(l, "peer failed to serve NAR") || strings.Contains(l, "resuming NAR") {
			t.Logf("h2: %s", l)
		}
	}
	mustRun(t, env, "nix-store", "--store", dst, "--verify-path", big)
	got := pathInfos(t, env, dst, big)[big]
	if !sameHash(t, got.NarHash, want.NarHash) || got.NarSize != want.NarSize {
		t.Errorf("copy: narHash %s narSize %d, source %s %d", got.NarHash, got.NarSize, want.NarHash, want.NarSize)
	}

	st := mustStatus(t, d2)
	x := findTransfer(st, hashPart(big))
	survivor := map[string]string{"h1": "h3", "h3": "h1"}[killed]
	switch {
	case x == nil:
		t.Errorf("h2 status lists no transfer of %s", big)
	case x.Result != "ok" || x.Peer != survivor || x.BytesDone != x.BytesTotal:
		t.Errorf("h2 transfer of %s: peer %q result %q %d/%d bytes; want finished ok by %s", big, x.Peer, x.Result, x.BytesDone, x.BytesTotal, survivor)
	}
	if st.Totals.NarFailures != 0 || st.Totals.VerificationFailures != 0 {
		t.Errorf("h2 totals %+v: want no aborted NAR responses (Nix must see one uninterrupted stream) and no verification failures", st.Totals)
	}
	if p := findPeer(mustStatus(t, daemons[survivor]), "h2"); p == nil || p.BytesToPeer == 0 || int64(p.BytesToPeer) > want.NarSize-killedAt+(64<<20) {
		// The survivor sends the rest (plus what was in flight), not the
		// whole file again.
		t.Errorf("%s sent %+v to h2; want about %d bytes (the rest after the failover)", survivor, p, want.NarSize-killedAt)
	}
}

// writeRandomTree writes `files` files of size/files random bytes each into
// dir.
func writeRandomTree(t testing.TB, dir string, size int64, files int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	per := size / int64(files)
	var seed [32]byte
	copy(seed[:], dir)
	rng := rand.NewChaCha8(seed)
	buf := make([]byte, 1<<20)
	for i := range files {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("file-%02d", i)))
		if err != nil {
			t.Fatal(err)
		}
		for left := per; left > 0; {
			n := min(left, int64(len(buf)))
			rng.Read(buf[:n])
			if _, err := f.Write(buf[:n]); err != nil {
				f.Close()
				t.Fatal(err)
			}
			left -= n
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPeerCorruption: h1's copy of a path has one byte flipped on disk (its
// DB still claims the good NarHash). With h1 the only holder, h2 fetches
// it from h1, finds the mismatch, aborts Nix's download, counts it and
// blocklists h1; Nix refuses the broken download, so nothing lands. Then
// h3 comes up with a good copy: the next copy on h2 goes to h3 (h1 stays
// blocklisted), succeeds and verifies with the good NarHash.
//
// h1 is made the only holder first so that the test does not depend on
// which holder h2 would rank first.
func TestPeerCorruption(t *testing.T) {
	fx := newStoreFixture(t)
	p := fx.EdgeCases

	// h3's good copy, then the flipped byte in h1's (the fixture's).
	root3 := filepath.Join(t.TempDir(), "store3")
	mustRun(t, fx.Env, "nix", "copy", "--from", fx.Root, "--to", root3, p)
	flipByte(t, filepath.Join(fx.physical(p), "big.bin"), 1<<20)
	if r := run(fx.Env, "nix-store", "--store", fx.Root, "--verify-path", p); r.Err == nil {
		t.Fatalf("h1's copy of %s still verifies after the byte flip", p)
	}

	l := newLAN(t, 12)
	h1, h2, h3 := l.addHost("h1"), l.addHost("h2"), l.addHost("h3")
	keys := []string{fx.Key}
	h1.startDaemon(t, nsServe{StoreRoot: fx.Root, Keys: keys})
	d2 := h2.startDaemon(t, nsServe{Keys: keys, Args: peerArgs(h1)})
	waitPeerConnected(t, d2, "h1")
	dst := filepath.Join(t.TempDir(), "dst")

	t.Run("only-h1-holds-it", func(t *testing.T) {
		r := nixCopyIn(h2, fx.Env, d2, dst, p)
		if r.Err == nil {
			t.Fatalf("nix copy of %s from h1's corrupt copy succeeded", p)
		}
		t.Logf("nix copy failed as it must: %s", lastLine(r.Stderr))
		if r := run(fx.Env, "nix-store", "--store", dst, "--check-validity", p); r.Err == nil {
			t.Errorf("%s is valid in h2's store after a corrupt transfer", p)
		}
		if _, err := os.Lstat(filepath.Join(dst, p)); err == nil {
			// Nix restores while it downloads and leaves the partial tree of
			// an import that failed; it is not valid, and the next import of
			// the path deletes it first.
			t.Logf("Nix left the partial, invalid %s in h2's store", p)
		}
		st := mustStatus(t, d2)
		pst := findPeer(st, "h1")
		switch {
		case pst == nil:
			t.Errorf("h2 status has no peer h1")
		case pst.BlocklistedUntil == nil || !pst.BlocklistedUntil.After(time.Now()):
			t.Errorf("h1 is not blocklisted in h2's status: %+v", pst)
		}
		if st.Totals.VerificationFailures == 0 {
			t.Errorf("h2 verification_failures = 0 after h1 sent a corrupt NAR")
		}
		if x := findTransfer(st, hashPart(p)); x == nil || x.Peer != "h1" || x.Result != statusapi.ResultHashMismatch {
			t.Errorf("h2 transfer of %s: %+v; want a hash mismatch from h1", p, x)
		}
	})

	t.Run("h3-holds-a-good-copy", func(t *testing.T) {
		h3.startDaemon(t, nsServe{StoreRoot: root3, Keys: keys, Args: peerArgs(h1, h2)})
		waitPeerConnected(t, d2, "h3")
		before := mustStatus(t, d2)
		if r := nixCopyIn(h2, fx.Env, d2, dst, p); r.Err != nil {
			t.Fatalf("nix copy with h1 blocklisted and h3 holding a good copy: %v", r.Err)
		}
		checkCopied(t, fx, dst, []string{p}, true)
		st := mustStatus(t, d2)
		if x := findTransfer(st, hashPart(p)); x == nil || x.Peer != "h3" || x.Result != "ok" {
			t.Errorf("h2 transfer of %s: %+v; want ok from h3", p, x)
		}
		if pst := findPeer(st, "h1"); pst == nil || pst.BlocklistedUntil == nil {
			t.Errorf("h1 no longer blocklisted in h2's status: %+v", pst)
		} else if pst.BytesFromPeer != findPeer(before, "h1").BytesFromPeer {
			t.Errorf("h2 fetched from blocklisted h1: %d bytes, %d before", pst.BytesFromPeer, findPeer(before, "h1").BytesFromPeer)
		}
		if st.Totals.VerificationFailures != before.Totals.VerificationFailures {
			t.Errorf("verification_failures went from %d to %d", before.Totals.VerificationFailures, st.Totals.VerificationFailures)
		}
	})
}

// flipByte inverts the byte at offset off of file, keeping its mode.
func flipByte(t testing.TB, file string, off int64) {
	t.Helper()
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, fi.Mode()|0o200); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, fi.Mode()); err != nil {
		t.Fatal(err)
	}
}

func lastLine(s string) string {
	ls := lines([]byte(s))
	if len(ls) == 0 {
		return ""
	}
	return ls[len(ls)-1]
}

// TestDuplicateConnectionKeepsTransfers guards against a bug found here:
// two nodes that are each other's static peers, started one after the
// other. The first node's dial to the second is pending (QUIC retransmits
// its Initial) when the second comes up and dials the first; that session
// carries a NAR transfer when the pending dial completes. It used to win
// the id tie-break and cancel the session in use, failing its streams with
// "duplicate connection" (and, with the inventory briefly gone, answering
// narinfo lookups 404). A dial that finds a live session to the same id
// now gives way. The node ids are learned first so that the new connection
// is the one that would have won.
//
// The holder reaches the fetcher through a relay that drops everything
// until the test opens it, so the holder's dial is pending for as long as
// the test needs, whatever the machine's load: no timing is involved.
func TestDuplicateConnectionKeepsTransfers(t *testing.T) {
	requireNix(t)
	requireNetns(t)
	dir := t.TempDir()
	env := nixEnv(t)
	key := genKey(t, env, dir, "dup-1")
	env = nixEnv(t, key)
	payload := filepath.Join(dir, "payload")
	writeRandomTree(t, payload, 64<<20, 4)
	root := filepath.Join(dir, "store")
	big := addSignedPath(t, env, root, payload, filepath.Join(dir, "dup-1.sk"))
	want := pathInfos(t, env, root, big)[big]
	keys := []string{key}

	l := newLAN(t, 13)
	hs := []*host{l.addHost("x"), l.addHost("y")}
	states := []string{t.TempDir(), t.TempDir()}
	ids := make([]string, 2)
	for i, h := range hs {
		d := h.startDaemon(t, nsServe{StateDir: states[i], Keys: keys})
		ids[i] = mustStatus(t, d).ID
		d.Stop(syscall.SIGTERM)
	}
	// The holder's late dial wins when its id is the smaller one.
	first, second := 0, 1
	if ids[1] < ids[0] {
		first, second = 1, 0
	}
	holder, fetcher := hs[first], hs[second]
	gate := startRelay(t, fetcher, quicPeer(fetcher), 0, 0, 0)
	gate.stalled.Store(true) // closed: the holder's dial stays pending
	dh := holder.startDaemon(t, nsServe{StoreRoot: root, StateDir: states[first], Keys: keys, Args: []string{"--peer", gate.Addr()}})
	df := fetcher.startDaemon(t, nsServe{StateDir: states[second], Keys: keys, Args: peerArgs(holder)})
	waitPeerConnected(t, df, holder.Name)
	// dialPending tells whether the holder still lists its own dial to the
	// fetcher apart from the session the fetcher dialed.
	dialPending := func() bool {
		st := mustStatus(t, dh)
		for _, p := range st.Peers {
			if p.Address == gate.Addr() && p.ID == "" {
				return true
			}
		}
		if len(st.Peers) != 1 || st.Peers[0].ID != ids[second] || st.Peers[0].State != statusapi.StateConnected {
			t.Fatalf("holder's peers: %+v; want one, the fetcher, connected", st.Peers)
		}
		return false
	}
	if !dialPending() {
		t.Fatal("the holder's dial through the closed relay completed")
	}

	c := fetcher.httpClient(2 * time.Minute)
	defer c.CloseIdleConnections()
	resp, err := c.Get(df.URL + "/" + hashPart(big) + ".narinfo")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	ni, err := parseNarinfo(body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("narinfo: %d %v\n%s", resp.StatusCode, err, body)
	}
	resp, err = c.Get(df.URL + "/" + one(ni, "URL"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s right after the narinfo answered 200: %s %q (the holder's inventory was gone while its duplicate connection replaced the session)", one(ni, "URL"), resp.Status, body)
	}
	// The transfer is in flight (its first MiB is here, the rest waits on
	// flow control): open the relay, and read on slowly, a chunk per look
	// at the holder's status, until the holder's dial has completed.
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var n int64
	read := func() {
		k, err := io.ReadFull(resp.Body, buf)
		h.Write(buf[:k])
		n += int64(k)
		if err != nil {
			t.Fatalf("NAR after %d bytes: %v", n, err)
		}
	}
	for n < 1<<20 {
		read()
	}
	gate.stalled.Store(false)
	deadline := time.Now().Add(30 * time.Second)
	for dialPending() {
		if time.Now().After(deadline) {
			t.Fatal("the holder's dial through the open relay did not complete within 30s")
		}
		if n+int64(len(buf)) >= int64(want.NarSize) {
			t.Fatalf("the NAR (%d bytes) was read before the holder's dial completed: the test did not cover its point", want.NarSize)
		}
		read()
		time.Sleep(20 * time.Millisecond) // pace the reading, not a timing claim
	}
	t.Logf("the holder's dial completed after %d of %d bytes", n, want.NarSize)
	k, err := io.Copy(h, resp.Body)
	n += k
	if err != nil {
		t.Fatalf("NAR after %d bytes: %v", n, err)
	}
	wantHash, _ := decodeHash(want.NarHash)
	if n != want.NarSize || !bytes.Equal(h.Sum(nil), wantHash) {
		t.Fatalf("NAR: %d bytes, sha256 %x; want %d, %x", n, h.Sum(nil), want.NarSize, wantHash)
	}

	for _, line := range strings.Split(df.Logs(), "\n") {
		if strings.Contains(line, "peer failed to serve NAR") || strings.Contains(line, "resuming NAR") {
			t.Errorf("fetcher: %s", line)
		}
	}
}
