package lancache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/netutil"
	"golang.org/x/sync/errgroup"

	"github.com/dustin/go-humanize"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/cache/narcache"
	"github.com/lancache/lancache/discovery"
	"github.com/lancache/lancache/internal/xfers"
	"github.com/lancache/lancache/statusapi"
	"github.com/lancache/lancache/transfer"
	"github.com/lancache/lancache/transfer/upstream"
)

// Version is the lancache version, set at build time with
// -ldflags "-X github.com/lancache/lancache.Version=...".
var Version = "0.1.0-dev"

// DefaultTrustedPublicKeys is cache.nixos.org's signing key.
const DefaultTrustedPublicKeys = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="

// Config is everything a Node needs; cmd/lancache fills it from flags.
type Config struct {
	StoreRoot         string   // root holding nix/store and nix/var/nix/db; "none" = no local store
	CacheDir          string   // on-disk NAR cache; "" = none
	CacheMaxSize      int64    // bytes
	HTTPAddr          string   // Nix-facing binary cache + status API
	QUICAddr          string   // peer listener (UDP)
	Upstreams         []string // pull-through binary caches
	TrustedPublicKeys string   // space-separated name:base64 keys
	Share             string   // signed | all | none
	FleetKeyFile      string
	Peers             []string // static peers HOST:PORT
	NoMDNS            bool
	Interfaces        []string // mDNS interfaces; nil = every suitable one
	StateDir          string
	Name              string
	// ShutdownGrace is how long Run, once its context ends, lets HTTP
	// responses in flight finish before it cuts them (default 10s).
	ShutdownGrace time.Duration
	Logger        *slog.Logger
	// PeerCompression is what to ask peers to send: auto (default),
	// always or never; see transfer.Config.Compression.
	PeerCompression string
	// VerifyFirstMax: NARs from peers up to this size are verified whole
	// before their first byte goes to Nix (0: the default, 1 MiB;
	// negative: none).
	VerifyFirstMax int64
}

// DefaultShutdownGrace is Config.ShutdownGrace's default: long enough for
// most NARs in flight on a LAN, well within systemd's stop timeout.
const DefaultShutdownGrace = 10 * time.Second

// Node is one lancache daemon.
type Node struct {
	cfg    Config
	log    *slog.Logger
	policy cache.Policy
	inv    *cache.Inventory
	store  *cache.Store       // nil: no local store
	disk   *narcache.Cache    // nil: no --cache-dir
	up     *upstream.Upstream // nil: no --upstream
	peers  *transfer.Node
	local  *xfers.Tracker       // NARs served to Nix from store, disk cache and upstream
	mdns   *discovery.Discovery // nil: --no-mdns

	bytesFromPeers, bytesToPeers atomic.Uint64
	handler                      *cache.Handler
	started                      time.Time

	ready    chan struct{}
	stopping chan struct{} // closed when Run starts shutting down
	sse      chan struct{} // semaphore bounding /_lancache/events clients
	running  bool          // Run was called: it owns closing the transfer node
	mu       sync.Mutex
	httpAddr net.Addr
	static   map[string]bool // --peer and AddPeer addresses, guarded by mu
}

// New checks cfg and opens what the node serves. It does not listen yet:
// Run does.
func New(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:37515"
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = DefaultShutdownGrace
	}
	if cfg.Share == "" {
		cfg.Share = string(cache.ShareSigned)
	}
	mode, err := cache.ParseShareMode(cfg.Share)
	if err != nil {
		return nil, err
	}
	keys, err := cache.ParsePublicKeys(cfg.TrustedPublicKeys)
	if err != nil {
		return nil, fmt.Errorf("--trusted-public-keys: %w", err)
	}
	if mode == cache.ShareSigned && len(keys) == 0 {
		cfg.Logger.Warn("share policy is 'signed' but no trusted public keys are set: nothing will be shared")
	}
	n := &Node{
		cfg:      cfg,
		log:      cfg.Logger,
		policy:   cache.Policy{Mode: mode, Keys: keys},
		inv:      cache.NewInventory(),
		ready:    make(chan struct{}),
		stopping: make(chan struct{}),
		sse:      make(chan struct{}, maxEventClients),
		static:   make(map[string]bool),
		local:    xfers.NewTracker(nil),
	}
	for _, p := range cfg.Peers {
		n.static[p] = true
	}
	built := false
	defer func() {
		if !built {
			n.closeSources() // whatever was opened before the failing step
		}
	}()
	// sources serve the local Nix; offered, a prefix of them, are what
	// peers may fetch: what this node holds itself (store, disk cache),
	// never what it would have to fetch from elsewhere, which would loop.
	// --share none offers nothing: the inventory stays empty, so peers are
	// told of no path and answered "not found" for any.
	var sources, offered []cache.Source
	var offerInv *cache.Inventory // nil: what is opened is not advertised
	if mode != cache.ShareNone {
		offerInv = n.inv
	}
	if cfg.StoreRoot != "none" && cfg.StoreRoot != "" {
		st, err := cache.OpenStore(ctx, cache.StoreConfig{
			Root: cfg.StoreRoot, Policy: n.policy, Inventory: offerInv, Logger: cfg.Logger,
		})
		switch {
		case errors.Is(err, cache.ErrNoStore):
			n.log.Warn("no Nix store found: serving no local store paths", "store_root", cfg.StoreRoot, "detail", err)
		case err != nil:
			return nil, err
		default:
			n.store = st
			sources = append(sources, st)
		}
	} else {
		n.log.Info("no local store (--store-root none)")
	}
	if cfg.CacheDir != "" {
		dc, err := narcache.Open(ctx, narcache.Config{
			Dir: cfg.CacheDir, MaxSize: cfg.CacheMaxSize, Inventory: offerInv, Logger: cfg.Logger,
		})
		if err != nil {
			return nil, fmt.Errorf("--cache-dir: %w", err)
		}
		n.disk = dc
		sources = append(sources, dc)
	}
	if len(cfg.Upstreams) > 0 {
		up, err := upstream.New(upstream.Config{URLs: cfg.Upstreams, TrustedKeys: keys, Logger: cfg.Logger}, n.disk)
		if err != nil {
			return nil, fmt.Errorf("--upstream: %w", err)
		}
		if n.disk == nil {
			n.log.Warn("--upstream without --cache-dir: NARs are streamed through, verified, but not kept; concurrent requests are not coalesced")
		}
		n.up = up
	}
	if mode != cache.ShareNone {
		offered = slices.Clone(sources)
	}
	var fleetKey []byte
	if cfg.FleetKeyFile != "" {
		if fleetKey, err = transfer.LoadFleetKey(cfg.FleetKeyFile); err != nil {
			return nil, fmt.Errorf("--fleet-key: %w", err)
		}
	}
	if cfg.QUICAddr == "" {
		cfg.QUICAddr = ":37516"
	}
	if cfg.StateDir == "" {
		return nil, errors.New("no state dir: set --state-dir")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("--state-dir: %w", err)
	}
	var keeper transfer.Keeper
	if n.disk != nil {
		keeper = diskKeeper{n.disk}
	}
	tn, err := transfer.New(transfer.Config{
		Keeper:         keeper,
		Compression:    cfg.PeerCompression,
		VerifyFirstMax: cfg.VerifyFirstMax,
		ListenAddr:     cfg.QUICAddr,
		StateDir:       cfg.StateDir,
		Name:           cfg.Name,
		FleetKey:       fleetKey,
		TrustedKeys:    keys,
		AcceptUnsigned: mode == cache.ShareAll,
		// A crashed peer is noticed after 3 silent intervals (15 s), so it
		// leaves everyone's list well within 30 s.
		KeepAlive: 5 * time.Second,
		Logger:    cfg.Logger.With("component", "transfer"),
	}, countingSource{cache.Chain(offered), &n.bytesToPeers}, n.inv)
	if err != nil {
		return nil, fmt.Errorf("peer transport (--quic %s): %w", cfg.QUICAddr, err)
	}
	n.peers = tn
	if !cfg.NoMDNS {
		if n.mdns, err = n.newDiscovery(fleetKey); err != nil {
			return nil, fmt.Errorf("mDNS discovery: %w", err)
		}
	}
	// Nix's sources, in cost order: local disk, then the LAN, then the WAN.
	// Transfers from the local ones are recorded here, the peers' by tn.
	var nix []cache.Source
	if n.store != nil {
		nix = append(nix, trackedSource{n.store, statusapi.SourceStore, n.local})
	}
	if n.disk != nil {
		nix = append(nix, trackedSource{n.disk, statusapi.SourceCache, n.local})
	}
	nix = append(nix, countingSource{tn, &n.bytesFromPeers})
	if n.up != nil {
		nix = append(nix, trackedSource{n.up, statusapi.SourceUpstream, n.local})
	}
	n.handler = cache.NewHandler(cache.HandlerConfig{Logger: cfg.Logger}, nix...)
	built = true
	return n, nil
}

// Run serves until ctx is done, then shuts down gracefully: it stops
// accepting, lets the HTTP responses in flight finish (up to
// Config.ShutdownGrace), then stops the peer transport, the store follower
// and discovery, and closes what New opened. It returns only after
// everything it started has stopped.
func (n *Node) Run(ctx context.Context) error {
	n.started = time.Now()
	ln, err := net.Listen("tcp", n.cfg.HTTPAddr)
	if err != nil {
		n.closeSources()
		return fmt.Errorf("listen on %s (--http): %w", n.cfg.HTTPAddr, err)
	}
	n.mu.Lock()
	n.httpAddr = ln.Addr()
	n.mu.Unlock()
	// A LAN-facing appliance must not run out of file descriptors to a
	// connection flood; the timeouts below reclaim idle and slow ones.
	ln = netutil.LimitListener(ln, maxHTTPConns)
	n.running = true

	// Requests do not end with ctx: a NAR half sent when SIGTERM comes is
	// finished (see drain). Nor do the parts they read from: peers, store
	// and discovery run on svcCtx, which ends after the drain.
	reqCtx, cancelRequests := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRequests()
	svcCtx, stopServices := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServices()
	var handlers handlerGroup
	srv := &http.Server{
		Handler:           handlers.wrap(n.routes()),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       30 * time.Second, // Nix reconnects cheaply; idle slots go back quickly
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		n.drain(srv, cancelRequests, &handlers)
		stopServices()
		return nil
	})
	if n.store != nil {
		g.Go(func() error { return n.store.Run(svcCtx) })
	}
	g.Go(func() error { return n.peers.Run(svcCtx) })
	for _, p := range n.cfg.Peers {
		n.peers.AddPeer(p, "")
	}
	if n.mdns != nil {
		g.Go(func() error {
			// mDNS trouble (no multicast interface, say) must not take the
			// cache down: static peers and the local endpoint still work.
			if err := n.runDiscovery(svcCtx, n.mdns); err != nil {
				n.log.Error("mDNS discovery stopped; only static peers will be found", "err", err)
			}
			return nil
		})
	}
	n.logServing()
	close(n.ready)
	err = g.Wait()
	n.closeSources()
	return err
}

// drain shuts the HTTP face down: it stops accepting, ends the status
// streams, lets the responses in flight finish for up to ShutdownGrace,
// then cuts the rest (cancelRequests ends their contexts) and returns once
// every handler has returned, so that what they read from can be closed.
func (n *Node) drain(srv *http.Server, cancelRequests context.CancelFunc, handlers *handlerGroup) {
	close(n.stopping)
	sctx, cancel := context.WithTimeout(context.Background(), n.cfg.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		n.log.Warn("shutting down: cutting the HTTP responses still in flight", "grace", n.cfg.ShutdownGrace)
	}
	cancelRequests()
	srv.Close()
	handlers.closeAndWait()
}

// handlerGroup counts the HTTP handlers running, so that shutdown can wait
// for them.
type handlerGroup struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

func (g *handlerGroup) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			w.Header().Set("Connection", "close")
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		g.wg.Add(1)
		g.mu.Unlock()
		defer g.wg.Done()
		h.ServeHTTP(w, r)
	})
}

// closeAndWait refuses new handlers and waits for the running ones.
func (g *handlerGroup) closeAndWait() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}

// Close releases what New opened, for a Node whose Run is never called.
func (n *Node) Close() error {
	if !n.running {
		n.closeSources()
	}
	return nil
}

// closeSources releases what New opened; the upstream first, since its
// downloads write into the disk cache.
func (n *Node) closeSources() {
	if n.up != nil {
		n.up.Close()
	}
	if n.peers != nil && !n.running {
		n.peers.Close()
	}
	if n.disk != nil {
		n.disk.Close()
	}
	if n.store != nil {
		n.store.Close()
	}
}

func (n *Node) logServing() {
	addr := n.HTTPAddr().String()
	what := "no local store"
	if n.store != nil {
		valid, shared := n.store.Len()
		what = fmt.Sprintf("local store %s (%d paths, %d shared by policy %q)", n.store.Root(), valid, shared, n.policy.Mode)
	}
	if n.disk != nil {
		what += fmt.Sprintf("; NAR cache %s (%d entries, %s of %s)", n.disk.Dir(), n.disk.Len(),
			humanize.IBytes(uint64(n.disk.Usage())), humanize.IBytes(uint64(n.disk.MaxSize())))
	}
	if n.up != nil {
		what += fmt.Sprintf("; pull-through from %s", strings.Join(n.cfg.Upstreams, ", "))
	}
	n.log.Info("lancache serving", "serves", what, "http", addr, "quic", n.peers.LocalAddr().String(), "id", n.peers.ID(), "static_peers", len(n.cfg.Peers), "mdns", n.mdns != nil)
	n.log.Info("point Nix at it", "nix.conf", fmt.Sprintf("substituters = http://%s https://cache.nixos.org", addr))
}

// Ready is closed once the node listens.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// HTTPAddr is the address the HTTP face listens on (valid after Ready).
func (n *Node) HTTPAddr() net.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.httpAddr
}

// diskKeeper keeps NARs fetched from peers in the NAR cache, uncompressed
// as they arrive, so that a node with --cache-dir serves them in turn.
type diskKeeper struct{ c *narcache.Cache }

func (k diskKeeper) Keep(info *cache.NarInfo) (transfer.KeepWriter, error) {
	w, err := k.c.Begin(info)
	if err != nil {
		return nil, err
	}
	return w, nil
}

// Status returns the node's current status.
func (n *Node) Status() Status {
	s := Status{
		Peers:         []PeerStatus{},
		Transfers:     []TransferStatus{},
		HTTPAddr:      addrString(n.HTTPAddr()),
		Name:          n.cfg.Name,
		Version:       Version,
		UptimeSeconds: time.Since(n.started).Seconds(),
		Share:         string(n.policy.Mode),
	}
	if n.store != nil {
		s.StoreRoot = n.store.Root()
		s.StorePaths, s.SharedPaths = n.store.Len()
	}
	if n.disk != nil {
		s.Cache = &CacheStatus{Dir: n.disk.Dir(), Entries: n.disk.Len(), UsedBytes: n.disk.Usage(), MaxBytes: n.disk.MaxSize()}
	}
	if n.up != nil {
		s.Upstreams = n.cfg.Upstreams
		us := n.up.Stats()
		s.Totals.BytesFromUpstream = us.NARBytes
		s.Totals.VerificationFailures += us.VerifyFailures
	}
	s.ID = n.peers.ID()
	s.QUICAddr = n.peers.LocalAddr().String()
	n.mu.Lock()
	static := maps.Clone(n.static)
	n.mu.Unlock()
	for _, p := range n.peers.Peers() {
		ps := PeerStatus{
			ID: p.ID, Name: p.Name, Address: p.Addr, State: p.State,
			RTTMillis:       float64(p.RTT) / float64(time.Millisecond),
			PathsAdvertised: p.Paths, BytesFromPeer: uint64(p.BytesIn), BytesToPeer: uint64(p.BytesOut),
			Static: slices.ContainsFunc(p.Targets, func(a string) bool { return static[a] }),
		}
		if !p.BlocklistedUntil.IsZero() && p.BlocklistedUntil.After(time.Now()) {
			t := p.BlocklistedUntil
			ps.BlocklistedUntil = &t
		}
		s.Peers = append(s.Peers, ps)
	}
	pi := n.peers.PeerIndex()
	s.PeerIndex = PeerIndexStatus{Entries: pi.Entries, MaxEntries: pi.MaxEntries, OffersDropped: uint64(pi.OffersDropped)}
	s.Transfers = transfersStatus(time.Now(), n.peers.Transfers(), n.local.List())
	s.Totals.VerificationFailures += uint64(n.peers.HashMismatches())
	s.Totals.BytesFromPeers = n.bytesFromPeers.Load()
	s.Totals.BytesServedToPeers = n.bytesToPeers.Load()
	st := n.handler.Stats()
	s.Totals.NarInfoHits = st.NarInfoHits.Load()
	s.Totals.NarInfoMisses = st.NarInfoMisses.Load()
	s.Totals.BytesServedToNix = st.NarBytes.Load()
	s.Totals.NarFailures = st.NarFailures.Load()
	s.Totals.BadRequests = st.BadRequests.Load()
	return s
}

// transfersStatus merges the transfer lists of the peer transport and the
// local sources: the active ones, newest first, then up to xfers.Recent
// finished ones, most recently finished first.
func transfersStatus(now time.Time, lists ...[]xfers.Status) []TransferStatus {
	var active, done []xfers.Status
	for _, l := range lists {
		for _, t := range l {
			if t.Result == statusapi.ResultActive {
				active = append(active, t)
			} else {
				done = append(done, t)
			}
		}
	}
	slices.SortFunc(active, func(a, b xfers.Status) int { return b.Started.Compare(a.Started) })
	slices.SortFunc(done, func(a, b xfers.Status) int { return b.Finished.Compare(a.Finished) })
	out := make([]TransferStatus, 0, len(active)+min(len(done), xfers.Recent))
	for _, t := range append(active, done[:min(len(done), xfers.Recent)]...) {
		end := t.Finished
		if end.IsZero() {
			end = now
		}
		out = append(out, TransferStatus{
			Hash: t.Hash, Name: t.Name, Source: t.Source, Peer: firstNonEmpty(t.PeerName, t.Peer),
			BytesDone: t.BytesDone, BytesTotal: t.BytesTotal, RateBps: t.Rate,
			Started: t.Started, Result: t.Result, Error: t.Error, ElapsedSecs: end.Sub(t.Started).Seconds(),
			Failovers: t.Failovers,
		})
	}
	return out
}

func (n *Node) serveStatus(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(n.Status())
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// routes dispatches on the exact request path. http.ServeMux is not used:
// it cleans paths and answers "/../x" or "//x" with a redirect, where a
// binary cache must answer 400 or 404 and nothing else.
func (n *Node) routes() http.Handler {
	metrics := n.metricsHandler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
			// Nothing here takes a request body. Do not read it: net/http
			// would drain it before answering, with no deadline (a client
			// trickling a body held the connection forever), and a request
			// framed by both Content-Length and Transfer-Encoding must not
			// be followed by another on the same connection (RFC 9112 6.3).
			w.Header().Set("Connection", "close")
			http.NewResponseController(w).SetReadDeadline(time.Now())
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				http.Error(w, "request bodies are not accepted", http.StatusBadRequest)
				return
			}
		}
		var h http.Handler
		switch r.URL.Path {
		case statusapi.StatusPath:
			h = http.HandlerFunc(n.serveStatus)
		case statusapi.EventsPath:
			h = http.HandlerFunc(n.serveEvents)
		case statusapi.MetricsPath:
			h = metrics
		default:
			n.handler.ServeHTTP(w, r) // checks methods and paths itself
			return
		}
		if r.URL.RawPath != "" || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// maxHTTPConns bounds concurrent connections to the HTTP face.
const maxHTTPConns = 2048

// maxEventClients bounds concurrent /_lancache/events streams.
const maxEventClients = 32

// eventInterval is how often /_lancache/events sends a status snapshot.
const eventInterval = 500 * time.Millisecond

// serveEvents streams the status as server-sent events ("data: <json>"),
// one snapshot every eventInterval, so `lancache top` updates live without
// polling.
func (n *Node) serveEvents(w http.ResponseWriter, r *http.Request) {
	select {
	case n.sse <- struct{}{}:
		defer func() { <-n.sse }()
	default:
		http.Error(w, "too many status streams", http.StatusServiceUnavailable)
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	t := time.NewTicker(eventInterval)
	defer t.Stop()
	for {
		b, _ := json.Marshal(n.Status())
		rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-n.stopping: // a status stream never holds up shutdown
			return
		case <-t.C:
		}
	}
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// AddPeer makes the node keep a connection to the peer at addr (HOST:PORT,
// UDP), as --peer does. It may be called before or during Run.
func (n *Node) AddPeer(addr string) {
	n.mu.Lock()
	n.static[addr] = true
	n.mu.Unlock()
	n.peers.AddPeer(addr, "")
}

// QUICAddr is the UDP address the peer transport listens on.
func (n *Node) QUICAddr() net.Addr { return n.peers.LocalAddr() }

// ID is the node's identity, derived from its key in the state dir.
func (n *Node) ID() string { return n.peers.ID() }
