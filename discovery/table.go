package discovery

import (
	"maps"
	"net/netip"
	"slices"
	"time"
)

// maxPeerAddrs bounds the addresses kept per peer; the least recently
// seen go first.
const maxPeerAddrs = 16

// sighting is one accepted report of a peer, from one mDNS packet.
type sighting struct {
	ID, Name string
	Version  int
	Addrs    []netip.AddrPort
	Goodbye  bool
}

type peerState struct {
	id, name string
	version  int
	addrs    map[netip.AddrPort]time.Time // when each address was last heard
	lastSeen time.Time
}

func (p *peerState) snapshot() Peer {
	addrs := slices.Collect(maps.Keys(p.addrs))
	slices.SortFunc(addrs, netip.AddrPort.Compare)
	return Peer{ID: p.id, Name: p.name, Addrs: addrs, Version: p.version}
}

// table is the set of known peers. It takes the time as an argument, so
// that tests drive it without a clock, and it is not safe for concurrent
// use: Discovery guards it.
type table struct {
	max    int           // peers tracked at most
	maxAge time.Duration // silence after which a peer (or an address) is gone
	peers  map[string]*peerState
}

func newTable(maxPeers int, maxAge time.Duration) *table {
	return &table{max: maxPeers, maxAge: maxAge, peers: make(map[string]*peerState)}
}

// observeResult says whether observe used a sighting, and if not why.
type observeResult int

const (
	observed observeResult = iota
	ignoredFull
	ignoredUnknown
)

// observe records s at time now. A goodbye removes the peer unless alive
// (the caller asked KeepAlive beforehand). It returns the event to emit,
// if any.
func (t *table) observe(s sighting, now time.Time, alive bool) (Event, bool, observeResult) {
	p, known := t.peers[s.ID]
	if s.Goodbye {
		if !known {
			return Event{}, false, ignoredUnknown
		}
		if alive {
			p.lastSeen = now
			return Event{}, false, observed
		}
		delete(t.peers, s.ID)
		return Event{Kind: Gone, Peer: p.snapshot()}, true, observed
	}
	if !known {
		if len(t.peers) >= t.max {
			return Event{}, false, ignoredFull
		}
		p = &peerState{id: s.ID, name: s.Name, version: s.Version, addrs: make(map[netip.AddrPort]time.Time)}
		t.peers[s.ID] = p
		p.lastSeen = now
		p.merge(s.Addrs, now)
		return Event{Kind: Appeared, Peer: p.snapshot()}, true, observed
	}
	p.lastSeen = now
	changed := p.name != s.Name || p.version != s.Version
	p.name, p.version = s.Name, s.Version
	if p.merge(s.Addrs, now) {
		changed = true
	}
	if changed {
		return Event{Kind: Updated, Peer: p.snapshot()}, true, observed
	}
	return Event{}, false, observed
}

// merge adds addrs heard at now and reports whether the set changed. A
// port that differs from the known one means the peer restarted on a new
// port: its old addresses are dropped at once.
func (p *peerState) merge(addrs []netip.AddrPort, now time.Time) bool {
	changed := false
	if len(addrs) > 0 {
		port := addrs[0].Port()
		for a := range p.addrs {
			if a.Port() != port {
				delete(p.addrs, a)
				changed = true
			}
		}
	}
	for _, a := range addrs {
		if _, ok := p.addrs[a]; !ok {
			changed = true
			if len(p.addrs) >= maxPeerAddrs {
				p.evictOldest()
			}
		}
		p.addrs[a] = now
	}
	return changed
}

func (p *peerState) evictOldest() {
	var oldest netip.AddrPort
	var at time.Time
	for a, seen := range p.addrs {
		if at.IsZero() || seen.Before(at) {
			oldest, at = a, seen
		}
	}
	delete(p.addrs, oldest)
}

// touch marks a known peer as alive at now.
func (t *table) touch(id string, now time.Time) {
	if p, ok := t.peers[id]; ok && now.After(p.lastSeen) {
		p.lastSeen = now
	}
}

// stale returns the ids of the peers silent for longer than maxAge: the
// ones to ask KeepAlive about before expire.
func (t *table) stale(now time.Time) []string {
	var ids []string
	for id, p := range t.peers {
		if now.Sub(p.lastSeen) > t.maxAge {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// expire removes the peers silent for longer than maxAge, except those in
// alive, which count as seen now, and drops addresses not heard for
// maxAge unless that would leave a peer without any. It returns Gone and
// Updated events in a stable order.
func (t *table) expire(now time.Time, alive map[string]bool) []Event {
	var evs []Event
	ids := slices.Sorted(maps.Keys(t.peers))
	for _, id := range ids {
		p := t.peers[id]
		if now.Sub(p.lastSeen) > t.maxAge {
			if !alive[id] {
				delete(t.peers, id)
				evs = append(evs, Event{Kind: Gone, Peer: p.snapshot()})
				continue
			}
			p.lastSeen = now
		}
		var old []netip.AddrPort
		for a, seen := range p.addrs {
			if now.Sub(seen) > t.maxAge {
				old = append(old, a)
			}
		}
		if len(old) > 0 && len(old) < len(p.addrs) {
			for _, a := range old {
				delete(p.addrs, a)
			}
			evs = append(evs, Event{Kind: Updated, Peer: p.snapshot()})
		}
	}
	return evs
}

// list returns the peers sorted by id.
func (t *table) list() []Peer {
	out := make([]Peer, 0, len(t.peers))
	for _, p := range t.peers {
		out = append(out, p.snapshot())
	}
	slices.SortFunc(out, func(a, b Peer) int {
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	return out
}
