package transfer

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/quic-go/quic-go"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/statusapi"
)

// Config configures a Node. Zero durations and limits take the defaults
// documented per field.
type Config struct {
	// ListenAddr is the UDP address of the QUIC transport, used both to
	// listen and to dial, e.g. ":37516" ("127.0.0.1:0" in tests).
	ListenAddr string
	// StateDir holds the node key (NodeKeyFile), created on first start.
	StateDir string
	// Name is the human-readable name sent to peers (e.g. the hostname).
	Name string
	// FleetKey, if set, limits peering to nodes with the same key (see
	// LoadFleetKey). Without it any node may peer, and fetch what this node
	// shares.
	FleetKey []byte
	// TrustedKeys verify narinfos received from peers: one that carries no
	// signature by one of them is treated as not found.
	TrustedKeys []signature.PublicKey
	// AcceptUnsigned accepts narinfos from peers without a trusted
	// signature (a fleet sharing locally built paths, --share all). NAR
	// bytes are still checked against the narinfo's NarHash.
	AcceptUnsigned bool
	// Logger receives the node's logs; nil discards them.
	Logger *slog.Logger

	// NarInfoTimeout bounds one narinfo request to one peer before the next
	// holder is asked (default 2s).
	NarInfoTimeout time.Duration
	// StallTimeout is how long a NAR stream may deliver nothing before it is
	// given up and resumed on another holder (default 15s).
	StallTimeout time.Duration
	// KeepAlive is the interval of control-stream pings (default 10s); a
	// peer silent for 3 intervals is disconnected.
	KeepAlive time.Duration
	// BlocklistFor is how long a peer that sent bytes not matching their
	// NarHash is not asked for anything (default 10m).
	BlocklistFor time.Duration
	// MaxStreamsPerPeer bounds the concurrent requests a peer may have open
	// to this node (default 32).
	MaxStreamsPerPeer int
	// MaxUploadsPerPeer bounds the concurrent NAR transfers this node serves
	// to one peer; more are answered "busy" (default 8).
	MaxUploadsPerPeer int
	// MaxPeerPaths bounds the inventory accepted from one peer (default
	// 2,000,000); a peer offering more is disconnected.
	MaxPeerPaths int
	// MaxPeers bounds the number of connected peers (default 256).
	MaxPeers int
	// MaxIndexEntries bounds the inventory index over all peers: the
	// number of distinct (group of 64 peers, path) entries, about 38 bytes
	// each (default 4,000,000, ~150 MB at most). Paths that several peers
	// offer cost one entry, so an honest fleet fits many times that in
	// (peer, path) pairs. When full, the largest offer is dropped (see
	// index); PeerIndex counts the drops.
	MaxIndexEntries int
	// VerifyFirstMax: NARs up to this size are verified whole before their
	// first byte is released (0: 1 MiB; negative: none; see WriteNAR).
	VerifyFirstMax int64
	// Keeper, if set, keeps the NARs this node fetched from peers (the NAR
	// cache of a node with --cache-dir), so that it serves them in turn.
	Keeper Keeper
	// Compression is what this node asks holders to send: CompressAuto
	// (default: held .nar.zst/.nar.xz as they are, and compression on the
	// fly chunk by chunk while the data compresses, backing off from data
	// that does not), CompressAlways (try every chunk) or CompressNever
	// (plain NAR bytes only).
	Compression string
}

// Compression modes of Config.Compression.
const (
	CompressAuto   = "auto"
	CompressAlways = "always"
	CompressNever  = "never"
)

// Keeper keeps verified NARs; see Config.Keeper.
type Keeper interface {
	// Keep starts keeping the NAR info describes (uncompressed). It fails
	// when the path is held or being written already, or cannot fit.
	Keep(info *cache.NarInfo) (KeepWriter, error)
}

// KeepWriter receives the NAR bytes of one Keep, from byte 0.
type KeepWriter interface {
	io.Writer
	// Commit makes the NAR durable once its bytes verified; it checks them
	// itself too.
	Commit() error
	// Abort gives the NAR up; nothing of it stays.
	Abort(err error)
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.NarInfoTimeout, 2*time.Second)
	def(&c.StallTimeout, 15*time.Second)
	def(&c.KeepAlive, 10*time.Second)
	def(&c.BlocklistFor, 10*time.Minute)
	defInt := func(d *int, v int) {
		if *d <= 0 {
			*d = v
		}
	}
	defInt(&c.MaxStreamsPerPeer, 32)
	defInt(&c.MaxUploadsPerPeer, 8)
	defInt(&c.MaxPeerPaths, 2_000_000)
	defInt(&c.MaxPeers, 256)
	defInt(&c.MaxIndexEntries, 4_000_000)
	if c.Compression == "" {
		c.Compression = CompressAuto
	}
	if c.VerifyFirstMax == 0 {
		c.VerifyFirstMax = defaultVerifyFirstMax
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if len(c.Name) > maxNameLen {
		c.Name = c.Name[:maxNameLen]
	}
}

// Timeouts of the protocol itself.
const (
	handshakeTimeout = 10 * time.Second
	requestTimeout   = 10 * time.Second // reading a request, answering a narinfo
	writeTimeout     = 30 * time.Second // one control-stream message
	minBackoff       = 250 * time.Millisecond
	maxBackoff       = 30 * time.Second
	stableSession    = 10 * time.Second // a session this old resets the backoff
)

// QUIC application error codes, sent when closing a connection.
const (
	codeNormal    quic.ApplicationErrorCode = 0
	codeProtocol  quic.ApplicationErrorCode = 1
	codeFleet     quic.ApplicationErrorCode = 2
	codeIdentity  quic.ApplicationErrorCode = 3
	codeDuplicate quic.ApplicationErrorCode = 4
	codeShutdown  quic.ApplicationErrorCode = 5
	codeVersion   quic.ApplicationErrorCode = 6
	codeTooMany   quic.ApplicationErrorCode = 7
	codeSelf      quic.ApplicationErrorCode = 8
)

// QUIC stream error codes.
const (
	streamInternal quic.StreamErrorCode = 1 // the server failed mid-stream
	streamCanceled quic.StreamErrorCode = 2 // the requester gave up
)

// Node is this host's end of the peer protocol: it listens for and dials
// peers, exchanges inventories, serves the paths local holds and inv offers,
// and fetches from peers as a cache.Source. Create it with New, then Run it.
type Node struct {
	cfg   Config
	log   *slog.Logger
	ident *identity
	local cache.Source
	inv   *cache.Inventory
	idx   *index
	xfers transfers

	udp   *net.UDPConn
	tr    *quic.Transport
	ln    *quic.Listener
	qconf *quic.Config

	wg         sync.WaitGroup // every goroutine Run starts
	mismatches atomic.Int64   // NARs from peers that failed verification
	// holdBudget bounds the bytes of NARs held in memory until verified
	// (see Config.VerifyFirstMax).
	holdBudget *semaphore.Weighted
	codecs     *codecs
	decomp     cache.Decompressors // of held and received compressed files
	infos      *infoCache          // narinfos learned from peers, by hash
	blame      *blame              // who served which bytes of NARs that failed

	narInfosServed atomic.Int64 // narinfo requests answered to peers
	testHookAwait  func()       // called when a narinfo miss waits for inventories
	memory         memoryReturner

	mu       sync.Mutex
	runCtx   context.Context // nil until Run
	started  bool
	stopped  bool
	targets  map[string]*target    // static peers by address
	sessions map[string]*session   // connected peers by id
	peerInfo map[string]*peerStats // by id: blocklist, mismatch counts

	closeOnce sync.Once
}

// target is a peer this node dials (and redials) by address.
type target struct {
	addr     string
	expectID string
	cancel   context.CancelFunc // nil until its loop runs

	// guarded by Node.mu
	id      string              // learned from the first connection
	state   statusapi.PeerState // "" until first dialed
	lastErr string
}

// peerStats is what outlives a peer's connections.
type peerStats struct {
	blockedUntil time.Time
	mismatches   int
}

// New creates a node: it loads (or creates) the node key in cfg.StateDir
// and binds cfg.ListenAddr. local answers peers' requests for what inv
// offers; it must be this host's own store and cache only, never a source
// that asks peers in turn. Call Run to start it, or Close to release it
// without running.
func New(cfg Config, local cache.Source, inv *cache.Inventory) (*Node, error) {
	cfg.setDefaults()
	switch cfg.Compression {
	case CompressAuto, CompressAlways, CompressNever:
	default:
		return nil, fmt.Errorf("transfer: compression %q: want auto, always or never", cfg.Compression)
	}
	if local == nil || inv == nil {
		return nil, errors.New("transfer: local source and inventory are required")
	}
	ident, err := loadIdentity(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	uaddr, err := net.ResolveUDPAddr("udp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("peer listener address %q: %w", cfg.ListenAddr, err)
	}
	udp, err := net.ListenUDP("udp", uaddr)
	if err != nil {
		return nil, fmt.Errorf("peer listener: %w", err)
	}
	// The reset key is derived from the node key, so that peers of a node
	// that restarted learn at once that their old connection is gone.
	var resetKey quic.StatelessResetKey = sha256.Sum256(append([]byte("lancache stateless reset\x00"), ident.key.Seed()...))
	tr := &quic.Transport{Conn: udp, StatelessResetKey: &resetKey}
	qconf := &quic.Config{
		HandshakeIdleTimeout:  5 * time.Second,
		MaxIdleTimeout:        3*cfg.KeepAlive + 5*time.Second,
		KeepAlivePeriod:       cfg.KeepAlive,
		MaxIncomingStreams:    int64(cfg.MaxStreamsPerPeer) + 1, // + control
		MaxIncomingUniStreams: -1,
	}
	cd, err := newCodecs()
	if err != nil {
		udp.Close()
		return nil, err
	}
	ln, err := tr.Listen(ident.serverTLS(), qconf)
	if err != nil {
		cd.close()
		tr.Close()
		udp.Close()
		return nil, fmt.Errorf("peer listener: %w", err)
	}
	n := &Node{
		cfg:      cfg,
		log:      cfg.Logger.With("node", ident.id[:8]),
		ident:    ident,
		local:    local,
		inv:      inv,
		udp:      udp,
		tr:       tr,
		ln:       ln,
		qconf:    qconf,
		targets:  make(map[string]*target),
		sessions: make(map[string]*session),
		peerInfo: make(map[string]*peerStats),

		holdBudget: semaphore.NewWeighted(verifyFirstBudget),
		codecs:     cd,
		infos:      newInfoCache(infoCacheSize, infoCacheTTL),
		blame:      newBlame(),
	}
	n.idx = newIndex(cfg.MaxIndexEntries, n.memory.freed)
	n.xfers.init()
	return n, nil
}

// ID is this node's id (see NodeID).
func (n *Node) ID() string { return n.ident.id }

// LocalAddr is the UDP address the node listens and dials on.
func (n *Node) LocalAddr() net.Addr { return n.udp.LocalAddr() }

// Run runs the node until ctx ends: it accepts peers, dials the peers
// added with AddPeer (redialing with backoff), and serves requests. It
// returns nil after ctx ends, once every goroutine it started has ended and
// the socket is closed. Run may be called once.
func (n *Node) Run(ctx context.Context) error {
	n.mu.Lock()
	if n.started {
		n.mu.Unlock()
		return errors.New("transfer: Run called twice")
	}
	n.started = true
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n.runCtx = ctx
	for _, t := range n.targets {
		n.startTargetLocked(t)
	}
	n.mu.Unlock()

	n.log.Info("peer protocol listening", "addr", n.LocalAddr().String(), "id", n.ident.id, "fleet", len(n.cfg.FleetKey) > 0)
	n.wg.Go(func() { n.acceptLoop(ctx) })
	<-ctx.Done()

	n.mu.Lock()
	n.stopped = true
	sessions := make([]*session, 0, len(n.sessions))
	for _, s := range n.sessions {
		sessions = append(sessions, s)
	}
	n.mu.Unlock()
	n.ln.Close()
	for _, s := range sessions {
		s.cancel(errShutdown)
	}
	n.wg.Wait()
	n.memory.stop()
	n.Close()
	return nil
}

// Close releases the socket. Run calls it on return; call it only for a
// Node that is not run.
func (n *Node) Close() error {
	var err error
	n.closeOnce.Do(func() {
		n.ln.Close()
		err = n.tr.Close()
		if cerr := n.udp.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
		n.codecs.close()
	})
	return err
}

var errShutdown = errors.New("node shutting down")

func (n *Node) acceptLoop(ctx context.Context) {
	for {
		conn, err := n.ln.Accept(ctx)
		if err != nil {
			return
		}
		n.wg.Go(func() {
			s, err := n.startSession(ctx, conn, false)
			if err != nil {
				n.logRefusal(conn.RemoteAddr(), err)
				return
			}
			s.run()
		})
	}
}

// AddPeer makes the node keep a connection to the peer at addr (host:port,
// UDP), redialing with backoff while it is unreachable. If expectedID is
// set, a peer presenting another key is refused. Adding an address twice
// updates its expected id.
func (n *Node) AddPeer(addr, expectedID string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if t, ok := n.targets[addr]; ok {
		if t.expectID != expectedID && t.cancel != nil {
			// Restart the loop so the new pin applies to the next dial.
			t.cancel()
			t.expectID = expectedID
			t.cancel = nil
			n.startTargetLocked(t)
		}
		t.expectID = expectedID
		return
	}
	t := &target{addr: addr, expectID: expectedID}
	n.targets[addr] = t
	n.startTargetLocked(t)
}

// RemovePeer stops dialing addr and closes the connection this node dialed
// to it. The peer may still connect to this node.
func (n *Node) RemovePeer(addr string) {
	n.mu.Lock()
	t, ok := n.targets[addr]
	if !ok {
		n.mu.Unlock()
		return
	}
	delete(n.targets, addr)
	if t.cancel != nil {
		t.cancel()
	}
	var victim *session
	for _, s := range n.sessions {
		if s.dialed && s.target == t {
			victim = s
		}
	}
	n.mu.Unlock()
	if victim != nil {
		victim.cancel(errors.New("peer removed"))
	}
}

// startTargetLocked starts t's dial loop if the node is running.
func (n *Node) startTargetLocked(t *target) {
	if n.runCtx == nil || n.stopped || t.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(n.runCtx)
	t.cancel = cancel
	n.wg.Go(func() { n.dialLoop(ctx, t) })
}

func (n *Node) setTarget(t *target, state statusapi.PeerState, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	t.state = state
	t.lastErr = ""
	if err != nil {
		t.lastErr = err.Error()
	}
}

// sessionFor returns the live session with the peer t names, if any.
func (n *Node) sessionFor(t *target) *session {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, id := range []string{t.id, t.expectID} {
		if s := n.sessions[id]; id != "" && s != nil {
			return s
		}
	}
	for _, s := range n.sessions {
		if s.addr.String() == t.addr {
			return s
		}
	}
	return nil
}

func (n *Node) dialLoop(ctx context.Context, t *target) {
	backoff := minBackoff
	var lastErr string
	for ctx.Err() == nil {
		if s := n.sessionFor(t); s != nil {
			n.mu.Lock()
			if t.expectID == "" || t.expectID == s.id {
				t.id = s.id // the peer dialed first: status shows one entry
			}
			n.mu.Unlock()
			n.setTarget(t, statusapi.StateConnected, nil)
			select {
			case <-s.done:
				continue
			case <-ctx.Done():
				return
			}
		}
		n.setTarget(t, statusapi.StateConnecting, nil)
		s, err := n.dial(ctx, t)
		if err == nil {
			n.mu.Lock()
			t.id = s.id
			n.mu.Unlock()
			n.setTarget(t, statusapi.StateConnected, nil)
			lastErr = ""
			s.run()
			if time.Since(s.since) >= stableSession {
				backoff = minBackoff
				continue
			}
			err = context.Cause(s.ctx)
		}
		if ctx.Err() != nil {
			return
		}
		if isDuplicate(err) {
			continue // the peer's own connection won; wait on it
		}
		n.setTarget(t, statusapi.StateBackoff, err)
		if err.Error() != lastErr {
			// Say it once, not at every redial.
			n.logDialError(t, err)
			lastErr = err.Error()
		}
		// Full jitter keeps a fleet that restarted together from dialing in
		// lockstep.
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, maxBackoff)
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return
		}
	}
}

func (n *Node) dial(ctx context.Context, t *target) (*session, error) {
	uaddr, err := net.ResolveUDPAddr("udp", t.addr)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", t.addr, err)
	}
	dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	conn, err := n.tr.Dial(dctx, uaddr, n.ident.clientTLS(t.expectID), n.qconf)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", t.addr, err)
	}
	// Learn the peer's id before anything else can fail, so that the dial
	// loop finds an existing session with it.
	if id, err := connPeerID(conn); err == nil {
		n.mu.Lock()
		t.id = id
		old := n.sessions[id]
		n.mu.Unlock()
		if old != nil && old.ctx.Err() == nil {
			// The peer dialed this node while this dial was pending; that
			// session may already carry requests: keep it.
			conn.CloseWithError(codeDuplicate, "already connected")
			return nil, errDuplicate
		}
	}
	s, err := n.startSession(ctx, conn, true)
	if err != nil {
		return nil, err
	}
	s.target = t
	return s, nil
}

// logDialError logs why dialing t failed: loudly when the peer refused us
// for a reason an operator must fix, quietly when it is just not there.
func (n *Node) logDialError(t *target, err error) {
	var ae *quic.ApplicationError
	switch {
	case errors.As(err, &ae) && ae.Remote && ae.ErrorCode == codeFleet:
		n.log.Warn("peer refused this node: fleet key mismatch (check --fleet-key on both hosts)", "peer", t.addr, "reason", ae.ErrorMessage)
	case errors.As(err, &ae) && ae.Remote && ae.ErrorCode != codeShutdown && ae.ErrorCode != codeNormal:
		n.log.Warn("peer refused this node", "peer", t.addr, "code", uint64(ae.ErrorCode), "reason", ae.ErrorMessage)
	case errors.Is(err, errFleet), errors.Is(err, errWrongPeer), errors.Is(err, ErrProtocol):
		n.log.Warn("refused peer", "peer", t.addr, "err", err)
	default:
		n.log.Debug("peer unreachable", "peer", t.addr, "err", err)
	}
}

func (n *Node) logRefusal(addr net.Addr, err error) {
	switch {
	case errors.Is(err, errFleet):
		n.log.Warn("refused peer: not in this fleet", "addr", addr.String(), "err", err)
	case errors.Is(err, errShutdown), errors.Is(err, context.Canceled), isDuplicate(err):
	default:
		n.log.Info("refused peer", "addr", addr.String(), "err", err)
	}
}

// register adds s as the session with its peer. When both nodes dialed
// each other, both keep the connection dialed by the node with the smaller
// id, so the two ends agree without talking about it.
func (n *Node) register(s *session) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return errShutdown
	}
	old := n.sessions[s.id]
	if old == nil && len(n.sessions) >= n.cfg.MaxPeers {
		return errTooMany
	}
	if old != nil {
		if old.dialerID() < s.dialerID() {
			return errDuplicate
		}
		old.cancel(errDuplicate)
	}
	n.sessions[s.id] = s
	return nil
}

// unregister removes s and its inventory.
func (n *Node) unregister(s *session) {
	n.mu.Lock()
	if n.sessions[s.id] == s {
		delete(n.sessions, s.id)
	}
	n.mu.Unlock()
	n.idx.release(s)
}

// isDuplicate reports whether a session ended because the two nodes had
// two connections and kept the other one.
func isDuplicate(err error) bool {
	var ae *quic.ApplicationError
	return errors.Is(err, errDuplicate) || errors.As(err, &ae) && ae.ErrorCode == codeDuplicate
}

var (
	errDuplicate = errors.New("duplicate connection")
	errTooMany   = errors.New("too many peers")
)

// blocked reports whether peer id is blocklisted now.
func (n *Node) blocked(id string, now time.Time) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	ps := n.peerInfo[id]
	return ps != nil && now.Before(ps.blockedUntil)
}

// blocklist records that peer id sent bad bytes.
func (n *Node) blocklist(id string) time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now()
	// Bound the table: forget peers whose block expired and who are gone.
	if len(n.peerInfo) > 4*n.cfg.MaxPeers {
		for pid, ps := range n.peerInfo {
			if now.After(ps.blockedUntil) && n.sessions[pid] == nil {
				delete(n.peerInfo, pid)
			}
		}
	}
	ps := n.peerInfo[id]
	if ps == nil {
		ps = &peerStats{}
		n.peerInfo[id] = ps
	}
	ps.mismatches++
	ps.blockedUntil = now.Add(n.cfg.BlocklistFor)
	return ps.blockedUntil
}
