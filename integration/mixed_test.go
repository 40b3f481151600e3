package integration

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMixedHolders: a workstation with no store and no upstream has two
// static peers holding the same closure in different forms: an appliance
// whose NAR cache holds it as upstream's .nar.zst (pulled through), and a
// desktop whose store holds it (served uncompressed). Many concurrent
// `nix copy` runs of the closure from the workstation's endpoint all succeed
// and verify, whichever holder answers the narinfo and whichever serves the
// NAR. Then a big path held by both is copied and the holder serving it is
// killed (SIGKILL) a third of the way: the other, holding the other form,
// continues, and the copy verifies.
func TestMixedHolders(t *testing.T) {
	fx := newStoreFixture(t)
	requireNetns(t)
	env := fx.Env

	// The big path: random data, in a store of its own that the desktop
	// also gets, and in the upstream stand-in's zstd binary cache.
	dir := t.TempDir()
	bigKey := genKey(t, env, dir, "mixed-1")
	benv := nixEnv(t, fx.Key, bigKey)
	payload := filepath.Join(dir, "payload")
	writeRandomTree(t, payload, 48<<20, 6)
	bigRoot := filepath.Join(dir, "bigstore")
	big := addSignedPath(t, benv, bigRoot, payload, filepath.Join(dir, "mixed-1.sk"))
	os.RemoveAll(payload)
	desktopRoot := filepath.Join(dir, "desktop")
	mustRun(t, benv, "nix", "copy", "--no-check-sigs", "--from", fx.Root, "--to", desktopRoot, fx.Top)
	mustRun(t, benv, "nix", "copy", "--no-check-sigs", "--from", bigRoot, "--to", desktopRoot, big)
	bcDir := filepath.Join(dir, "bc")
	mustRun(t, benv, "nix", "copy", "--no-check-sigs", "--from", fx.Root, "--to", "file://"+bcDir+"?compression=zstd", fx.Top)
	mustRun(t, benv, "nix", "copy", "--no-check-sigs", "--from", bigRoot, "--to", "file://"+bcDir+"?compression=zstd", big)

	l := newLAN(t, 120)
	up := serveUpstream(t, l.addHost("upstream"), bcDir)
	appHost, deskHost, ws := l.addHost("appliance"), l.addHost("desktop"), l.addHost("workstation")
	keys := []string{fx.Key, bigKey}
	app := appHost.startDaemon(t, nsServe{
		Keys: keys,
		Args: []string{"--cache-dir", filepath.Join(t.TempDir(), "cache"), "--upstream", up.URL},
	})
	// Fill the appliance from upstream: its cache now holds .nar.zst files.
	mustRun(t, benv, "ip", "netns", "exec", appHost.NS, "nix", "copy", "--from", app.URL, "--to", filepath.Join(t.TempDir(), "fill"), fx.Top, big)
	st := mustStatus(t, app)
	if st.Cache == nil || st.Cache.Entries != len(fx.Closure)+1 {
		t.Fatalf("appliance cache after the fill: %+v", st.Cache)
	}
	desk := deskHost.startDaemon(t, nsServe{StoreRoot: desktopRoot, Keys: keys})
	wd := ws.startDaemon(t, nsServe{Keys: keys, Args: peerArgs(appHost, deskHost)})
	all := len(fx.Closure) + 1
	pollUntil(t, 30*time.Second, "the workstation sees both holders' inventories", func() bool {
		st, err := wd.status()
		if err != nil {
			return false
		}
		n := 0
		for _, p := range st.Peers {
			if p.State == "connected" && p.PathsAdvertised >= all {
				n++
			}
		}
		return n == 2
	})

	// Concurrent copies: 3 rounds of 6.
	for round := 1; round <= 3; round++ {
		var wg sync.WaitGroup
		errs := make([]error, 6)
		dsts := make([]string, 6)
		for i := range dsts {
			dsts[i] = filepath.Join(t.TempDir(), "dst")
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = nixCopyIn(ws, nixEnv(t, keys...), wd, dsts[i], fx.Top).Err
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d copy %d: %v", round, i, err)
			}
			checkCopied(t, fx, dsts[i], fx.Closure, true)
		}
	}
	st = mustStatus(t, wd)
	served := map[string]bool{}
	for _, x := range st.Transfers {
		served[x.Peer] = true
	}
	t.Logf("closure NARs served by %v; totals %+v", served, st.Totals)
	if st.Totals.NarFailures != 0 || st.Totals.VerificationFailures != 0 {
		t.Errorf("workstation totals %+v: want no failures", st.Totals)
	}

	// Failover between forms: both holders' links are slowed so that the
	// kill lands mid-NAR.
	for _, h := range []*host{appHost, deskHost} {
		if out, err := h.command("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "200mbit", "burst", "64kb", "latency", "100ms").CombinedOutput(); err != nil {
			t.Fatalf("tc on %s: %v\n%s", h.Name, err, out)
		}
	}
	daemons := map[string]*daemon{"appliance": app, "desktop": desk}
	dst := filepath.Join(t.TempDir(), "big")
	copied := make(chan cmdResult, 1)
	go func() { copied <- nixCopyIn(ws, nixEnv(t, keys...), wd, dst, big) }()
	var killed string
	for killed == "" {
		select {
		case r := <-copied:
			t.Fatalf("nix copy of the big path ended before a holder was killed: %v", r.Err)
		case <-time.After(20 * time.Millisecond):
		}
		st, err := wd.status()
		if err != nil {
			continue
		}
		x := findTransfer(st, hashPart(big))
		if x == nil || x.Result != "" || x.BytesDone < x.BytesTotal/3 {
			continue
		}
		d, ok := daemons[x.Peer]
		if !ok {
			t.Fatalf("big path served by %q", x.Peer)
		}
		d.kill()
		killed = x.Peer
		t.Logf("killed %s after %d of %d bytes", killed, x.BytesDone, x.BytesTotal)
	}
	if r := <-copied; r.Err != nil {
		t.Fatalf("nix copy after %s was killed: %v", killed, r.Err)
	}
	mustRun(t, benv, "nix-store", "--store", dst, "--verify-path", big)
	x := findTransfer(mustStatus(t, wd), hashPart(big))
	survivor := map[string]string{"appliance": "desktop", "desktop": "appliance"}[killed]
	if x == nil || x.Result != "ok" || x.Peer != survivor || x.Failovers == 0 {
		t.Errorf("big transfer %+v: want ok by %s after a failover", x, survivor)
	}
	var resumed bool
	for _, line := range strings.Split(wd.Logs(), "\n") {
		if strings.Contains(line, "resuming NAR on another peer") && !strings.Contains(line, "offset=0 ") {
			resumed = true
		}
	}
	if !resumed {
		t.Errorf("no resume mid-NAR in the workstation's log:\n%s", wd.Logs())
	}

	// An appliance added to the office fills from the desktops: what it
	// fetches from a peer lands in its NAR cache, which is a binary cache
	// of its own, and the next copy is served from it.
	hosts := map[string]*host{"appliance": appHost, "desktop": deskHost}
	pi := l.addHost("pi")
	piCache := filepath.Join(t.TempDir(), "pi-cache")
	pd := pi.startDaemon(t, nsServe{Keys: keys, Args: append(peerArgs(hosts[survivor]), "--cache-dir", piCache)})
	waitPeerConnected(t, pd, survivor)
	if r := nixCopyIn(pi, nixEnv(t, keys...), pd, filepath.Join(t.TempDir(), "pi1"), fx.Top); r.Err != nil {
		t.Fatalf("copy through the new appliance: %v", r.Err)
	}
	pollUntil(t, 30*time.Second, "the new appliance keeps the closure", func() bool {
		st, err := pd.status()
		return err == nil && st.Cache != nil && st.Cache.Entries == len(fx.Closure)
	})
	before := mustStatus(t, pd).Totals.BytesFromPeers
	fromFile := filepath.Join(t.TempDir(), "pi-file")
	mustRun(t, benv, "nix", "copy", "--from", "file://"+piCache, "--to", fromFile, fx.Top)
	checkCopied(t, fx, fromFile, fx.Closure, true)
	dst2 := filepath.Join(t.TempDir(), "pi2")
	if r := nixCopyIn(pi, nixEnv(t, keys...), pd, dst2, fx.Top); r.Err != nil {
		t.Fatalf("second copy through the new appliance: %v", r.Err)
	}
	checkCopied(t, fx, dst2, fx.Closure, true)
	if after := mustStatus(t, pd).Totals.BytesFromPeers; after != before {
		t.Errorf("second copy fetched %d bytes from peers; want all from the NAR cache", after-before)
	}
}
