// Copyright IBM Corp. 2014, 2026 (derived from hashicorp/mdns client.go)
// Copyright the lancache authors
// SPDX-License-Identifier: MIT

package mdns

import (
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// Bounds on what Parse looks at in one packet. A packet of MaxPacket bytes
// cannot hold many more records anyway; the bounds keep the work per packet
// and the size of the result small whatever a sender puts in it.
const (
	maxRecords       = 256 // answer + additional records examined
	maxInstances     = 16  // instances returned
	maxAddrsPerHost  = 16  // A + AAAA records kept per host name
	maxHostsInPacket = 16  // host names whose addresses are collected
)

// Instance is one service instance assembled from the records of one
// response packet.
type Instance struct {
	Name    string       // instance name, unescaped
	Port    uint16       // from the SRV record
	TXT     []string     // from the TXT record
	Addrs   []netip.Addr // A and AAAA records of the SRV target in the same packet
	Goodbye bool         // the instance's TXT record had TTL 0: it is leaving
}

type partial struct {
	Instance
	hasSRV, hasTXT bool
	target         string // lower case
}

// Parse returns the instances of the service named service (as from
// ServiceName) that msg describes completely: with a TXT record, and with
// an SRV record unless it is a goodbye. Records are matched within this one
// packet only, so nothing is kept between packets.
func Parse(msg *dns.Msg, service string) []Instance {
	if msg == nil || !msg.Response || msg.Opcode != dns.OpcodeQuery || msg.Rcode != 0 {
		// RFC 6762 §18.3, §18.11: ignore other opcodes and response codes.
		return nil
	}
	service = strings.ToLower(service)
	suffix := "." + service

	var (
		order []string
		insts = make(map[string]*partial)
		hosts = make(map[string][]netip.Addr)
	)
	instance := func(owner string) *partial {
		key := strings.ToLower(owner)
		if !strings.HasSuffix(key, suffix) {
			return nil
		}
		if p, ok := insts[key]; ok {
			return p
		}
		if len(insts) >= maxInstances {
			return nil
		}
		label, rest, ok := firstLabel(owner)
		if !ok || !strings.EqualFold(rest, service) {
			return nil // a sub-name deeper than one label: not an instance
		}
		name, err := UnescapeLabel(label)
		if err != nil || name == "" {
			return nil
		}
		p := &partial{Instance: Instance{Name: name}}
		insts[key] = p
		order = append(order, key)
		return p
	}
	addHost := func(owner string, a netip.Addr, ok bool) {
		if !ok {
			return
		}
		key := strings.ToLower(owner)
		as, seen := hosts[key]
		if !seen && len(hosts) >= maxHostsInPacket || len(as) >= maxAddrsPerHost {
			return
		}
		hosts[key] = append(as, a.Unmap())
	}

	n := 0
	for _, section := range [][]dns.RR{msg.Answer, msg.Extra} {
		for _, rr := range section {
			if n++; n > maxRecords {
				break
			}
			switch rr := rr.(type) {
			case *dns.PTR:
				if strings.EqualFold(rr.Hdr.Name, service) {
					instance(rr.Ptr)
				}
			case *dns.SRV:
				if p := instance(rr.Hdr.Name); p != nil {
					p.hasSRV = true
					p.Port = rr.Port
					p.target = strings.ToLower(rr.Target)
				}
			case *dns.TXT:
				if p := instance(rr.Hdr.Name); p != nil {
					p.hasTXT = true
					p.TXT = rr.Txt
					p.Goodbye = rr.Hdr.Ttl == 0
				}
			case *dns.A:
				a, ok := netip.AddrFromSlice(rr.A)
				addHost(rr.Hdr.Name, a, ok)
			case *dns.AAAA:
				a, ok := netip.AddrFromSlice(rr.AAAA)
				addHost(rr.Hdr.Name, a, ok)
			}
		}
	}

	var out []Instance
	for _, key := range order {
		p := insts[key]
		if !p.hasTXT || !p.hasSRV && !p.Goodbye {
			continue
		}
		if p.hasSRV {
			p.Addrs = hosts[p.target]
		}
		out = append(out, p.Instance)
	}
	return out
}
