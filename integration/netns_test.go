package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A lan is a set of test hosts, each a network namespace with one veth
// ("eth0") on a bridge that lives in a namespace of its own, so nothing of
// the test touches the machine's real interfaces. Multicast (mDNS) crosses
// the bridge. Addresses are 10.231.<subnet>.<n>/24, inside those
// namespaces only. Everything is deleted when the test ends.
type lan struct {
	t      testing.TB
	prefix string // unique per lan: every namespace and link name starts with it
	subnet int
	brNS   string
	hosts  []*host
}

// host is one test machine on a lan.
type host struct {
	lan  *lan
	Name string
	NS   string
	IP   string // on eth0
}

var lanSeq atomic.Int32

// requireNetns skips (or on CI fails) unless network namespaces can be
// made: root and iproute2.
func requireNetns(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root to create network namespaces; run ./test.sh as root (sudo ./test.sh)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		skipOrFail(t, "needs ip (apt-get install iproute2): %v", err)
	}
}

// newLAN makes a bridge in its own namespace. subnet picks 10.231.<subnet>.0/24;
// two lans in one test must use different subnets.
func newLAN(t testing.TB, subnet int) *lan {
	t.Helper()
	requireNetns(t)
	l := &lan{t: t, subnet: subnet, prefix: fmt.Sprintf("lc%d%d", os.Getpid()%10000, lanSeq.Add(1))}
	l.brNS = l.prefix + "br"
	t.Cleanup(l.teardown)
	l.ip("netns", "add", l.brNS)
	l.ip("-n", l.brNS, "link", "set", "lo", "up")
	// No IGMP snooping: every port sees every multicast frame, as on a
	// small office switch.
	l.ip("-n", l.brNS, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	l.ip("-n", l.brNS, "link", "set", "br0", "up")
	return l
}

func (l *lan) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// addHost makes a host namespace with eth0 on the bridge and the next
// address of the subnet.
func (l *lan) addHost(name string) *host {
	l.t.Helper()
	n := len(l.hosts) + 1
	h := &host{lan: l, Name: name, NS: fmt.Sprintf("%sh%d", l.prefix, n), IP: fmt.Sprintf("10.231.%d.%d", l.subnet, n)}
	l.hosts = append(l.hosts, h)
	a, b := fmt.Sprintf("%sa%d", l.prefix, n), fmt.Sprintf("%sb%d", l.prefix, n)
	l.ip("netns", "add", h.NS)
	l.ip("link", "add", a, "netns", h.NS, "type", "veth", "peer", "name", b, "netns", l.brNS)
	l.ip("-n", l.brNS, "link", "set", b, "master", "br0", "up")
	l.ip("-n", h.NS, "link", "set", "lo", "up")
	l.ip("-n", h.NS, "link", "set", a, "name", "eth0")
	l.ip("-n", h.NS, "addr", "add", h.IP+"/24", "dev", "eth0")
	l.ip("-n", h.NS, "link", "set", "eth0", "up", "multicast", "on")
	l.ip("-n", h.NS, "route", "add", "224.0.0.0/4", "dev", "eth0")
	return h
}

// route joins two lans with a router namespace (address .254 on both),
// which forwards unicast between the subnets but, being a router, no
// multicast: mDNS does not cross it. Hosts added to either lan before the
// call get a route to the other subnet.
func route(t testing.TB, l1, l2 *lan) {
	t.Helper()
	ns := l1.prefix + "rt"
	l1.ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	l1.ip("-n", ns, "link", "set", "lo", "up")
	for i, l := range []*lan{l1, l2} {
		a, b := fmt.Sprintf("%sr%d", l1.prefix, i), fmt.Sprintf("%sR%d", l1.prefix, i)
		l.ip("link", "add", a, "netns", ns, "type", "veth", "peer", "name", b, "netns", l.brNS)
		l.ip("-n", l.brNS, "link", "set", b, "master", "br0", "up")
		l.ip("-n", ns, "addr", "add", fmt.Sprintf("10.231.%d.254/24", l.subnet), "dev", a)
		l.ip("-n", ns, "link", "set", a, "up")
	}
	if out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("enable forwarding: %v %s", err, out)
	}
	for _, pair := range [][2]*lan{{l1, l2}, {l2, l1}} {
		for _, h := range pair[0].hosts {
			pair[0].ip("-n", h.NS, "route", "add", fmt.Sprintf("10.231.%d.0/24", pair[1].subnet), "via", fmt.Sprintf("10.231.%d.254", pair[0].subnet))
		}
	}
}

func (l *lan) teardown() {
	for _, h := range l.hosts {
		if h.lan == l {
			exec.Command("ip", "netns", "del", h.NS).Run()
		}
	}
	exec.Command("ip", "netns", "del", l.brNS).Run()
}

// command runs name inside the host's namespace.
func (h *host) command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// inNS runs fn with the calling OS thread in the namespace ns. Sockets made
// by fn stay in ns after the thread switches back.
func inNS(ns string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", ns, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: Go retires it when this goroutine ends
		// rather than reuse a thread in the wrong namespace.
		return fmt.Errorf("setns back: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// dial connects from inside the host's namespace.
func (h *host) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNS(h.NS, func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// httpClient talks HTTP from inside the host's namespace (so 127.0.0.1 is
// the host's own loopback).
func (h *host) httpClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: h.dial, DisableKeepAlives: false}}
}

// listenUDPRelay and similar helpers bind inside a namespace.
func (h *host) listenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := inNS(h.NS, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// listen binds a TCP listener inside the host's namespace.
func (h *host) listen(addr string) (net.Listener, error) {
	var ln net.Listener
	err := inNS(h.NS, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

func TestLANHarness(t *testing.T) {
	l := newLAN(t, 200)
	a, b := l.addHost("a"), l.addHost("b")
	ln, err := b.listen(b.IP + ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hello"))
			c.Close()
		}
	}()
	c, err := a.dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("a -> b: %v", err)
	}
	buf := make([]byte, 5)
	if _, err := c.Read(buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q %v", buf, err)
	}
	c.Close()
	// b's loopback is not a's.
	if _, err := a.dial(context.Background(), "tcp", strings.Replace(ln.Addr().String(), b.IP, "127.0.0.1", 1)); err == nil {
		t.Fatal("a reached b's loopback")
	}
}
