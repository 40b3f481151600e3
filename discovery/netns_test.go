//go:build linux

package discovery_test

// Multi-host tests over real multicast: every host is a network namespace
// with a veth pair onto a bridge that lives in a namespace of its own, and
// runs this test binary as a helper process (TestMain, helperEnv). Nothing
// is created outside those namespaces.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/lancache/lancache/discovery"
	"github.com/lancache/lancache/discovery/internal/mdns"
)

const helperEnv = "LANCACHE_DISCOVERY_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "node":
		os.Exit(helperNode())
	case "flood":
		os.Exit(helperFlood())
	}
	os.Exit(m.Run())
}

// line is one line a helper node prints on stdout.
type line struct {
	Kind       string   `json:"kind"` // start, appeared, updated, gone, exit, error
	ID         string   `json:"id,omitempty"`
	Addrs      []string `json:"addrs,omitempty"`
	Goroutines int      `json:"goroutines,omitempty"`
	Err        string   `json:"err,omitempty"`
}

// helperNode runs one Discovery configured from the environment until
// SIGTERM, printing its events, then checks that Run left no goroutine.
func helperNode() int {
	enc := json.NewEncoder(os.Stdout)
	var mu sync.Mutex
	out := func(l line) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(l)
	}
	interval, _ := time.ParseDuration(os.Getenv("LCT_INTERVAL"))
	missed, _ := strconv.Atoi(os.Getenv("LCT_MISSED"))
	maxPeers, _ := strconv.Atoi(os.Getenv("LCT_MAXPEERS"))
	d, err := discovery.New(discovery.Config{
		Name:          os.Getenv("LCT_NAME"),
		ID:            os.Getenv("LCT_ID"),
		Port:          37516,
		FleetTag:      os.Getenv("LCT_FLEET"),
		QueryInterval: interval,
		MissedRounds:  missed,
		MaxPeers:      maxPeers,
	})
	if err != nil {
		out(line{Kind: "error", Err: err.Error()})
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	baseline := runtime.NumGoroutine()
	out(line{Kind: "start"})
	err = d.Run(ctx, func(ev discovery.Event) {
		l := line{Kind: ev.Kind.String(), ID: ev.Peer.ID}
		for _, a := range ev.Peer.Addrs {
			l.Addrs = append(l.Addrs, a.String())
		}
		out(l)
	})
	if err != nil {
		out(line{Kind: "error", Err: err.Error()})
		return 2
	}
	n := runtime.NumGoroutine()
	for deadline := time.Now().Add(2 * time.Second); n > baseline && time.Now().Before(deadline); n = runtime.NumGoroutine() {
		time.Sleep(10 * time.Millisecond)
	}
	out(line{Kind: "exit", Goroutines: n - baseline})
	if n > baseline {
		buf := make([]byte, 1<<16)
		fmt.Fprintf(os.Stderr, "goroutines left after Run:\n%s\n", buf[:runtime.Stack(buf, true)])
		return 3
	}
	return 0
}

// helperFlood sends hostile mDNS traffic from port 5353: announcements of
// LCT_FLOOD_N made-up peers of fleet LCT_FLEET, many instances per packet,
// and garbage.
func helperFlood() int {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:5353")
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		return 2
	}
	defer pc.Close()
	dst := &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353}
	n, _ := strconv.Atoi(os.Getenv("LCT_FLOOD_N"))
	fleet := os.Getenv("LCT_FLEET")
	for i := range n {
		// One packet with 16 fake instances, one of garbage, one truncated.
		msg := new(dns.Msg)
		msg.Response, msg.Authoritative = true, true
		for j := range 16 {
			id := fmt.Sprintf("fake%d-%d", i, j)
			svc := mdns.Service{Instance: id, Service: discovery.ServiceType, Host: "h" + id, Port: 9,
				TXT: []string{"v=1", "id=" + id, "fleet=" + fleet}}
			if err := svc.Init(); err != nil {
				fmt.Fprintln(os.Stderr, "flood:", err)
				return 2
			}
			a := svc.Announcement([]netip.Addr{netip.AddrFrom4([4]byte{10, 99, byte(i), byte(j)})}, 120)
			msg.Answer = append(msg.Answer, a.Answer...)
		}
		b, err := msg.Pack()
		if err != nil {
			fmt.Fprintln(os.Stderr, "flood:", err)
			return 2
		}
		garbage := make([]byte, 12+rand.IntN(1500))
		for k := range garbage {
			garbage[k] = byte(rand.Uint32())
		}
		garbage[2] |= 0x80 // QR: looks like a response
		for _, p := range [][]byte{b, garbage, b[:len(b)/2]} {
			if _, err := pc.WriteTo(p, dst); err != nil {
				fmt.Fprintln(os.Stderr, "flood:", err)
				return 2
			}
		}
		if i%50 == 49 {
			time.Sleep(time.Millisecond) // do not overrun the socket buffers of our own namespace
		}
	}
	return 0
}

// lab is a bridge namespace and host namespaces attached to it.
type lab struct {
	tb     testing.TB
	prefix string
	bridge string
	hosts  []string
	subnet int
}

// requireNetns skips (or, under CI=true, fails) when network namespaces
// cannot be used here.
func requireNetns(tb testing.TB) {
	tb.Helper()
	skip := func(why string) {
		tb.Helper()
		if os.Getenv("CI") == "true" {
			tb.Fatalf("netns test cannot run under CI=true: %s", why)
		}
		tb.Skipf("skipping netns test: %s", why)
	}
	if testing.Short() {
		tb.Skip("skipping netns test in -short mode")
	}
	if os.Geteuid() != 0 {
		skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		skip("the ip command (iproute2) is missing")
	}
}

var labSeq struct {
	sync.Mutex
	n int
}

// newLab makes a bridge and nhosts hosts on it, with IPv4 addresses unless
// v6only (then the hosts have only their IPv6 link-local addresses).
func newLab(tb testing.TB, nhosts int, v6only bool) *lab {
	tb.Helper()
	requireNetns(tb)
	labSeq.Lock()
	labSeq.n++
	seq := labSeq.n
	labSeq.Unlock()
	l := &lab{
		tb:     tb,
		prefix: fmt.Sprintf("lct%d-%d", os.Getpid(), seq),
		subnet: 1 + (os.Getpid()+seq)%250,
	}
	l.bridge = l.prefix + "-br"
	l.addNS(l.bridge)
	l.ip("-n", l.bridge, "link", "set", "lo", "up")
	l.ip("-n", l.bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	l.ip("-n", l.bridge, "link", "set", "br0", "up")
	for i := range nhosts {
		ns := fmt.Sprintf("%s-h%d", l.prefix, i)
		l.addNS(ns)
		port := fmt.Sprintf("p%d", i)
		// Both ends are created inside our namespaces: nothing touches the
		// namespace the test runs in.
		l.ip("-n", l.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
		l.ip("-n", l.bridge, "link", "set", port, "master", "br0", "up")
		l.ip("-n", ns, "link", "set", "lo", "up")
		if !v6only {
			l.ip("-n", ns, "addr", "add", fmt.Sprintf("10.231.%d.%d/24", l.subnet, i+1), "dev", "eth0")
		}
		l.ip("-n", ns, "link", "set", "eth0", "up")
		if !v6only {
			l.ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
		}
		l.hosts = append(l.hosts, ns)
	}
	return l
}

func (l *lab) addNS(name string) {
	l.tb.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		msg := fmt.Sprintf("ip netns add %s: %v: %s", name, err, out)
		if os.Getenv("CI") == "true" {
			l.tb.Fatal(msg)
		}
		l.tb.Skip("skipping netns test: " + msg)
	}
	l.tb.Cleanup(func() {
		// Deleting a namespace deletes the interfaces in it, and a veth
		// pair goes with either end.
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			l.tb.Errorf("cleanup: ip netns del %s: %v: %s", name, err, out)
		}
	})
}

func (l *lab) ip(args ...string) {
	l.tb.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// node is a helper process running one Discovery in a host namespace.
type node struct {
	tb      testing.TB
	id      string
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}

	mu      sync.Mutex
	runAt   time.Time
	peers   map[string]bool
	addrs   map[string][]string
	ever    map[string]bool
	most    int
	exitErr error
	exit    *line
	stderr  strings.Builder
}

type nodeCfg struct {
	id, fleet string
	interval  time.Duration
	missed    int
	maxPeers  int
}

func (l *lab) start(host int, cfg nodeCfg) *node {
	tb := l.tb
	tb.Helper()
	cmd := exec.Command("ip", "netns", "exec", l.hosts[host], os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		helperEnv+"=node",
		"LCT_ID="+cfg.id,
		"LCT_NAME=host "+cfg.id,
		"LCT_FLEET="+cfg.fleet,
		"LCT_INTERVAL="+cfg.interval.String(),
		"LCT_MISSED="+strconv.Itoa(cfg.missed),
		"LCT_MAXPEERS="+strconv.Itoa(cfg.maxPeers),
	)
	n := &node{tb: tb, id: cfg.id, cmd: cmd, done: make(chan struct{}), peers: map[string]bool{}, addrs: map[string][]string{}, ever: map[string]bool{}}
	cmd.Stderr = &lockedWriter{mu: &n.mu, b: &n.stderr}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	n.started = time.Now()
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start helper in %s: %v", l.hosts[host], err)
	}
	tb.Cleanup(func() { n.kill() })
	go func() {
		defer close(n.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ln line
			if err := json.Unmarshal(sc.Bytes(), &ln); err != nil {
				continue
			}
			n.mu.Lock()
			switch ln.Kind {
			case "start":
				n.runAt = time.Now()
			case "appeared", "updated":
				n.peers[ln.ID] = true
				n.addrs[ln.ID] = ln.Addrs
				n.ever[ln.ID] = true
				n.most = max(n.most, len(n.peers))
			case "gone":
				delete(n.peers, ln.ID)
			case "exit", "error":
				n.exit = &ln
			}
			n.mu.Unlock()
		}
		err := cmd.Wait()
		n.mu.Lock()
		n.exitErr = err
		n.mu.Unlock()
	}()
	return n
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.b.Len() < 1<<20 {
		w.b.Write(p)
	}
	return len(p), nil
}

// lists reports whether n currently lists every id in ids.
func (n *node) lists(ids ...string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, id := range ids {
		if !n.peers[id] {
			return false
		}
	}
	return true
}

func (n *node) listsNone(ids ...string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !slices.ContainsFunc(ids, func(id string) bool { return n.peers[id] })
}

// stop sends SIGTERM (graceful: goodbye, Run returns) and waits.
func (n *node) stop() {
	n.tb.Helper()
	// ip netns exec execs the helper, so the pid is the helper's.
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		n.kill()
		n.tb.Fatalf("node %s did not stop within 10s after SIGTERM", n.id)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.exitErr != nil || n.exit == nil || n.exit.Kind != "exit" {
		n.tb.Errorf("node %s: exit %v, last line %+v, stderr:\n%s", n.id, n.exitErr, n.exit, n.stderr.String())
	}
}

// kill stops the node without a goodbye, as a crash or a power cut would.
func (n *node) kill() {
	_ = n.cmd.Process.Kill()
	<-n.done
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > timeout {
			return time.Since(start), false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNetnsDiscovery(t *testing.T) {
	l := newLab(t, 6, false)
	const (
		interval = time.Second
		missed   = 2
		maxPeers = 64
	)
	maxAge := time.Duration(missed*1.2*float64(interval)) + interval/2 // as discovery.New computes it
	cfg := func(id, fleet string) nodeCfg {
		return nodeCfg{id: id, fleet: fleet, interval: interval, missed: missed, maxPeers: maxPeers}
	}
	ids := []string{"node0", "node1", "node2", "node3"}
	others := func(i int) []string { return slices.Delete(slices.Clone(ids), i, i+1) }

	nodes := make([]*node, 4)
	for i, id := range ids {
		nodes[i] = l.start(i, cfg(id, "fleetA"))
	}
	stranger := l.start(4, cfg("stranger", "fleetB"))

	for i, n := range nodes {
		_, ok := waitFor(5*time.Second, func() bool { return n.lists(others(i)...) })
		if !ok {
			t.Fatalf("%s lists %v after 5s, want %v; stderr:\n%s", n.id, n.peers, others(i), n.stderr.String())
		}
		t.Logf("%s listed the other 3 at %v after its start", n.id, time.Since(n.started))
	}
	nodes[0].mu.Lock()
	t.Logf("node0 sees node1 at %v", nodes[0].addrs["node1"])
	nodes[0].mu.Unlock()

	// A crash: no goodbye, so the others notice the silence.
	nodes[3].kill()
	took, ok := waitFor(30*time.Second, func() bool {
		return nodes[0].listsNone("node3") && nodes[1].listsNone("node3") && nodes[2].listsNone("node3")
	})
	if !ok {
		t.Fatalf("killed node3 still listed after 30s")
	}
	t.Logf("killed node3 gone from all others after %v (expiry after %v of silence)", took, maxAge)

	// Back again.
	nodes[3] = l.start(3, cfg("node3", "fleetA"))
	took, ok = waitFor(5*time.Second, func() bool {
		return nodes[0].lists("node3") && nodes[1].lists("node3") && nodes[2].lists("node3") && nodes[3].lists(others(3)...)
	})
	if !ok {
		t.Fatalf("restarted node3 not listed by all within 5s")
	}
	t.Logf("restarted node3 listed by all after %v", took)

	// A clean stop says goodbye: gone well before the silence would tell.
	nodes[3].stop()
	took, ok = waitFor(30*time.Second, func() bool {
		return nodes[0].listsNone("node3") && nodes[1].listsNone("node3") && nodes[2].listsNone("node3")
	})
	if !ok {
		t.Fatalf("stopped node3 still listed after 30s")
	}
	if took >= maxAge {
		t.Errorf("stopped node3 gone after %v: the goodbye was not heard (expiry is %v)", took, maxAge)
	}
	t.Logf("stopped node3 gone from all others after %v (goodbye)", took)

	// Hostile traffic: thousands of made-up peers of our fleet and garbage.
	flood := exec.Command("ip", "netns", "exec", l.hosts[5], os.Args[0], "-test.run=^$")
	flood.Env = append(os.Environ(), helperEnv+"=flood", "LCT_FLEET=fleetA", "LCT_FLOOD_N=300")
	if out, err := flood.CombinedOutput(); err != nil {
		t.Fatalf("flood: %v: %s", err, out)
	}
	time.Sleep(200 * time.Millisecond)
	for i, n := range nodes[:3] {
		n.mu.Lock()
		most := n.most
		n.mu.Unlock()
		if most > maxPeers {
			t.Errorf("%s tracked %d peers during the flood, cap %d", n.id, most, maxPeers)
		}
		if _, ok := waitFor(5*time.Second, func() bool { return n.lists(others(i)[:2]...) }); !ok {
			t.Errorf("%s lost its real peers in the flood", n.id)
		}
		t.Logf("%s: at most %d peers tracked during the flood", n.id, most)
	}
	// The made-up peers never answer a query: they expire.
	for _, n := range nodes[:3] {
		if _, ok := waitFor(3*maxAge, func() bool {
			n.mu.Lock()
			defer n.mu.Unlock()
			return len(n.peers) == 2
		}); !ok {
			t.Errorf("%s still tracks made-up peers after %v", n.id, 3*maxAge)
		}
	}

	// The node of another fleet was never listed, and listed nobody.
	for _, n := range append(nodes[:3], nodes[3]) {
		n.mu.Lock()
		if n.ever["stranger"] {
			t.Errorf("%s listed the node of another fleet", n.id)
		}
		n.mu.Unlock()
	}
	stranger.mu.Lock()
	if len(stranger.ever) != 0 {
		t.Errorf("the node of another fleet listed %v", stranger.ever)
	}
	stranger.mu.Unlock()

	for _, n := range append(nodes[:3], stranger) {
		n.stop()
	}
}

// TestNetnsIPv6Only checks discovery over IPv6 alone: two hosts with only
// link-local addresses find each other, and the addresses carry the zone.
func TestNetnsIPv6Only(t *testing.T) {
	l := newLab(t, 2, true)
	cfg := func(id string) nodeCfg { return nodeCfg{id: id, interval: time.Second, missed: 2, maxPeers: 8} }
	a, b := l.start(0, cfg("a")), l.start(1, cfg("b"))
	// The link-local addresses need about a second of duplicate address
	// detection before they can send.
	if _, ok := waitFor(5*time.Second, func() bool { return a.lists("b") && b.lists("a") }); !ok {
		t.Fatalf("IPv6-only hosts did not find each other within 5s; stderr:\n%s\n%s", a.stderr.String(), b.stderr.String())
	}
	a.mu.Lock()
	addrs := a.addrs["b"]
	a.mu.Unlock()
	if len(addrs) == 0 || !strings.HasPrefix(addrs[0], "[fe80::") || !strings.Contains(addrs[0], "%eth0]") {
		t.Errorf("a sees b at %v, want a zoned link-local IPv6 address", addrs)
	}
	t.Logf("IPv6 only: found each other %v after start; a sees b at %v", time.Since(a.started), addrs)
	a.stop()
	b.stop()
}
