package integration

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lancache/lancache"
	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/transfer"
)

// TestHostileInventories: with open peering, a hostile LAN host runs
// several peer identities (the project's own transfer.Node, in its own
// namespace) that advertise millions of paths they do not have, at the
// per-peer limit, one of them replacing its whole inventory. The daemon's
// memory stays bounded, comes back near its baseline when they leave, and
// an honest peer's paths still substitute through it all along.
//
// Subnet 40 is this test's.
func TestHostileInventories(t *testing.T) {
	fx := newStoreFixture(t)
	l := newLAN(t, 40)
	hv, hh, hr := l.addHost("victim"), l.addHost("honest"), l.addHost("rogue")
	keys := []string{fx.Key}
	hh.startDaemon(t, nsServe{StoreRoot: fx.Root, Keys: keys})
	victim := hv.startDaemon(t, nsServe{Keys: keys, Args: peerArgs(hh)})
	waitPeerConnected(t, victim, "honest")
	pid := victim.cmd.Process.Pid
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err != nil || strings.TrimSpace(string(comm)) != "lancache" {
		t.Fatalf("pid %d is %q (%v), not the daemon", pid, comm, err)
	}
	copyVia := func(what string) {
		t.Helper()
		dst := filepath.Join(t.TempDir(), "dst")
		if r := nixCopyIn(hv, fx.Env, victim, dst, fx.Top); r.Err != nil {
			t.Fatalf("%s: nix copy of %s through the victim: %v\n%s", what, fx.Top, r.Err, r.Stderr)
		}
		for _, p := range fx.Closure {
			if r := run(fx.Env, "nix-store", "--store", dst, "--check-validity", p); r.Err != nil {
				t.Fatalf("%s: %s not valid after nix copy: %s", what, p, r.Stderr)
			}
		}
	}
	copyVia("before the attack")
	base := procMem(t, pid)
	t.Logf("victim baseline: VmRSS %d MB, VmHWM %d MB", base.rss>>20, base.hwm>>20)

	const perPeer = 2_000_000 // transfer.Config.MaxPeerPaths
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	victimAddr := quicPeer(hv)

	// One identity replaces its inventory of perPeer paths with another,
	// in steps that each make it send a new snapshot (its delta log is
	// outgrown); it ends with perPeer-1 so that the end is visible.
	r1 := startRogue(ctx, t, hr, "rogue1", victimAddr)
	started := []*rogue{r1}
	a := fakeHashes(1, perPeer)
	r1.inv.Add(a...)
	waitVictim(t, victim, "rogue1 indexed", func(st *lancache.Status) bool { return peerPaths(st, "rogue1") == perPeer })
	b := fakeHashes(2, perPeer-1)
	const step = 250_000
	for i := 0; i < perPeer; i += step {
		r1.inv.Remove(a[i:min(i+step, len(a))]...)
		r1.inv.Add(b[min(i, len(b)):min(i+step, len(b))]...)
	}
	a, b = nil, nil
	waitVictim(t, victim, "rogue1's new inventory", func(st *lancache.Status) bool { return peerPaths(st, "rogue1") == perPeer-1 })

	// More identities, each with as many other paths.
	rogues := []string{"rogue1"}
	for i := 2; i <= 4; i++ {
		name := "rogue" + strconv.Itoa(i)
		r := startRogue(ctx, t, hr, name, victimAddr)
		r.inv.Add(fakeHashes(uint64(i+1), perPeer)...)
		rogues = append(rogues, name)
		started = append(started, r)
	}
	// Settled: every rogue connected, each either indexed in full or its
	// offer counted as dropped.
	waitVictim(t, victim, "every rogue indexed or dropped", func(st *lancache.Status) bool {
		missing := 0
		for _, name := range rogues {
			p := findPeer(st, name)
			if p == nil || p.State != "connected" {
				return false
			}
			if p.PathsAdvertised == 0 {
				missing++
			} else if p.PathsAdvertised < perPeer-1 {
				return false // still arriving
			}
		}
		return uint64(missing) <= st.PeerIndex.OffersDropped
	})
	peak := procMem(t, pid)
	st, err := victim.status()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("victim under attack: VmRSS %d MB, VmHWM %d MB; index %d of %d entries, %d offers dropped",
		peak.rss>>20, peak.hwm>>20, st.PeerIndex.Entries, st.PeerIndex.MaxEntries, st.PeerIndex.OffersDropped)
	for _, p := range st.Peers {
		t.Logf("  peer %s: %s, %d paths", p.Name, p.State, p.PathsAdvertised)
	}
	// The index holds at most 4M entries of ~38 bytes (~150 MB); without a
	// bound the attack above costs over 400 MB.
	if grow := int64(peak.hwm) - int64(base.rss); grow > 300<<20 {
		t.Errorf("victim's peak memory grew by %d MB under the attack, want ≤ 300 MB", grow>>20)
	}
	if st.PeerIndex.Entries > st.PeerIndex.MaxEntries || st.PeerIndex.OffersDropped == 0 {
		t.Errorf("index %+v: want within its bound, with the drops counted", st.PeerIndex)
	}
	if p := findPeer(st, "honest"); p == nil || p.PathsAdvertised == 0 {
		t.Errorf("the honest peer's inventory was dropped: %+v", p)
	}
	metrics := victim.wantStatus(t, "GET", "/metrics", 200)
	if !strings.Contains(string(metrics), "lancache_peer_offers_dropped_total "+strconv.FormatUint(st.PeerIndex.OffersDropped, 10)) {
		t.Errorf("metrics do not count the %d dropped offers", st.PeerIndex.OffersDropped)
	}
	copyVia("under the attack")

	// The rogues leave; what they cost is given back.
	cancel()
	for _, r := range started {
		<-r.done
	}
	waitVictim(t, victim, "rogues gone", func(st *lancache.Status) bool {
		for _, name := range rogues {
			if findPeer(st, name) != nil {
				return false
			}
		}
		return st.PeerIndex.Entries < 1000
	})
	var after memInfo
	deadline := time.Now().Add(60 * time.Second)
	for {
		after = procMem(t, pid)
		if after.rss <= base.rss+64<<20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("victim after the rogues left: VmRSS %d MB (baseline %d MB)", after.rss>>20, base.rss>>20)
	if after.rss > base.rss+64<<20 {
		t.Errorf("victim's memory is %d MB 60s after the rogues left, baseline %d MB: want within 64 MB of it", after.rss>>20, base.rss>>20)
	}
	copyVia("after the attack")
}

// rogue is a peer identity of the hostile host: a real transfer.Node that
// advertises the fake hashes in inv and holds nothing.
type rogue struct {
	inv  *cache.Inventory
	done chan struct{}
}

// startRogue starts a rogue identity in h's namespace, dialing addr.
func startRogue(ctx context.Context, t *testing.T, h *host, name, addr string) *rogue {
	t.Helper()
	r := &rogue{inv: cache.NewInventory(), done: make(chan struct{})}
	var n *transfer.Node
	err := inNS(h.NS, func() error {
		var err error
		n, err = transfer.New(transfer.Config{ListenAddr: h.IP + ":0", StateDir: t.TempDir(), Name: name}, nothing{}, r.inv)
		return err
	})
	if err != nil {
		t.Fatalf("rogue %s: %v", name, err)
	}
	n.AddPeer(addr, "")
	go func() {
		defer close(r.done)
		n.Run(ctx)
	}()
	t.Cleanup(func() { <-r.done })
	return r
}

// nothing is the rogue's store: it has no path it advertises.
type nothing struct{}

func (nothing) NarInfo(context.Context, cache.Hash) (*cache.NarInfo, error) {
	return nil, cache.ErrNotFound
}

func (nothing) WriteNAR(context.Context, io.Writer, *cache.NarInfo, int64, int64) error {
	return cache.ErrNotFound
}

// fakeHashes returns n distinct made-up store-path hashes drawn from seed.
func fakeHashes(seed uint64, n int) []cache.Hash {
	r := rand.New(rand.NewPCG(seed, 40))
	hs := make([]cache.Hash, n)
	for i := range hs {
		for j := 0; j < len(hs[i]); j += 8 {
			v := r.Uint64()
			for k := j; k < min(j+8, len(hs[i])); k++ {
				hs[i][k] = byte(v)
				v >>= 8
			}
		}
	}
	return hs
}

// peerPaths is how many paths st says the peer named name advertises.
func peerPaths(st *lancache.Status, name string) int {
	if p := findPeer(st, name); p != nil {
		return p.PathsAdvertised
	}
	return -1
}

// waitVictim polls d's status until cond holds, for at most two minutes
// (hundreds of MB of inventories on a loaded machine; a hang, not a timing
// check).
func waitVictim(t *testing.T, d *daemon, what string, cond func(*lancache.Status) bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := d.status()
		if err == nil && cond(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not after 2 minutes (%v); status %+v", what, err, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// memInfo is a process's resident memory, from /proc/<pid>/status.
type memInfo struct{ rss, hwm uint64 } // VmRSS and VmHWM (its peak), bytes

func procMem(t *testing.T, pid int) memInfo {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var m memInfo
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "kB" {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			m.rss = v << 10
		case "VmHWM:":
			m.hwm = v << 10
		}
	}
	if m.rss == 0 || m.hwm == 0 {
		t.Fatalf("no VmRSS/VmHWM in /proc/%d/status", pid)
	}
	return m
}
