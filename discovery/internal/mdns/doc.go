// Package mdns is the small part of Multicast DNS (RFC 6762) and DNS-based
// service discovery (RFC 6763) that lancache needs: a responder for one
// service instance and a querier that browses one service type, sharing
// one set of sockets across every chosen interface.
//
// It is derived from github.com/hashicorp/mdns v1.0.7 (Copyright IBM Corp.
// 2014, 2026, MIT licence, see LICENSE.hashicorp-mdns): the record set a
// service answers with (records.go, from zone.go), the response header rules
// (from server.go) and the assembly of service entries from answers (from
// client.go). It was forked rather than used because of limits of that
// version which lancache cannot work around from outside:
//
//   - a server listens on one interface and answers with the same addresses
//     whichever interface a query arrived on; here one socket per address
//     family joins the group on every interface, and answers carry the
//     addresses of the interface the query came in on;
//   - the client keeps only the last A and AAAA record of an entry, opens
//     new sockets for every query, joins the group on the default interface
//     only, and fails the whole query when an IPv6 send fails; here the
//     query sockets live as long as the Endpoint, every address is kept, and
//     each interface and family fails on its own;
//   - there are no announcements and no goodbye (TTL 0) packets; here
//     Announce sends both;
//   - the server always answers by unicast, even to a querier on port 5353;
//     here answers follow RFC 6762 §6 and §6.7;
//   - goroutines are not waited for on shutdown, and unread entries are
//     dropped; here Run returns only after its goroutines have ended, and
//     packets go to a handler.
//
// Everything read from the network is untrusted: packets are bounded to
// MaxPacket bytes, answers to queries are rate limited, and Parse looks at a
// bounded number of records.
package mdns
