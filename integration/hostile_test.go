package integration

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lancache/lancache"
	"github.com/lancache/lancache/internal/syncbuf"
)

// TestHostileInventories: with open peering, a hostile LAN host runs
// several peer identities (integration/rogue: the project's own
// transfer.Node, in its own namespace) that advertise millions of paths
// they do not have, at the per-peer limit, one of them replacing its whole
// inventory. The daemon's memory stays bounded, comes back near its
// baseline when they leave, and an honest peer's paths substitute through
// it all along.
//
// Memory is measured on the daemon as shipped: under -race this test runs a
// daemon built without it, since the race detector multiplies memory.
// Subnet 40 is this test's.
func TestHostileInventories(t *testing.T) {
	fx := newStoreFixture(t)
	daemonBin, rogueBin := memoryTestBins(t)
	l := newLAN(t, 40)
	hv, hh, hr := l.addHost("victim"), l.addHost("honest"), l.addHost("rogue")
	keys := []string{fx.Key}
	hh.startDaemon(t, nsServe{StoreRoot: fx.Root, Keys: keys})
	victim := hv.startDaemon(t, nsServe{Keys: keys, Args: peerArgs(hh), Bin: daemonBin})
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
	t.Logf("victim baseline: VmRSS %d MB", base.rss>>20)

	const perPeer = 2_000_000 // transfer.Config.MaxPeerPaths
	victimAddr := quicPeer(hv)

	// One identity replaces its inventory of perPeer paths with another,
	// in steps that each make it send a new snapshot; it ends with
	// perPeer-1 paths so that the end is visible.
	r1 := startRogue(t, hr, rogueBin, "rogue1", victimAddr)
	r1.offer(t, 1, perPeer)
	waitVictim(t, victim, "rogue1 indexed", func(st *lancache.Status) bool { return peerPaths(st, "rogue1") == perPeer })
	r1.offer(t, 2, perPeer-1)
	waitVictim(t, victim, "rogue1's new inventory", func(st *lancache.Status) bool { return peerPaths(st, "rogue1") == perPeer-1 })

	// More identities, each with as many other paths.
	rogues := []*rogue{r1}
	for i := 2; i <= 4; i++ {
		r := startRogue(t, hr, rogueBin, "rogue"+strconv.Itoa(i), victimAddr)
		r.offer(t, uint64(i+1), perPeer)
		rogues = append(rogues, r)
	}
	// Settled: every rogue connected, each either indexed in full or its
	// offer counted as dropped.
	waitVictim(t, victim, "every rogue indexed or dropped", func(st *lancache.Status) bool {
		missing := 0
		for _, r := range rogues {
			p := findPeer(st, r.name)
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
	st, err := victim.status()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("victim under attack: VmRSS %d MB; index %d of %d entries, %d offers dropped",
		procMem(t, pid).rss>>20, st.PeerIndex.Entries, st.PeerIndex.MaxEntries, st.PeerIndex.OffersDropped)
	for _, p := range st.Peers {
		t.Logf("  peer %s: %s, %d paths", p.Name, p.State, p.PathsAdvertised)
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
	for _, r := range rogues {
		r.stop(t)
	}
	waitVictim(t, victim, "rogues gone", func(st *lancache.Status) bool {
		for _, r := range rogues {
			if findPeer(st, r.name) != nil {
				return false
			}
		}
		return st.PeerIndex.Entries < 1000
	})
	var after memInfo
	deadline := time.Now().Add(60 * time.Second)
	for {
		after = procMem(t, pid)
		if after.rss <= base.rss+32<<20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("victim after the rogues left: VmRSS %d MB (baseline %d MB), peak %d MB", after.rss>>20, base.rss>>20, after.hwm>>20)
	// The index holds at most 4M entries of ~38 bytes (~150 MB live; the
	// peak is about 260 MB with what the collector has yet to reclaim);
	// without a bound the attack above costs over 500 MB.
	if grow := int64(after.hwm) - int64(base.rss); grow > 380<<20 {
		t.Errorf("victim's peak memory grew by %d MB during the attack, want ≤ 380 MB", grow>>20)
	}
	if after.rss > base.rss+64<<20 {
		t.Errorf("victim's memory is %d MB 60s after the rogues left, baseline %d MB: want within 64 MB of it", after.rss>>20, base.rss>>20)
	}
	copyVia("after the attack")
}

var (
	memBinsOnce         sync.Once
	memDaemon, memRogue string
	memBinsErr          error
)

// memoryTestBins returns a daemon binary without the race detector (the
// one under test unless that has it) and integration/rogue.
func memoryTestBins(t *testing.T) (daemon, rogue string) {
	t.Helper()
	memBinsOnce.Do(func() {
		if memRogue, memBinsErr = goBuild("rogue", "github.com/lancache/lancache/integration/rogue", false); memBinsErr != nil {
			return
		}
		if !raceEnabled || os.Getenv("LANCACHE_BIN") != "" {
			return // memDaemon "" = lancacheBin
		}
		memDaemon, memBinsErr = goBuild("norace/lancache", "github.com/lancache/lancache/cmd/lancache", false)
	})
	if memBinsErr != nil {
		t.Fatal(memBinsErr)
	}
	return memDaemon, memRogue
}

// rogue is a running integration/rogue process: one hostile identity.
type rogue struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // its stdout
	logs  *syncbuf.Buffer
}

// startRogue starts a rogue identity in h's namespace, dialing addr.
func startRogue(t *testing.T, h *host, bin, name, addr string) *rogue {
	t.Helper()
	r := &rogue{name: name, lines: make(chan string, 16), logs: &syncbuf.Buffer{}}
	r.cmd = exec.Command("ip", "netns", "exec", h.NS, bin,
		"--listen", h.IP+":0", "--peer", addr, "--name", name, "--state-dir", t.TempDir())
	r.cmd.Stderr = r.logs
	var err error
	if r.stdin, err = r.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start rogue: %v", err)
	}
	go func() {
		defer close(r.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			r.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		if r.cmd.ProcessState == nil {
			r.cmd.Process.Kill()
			r.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", name, r.logs.String())
		}
	})
	return r
}

// offer makes the rogue offer n made-up paths drawn from seed.
func (r *rogue) offer(t *testing.T, seed uint64, n int) {
	t.Helper()
	fmt.Fprintf(r.stdin, "offer %d %d\n", seed, n)
	select {
	case line := <-r.lines:
		if line != "ok" {
			t.Fatalf("%s: offer: %q\n%s", r.name, line, r.logs.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s: no answer to offer after 2 minutes\n%s", r.name, r.logs.String())
	}
}

// stop makes the rogue leave and waits for it to exit.
func (r *rogue) stop(t *testing.T) {
	t.Helper()
	r.stdin.Close()
	if err := r.cmd.Wait(); err != nil {
		t.Errorf("%s: %v\n%s", r.name, err, r.logs.String())
	}
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
