package integration

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/quic-go/quic-go"

	"github.com/lancache/lancache"
	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/transfer"
)

// TestFaults injects faults around a daemon on a LAN of network namespaces
// (issue 8): a lossy, slow link to the peer; a peer that stalls mid-stream;
// a peer that sends garbage frames; a peer that advertises paths it does
// not have or lies about their NarSize; an upstream that fails; a cache
// disk that fills up. In each the Nix client must either succeed with
// verified paths or fail cleanly (a 404, or a broken download it refuses),
// and nothing corrupt may be stored. Subnets 160-169 are this test's.
// docs/reliability.md tabulates the outcomes.
func TestFaults(t *testing.T) {
	fx := newStoreFixture(t)
	requireNetns(t)
	t.Run("loss-and-latency", func(t *testing.T) { testLossyLink(t, fx, 160) })
	t.Run("stalled-peer", func(t *testing.T) { testStalledPeer(t, fx, 161) })
	t.Run("garbage-frames", func(t *testing.T) { testGarbagePeer(t, fx, 162) })
	t.Run("lying-peer", func(t *testing.T) { testLyingPeer(t, fx, 163) })
	t.Run("upstream-faults", func(t *testing.T) { testUpstreamFaults(t, fx, 164) })
	t.Run("disk-full", func(t *testing.T) { testDiskFull(t, fx, 165) })
}

// udpRelay forwards UDP datagrams between the clients that send to it and
// one target, from inside a host's namespace, as a link would: it drops a
// share of them, delays each by a fixed one-way latency, and can go silent
// (a stalled peer) once a number of bytes have gone towards the client.
// The kernels CI runs on have no netem qdisc, hence user space.
type udpRelay struct {
	ns         string
	pc         *net.UDPConn
	target     *net.UDPAddr
	loss       float64
	delay      time.Duration
	stallAfter int64 // bytes towards the client; 0: never stall

	down, dropped atomic.Int64
	stalled       atomic.Bool

	mu    sync.Mutex
	conns map[string]*net.UDPConn
	queue chan relayPacket
	done  chan struct{}
	wg    sync.WaitGroup
}

type relayPacket struct {
	due  time.Time
	b    []byte
	send func([]byte)
}

// startRelay listens on h's LAN address and forwards to target; it is
// closed when the test ends.
func startRelay(t testing.TB, h *host, target string, loss float64, oneWay time.Duration, stallAfter int64) *udpRelay {
	t.Helper()
	ta, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := h.listenPacket("udp", h.IP+":0")
	if err != nil {
		t.Fatal(err)
	}
	r := &udpRelay{
		ns: h.NS, pc: pc.(*net.UDPConn), target: ta, loss: loss, delay: oneWay, stallAfter: stallAfter,
		conns: map[string]*net.UDPConn{}, queue: make(chan relayPacket, 1<<14), done: make(chan struct{}),
	}
	r.wg.Add(2)
	go r.readClients()
	go r.deliver()
	t.Cleanup(r.close)
	return r
}

// Addr is the relay's address, for --peer.
func (r *udpRelay) Addr() string { return r.pc.LocalAddr().String() }

func (r *udpRelay) close() {
	close(r.done)
	r.pc.Close()
	r.mu.Lock()
	for _, c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *udpRelay) readClients() {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := r.pc.ReadFromUDP(buf)
		if err != nil {
			return
		}
		up, err := r.upstream(from)
		if err != nil {
			continue
		}
		r.enqueue(buf[:n], false, func(b []byte) { up.Write(b) })
	}
}

// upstream returns the socket that carries from's datagrams to the
// target, made in the relay's namespace on first use.
func (r *udpRelay) upstream(from *net.UDPAddr) (*net.UDPConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.conns[from.String()]; ok {
		return c, nil
	}
	var c *net.UDPConn
	err := inNS(r.ns, func() error {
		var err error
		c, err = net.DialUDP("udp", nil, r.target)
		return err
	})
	if err != nil {
		return nil, err
	}
	r.conns[from.String()] = c
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ICMP errors from a target that went away
			}
			r.enqueue(buf[:n], true, func(b []byte) { r.pc.WriteToUDP(b, from) })
		}
	}()
	return c, nil
}

func (r *udpRelay) enqueue(b []byte, down bool, send func([]byte)) {
	if r.stalled.Load() || (r.loss > 0 && mrand.Float64() < r.loss) {
		r.dropped.Add(1)
		return
	}
	if down {
		if n := r.down.Add(int64(len(b))); r.stallAfter > 0 && n > r.stallAfter {
			r.stalled.Store(true)
			r.dropped.Add(1)
			return
		}
	}
	select {
	case r.queue <- relayPacket{due: time.Now().Add(r.delay), b: append([]byte(nil), b...), send: send}:
	default:
		r.dropped.Add(1) // a full queue drops, like a router's
	}
}

// deliver sends queued packets when they are due; with one fixed delay
// they are due in arrival order.
func (r *udpRelay) deliver() {
	defer r.wg.Done()
	for {
		select {
		case <-r.done:
			return
		case p := <-r.queue:
			if d := time.Until(p.due); d > 0 {
				select {
				case <-time.After(d):
				case <-r.done:
					return
				}
			}
			p.send(p.b)
		}
	}
}

// copyVerified runs nix copy of paths on h through d and checks that every
// path of the closure is valid and verifies in the destination.
func copyVerified(t *testing.T, fx *storeFixture, h *host, d *daemon, paths ...string) time.Duration {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "dst")
	start := time.Now()
	mustRun(t, fx.Env, "ip", append([]string{"netns", "exec", h.NS, "nix", "copy", "--from", d.URL, "--to", dst}, paths...)...)
	took := time.Since(start)
	closure := lines(mustRun(t, fx.Env, "nix-store", append([]string{"--store", dst, "-qR"}, paths...)...))
	for _, p := range closure {
		mustRun(t, fx.Env, "nix-store", "--store", dst, "--verify-path", p)
		if got, want := pathInfos(t, fx.Env, dst, p)[p].NarHash, fx.Info[p].NarHash; want != "" && got != want {
			t.Errorf("%s: narHash %s in the copy, %s at the source", p, got, want)
		}
	}
	return took
}

// wantClean fails the test if d counted a verification failure or an
// aborted NAR response.
func wantClean(t *testing.T, d *daemon) {
	t.Helper()
	st := mustStatusOf(t, d)
	if st.Totals.VerificationFailures != 0 || st.Totals.NarFailures != 0 {
		t.Errorf("%s: totals %+v; want no verification failure and no aborted NAR", d.Addr, st.Totals)
	}
}

func mustStatusOf(t testing.TB, d *daemon) *lancache.Status {
	t.Helper()
	st, err := d.status()
	if err != nil {
		t.Fatalf("status of %s: %v", d.Addr, err)
	}
	return st
}

// testLossyLink: the only holder is reached through a relay that drops 5%
// of the datagrams each way and adds 25 ms each way (50 ms RTT). Nix on b
// copies the whole closure (9 MiB of NARs) through b's endpoint.
func testLossyLink(t *testing.T, fx *storeFixture, subnet int) {
	l := newLAN(t, subnet)
	a, b := l.addHost("a"), l.addHost("b")
	keys := []string{fx.Key}
	a.startDaemon(t, nsServe{StoreRoot: fx.Root, Keys: keys})
	r := startRelay(t, b, a.IP+":37516", 0.05, 25*time.Millisecond, 0)
	db := b.startDaemon(t, nsServe{Keys: keys, Args: []string{"--peer", r.Addr()}})
	waitPeers(t, db, 1)
	// At 5% loss QUIC's congestion control settles near 200 KB/s: the
	// whole closure (10 MiB) takes a minute, so CI copies the busybox path
	// (about 1 MiB) and leaf; LANCACHE_LOSSY_FULL=1 copies the closure.
	paths := []string{fx.Top}
	if os.Getenv("LANCACHE_LOSSY_FULL") != "1" {
		paths = nil
		for _, p := range fx.Closure {
			if strings.HasSuffix(p, "-busybox") || strings.HasSuffix(p, "-leaf") {
				paths = append(paths, p)
			}
		}
	}
	took := copyVerified(t, fx, b, db, paths...)
	st := mustStatusOf(t, db)
	t.Logf("%d paths copied over 5%% loss and 50 ms RTT in %v; %d datagrams dropped; %d bytes from the peer (%.0f KB/s); peer RTT %.1f ms",
		len(paths), took.Round(time.Millisecond), r.dropped.Load(), st.Totals.BytesFromPeers, float64(st.Totals.BytesFromPeers)/1e3/took.Seconds(), st.Peers[0].RTTMillis)
	if st.Totals.BytesFromPeers == 0 {
		t.Error("nothing came from the peer")
	}
	wantClean(t, db)
}

// testStalledPeer: two holders, both through relays; a's is the faster,
// so b asks a first, and a's relay goes silent after 1 MiB of the 8 MiB
// NAR (a peer that hangs mid-stream without closing anything). b must give
// up on a after its stall timeout and resume at the same byte on c; Nix
// sees one slow but whole response.
func testStalledPeer(t *testing.T, fx *storeFixture, subnet int) {
	root3 := filepath.Join(t.TempDir(), "store3")
	if out, err := exec.Command("cp", "-a", fx.Root, root3).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v\n%s", err, out)
	}
	l := newLAN(t, subnet)
	a, b, c := l.addHost("a"), l.addHost("b"), l.addHost("c")
	keys := []string{fx.Key}
	a.startDaemon(t, nsServe{StoreRoot: fx.Root, Keys: keys})
	c.startDaemon(t, nsServe{StoreRoot: root3, Keys: keys})
	ra := startRelay(t, b, a.IP+":37516", 0, 0, 1<<20)
	rc := startRelay(t, b, c.IP+":37516", 0, 15*time.Millisecond, 0)
	db := b.startDaemon(t, nsServe{Keys: keys, Args: []string{"--peer", ra.Addr(), "--peer", rc.Addr()}})
	waitPeers(t, db, 2)
	took := copyVerified(t, fx, b, db, fx.EdgeCases)
	if !ra.stalled.Load() {
		t.Fatalf("a's relay never stalled (%d bytes through): b did not fetch from a first", ra.down.Load())
	}
	st := mustStatusOf(t, db)
	x := findTransfer(st, hashPart(fx.EdgeCases))
	t.Logf("a stalled after 1 MiB; the copy took %v; transfer %+v", took.Round(time.Millisecond), x)
	if x == nil || x.Result != "ok" || x.Peer != "c" {
		t.Errorf("transfer of %s: %+v; want ok, finished by c", fx.EdgeCases, x)
	}
	wantClean(t, db)
}

// testGarbagePeer: a hostile client speaking ALPN lancache/1 opens
// connections to a's daemon and sends garbage before and after a valid
// hello, on the control stream and on request streams. Each connection
// must be closed by the daemon, and the daemon must go on serving: b, a
// proper peer, substitutes through it afterwards.
func testGarbagePeer(t *testing.T, fx *storeFixture, subnet int) {
	l := newLAN(t, subnet)
	a, b, x := l.addHost("a"), l.addHost("b"), l.addHost("x")
	keys := []string{fx.Key}
	da := a.startDaemon(t, nsServe{StoreRoot: fx.Root, Keys: keys})
	target := a.IP + ":37516"

	pc, err := x.listenPacket("udp", x.IP+":0")
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: pc}
	defer tr.Close()
	// Each case is a node of its own: one node's second connection would
	// be closed as a duplicate, whatever it sent.
	identity := func() (*tls.Config, string) {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: bigOne(), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Config{
			MinVersion: tls.VersionTLS13, NextProtos: []string{transfer.ALPN}, InsecureSkipVerify: true, ServerName: "lancache",
			Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}},
		}, transfer.NodeID(pub)
	}
	const idMark = "<ID>"
	id := strings.Repeat("a", len(transfer.NodeID(make(ed25519.PublicKey, ed25519.PublicKeySize))))
	hello := helloFrame(idMark+id[len(idMark):], "x")
	junk := make([]byte, 8<<10)
	rand.Read(junk)
	hash := make([]byte, 20)
	rand.Read(hash)

	cases := []struct {
		name string
		ctrl []byte   // written on the control stream
		reqs [][]byte // each written on a request stream of its own
	}{
		{name: "random bytes instead of hello", ctrl: junk},
		{name: "unknown frame version", ctrl: []byte{9, 1, 0, 0, 0, 0}},
		{name: "hello longer than its bound", ctrl: append([]byte{1, 1, 0xff, 0xff, 0xff, 0xff}, junk...)},
		{name: "hello claiming another id", ctrl: helloFrame(id, "x")},
		{name: "hello, then an unknown frame type", ctrl: append(append([]byte{}, hello...), 1, 0x7f, 0, 0, 0, 0)},
		{name: "hello, then a snapshot of 2^32 paths", ctrl: append(append([]byte{}, hello...), frame(0x02, append(make([]byte, 16), 0xff, 0xff, 0xff, 0xff, 20))...)},
		{name: "hello, then a truncated delta", ctrl: append(append([]byte{}, hello...), 1, 0x03, 0, 0, 0x10, 0, 1, 2, 3)},
		{name: "hello, then garbage requests", ctrl: hello, reqs: [][]byte{
			junk,
			frame(0x10, hash[:7]),         // short narinfo request
			frame(0x12, make([]byte, 20)), // short NAR request
			frame(0x13, []byte{0, 0, 0, 0, 0, 0, 0, 0, 1}), // a response where a request belongs
			append(frame(0x10, hash), junk[:100]...),       // trailing bytes
			{1, 0x12, 0x7f, 0xff, 0xff, 0xff},              // NAR request beyond its bound
		}},
	}
	// All at once: a truncated frame is only noticed when the peer has
	// been silent for 3 keepalive intervals (15 s).
	var wg sync.WaitGroup
	for _, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tlsConf, myID := identity()
			ctrl := bytes.Replace(c.ctrl, []byte(idMark+id[len(idMark):]), []byte(myID), 1)
			start := time.Now()
			closed, err := hostileSession(t, tr, target, tlsConf, ctrl, c.reqs)
			switch {
			case err != nil:
				t.Errorf("%s: %v", c.name, err)
			case !closed:
				t.Errorf("%s: the daemon kept the connection open for %v", c.name, hostileWait)
			default:
				t.Logf("%s: connection closed by the daemon after %v", c.name, time.Since(start).Round(time.Millisecond))
			}
		}()
	}
	wg.Wait()
	if !da.alive() {
		t.Fatalf("a's daemon died\n%s", da.Logs())
	}
	if !strings.Contains(da.Logs(), "protocol violation") {
		t.Errorf("a's daemon logged no protocol violation")
	}
	db := b.startDaemon(t, nsServe{Keys: keys, Args: []string{"--peer", target}})
	waitPeers(t, db, 1)
	copyVerified(t, fx, b, db, fx.Top)
	wantClean(t, db)
}

func bigOne() *big.Int { return big.NewInt(1) }

// frame is one frame of the peer protocol (see transfer/wire.go).
func frame(typ byte, payload []byte) []byte {
	b := []byte{1, typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[2:], uint32(len(payload)))
	return append(b, payload...)
}

// helloFrame is a Hello without fleet proof.
func helloFrame(id, name string) []byte {
	p := binary.BigEndian.AppendUint16(nil, 1)
	p = binary.BigEndian.AppendUint64(p, 0)
	p = append(append(p, byte(len(id))), id...)
	p = append(append(p, byte(len(name))), name...)
	p = append(p, 0)
	return frame(0x01, p)
}

// hostileWait is how long hostileSession waits for the daemon to close a
// connection: 3 keepalive intervals of 5 s, and slack.
const hostileWait = 25 * time.Second

// hostileSession dials target, writes ctrl on the control stream and each
// of reqs on a request stream of its own, then waits up to hostileWait for
// the daemon to close the connection.
func hostileSession(t *testing.T, tr *quic.Transport, target string, tlsConf *tls.Config, ctrl []byte, reqs [][]byte) (closed bool, err error) {
	ua, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), hostileWait)
	defer cancel()
	conn, err := tr.Dial(ctx, ua, tlsConf, &quic.Config{MaxIdleTimeout: time.Minute, KeepAlivePeriod: time.Second})
	if err != nil {
		return false, fmt.Errorf("dial: %w", err)
	}
	defer conn.CloseWithError(0, "")
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return false, err
	}
	st.Write(ctrl)
	go io.Copy(io.Discard, st)
	for _, r := range reqs {
		rs, err := conn.OpenStreamSync(ctx)
		if err != nil {
			break // the daemon closed the connection meanwhile
		}
		rs.Write(r)
		rs.Close()
		go io.Copy(io.Discard, rs)
	}
	select {
	case <-conn.Context().Done():
		return true, nil
	case <-ctx.Done():
		return false, nil
	}
}

// liarSource is the store of a peer that lies: it advertises phantom
// paths it cannot serve, and answers for one path with a narinfo whose
// NarSize is not the signed one.
type liarSource struct {
	*cache.Store
	phantoms map[cache.Hash]bool
	bigger   cache.Hash // NarSize+1 in its narinfo
}

func (s *liarSource) NarInfo(ctx context.Context, h cache.Hash) (*cache.NarInfo, error) {
	if s.phantoms[h] {
		return nil, cache.ErrNotFound
	}
	info, err := s.Store.NarInfo(ctx, h)
	if err == nil && h == s.bigger {
		lie := *info
		lie.NarSize++
		return &lie, nil
	}
	return info, err
}

// testLyingPeer: peer l (an in-process transfer.Node) advertises three
// paths it does not have, and for leaf a narinfo with NarSize+1 (its
// signature no longer verifies). With an honest holder a beside it, Nix
// on b copies the closure; with a gone, b answers 404 for the phantoms and
// for leaf, promptly, never the lie.
func testLyingPeer(t *testing.T, fx *storeFixture, subnet int) {
	lan := newLAN(t, subnet)
	a, b, lh := lan.addHost("a"), lan.addHost("b"), lan.addHost("l")
	keys := []string{fx.Key}
	da := a.startDaemon(t, nsServe{StoreRoot: fx.Root, Keys: keys})

	pks, err := cache.ParsePublicKeys(fx.Key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	inv := cache.NewInventory()
	st, err := cache.OpenStore(ctx, cache.StoreConfig{Root: fx.Root, Policy: cache.Policy{Mode: cache.ShareSigned, Keys: pks}, Inventory: inv})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	liar := &liarSource{Store: st, phantoms: map[cache.Hash]bool{}}
	var leaf string
	for _, p := range fx.Closure {
		if strings.HasSuffix(p, "-leaf") {
			leaf = p
		}
	}
	liar.bigger, _ = cache.ParseHash(hashPart(leaf))
	var phantoms []string
	for range 3 {
		var raw [20]byte
		rand.Read(raw[:])
		s := nixbase32.EncodeToString(raw[:])
		h, _ := cache.ParseHash(s)
		liar.phantoms[h] = true
		inv.Add(h)
		phantoms = append(phantoms, s)
	}
	var ln *transfer.Node
	err = inNS(lh.NS, func() error {
		var err error
		ln, err = transfer.New(transfer.Config{ListenAddr: lh.IP + ":37516", StateDir: t.TempDir(), Name: "l", TrustedKeys: pks}, liar, inv)
		return err
	})
	if err != nil {
		cancel()
		st.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ln.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		st.Close()
	})

	db := b.startDaemon(t, nsServe{Keys: keys, Args: []string{"--peer", a.IP + ":37516", "--peer", lh.IP + ":37516"}})
	waitPeers(t, db, 2)
	copyVerified(t, fx, b, db, fx.Top)
	wantClean(t, db)

	da.Stop(syscall.SIGTERM)
	pollUntilTrue(t, 30*time.Second, "b sees a gone", func() bool {
		s, err := db.status()
		if err != nil {
			return false
		}
		for _, p := range s.Peers {
			if p.Name == "a" && p.State == "connected" {
				return false
			}
		}
		return true
	})
	for _, h := range append(phantoms, hashPart(leaf)) {
		start := time.Now()
		code, body, err := db.fetch("GET", "/"+h+".narinfo")
		took := time.Since(start)
		if err != nil || code != 404 {
			t.Errorf("narinfo %s offered only by the liar: %d %v %q; want 404", h, code, err, clip(body))
		}
		if took > 3*time.Second {
			t.Errorf("narinfo %s took %v; a miss must be prompt", h, took)
		}
	}
	// The log reaches us through a pipe: wait for the line, bounded.
	pollUntilTrue(t, 10*time.Second, "b logs the rejected narinfo", func() bool {
		return strings.Contains(db.Logs(), "narinfo from peer rejected")
	})
	wantClean(t, db)
}

// faultyUpstream serves a binary cache directory with faults by path:
// a 500, a body cut in the middle, or no answer at all.
type faultyUpstream struct {
	dir    string
	URL    string
	mu     sync.Mutex
	faults map[string]string // URL path -> "500" | "truncate" | "hang"
	count  map[string]int    // requests by URL path
}

func (u *faultyUpstream) hits(p string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.count[p]
}

func (u *faultyUpstream) set(p, fault string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if fault == "" {
		delete(u.faults, p)
	} else {
		u.faults[p] = fault
	}
}

func (u *faultyUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	fault := u.faults[r.URL.Path]
	u.count[r.URL.Path]++
	u.mu.Unlock()
	switch fault {
	case "500":
		http.Error(w, "upstream on fire", http.StatusInternalServerError)
		return
	case "hang":
		select {
		case <-r.Context().Done():
		case <-time.After(60 * time.Second):
		}
		return
	}
	b, err := os.ReadFile(filepath.Join(u.dir, filepath.FromSlash(strings.TrimPrefix(r.URL.Path, "/"))))
	if err != nil || strings.Contains(r.URL.Path, "..") {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	if fault == "truncate" {
		w.Write(b[:len(b)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	w.Write(b)
}

func serveFaultyUpstream(t *testing.T, h *host, dir string) *faultyUpstream {
	t.Helper()
	ln, err := h.listen(h.IP + ":0")
	if err != nil {
		t.Fatal(err)
	}
	u := &faultyUpstream{dir: dir, URL: "http://" + ln.Addr().String(), faults: map[string]string{}, count: map[string]int{}}
	serveHTTP(t, ln, u)
	return u
}

// upstreamCache makes a binary cache directory of paths (uncompressed, so
// that sizes are known) and returns it with each path's NAR URL path.
func upstreamCache(t *testing.T, fx *storeFixture, paths ...string) (string, map[string]string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "upstream")
	mustRun(t, fx.Env, "nix", append([]string{"copy", "--from", fx.Root, "--to", "file://" + dir + "?compression=none"}, paths...)...)
	urls := map[string]string{}
	for _, p := range lines(mustRun(t, fx.Env, "nix-store", "--store", fx.Root, "-qR", paths[0])) {
		b, err := os.ReadFile(filepath.Join(dir, hashPart(p)+".narinfo"))
		if err != nil {
			continue
		}
		ni, err := parseNarinfo(b)
		if err != nil {
			t.Fatal(err)
		}
		urls[p] = "/" + one(ni, "URL")
	}
	return dir, urls
}

// cacheDirClean fails the test unless every narinfo in an appliance's
// cache dir has its NAR file, whole (FileSize), and no partial file is
// left; it returns the store path hashes it holds.
func cacheDirClean(t *testing.T, dir string) map[string]bool {
	t.Helper()
	held := map[string]bool{}
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("cache dir: %v", err)
	}
	for _, de := range des {
		h, ok := strings.CutSuffix(de.Name(), ".narinfo")
		if !ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			t.Errorf("cache dir: %v", err)
			continue
		}
		ni, err := parseNarinfo(b)
		if err != nil {
			t.Errorf("cache dir: %s: %v", de.Name(), err)
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, one(ni, "URL")))
		if err != nil || strconv.FormatInt(fi.Size(), 10) != one(ni, "FileSize") {
			t.Errorf("cache dir: %s: NAR file %s: %v, size %v, want FileSize %s", de.Name(), one(ni, "URL"), err, fi, one(ni, "FileSize"))
		}
		held[h] = true
	}
	nars, _ := os.ReadDir(filepath.Join(dir, "nar"))
	for _, de := range nars {
		if strings.HasPrefix(de.Name(), ".") {
			t.Errorf("cache dir: partial file nar/%s left behind", de.Name())
		}
	}
	return held
}

// testUpstreamFaults: an appliance pulls through from an upstream that
// answers a narinfo with 500, cuts a NAR body in half, or never answers.
// The appliance must answer Nix with a prompt 404 or a broken download
// that Nix refuses, store nothing of it, and serve the same paths once the
// upstream is well again.
func testUpstreamFaults(t *testing.T, fx *storeFixture, subnet int) {
	var leaf, mid string
	for _, p := range fx.Closure {
		switch {
		case strings.HasSuffix(p, "-leaf"):
			leaf = p
		case strings.HasSuffix(p, "-mid"):
			mid = p
		}
	}
	dir, urls := upstreamCache(t, fx, fx.Top)
	l := newLAN(t, subnet)
	up := serveFaultyUpstream(t, l.addHost("upstream"), dir)
	app, client := l.addHost("appliance"), l.addHost("client")
	cacheDir, stateDir := filepath.Join(t.TempDir(), "cache"), t.TempDir()
	// A failed upstream is skipped for a while (its down backoff, 10 s):
	// each fault gets a fresh appliance on the same cache dir.
	startApp := func() *daemon {
		return app.startDaemon(t, nsServe{HTTP: app.IP + ":37515", Keys: []string{fx.Key}, StateDir: stateDir, Args: []string{"--cache-dir", cacheDir, "--upstream", up.URL}})
	}
	d := startApp()

	// A NAR cut in half: Nix refuses the download, nothing is stored.
	up.set(urls[fx.EdgeCases], "truncate")
	dst := filepath.Join(t.TempDir(), "dst")
	r := run(fx.Env, "ip", "netns", "exec", client.NS, "nix", "copy", "--option", "download-attempts", "1", "--from", d.URL, "--to", dst, fx.EdgeCases)
	if n := up.hits(urls[fx.EdgeCases]); n == 0 {
		t.Errorf("the appliance never asked upstream for the NAR of %s", fx.EdgeCases)
	}
	if r.Err == nil {
		t.Errorf("nix copy of %s succeeded although upstream cut its NAR in half", fx.EdgeCases)
	} else {
		t.Logf("nix copy with the NAR cut upstream failed as it must: %s", lastLineOf(r.Stderr))
	}
	if res := run(fx.Env, "nix-store", "--store", dst, "--check-validity", fx.EdgeCases); res.Err == nil {
		t.Errorf("%s is valid in the client's store after a truncated download", fx.EdgeCases)
	}
	if held := cacheDirClean(t, cacheDir); held[hashPart(fx.EdgeCases)] {
		t.Errorf("the truncated %s is in the cache dir", fx.EdgeCases)
	}
	up.set(urls[fx.EdgeCases], "")
	d.Stop(syscall.SIGTERM)

	// 500 and no answer for narinfos: a 404 within the upstream's narinfo
	// timeout (3 s), never a 5xx.
	up.set("/"+hashPart(leaf)+".narinfo", "500")
	up.set("/"+hashPart(mid)+".narinfo", "hang")
	for _, p := range []string{leaf, mid} {
		d = startApp()
		start := time.Now()
		code, _, err := d.fetch("GET", "/"+hashPart(p)+".narinfo")
		took := time.Since(start)
		t.Logf("narinfo of %s with the upstream failing: %d after %v", filepath.Base(p), code, took.Round(time.Millisecond))
		if err != nil || code != 404 || took > 8*time.Second {
			t.Errorf("narinfo of %s with the upstream failing: %d %v after %v; want a 404 within 8 s", p, code, err, took)
		}
		if up.hits("/"+hashPart(p)+".narinfo") == 0 {
			t.Errorf("the appliance never asked upstream for the narinfo of %s", p)
		}
		d.Stop(syscall.SIGTERM)
	}
	d = startApp()
	up.set("/"+hashPart(leaf)+".narinfo", "")
	up.set("/"+hashPart(mid)+".narinfo", "")

	// Well again: everything comes through and is cached whole. The
	// appliance may remember the failures briefly (its down backoff).
	var took time.Duration
	pollUntilTrue(t, 30*time.Second, "the closure copies once upstream is well", func() bool {
		dst := filepath.Join(t.TempDir(), "dst")
		start := time.Now()
		r := run(fx.Env, "ip", "netns", "exec", client.NS, "nix", "copy", "--from", d.URL, "--to", dst, fx.Top)
		took = time.Since(start)
		return r.Err == nil
	})
	t.Logf("closure copied through the appliance after the faults in %v", took.Round(time.Millisecond))
	copyVerified(t, fx, client, d, fx.Top)
	held := cacheDirClean(t, cacheDir)
	for _, p := range fx.Closure {
		if !held[hashPart(p)] {
			t.Errorf("%s not cached after a good pull-through", p)
		}
	}
	if !d.alive() {
		t.Fatal("the appliance died")
	}
	d.Stop(syscall.SIGTERM)
}

// testDiskFull: the appliance's cache dir is a 4 MiB tmpfs and the
// closure holds an 8 MiB NAR. Writing it fails with ENOSPC; Nix must still
// get verified paths (or a clean failure), the cache dir must hold no
// partial entry, and smaller paths must still be cached.
func testDiskFull(t *testing.T, fx *storeFixture, subnet int) {
	dir, _ := upstreamCache(t, fx, fx.Top)
	cacheDir := filepath.Join(t.TempDir(), "cache")
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "lancache-test", cacheDir).CombinedOutput(); err != nil {
		skipOrFail(t, "mount tmpfs: %v %s", err, out)
	}
	// Registered before the daemon starts, so it runs after the daemon
	// has stopped.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", cacheDir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", cacheDir, err, out)
		}
	})
	l := newLAN(t, subnet)
	up := serveFaultyUpstream(t, l.addHost("upstream"), dir)
	app, client := l.addHost("appliance"), l.addHost("client")
	d := app.startDaemon(t, nsServe{HTTP: app.IP + ":37515", Keys: []string{fx.Key}, Args: []string{"--cache-dir", cacheDir, "--cache-max-size", "1GiB", "--upstream", up.URL}})

	dst := filepath.Join(t.TempDir(), "dst")
	r := run(fx.Env, "ip", "netns", "exec", client.NS, "nix", "copy", "--from", d.URL, "--to", dst, fx.Top)
	if r.Err != nil {
		// A cache write error (ENOSPC) fails the one response that was
		// following the download; the path is then streamed directly, so
		// Nix's retry succeeds.
		t.Errorf("a full cache disk must not fail the pull-through: %v: %s", r.Err, lastLineOf(r.Stderr))
		if res := run(fx.Env, "nix-store", "--store", dst, "--check-validity", fx.EdgeCases); res.Err == nil {
			t.Errorf("%s is valid in the client's store after a failed download", fx.EdgeCases)
		}
	} else {
		for _, p := range fx.Closure {
			mustRun(t, fx.Env, "nix-store", "--store", dst, "--verify-path", p)
		}
		t.Logf("nix copy with the cache disk full succeeded; every path verifies")
	}
	if held := cacheDirClean(t, cacheDir); held[hashPart(fx.EdgeCases)] {
		t.Errorf("the 8 MiB %s is in a 4 MiB cache dir", fx.EdgeCases)
	}
	t.Logf("daemon log: %s", clip([]byte(grepLines(d.Logs(), "no space"))))
	if !d.alive() {
		t.Fatal("the appliance died on a full disk")
	}
	// The paths that fit are still pulled through, served and cached.
	var fit []string
	for _, p := range fx.Closure {
		if p != fx.EdgeCases && !strings.HasSuffix(p, "-top") && !strings.HasSuffix(p, "-mid") {
			fit = append(fit, p)
		}
	}
	copyVerified(t, fx, client, d, fit...)
	held := cacheDirClean(t, cacheDir)
	for _, p := range fit {
		if !held[hashPart(p)] {
			t.Errorf("%s (fits on the disk) is not cached", p)
		}
	}
	d.Stop(syscall.SIGTERM)
}

// pollUntilTrue polls cond every 100 ms until it holds, failing the test
// after timeout.
func pollUntilTrue(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func lastLineOf(s string) string {
	ls := lines([]byte(s))
	if len(ls) == 0 {
		return ""
	}
	return ls[len(ls)-1]
}

// grepLines returns the lines of s containing any of words, joined.
func grepLines(s string, words ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(strings.ToLower(l), strings.ToLower(w)) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, " | ")
}
