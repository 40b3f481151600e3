package lancache

import "github.com/lancache/lancache/discovery"

// FeedMDNS hands ev to an mDNS feed over n's peer transport, as
// runDiscovery does for a real sighting.
func FeedMDNS(n *Node, ev discovery.Event) {
	newMDNSFeed(n.peers, n.cfg.Peers, n.log).handle(ev)
}

// OfferedPaths is the size of the inventory n offers to peers.
func OfferedPaths(n *Node) int { return n.inv.Len() }
