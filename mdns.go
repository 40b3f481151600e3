package lancache

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/lancache/lancache/discovery"
)

// fleetTag is what mDNS advertises about the fleet key: a tag that lets
// nodes ignore other fleets without revealing anything about the key.
func fleetTag(key []byte) string {
	if len(key) == 0 {
		return ""
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("lancache mdns fleet tag v1"))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// newDiscovery sets up mDNS for the node's QUIC port and identity.
func (n *Node) newDiscovery(fleetKey []byte) (*discovery.Discovery, error) {
	port := 0
	if ua, ok := n.peers.LocalAddr().(*net.UDPAddr); ok {
		port = ua.Port
	}
	return discovery.New(discovery.Config{
		Name:       n.cfg.Name,
		ID:         n.peers.ID(),
		Port:       port,
		FleetTag:   fleetTag(fleetKey),
		Interfaces: n.cfg.Interfaces,
		KeepAlive:  n.connectedTo,
		Logger:     n.log.With("component", "discovery"),
	})
}

// connectedTo reports whether there is a live QUIC session to the node id:
// a peer we still talk to is not gone just because mDNS went quiet.
func (n *Node) connectedTo(id string) bool {
	for _, p := range n.peers.Peers() {
		if p.ID == id && p.State == "connected" {
			return true
		}
	}
	return false
}

// runDiscovery feeds mDNS sightings to the transport until ctx is done.
func (n *Node) runDiscovery(ctx context.Context, d *discovery.Discovery) error {
	f := newMDNSFeed(n.peers, n.cfg.Peers, n.log)
	if err := d.Run(ctx, f.handle); err != nil {
		return fmt.Errorf("mDNS: %w", err)
	}
	return nil
}

// dialer is what the mDNS feed needs of the peer transport.
type dialer interface {
	AddPeer(addr, expectedID string)
	RemovePeer(addr string)
}

// mdnsFeed turns discovery events into dials: a peer that appears is dialed
// (pinned to the id it advertised), one whose address changes is redialed,
// one that is gone is dropped, unless its address is a static --peer, which
// mDNS never removes.
type mdnsFeed struct {
	peers  dialer
	log    *slog.Logger
	static map[string]bool // --peer addresses

	mu     sync.Mutex
	dialed map[string]string // peer id -> address dialed for it
}

func newMDNSFeed(peers dialer, static []string, log *slog.Logger) *mdnsFeed {
	f := &mdnsFeed{peers: peers, log: log, static: map[string]bool{}, dialed: map[string]string{}}
	for _, p := range static {
		f.static[p] = true
	}
	return f
}

func (f *mdnsFeed) drop(addr string) {
	if !f.static[addr] {
		f.peers.RemovePeer(addr)
	}
}

func (f *mdnsFeed) handle(ev discovery.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	old, had := f.dialed[ev.Peer.ID]
	switch ev.Kind {
	case discovery.Gone:
		if had {
			f.drop(old)
			delete(f.dialed, ev.Peer.ID)
			f.log.Info("mDNS peer gone", "peer", ev.Peer.ID, "name", ev.Peer.Name, "addr", old)
		}
	case discovery.Appeared, discovery.Updated:
		if len(ev.Peer.Addrs) == 0 {
			return
		}
		addr := ev.Peer.Addrs[0].String() // IPv4 first
		if had && old == addr {
			return
		}
		if had {
			f.drop(old)
		}
		f.dialed[ev.Peer.ID] = addr
		f.peers.AddPeer(addr, ev.Peer.ID)
		f.log.Info("mDNS peer", "event", ev.Kind.String(), "peer", ev.Peer.ID, "name", ev.Peer.Name, "addr", addr)
	}
}
