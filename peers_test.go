package lancache_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lancache/lancache"
	"github.com/lancache/lancache/discovery"
)

// waitUntil polls cond until it holds, failing after a generous bound.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Status marks as static only the --peer targets, not a peer dialed
// because mDNS saw it.
func TestStatusStaticOnlyForStaticPeers(t *testing.T) {
	keys := lancache.DefaultTrustedPublicKeys
	a := startNode(t, lancache.Config{TrustedPublicKeys: keys, Name: "a"})
	c := startNode(t, lancache.Config{TrustedPublicKeys: keys, Name: "c"})
	b := startNode(t, lancache.Config{TrustedPublicKeys: keys, Name: "b", Peers: []string{a.QUICAddr().String()}})
	lancache.FeedMDNS(b.Node, discovery.Event{Kind: discovery.Appeared, Peer: discovery.Peer{
		ID: c.ID(), Name: "c", Addrs: []netip.AddrPort{netip.MustParseAddrPort(c.QUICAddr().String())},
	}})
	var peers []lancache.PeerStatus
	waitUntil(t, "b connected to a and c", func() bool {
		peers = b.Status().Peers
		connected := 0
		for _, p := range peers {
			if p.State == "connected" && p.Name != "" {
				connected++
			}
		}
		return len(peers) == 2 && connected == 2
	})
	for _, p := range peers {
		if want := p.Name == "a"; p.Static != want {
			t.Errorf("peer %s: static %v, want %v", p.Name, p.Static, want)
		}
	}
	// The other side of each connection dialed nothing: not static.
	for _, n := range []*testNode{a, c} {
		for _, p := range n.Status().Peers {
			if p.Static {
				t.Errorf("%s sees %s as static", n.Status().Name, p.Name)
			}
		}
	}
}
