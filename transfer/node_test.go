package transfer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/quic-go/quic-go"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/statusapi"
)

func TestInventoryConverges(t *testing.T) {
	base := runtime.NumGoroutine()
	key := newTestKey(t, "test-1")
	a := startNode(t, "a", &key, nil)
	b := startNode(t, "b", &key, nil)
	c := startNode(t, "c", &key, nil)

	// Paths held before the peers meet travel in the snapshot.
	var before []cache.Hash
	for i := range 100 {
		info, data := makePath(t, &key, "pre", 10+i)
		a.share(info, data)
		before = append(before, hashOf(t, info))
	}
	connect(b, a)
	connect(c, a)
	connect(c, b)
	waitFor(t, "peers connected", func() bool { return connected(a, b.ID(), c.ID()) && connected(c, a.ID(), b.ID()) })
	waitFor(t, "snapshot", func() bool { return offers(b, a.ID(), before[99]) && offers(c, a.ID(), before[0]) })

	// Deltas: additions, a burst larger than one delta frame, removals.
	var added []cache.Hash
	for i := range 3*maxDeltaEntries + 7 {
		var h cache.Hash
		binary.BigEndian.PutUint64(h[:], uint64(i)+1)
		h[19] = 0xaa
		added = append(added, h)
	}
	a.inv.Add(added...)
	a.inv.Remove(before[:50]...)
	b.inv.Add(added[:10]...)

	want := a.inv.Len()
	paths := func(n *testNode, id string) int {
		for _, p := range n.Peers() {
			if p.ID == id {
				return p.Paths
			}
		}
		return -1
	}
	waitFor(t, "deltas applied", func() bool {
		return paths(b, a.ID()) == want && paths(c, a.ID()) == want && paths(c, b.ID()) == 10
	})
	for _, n := range []*testNode{b, c} {
		for _, h := range added {
			if !offers(n, a.ID(), h) {
				t.Fatalf("%s: added path %s not offered by a", n.cfg.Name, h)
			}
		}
		for i, h := range before {
			if got := offers(n, a.ID(), h); got != (i >= 50) {
				t.Fatalf("%s: path %d offered=%v after removal of the first 50", n.cfg.Name, i, got)
			}
		}
	}
	holders := c.holders(added[3], nil)
	if len(holders) != 2 {
		t.Fatalf("c sees %d holders of a path a and b offer, want 2", len(holders))
	}

	// A peer that goes away takes its inventory with it.
	a.stop()
	waitFor(t, "a's inventory dropped", func() bool {
		return !offers(c, a.ID(), added[0]) && !offers(b, a.ID(), added[0])
	})
	if _, err := c.NarInfo(context.Background(), before[60]); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("NarInfo after the only holder left: %v, want ErrNotFound", err)
	}
	b.stop()
	c.stop()
	checkGoroutines(t, base)
}

func TestResyncOnDivergence(t *testing.T) {
	n := startNode(t, "n", nil, nil)
	p := dialRaw(t, n)
	st := p.hello(t)
	h1, h2 := cache.Hash{1}, cache.Hash{2}
	keys := keysOf([]cache.Hash{h1})
	k, data := encodeKeys(keys)
	snap := &snapshot{Seq: 7, FP: cache.FingerprintOf([]cache.Hash{h1}), Count: 1, K: k, Data: data}
	if err := writeFrame(st, typeSnapshot, snap.marshal()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "snapshot applied", func() bool { return offers(n, p.id.id, h1) })

	expectResync := func(what string) {
		t.Helper()
		st.SetReadDeadline(time.Now().Add(20 * time.Second))
		for {
			typ, _, err := readFrame(st)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if typ == typeResync {
				return
			}
		}
	}
	// A delta whose fingerprint disagrees: the node asks for a snapshot.
	d := &delta{From: 7, To: 8, FP: 12345, Changes: []cache.Delta{{Hash: h2}}}
	writeFrame(st, typeDelta, d.marshal())
	expectResync("wrong fingerprint")

	// Re-sync, then skip sequence numbers.
	writeFrame(st, typeSnapshot, snap.marshal())
	d = &delta{From: 9, To: 10, FP: snap.FP ^ cache.HashKey(h2), Changes: []cache.Delta{{Hash: h2}}}
	writeFrame(st, typeDelta, d.marshal())
	expectResync("sequence gap")

	// A correct delta after a snapshot applies.
	writeFrame(st, typeSnapshot, snap.marshal())
	d = &delta{From: 7, To: 8, FP: snap.FP ^ cache.HashKey(h2), Changes: []cache.Delta{{Hash: h2}}}
	writeFrame(st, typeDelta, d.marshal())
	waitFor(t, "delta applied", func() bool { return offers(n, p.id.id, h2) })
}

func TestDuplicateConnections(t *testing.T) {
	a := startNode(t, "a", nil, nil)
	b := startNode(t, "b", nil, nil)
	connect(a, b)
	connect(b, a)
	// Both ends settle on the same single connection: one session each, on
	// the connection one of them dialed, and both dial loops idle on it (no
	// dial in flight that could add another).
	settled := func() bool {
		var ss []*session
		for _, n := range []*testNode{a, b} {
			n.mu.Lock()
			idle := len(n.sessions) == 1 && len(n.targets) == 1
			for _, s := range n.sessions {
				ss = append(ss, s)
			}
			for _, tg := range n.targets {
				idle = idle && tg.state == statusapi.StateConnected && tg.id != "" && n.sessions[tg.id] != nil
			}
			n.mu.Unlock()
			if !idle {
				return false
			}
		}
		return ss[0].dialerID() == ss[1].dialerID()
	}
	waitFor(t, "one connection kept by both ends", settled)
}

func TestFleet(t *testing.T) {
	k1 := bytes.Repeat([]byte{1}, 32)
	k2 := bytes.Repeat([]byte{2}, 32)
	withKey := func(k []byte) func(*Config) { return func(c *Config) { c.FleetKey = k } }

	t.Run("same key", func(t *testing.T) {
		a := startNode(t, "a", nil, withKey(k1))
		b := startNode(t, "b", nil, withKey(k1))
		connect(b, a)
		waitFor(t, "connected", func() bool { return connected(a, b.ID()) && connected(b, a.ID()) })
	})
	for _, tc := range []struct {
		name   string
		ka, kb []byte
	}{
		{"other fleet", k1, k2},
		{"dialer without key", k1, nil},
		{"acceptor without key", nil, k1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := startNode(t, "a", nil, withKey(tc.ka))
			b := startNode(t, "b", nil, withKey(tc.kb))
			connect(b, a)
			waitFor(t, "refusal", func() bool {
				ps := b.Peers()
				return len(ps) == 1 && ps[0].State == statusapi.StateBackoff && ps[0].LastError != ""
			})
			if ps := a.Peers(); len(ps) != 0 {
				t.Fatalf("a lists peers %+v", ps)
			}
			t.Logf("b: %s", b.Peers()[0].LastError)
		})
	}
}

func TestPinnedID(t *testing.T) {
	a := startNode(t, "a", nil, nil)
	b := startNode(t, "b", nil, nil)
	c := startNode(t, "c", nil, nil)
	b.AddPeer(a.LocalAddr().String(), c.ID()) // a is not c
	waitFor(t, "refusal", func() bool {
		ps := b.Peers()
		return len(ps) == 1 && ps[0].State == statusapi.StateBackoff
	})
	if ps := a.Peers(); len(ps) != 0 {
		t.Fatalf("a lists peers %+v", ps)
	}
}

// rawPeer is a hand-driven client speaking to a node, for feeding it
// garbage.
type rawPeer struct {
	conn *quic.Conn
	tr   *quic.Transport
	id   *identity
}

func dialRaw(t *testing.T, n *testNode) *rawPeer {
	t.Helper()
	id, err := loadIdentity(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	t.Cleanup(func() { tr.Close(); udp.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := tr.Dial(ctx, n.LocalAddr(), id.clientTLS(n.ID()), &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return &rawPeer{conn: conn, tr: tr, id: id}
}

// hello completes the handshake as a well-behaved dialer and returns the
// control stream.
func (p *rawPeer) hello(t *testing.T) *quic.Stream {
	st, err := p.conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	h := &hello{Version: protocolVersion, ID: p.id.id, Name: "raw"}
	if err := writeFrame(st, typeHello, h.marshal()); err != nil {
		t.Fatal(err)
	}
	if typ, _, err := readFrame(st); err != nil || typ != typeHello {
		t.Fatalf("no hello back: %v %v", typ, err)
	}
	return st
}

// closedWith waits until the node closes the connection and returns the
// application error code.
func (p *rawPeer) closedWith(t *testing.T) quic.ApplicationErrorCode {
	t.Helper()
	select {
	case <-p.conn.Context().Done():
	case <-time.After(20 * time.Second):
		t.Fatal("node did not close the connection")
	}
	var ae *quic.ApplicationError
	if !errors.As(context.Cause(p.conn.Context()), &ae) {
		t.Fatalf("closed with %v, want an application error", context.Cause(p.conn.Context()))
	}
	return ae.ErrorCode
}

func TestBadFramesRejected(t *testing.T) {
	key := newTestKey(t, "test-1")
	n := startNode(t, "n", &key, nil)
	info, data := makePath(t, &key, "x", 1000)
	n.share(info, data)

	cases := []struct {
		name  string
		hello bool // complete the handshake first
		send  []byte
		ctrl  bool // send on the control stream (else a new stream)
	}{
		{"garbage before hello", false, []byte("GET / HTTP/1.1\r\n\r\n"), true},
		{"oversized hello", false, frame(1, typeHello, 1<<20, make([]byte, 1000)), true},
		{"wrong version", false, frame(9, typeHello, 0, nil), true},
		{"oversized delta", true, frame(1, typeDelta, maxPayload[typeDelta]+1, nil), true},
		{"garbled delta", true, frame(1, typeDelta, 30, make([]byte, 30)), true},
		{"hello on request stream", true, frame(1, typeHello, 0, nil), false},
		{"oversized request", true, frame(1, typeNarInfoReq, 4096, make([]byte, 4096)), false},
		{"garbled snapshot", true, frame(1, typeSnapshot, 30, bytes.Repeat([]byte{0xff}, 30)), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := dialRaw(t, n)
			var st *quic.Stream
			if tc.hello {
				st = p.hello(t)
			}
			if !tc.ctrl || st == nil {
				var err error
				if st, err = p.conn.OpenStreamSync(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			st.Write(tc.send)
			if tc.hello && !tc.ctrl {
				st.Close()
			}
			if code := p.closedWith(t); code != codeProtocol {
				t.Fatalf("closed with code %d, want %d (protocol)", code, codeProtocol)
			}
		})
	}

	// The node still works.
	m := startNode(t, "m", &key, nil)
	connect(m, n)
	waitFor(t, "inventory", func() bool { return offers(m, n.ID(), hashOf(t, info)) })
	got, _, err := fetch(context.Background(), m, hashOf(t, info))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("fetch after garbage: %v", err)
	}
}

func TestFetch(t *testing.T) {
	key := newTestKey(t, "test-1")
	other := newTestKey(t, "other-1")
	a := startNode(t, "a", &key, nil)
	b := startNode(t, "b", &key, nil)
	lax := startNode(t, "lax", &key, func(c *Config) { c.AcceptUnsigned = true })

	signed, data := makePath(t, &key, "hello-2.12", 3<<20+17)
	a.share(signed, data)
	unsigned, udata := makePath(t, nil, "local-build", 5000)
	a.share(unsigned, udata)
	foreign, fdata := makePath(t, &other, "foreign", 5000)
	a.share(foreign, fdata)
	held, hdata := makePath(t, &key, "private", 100)
	a.src.put(held, hdata) // held but not in the inventory (share policy)

	connect(b, a)
	connect(lax, a)
	waitFor(t, "inventory", func() bool {
		return offers(b, a.ID(), hashOf(t, signed)) && offers(lax, a.ID(), hashOf(t, signed))
	})
	ctx := context.Background()

	got, info, err := fetch(ctx, b, hashOf(t, signed))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) || info.NarHash != signed.NarHash || !info.SignedBy([]signature.PublicKey{key.pk}) {
		t.Fatal("fetched bytes or narinfo differ")
	}
	ts := b.Transfers()
	if len(ts) != 1 || ts[0].Result != statusapi.ResultOK || ts[0].BytesDone != int64(len(data)) || ts[0].Peer != a.ID() {
		t.Fatalf("transfers: %+v", ts)
	}
	var ps PeerStatus
	for _, p := range b.Peers() {
		if p.ID == a.ID() {
			ps = p
		}
	}
	if ps.BytesIn < int64(len(data)) || ps.Paths != 3 || ps.Name != "a" || ps.State != statusapi.StateConnected {
		t.Fatalf("peer status: %+v", ps)
	}

	// A range is fetched whole, verified and cut.
	var buf bytes.Buffer
	if err := b.WriteNAR(ctx, &buf, info, 1000, 70000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), data[1000:71000]) {
		t.Fatal("range differs")
	}
	buf.Reset()
	if err := b.WriteNAR(ctx, &buf, info, int64(len(data))-10, -1); err != nil || !bytes.Equal(buf.Bytes(), data[len(data)-10:]) {
		t.Fatalf("tail range: %v", err)
	}

	for _, tc := range []struct {
		name string
		n    *testNode
		h    cache.Hash
		ok   bool
	}{
		{"unsigned", b, hashOf(t, unsigned), false},
		{"untrusted key", b, hashOf(t, foreign), false},
		{"not shared", b, hashOf(t, held), false},
		{"nobody has it", b, cache.Hash{1, 2, 3}, false},
		{"unsigned accepted", lax, hashOf(t, unsigned), true},
	} {
		_, err := tc.n.NarInfo(ctx, tc.h)
		if tc.ok && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", tc.name, err)
		}
	}
	// Bytes of a path not shared are refused too.
	if err := b.WriteNAR(ctx, &buf, held, 0, -1); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("NAR of a path not shared: %v", err)
	}
}

func TestFailoverResumes(t *testing.T) {
	base := runtime.NumGoroutine()
	key := newTestKey(t, "test-1")
	a := startNode(t, "a", &key, nil)
	c := startNode(t, "c", &key, nil)
	b := startNode(t, "b", &key, nil)
	info, data := makePath(t, &key, "big", 8<<20)
	// Whichever holder serves first dies after 3 MiB; the other serves the
	// rest from that offset.
	pa := a.share(info, data)
	pc := c.share(info, data)
	pa.failAt, pa.failures, pa.freshOnly = 3<<20, -1, true
	pc.failAt, pc.failures, pc.freshOnly = 3<<20, -1, true
	connect(b, a)
	connect(b, c)
	h := hashOf(t, info)
	waitFor(t, "inventory", func() bool { return offers(b, a.ID(), h) && offers(b, c.ID(), h) })

	got, _, err := fetch(context.Background(), b, h)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("resumed stream differs")
	}
	ts := b.Transfers()
	if len(ts) != 1 || ts[0].Failovers != 1 || ts[0].Result != statusapi.ResultOK {
		t.Fatalf("transfers: %+v", ts)
	}
	if pa.served+pc.served != 2 {
		t.Fatalf("served %d+%d requests, want 2", pa.served, pc.served)
	}
	// Nobody was blamed.
	for _, p := range b.Peers() {
		if !p.BlocklistedUntil.IsZero() {
			t.Fatalf("peer blocklisted after a plain failure: %+v", p)
		}
	}
	a.stop()
	b.stop()
	c.stop()
	checkGoroutines(t, base)
}

// A file above the verify-first limit streams to the caller as it
// verifies, keeping back its last holdBack bytes. Its only holder sends
// the file up to its last byte and fails: although the bytes of the tail
// have arrived, the caller gets every byte before the tail and none of it,
// and a plain error (no blame).
func TestFailoverWhenAllFail(t *testing.T) {
	key := newTestKey(t, "test-1")
	const size = 1<<20 + 1000
	a := startNode(t, "a", &key, nil)
	b := startNode(t, "b", &key, func(c *Config) { c.VerifyFirstMax = size / 4 })
	info, data := makePath(t, &key, "big", size)
	if cache.FileSize(info) <= b.cfg.VerifyFirstMax {
		t.Fatalf("file of %d bytes is not above the verify-first limit %d", cache.FileSize(info), b.cfg.VerifyFirstMax)
	}
	pa := a.share(info, data)
	pa.failAt, pa.failures, pa.gate = size-1, -1, make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(pa.gate) }) }
	t.Cleanup(release)
	connect(b, a)
	h := hashOf(t, info)
	waitFor(t, "inventory", func() bool { return offers(b, a.ID(), h) })

	var buf bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- b.WriteNAR(context.Background(), &buf, info, 0, -1) }()
	cut := int64(size - holdBack)
	waitFor(t, "bytes of the tail received", func() bool {
		ts := b.Transfers()
		return len(ts) == 1 && ts[0].BytesDone > cut
	})
	release()
	err := <-done
	if err == nil || errors.Is(err, cache.ErrHashMismatch) {
		t.Fatalf("WriteNAR = %v, want a plain failure", err)
	}
	if buf.Len() != int(cut) || !bytes.Equal(buf.Bytes(), data[:cut]) {
		t.Fatalf("caller got %d bytes (a prefix of the file: %v), want the %d before the held-back tail",
			buf.Len(), bytes.HasPrefix(data, buf.Bytes()), cut)
	}
	for _, p := range b.Peers() {
		if !p.BlocklistedUntil.IsZero() {
			t.Fatalf("peer blocklisted after a plain failure: %+v", p)
		}
	}
}

func TestCorruptionBlocklists(t *testing.T) {
	key := newTestKey(t, "test-1")
	a := startNode(t, "a", &key, nil) // corrupt copy
	c := startNode(t, "c", &key, nil) // good copy, offered later
	b := startNode(t, "b", &key, nil)
	info, data := makePath(t, &key, "victim", 1<<20)
	bad := slices.Clone(data)
	bad[12345] ^= 1
	a.share(info, bad)
	c.src.put(info, data)
	connect(b, a)
	connect(b, c)
	h := hashOf(t, info)
	waitFor(t, "inventory", func() bool { return offers(b, a.ID(), h) })

	var buf bytes.Buffer
	err := b.WriteNAR(context.Background(), &buf, info, 0, -1)
	if !errors.Is(err, cache.ErrHashMismatch) {
		t.Fatalf("WriteNAR of a corrupt copy = %v, want ErrHashMismatch", err)
	}
	if buf.Len() >= len(data) {
		t.Fatalf("caller got all %d bytes of a corrupt file", buf.Len())
	}
	if b.HashMismatches() != 1 {
		t.Fatalf("mismatches = %d", b.HashMismatches())
	}
	var blocked bool
	for _, p := range b.Peers() {
		if p.ID == a.ID() {
			blocked = !p.BlocklistedUntil.IsZero() && p.HashMismatches == 1
		}
	}
	if !blocked {
		t.Fatalf("a not reported blocklisted: %+v", b.Peers())
	}
	if ts := b.Transfers(); ts[0].Result != statusapi.ResultHashMismatch {
		t.Fatalf("transfer result %q", ts[0].Result)
	}

	// The next request goes to the good holder although a still offers it.
	c.inv.Add(h)
	waitFor(t, "c's inventory", func() bool { return offers(b, c.ID(), h) })
	got, _, err := fetch(context.Background(), b, h)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("fetch from the good holder: %v", err)
	}
	if ts := b.Transfers(); ts[0].Peer != c.ID() {
		t.Fatalf("served by %s, want c", ts[0].Peer)
	}
}

// With a good holder connected, a corrupt copy served first is caught
// before any byte reaches the caller, and the file comes whole from the
// good holder inside the same WriteNAR.
func TestCorruptionRoutedAroundInOneResponse(t *testing.T) {
	key := newTestKey(t, "test-1")
	a := startNode(t, "a", &key, nil) // corrupt copy
	c := startNode(t, "c", &key, nil) // good copy
	b := startNode(t, "b", &key, nil)
	info, data := makePath(t, &key, "victim", 1<<20)
	bad := slices.Clone(data)
	bad[len(bad)-5] ^= 1
	a.share(info, bad)
	connect(b, a)
	h := hashOf(t, info)
	waitFor(t, "a's inventory", func() bool { return offers(b, a.ID(), h) })
	c.share(info, data)
	connect(b, c)
	waitFor(t, "c's inventory", func() bool { return offers(b, c.ID(), h) })
	// Make a the first choice: c looks busy.
	for _, s := range b.holders(h, nil) {
		if s.id == c.ID() {
			s.active.Add(5)
			defer s.active.Add(-5)
		}
	}
	var buf bytes.Buffer
	if err := b.WriteNAR(context.Background(), &buf, info, 0, -1); err != nil {
		t.Fatalf("WriteNAR with a good holder present: %v", err)
	}
	if !bytes.Equal(buf.Bytes(), data) {
		t.Fatal("caller got other bytes than the good file")
	}
	if b.HashMismatches() != 1 {
		t.Fatalf("mismatches = %d, want 1", b.HashMismatches())
	}
	for _, p := range b.Peers() {
		if p.ID == a.ID() && p.BlocklistedUntil.IsZero() {
			t.Fatal("a not blocklisted")
		}
	}
	if ts := b.Transfers(); ts[0].Result != statusapi.ResultOK || ts[0].Peer != c.ID() || ts[0].BytesDone != int64(len(data)) {
		t.Fatalf("transfer %+v", ts[0])
	}
}

// TestStalledRequestKeepsConnection: a request that stalls inside its
// frame's payload (a lossy link, a slow peer) costs that stream, not the
// connection: the node resets the stream and answers the next request.
func TestStalledRequestKeepsConnection(t *testing.T) {
	key := newTestKey(t, "test-1")
	n := startNode(t, "n", &key, nil)
	info, data := makePath(t, &key, "x", 1000)
	n.share(info, data)
	h := hashOf(t, info)

	p := dialRaw(t, n)
	ctrl := p.hello(t)
	// Keep the control stream alive while the request stalls.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); p.conn.CloseWithError(0, ""); wg.Wait() }()
	wg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if writeFrame(ctrl, typePing, (&ping{}).marshal()) != nil {
					return
				}
			}
		}
	})
	wg.Go(func() { io.Copy(io.Discard, ctrl) })

	st, err := p.conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// The header and 5 of the 20 bytes of the hash, then nothing.
	req := frame(frameVersion, typeNarInfoReq, 20, h[:])
	if _, err := st.Write(req[:frameHeaderLen+5]); err != nil {
		t.Fatal(err)
	}
	st.SetReadDeadline(time.Now().Add(3 * requestTimeout))
	_, err = st.Read(make([]byte, 1))
	var se *quic.StreamError
	if !errors.As(err, &se) {
		t.Fatalf("stalled request ended with %v, want the stream reset (connection: %v)", err, context.Cause(p.conn.Context()))
	}
	if p.conn.Context().Err() != nil {
		t.Fatalf("connection closed: %v", context.Cause(p.conn.Context()))
	}

	// The next request on the same connection is answered.
	st, err = p.conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatalf("open stream after the stall: %v", err)
	}
	if err := writeFrame(st, typeNarInfoReq, h[:]); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st.SetReadDeadline(time.Now().Add(requestTimeout))
	typ, resp, err := readFrame(st)
	if err != nil || typ != typeNarInfoResp {
		t.Fatalf("narinfo after the stall: type %#x, %v", typ, err)
	}
	if status, _, err := parseNarInfoResp(resp); err != nil || status != statusOK {
		t.Fatalf("narinfo after the stall: status %d, %v", status, err)
	}
}

// TestIndexFullDropsLargestAndReadmits: when the index is full the largest
// offer is dropped, its peer stays connected, and once there is room again
// the peer is asked for its inventory and indexed.
func TestIndexFullDropsLargestAndReadmits(t *testing.T) {
	n := startNode(t, "n", nil, func(c *Config) { c.MaxIndexEntries = 100 })
	big := startNode(t, "big", nil, nil)
	small := startNode(t, "small", nil, nil)
	offer := func(tn *testNode, count int) {
		for range count {
			var h cache.Hash
			binary.BigEndian.PutUint64(h[:], rand.Uint64())
			binary.BigEndian.PutUint64(h[8:], rand.Uint64())
			tn.inv.Add(h)
		}
	}
	paths := func(id string) int {
		for _, p := range n.Peers() {
			if p.ID == id && p.State == statusapi.StateConnected {
				return p.Paths
			}
		}
		return -1
	}
	offer(big, 80)
	offer(small, 60)
	connect(big, n)
	waitFor(t, "big indexed", func() bool { return paths(big.ID()) == 80 })
	connect(small, n)
	waitFor(t, "small indexed, big dropped", func() bool { return paths(small.ID()) == 60 && paths(big.ID()) == 0 })
	if st := n.PeerIndex(); st.OffersDropped != 1 || st.Entries > st.MaxEntries {
		t.Fatalf("index %+v: want 1 drop, within bound", st)
	}
	small.stop()
	waitFor(t, "big indexed again", func() bool { return paths(big.ID()) == 80 })
	if st := n.PeerIndex(); st.OffersDropped != 1 || st.Entries != 80 {
		t.Fatalf("index %+v: want 80 entries, still 1 drop", st)
	}
}
