package lancache

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
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

// runDiscovery feeds mDNS sightings to the transport until ctx is done: a
// peer that appears is dialed (pinned to the id it advertised), one whose
// address changes is redialed, one that is gone is dropped.
func (n *Node) runDiscovery(ctx context.Context, d *discovery.Discovery) error {
	var mu sync.Mutex
	dialed := map[string]string{} // peer id -> address we dial
	err := d.Run(ctx, func(ev discovery.Event) {
		mu.Lock()
		defer mu.Unlock()
		old, had := dialed[ev.Peer.ID]
		switch ev.Kind {
		case discovery.Gone:
			if had {
				n.peers.RemovePeer(old)
				delete(dialed, ev.Peer.ID)
				n.log.Info("mDNS peer gone", "peer", ev.Peer.ID, "name", ev.Peer.Name, "addr", old)
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
				n.peers.RemovePeer(old)
			}
			dialed[ev.Peer.ID] = addr
			n.peers.AddPeer(addr, ev.Peer.ID)
			n.log.Info("mDNS peer", "event", ev.Kind.String(), "peer", ev.Peer.ID, "name", ev.Peer.Name, "addr", addr)
		}
	})
	if err != nil {
		return fmt.Errorf("mDNS: %w", err)
	}
	return nil
}
