// Copyright IBM Corp. 2014, 2026 (derived from hashicorp/mdns zone.go)
// Copyright the lancache authors
// SPDX-License-Identifier: MIT

package mdns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// DefaultTTL is the TTL of the records a Service answers with (RFC 6762
// §10 recommends 120 s for records that name a host).
const DefaultTTL = 120

// legacyTTL caps the TTL of answers to one-shot (legacy unicast) queries,
// RFC 6762 §6.7.
const legacyTTL = 10

// Service is one DNS-SD service instance this host answers for.
type Service struct {
	Instance string   // instance name, unescaped, at most MaxLabel bytes
	Service  string   // service type, e.g. "_nix-lancache._udp"
	Domain   string   // "local" when empty
	Host     string   // host label, e.g. "lancache-abc"; its A/AAAA records hold the addresses
	Port     uint16   // SRV port
	TXT      []string // TXT strings, each at most 255 bytes

	serviceAddr  string // _nix-lancache._udp.local.
	instanceAddr string // <instance>._nix-lancache._udp.local.
	hostAddr     string // <host>.local.
	enumAddr     string // _services._dns-sd._udp.local.
}

// ServiceName returns the fully qualified name of a service type, e.g.
// "_nix-lancache._udp.local.".
func ServiceName(service, domain string) string {
	if domain == "" {
		domain = "local"
	}
	return dns.Fqdn(strings.Trim(service, ".") + "." + strings.Trim(domain, "."))
}

// Init checks s and derives its fully qualified names. Records and
// Announcement need it; Listen calls it.
func (s *Service) Init() error {
	switch {
	case s.Instance == "" || len(s.Instance) > MaxLabel:
		return fmt.Errorf("instance name %q: must be 1 to %d bytes", s.Instance, MaxLabel)
	case s.Service == "":
		return errors.New("missing service type")
	case s.Host == "" || len(s.Host) > MaxLabel || strings.ContainsAny(s.Host, ". \\"):
		return fmt.Errorf("host label %q: must be 1 to %d bytes without dots", s.Host, MaxLabel)
	case s.Port == 0:
		return errors.New("missing service port")
	}
	for _, t := range s.TXT {
		if len(t) > 255 {
			return fmt.Errorf("TXT string %.20q...: longer than 255 bytes", t)
		}
	}
	if s.Domain == "" {
		s.Domain = "local"
	}
	domain := strings.Trim(s.Domain, ".")
	s.serviceAddr = ServiceName(s.Service, domain)
	s.instanceAddr = EscapeLabel(s.Instance) + "." + s.serviceAddr
	s.hostAddr = s.Host + "." + domain + "."
	s.enumAddr = "_services._dns-sd._udp." + domain + "."
	if _, ok := dns.IsDomainName(s.instanceAddr); !ok {
		return fmt.Errorf("instance name %q does not form a valid domain name", s.Instance)
	}
	if _, ok := dns.IsDomainName(s.hostAddr); !ok {
		return fmt.Errorf("host label %q does not form a valid domain name", s.Host)
	}
	return nil
}

// Records returns the records that answer q, the host records holding
// addrs, with the given TTL (0 for a goodbye).
func (s *Service) Records(q dns.Question, addrs []netip.Addr, ttl uint32) []dns.RR {
	// Names are case-insensitive (RFC 6762 §16); both sides are in
	// miekg/dns presentation format (see EscapeLabel).
	switch strings.ToLower(q.Name) {
	case strings.ToLower(s.enumAddr):
		if q.Qtype == dns.TypePTR || q.Qtype == dns.TypeANY {
			return []dns.RR{&dns.PTR{Hdr: s.hdr(s.enumAddr, dns.TypePTR, ttl), Ptr: s.serviceAddr}}
		}
	case strings.ToLower(s.serviceAddr):
		if q.Qtype == dns.TypePTR || q.Qtype == dns.TypeANY {
			return s.all(addrs, ttl)
		}
	case strings.ToLower(s.instanceAddr):
		switch q.Qtype {
		case dns.TypeANY:
			return s.all(addrs, ttl)[1:]
		case dns.TypeSRV:
			return append([]dns.RR{s.srv(ttl)}, s.hostRecords(addrs, ttl, true, true)...)
		case dns.TypeTXT:
			return []dns.RR{s.txt(ttl)}
		}
	case strings.ToLower(s.hostAddr):
		switch q.Qtype {
		case dns.TypeA:
			return s.hostRecords(addrs, ttl, true, false)
		case dns.TypeAAAA:
			return s.hostRecords(addrs, ttl, false, true)
		case dns.TypeANY:
			return s.hostRecords(addrs, ttl, true, true)
		}
	}
	return nil
}

// Announcement returns the unsolicited response that announces s with the
// given addresses and TTL (0: goodbye), as Endpoint.Announce sends it.
func (s *Service) Announcement(addrs []netip.Addr, ttl uint32) *dns.Msg {
	return newResponse(0, nil, s.all(addrs, ttl))
}

// all is the full answer to a browse: PTR, SRV, TXT, then A and AAAA. Our
// own querier assembles an instance from one packet, so they travel
// together (hashicorp/mdns issue #145 is what happens when they do not).
func (s *Service) all(addrs []netip.Addr, ttl uint32) []dns.RR {
	rrs := []dns.RR{
		&dns.PTR{Hdr: s.hdr(s.serviceAddr, dns.TypePTR, ttl), Ptr: s.instanceAddr},
		s.srv(ttl),
		s.txt(ttl),
	}
	return append(rrs, s.hostRecords(addrs, ttl, true, true)...)
}

func (s *Service) srv(ttl uint32) dns.RR {
	return &dns.SRV{
		Hdr:      s.hdr(s.instanceAddr, dns.TypeSRV, ttl),
		Priority: 10,
		Weight:   1,
		Port:     s.Port,
		Target:   s.hostAddr,
	}
}

func (s *Service) txt(ttl uint32) dns.RR {
	return &dns.TXT{Hdr: s.hdr(s.instanceAddr, dns.TypeTXT, ttl), Txt: s.TXT}
}

func (s *Service) hostRecords(addrs []netip.Addr, ttl uint32, v4, v6 bool) []dns.RR {
	var rrs []dns.RR
	for _, a := range addrs {
		a = a.Unmap()
		switch {
		case a.Is4() && v4:
			rrs = append(rrs, &dns.A{Hdr: s.hdr(s.hostAddr, dns.TypeA, ttl), A: net.IP(a.AsSlice())})
		case a.Is6() && v6:
			rrs = append(rrs, &dns.AAAA{Hdr: s.hdr(s.hostAddr, dns.TypeAAAA, ttl), AAAA: net.IP(a.AsSlice())})
		}
	}
	return rrs
}

func (s *Service) hdr(name string, typ uint16, ttl uint32) dns.RR_Header {
	// The cache-flush bit (RFC 6762 §10.2) is left clear: several lancache
	// nodes may share a name, and their records must not evict each other.
	return dns.RR_Header{Name: name, Rrtype: typ, Class: dns.ClassINET, Ttl: ttl}
}
