// Package discovery finds the other lancache daemons on the LAN with
// Multicast DNS and reports them as events: a peer appeared, its
// addresses changed, or it is gone.
//
// Every node advertises one DNS-SD instance of ServiceType named after the
// node, whose SRV port is its QUIC port and whose TXT record carries the
// protocol version, the node id and an optional fleet tag (see txt.go).
// Browsing sends one-shot queries, a quick burst at start-up and then one
// round every QueryInterval, on every suitable multicast interface over
// IPv4 and IPv6. A peer is gone when it said goodbye or missed MissedRounds
// rounds, unless the caller vouches for it (Config.KeepAlive, Touch) with a
// live connection. Nodes of other fleets, of other protocol versions and
// the node itself are ignored. Everything heard from the network is
// untrusted and bounded: the number of peers, addresses, queued packets and
// the size of what is parsed.
//
// The mDNS wire protocol lives in internal/mdns, a fork of the parts of
// github.com/hashicorp/mdns that lancache needs (see its doc for why).
//
// discovery does not dial peers, check their identity or fleet membership
// (transfer does, over QUIC; a TXT record proves nothing), and does not
// handle static --peer entries (the Node hands those to transfer directly).
// With --no-mdns the Node simply does not run it.
package discovery
