package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/lancache/lancache/discovery/internal/mdns"
)

// ServiceType is the DNS-SD service type lancache advertises and browses.
const ServiceType = "_nix-lancache._udp"

// ProtocolVersion is the peer protocol version advertised in TXT (v=).
// Peers with another version are ignored.
const ProtocolVersion = 1

// Defaults for Config.
const (
	DefaultQueryInterval = 5 * time.Second
	DefaultMissedRounds  = 3
	DefaultMaxPeers      = 1024
)

// burst is when the start-up queries go out, relative to Run: neighbours
// answer the first within milliseconds; the others cover lost packets.
var burst = []time.Duration{0, 300 * time.Millisecond, time.Second, 2 * time.Second}

// announceAt is when the start-up announcements go out (RFC 6762 §8.3:
// at least two, one second apart).
var announceAt = []time.Duration{0, time.Second}

// jitter is the relative spread of the query interval, so that nodes
// started together do not query in lockstep.
const jitter = 0.2

// sightingQueue bounds the sightings waiting for the event loop; more are
// dropped (the next round brings them again).
const sightingQueue = 256

// ErrRunning is returned by Run when the Discovery is already running or
// has run.
var ErrRunning = errors.New("discovery: Run called twice")

// EventKind says what happened to a peer.
type EventKind int

// Event kinds.
const (
	Appeared EventKind = iota + 1 // first heard of
	Updated                       // name or address set changed
	Gone                          // said goodbye or went silent, and KeepAlive did not vouch for it
)

// String returns the kind's name.
func (k EventKind) String() string {
	switch k {
	case Appeared:
		return "appeared"
	case Updated:
		return "updated"
	case Gone:
		return "gone"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Peer is a lancache node heard on the LAN.
type Peer struct {
	ID      string           // node id from TXT (unverified until the QUIC handshake)
	Name    string           // mDNS instance name
	Addrs   []netip.AddrPort // QUIC addresses, sorted, IPv4 first; link-local IPv6 carries a zone
	Version int              // protocol version
}

// Event reports a change in the set of peers.
type Event struct {
	Kind EventKind
	Peer Peer
}

// Config configures a Discovery.
type Config struct {
	// Name is the advertised instance name: 1 to 63 bytes of UTF-8
	// without control characters. Empty means the host name.
	Name string
	// ID is this node's id (transfer.NodeID): 1 to 64 bytes of
	// [A-Za-z0-9_-]. Required.
	ID string
	// Port is the QUIC port peers dial. Required.
	Port int
	// FleetTag, when not empty, is advertised and required of peers; it
	// must reveal nothing about the fleet key (e.g. a truncated HMAC of a
	// fixed string). 1 to 128 bytes of printable ASCII.
	FleetTag string
	// Interfaces restricts mDNS to the named interfaces (loopback allowed
	// when named). Empty means every interface that is up,
	// multicast-capable and not loopback, rescanned every round.
	Interfaces []string
	// DisableIPv6 keeps mDNS to IPv4. Without it IPv6 is used where it
	// works and skipped where it does not.
	DisableIPv6 bool
	// QueryInterval is the time between query rounds after the start-up
	// burst, ±20%. Default DefaultQueryInterval.
	QueryInterval time.Duration
	// MissedRounds is how many rounds a peer may miss before it is gone:
	// after MissedRounds*QueryInterval*1.2 (the jitter) plus up to a second
	// of silence; with the defaults 19 s, noticed within 20 s. Default
	// DefaultMissedRounds.
	MissedRounds int
	// MaxPeers bounds the peers tracked; more are ignored. Default
	// DefaultMaxPeers.
	MaxPeers int
	// KeepAlive, if set, is asked before a silent peer (or one that said
	// goodbye) is declared gone; returning true keeps it, e.g. while a
	// QUIC connection to it is alive. It is called from Run's goroutine
	// without locks held and must not call back into Discovery's Run.
	KeepAlive func(id string) bool
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
}

// Discovery advertises this node and browses for its peers over mDNS.
type Discovery struct {
	cfg    Config
	log    *slog.Logger
	maxAge time.Duration

	ran atomic.Bool

	mu  sync.Mutex
	tab *table

	dropped atomic.Int64 // sightings dropped because the queue was full
}

// New checks cfg and returns a Discovery ready to Run. It opens nothing.
func New(cfg Config) (*Discovery, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("discovery: no name given and no host name: %w", err)
		}
		cfg.Name = truncateName(h)
	}
	if !validName(cfg.Name) {
		return nil, fmt.Errorf("discovery: name %q: want 1 to 63 bytes of UTF-8 without control characters", cfg.Name)
	}
	if !validID(cfg.ID) {
		return nil, fmt.Errorf("discovery: node id %q: want 1 to %d bytes of [A-Za-z0-9_-]", cfg.ID, maxIDLen)
	}
	if cfg.Port <= 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("discovery: port %d out of range", cfg.Port)
	}
	if cfg.FleetTag != "" && !validFleet(cfg.FleetTag) {
		return nil, fmt.Errorf("discovery: fleet tag: want 1 to %d bytes of printable ASCII", maxFleetLen)
	}
	if cfg.QueryInterval == 0 {
		cfg.QueryInterval = DefaultQueryInterval
	}
	if cfg.QueryInterval < 100*time.Millisecond {
		return nil, fmt.Errorf("discovery: query interval %v below 100ms", cfg.QueryInterval)
	}
	if cfg.MissedRounds == 0 {
		cfg.MissedRounds = DefaultMissedRounds
	}
	if cfg.MissedRounds < 1 {
		return nil, fmt.Errorf("discovery: missed rounds %d below 1", cfg.MissedRounds)
	}
	if cfg.MaxPeers == 0 {
		cfg.MaxPeers = DefaultMaxPeers
	}
	if cfg.MaxPeers < 1 {
		return nil, fmt.Errorf("discovery: max peers %d below 1", cfg.MaxPeers)
	}
	cfg.Interfaces = slices.Clone(cfg.Interfaces)
	maxAge := expiryAge(cfg.QueryInterval, cfg.MissedRounds)
	return &Discovery{
		cfg:    cfg,
		log:    cfg.Logger.With("component", "discovery"),
		maxAge: maxAge,
		tab:    newTable(cfg.MaxPeers, maxAge),
	}, nil
}

// Peers returns the peers known now, sorted by id.
func (d *Discovery) Peers() []Peer {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.tab.list()
}

// Touch tells discovery that peer id is alive now (for instance, a packet
// arrived on its QUIC connection), postponing its expiry. Unknown ids are
// ignored.
func (d *Discovery) Touch(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tab.touch(id, time.Now())
}

// Run advertises this node and browses for peers until ctx is done, then
// says goodbye, closes its sockets and returns nil once every goroutine it
// started has ended. emit (may be nil) receives every event, in order, from
// one goroutine; it should return quickly (the Node hands events to its own
// goroutines). Run may be called once.
func (d *Discovery) Run(ctx context.Context, emit func(Event)) error {
	if d.ran.Swap(true) {
		return ErrRunning
	}
	if emit == nil {
		emit = func(Event) {}
	}
	sightings := make(chan sighting, sightingQueue)
	svc := mdns.Service{
		Instance: d.cfg.Name,
		Service:  ServiceType,
		Host:     hostLabel(d.cfg.ID),
		Port:     uint16(d.cfg.Port),
		TXT:      encodeTXT(txtInfo{Version: ProtocolVersion, ID: d.cfg.ID, Fleet: d.cfg.FleetTag}),
	}
	serviceName := mdns.ServiceName(ServiceType, "")
	ep, err := mdns.Listen(mdns.Config{
		Service:     svc,
		DisableIPv6: d.cfg.DisableIPv6,
		Logger:      d.log,
		Handler: func(p mdns.Packet) {
			for _, s := range d.accept(mdns.Parse(p.Msg, serviceName), p) {
				select {
				case sightings <- s:
				default:
					d.dropped.Add(1)
				}
			}
		},
	})
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	defer func() {
		d.mu.Lock()
		d.tab = newTable(d.cfg.MaxPeers, d.maxAge)
		d.mu.Unlock()
	}()
	defer ep.Close()

	var current []mdns.Interface
	rescan := func(first bool) {
		ifs, skipped, err := selectInterfaces(d.cfg.Interfaces)
		if err != nil {
			d.log.Warn("cannot list network interfaces", "err", err)
			return
		}
		if !first && ifacesEqual(ifs, current) {
			return
		}
		for _, s := range skipped {
			d.log.Warn("mDNS interface skipped", "reason", s)
		}
		if len(ifs) == 0 {
			d.log.Warn("no multicast interface for mDNS yet: will look again every round")
		}
		ep.SetInterfaces(ifs)
		d.log.Info("mDNS interfaces", "ifaces", ifaceNames(ifs))
		current = ifs
		if !first {
			// Our addresses changed: tell the neighbours now.
			if _, err := ep.Announce(mdns.DefaultTTL); err != nil {
				d.log.Debug("announce", "err", err)
			}
		}
	}
	rescan(true)

	start := time.Now()
	queryTimer := time.NewTimer(0)
	defer queryTimer.Stop()
	announceTimer := time.NewTimer(0)
	defer announceTimer.Stop()
	expiryTick := time.NewTicker(min(time.Second, d.cfg.QueryInterval/4))
	defer expiryTick.Stop()
	rounds, announces := 0, 0
	var lastDropped int64

	for {
		select {
		case <-ctx.Done():
			// Goodbye (RFC 6762 §10.1), so that peers drop us at once.
			if _, err := ep.Announce(0); err != nil {
				d.log.Debug("goodbye", "err", err)
			}
			if err := ep.Close(); err != nil {
				d.log.Debug("close mDNS sockets", "err", err)
			}
			return nil

		case <-queryTimer.C:
			if rounds > 0 {
				rescan(false)
			}
			n, err := ep.Query()
			if err != nil {
				// One interface or family failing is normal (no IPv6
				// route, say); the others still went out.
				d.log.Debug("mDNS query", "sent", n, "err", err)
			}
			rounds++
			if rounds < len(burst) {
				queryTimer.Reset(time.Until(start.Add(burst[rounds])))
			} else {
				queryTimer.Reset(d.jittered())
			}

		case <-announceTimer.C:
			if _, err := ep.Announce(mdns.DefaultTTL); err != nil {
				d.log.Debug("mDNS announce", "err", err)
			}
			announces++
			if announces < len(announceAt) {
				announceTimer.Reset(time.Until(start.Add(announceAt[announces])))
			}

		case s := <-sightings:
			d.observe(s, emit)

		case <-expiryTick.C:
			d.expire(emit)
			if n := d.dropped.Load(); n != lastDropped {
				d.log.Warn("mDNS flood: packets dropped", "dropped", n-lastDropped)
				lastDropped = n
			}
		}
	}
}

// expiryAge is the silence after which a peer is gone: MissedRounds
// rounds even when they are all at the long end of the jitter, plus the
// time answers take to arrive (so that a peer answering every round late
// does not flap).
func expiryAge(interval time.Duration, missedRounds int) time.Duration {
	rounds := time.Duration(float64(interval) * (1 + jitter) * float64(missedRounds))
	return rounds + min(time.Second, interval/2)
}

// jittered returns the query interval ± jitter.
func (d *Discovery) jittered() time.Duration {
	f := 1 + jitter*(2*rand.Float64()-1)
	return time.Duration(float64(d.cfg.QueryInterval) * f)
}

// observe applies one sighting and emits its event.
func (d *Discovery) observe(s sighting, emit func(Event)) {
	alive := false
	if s.Goodbye && d.cfg.KeepAlive != nil {
		alive = d.cfg.KeepAlive(s.ID)
	}
	d.mu.Lock()
	ev, ok, res := d.tab.observe(s, time.Now(), alive)
	d.mu.Unlock()
	if res == ignoredFull {
		d.log.Debug("peer table full: peer ignored", "peer", s.ID, "max", d.cfg.MaxPeers)
	}
	if ok {
		d.logEvent(ev)
		emit(ev)
	}
}

// expire drops silent peers, asking KeepAlive first, and emits the events.
func (d *Discovery) expire(emit func(Event)) {
	d.mu.Lock()
	stale := d.tab.stale(time.Now())
	d.mu.Unlock()
	var alive map[string]bool
	if len(stale) > 0 && d.cfg.KeepAlive != nil {
		alive = make(map[string]bool, len(stale))
		for _, id := range stale {
			alive[id] = d.cfg.KeepAlive(id)
		}
	}
	d.mu.Lock()
	evs := d.tab.expire(time.Now(), alive)
	d.mu.Unlock()
	for _, ev := range evs {
		d.logEvent(ev)
		emit(ev)
	}
}

func (d *Discovery) logEvent(ev Event) {
	level := slog.LevelInfo
	if ev.Kind == Updated {
		level = slog.LevelDebug
	}
	d.log.Log(context.Background(), level, "peer "+ev.Kind.String(),
		"peer", ev.Peer.ID, "name", ev.Peer.Name, "addrs", ev.Peer.Addrs)
}

// accept turns the instances of one packet into sightings of peers,
// dropping ourselves, other fleets, other protocol versions and anything
// malformed.
func (d *Discovery) accept(insts []mdns.Instance, p mdns.Packet) []sighting {
	var out []sighting
	for _, inst := range insts {
		info, err := parseTXT(inst.TXT)
		if err != nil {
			continue
		}
		if info.ID == d.cfg.ID || info.Fleet != d.cfg.FleetTag || info.Version != ProtocolVersion {
			continue
		}
		if !validName(inst.Name) {
			continue
		}
		s := sighting{ID: info.ID, Name: inst.Name, Version: info.Version, Goodbye: inst.Goodbye}
		if !inst.Goodbye {
			if inst.Port == 0 {
				continue
			}
			s.Addrs = peerAddrs(inst.Addrs, p, inst.Port)
			if len(s.Addrs) == 0 {
				continue
			}
		}
		out = append(out, s)
	}
	return out
}

// peerAddrs returns the usable addresses among those advertised, with the
// port; or, when none is, the packet's source address.
func peerAddrs(addrs []netip.Addr, p mdns.Packet, port uint16) []netip.AddrPort {
	loopback := p.Src.Addr().IsLoopback()
	var out []netip.AddrPort
	for _, a := range addrs {
		if a = usableAddr(a, loopback, p.IfName); a.IsValid() {
			ap := netip.AddrPortFrom(a, port)
			if !slices.Contains(out, ap) && len(out) < maxPeerAddrs {
				out = append(out, ap)
			}
		}
	}
	if len(out) == 0 {
		if a := usableAddr(p.Src.Addr(), loopback, p.IfName); a.IsValid() {
			out = append(out, netip.AddrPortFrom(a, port))
		}
	}
	return out
}

var broadcast4 = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// usableAddr returns a with the interface as zone when it is link-local
// IPv6, or the zero Addr when a cannot be a peer's address. Loopback
// addresses only count when the packet came over loopback.
func usableAddr(a netip.Addr, loopback bool, iface string) netip.Addr {
	a = a.Unmap().WithZone("")
	switch {
	case !a.IsValid(), a.IsUnspecified(), a.IsMulticast(), a == broadcast4,
		a.IsLoopback() && !loopback:
		return netip.Addr{}
	case a.Is6() && a.IsLinkLocalUnicast():
		if iface == "" {
			return netip.Addr{}
		}
		return a.WithZone(iface)
	}
	return a
}

// validName reports whether name can be an instance name.
func validName(name string) bool {
	if name == "" || len(name) > mdns.MaxLabel || !utf8.ValidString(name) {
		return false
	}
	return !strings.ContainsFunc(name, unicode.IsControl)
}

// truncateName cuts a host name to a valid instance name.
func truncateName(name string) string {
	for len(name) > mdns.MaxLabel {
		_, size := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-size]
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '-'
		}
		return r
	}, name)
}

// hostLabel is the host name the A/AAAA records are published under. It
// is derived from the id rather than the machine's host name so that it
// never clashes with the records of the system's own responder.
func hostLabel(id string) string {
	id = strings.ToLower(strings.ReplaceAll(id, "_", "-"))
	if len(id) > 16 {
		id = id[:16]
	}
	return "lancache-" + id
}

func ifacesEqual(a, b []mdns.Interface) bool {
	return slices.EqualFunc(a, b, func(x, y mdns.Interface) bool {
		return x.Index == y.Index && x.Name == y.Name && slices.Equal(x.Addrs, y.Addrs)
	})
}

func ifaceNames(ifs []mdns.Interface) []string {
	names := make([]string, len(ifs))
	for i, ifc := range ifs {
		names[i] = ifc.Name
	}
	return names
}
