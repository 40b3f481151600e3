package mdns

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestLabelEscapeRoundTrip(t *testing.T) {
	for _, in := range []string{"plain", "Ana's laptop.home", `back\slash`, "é ü", "semi;colon(x)", "a\"b@c$d", strings.Repeat("x", MaxLabel)} {
		esc := EscapeLabel(in)
		if strings.Contains(strings.ReplaceAll(esc, `\.`, ""), ".") {
			t.Errorf("EscapeLabel(%q) = %q: unescaped dot", in, esc)
		}
		// Through the wire and back, as a peer sees it.
		svc := Service{Instance: in, Service: "_t._udp", Host: "h", Port: 1, TXT: []string{"a=b"}}
		if err := svc.Init(); err != nil {
			t.Fatalf("Init(%q): %v", in, err)
		}
		got := roundTrip(t, svc.Announcement(nil, 120))
		insts := Parse(got, ServiceName("_t._udp", ""))
		if len(insts) != 1 || insts[0].Name != in {
			t.Errorf("instance %q came back as %+v", in, insts)
		}
	}
	for _, bad := range []string{`a\`, `a\1`, `a\25x`, `\999`, strings.Repeat("y", MaxLabel+1)} {
		if got, err := UnescapeLabel(bad); err == nil {
			t.Errorf("UnescapeLabel(%q) = %q, want error", bad, got)
		}
	}
}

func TestServiceInit(t *testing.T) {
	ok := Service{Instance: "n", Service: "_t._udp", Host: "h", Port: 1}
	for name, mut := range map[string]func(*Service){
		"no instance":   func(s *Service) { s.Instance = "" },
		"long instance": func(s *Service) { s.Instance = strings.Repeat("x", 64) },
		"no service":    func(s *Service) { s.Service = "" },
		"dotted host":   func(s *Service) { s.Host = "a.b" },
		"no port":       func(s *Service) { s.Port = 0 },
		"long TXT":      func(s *Service) { s.TXT = []string{strings.Repeat("t", 256)} },
	} {
		s := ok
		mut(&s)
		if err := s.Init(); err == nil {
			t.Errorf("%s: Init accepted %+v", name, s)
		}
	}
	if err := ok.Init(); err != nil {
		t.Fatal(err)
	}
}

func TestRecordsAnswerQuestions(t *testing.T) {
	svc := Service{Instance: "node one", Service: "_nix-lancache._udp", Host: "lancache-x", Port: 37516, TXT: []string{"v=1", "id=x"}}
	if err := svc.Init(); err != nil {
		t.Fatal(err)
	}
	addrs := []netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("fe80::1"), netip.MustParseAddr("fd00::2")}
	q := func(name string, typ uint16) []dns.RR {
		return svc.Records(dns.Question{Name: name, Qtype: typ, Qclass: dns.ClassINET}, addrs, 120)
	}
	types := func(rrs []dns.RR) (out []uint16) {
		for _, rr := range rrs {
			out = append(out, rr.Header().Rrtype)
		}
		return out
	}
	A, AAAA, PTR, SRV, TXT := dns.TypeA, dns.TypeAAAA, dns.TypePTR, dns.TypeSRV, dns.TypeTXT
	for _, tc := range []struct {
		name string
		typ  uint16
		want []uint16
	}{
		{"_nix-lancache._udp.local.", PTR, []uint16{PTR, SRV, TXT, A, AAAA, AAAA}},
		{"_nix-lancache._udp.local.", dns.TypeANY, []uint16{PTR, SRV, TXT, A, AAAA, AAAA}},
		{"_nix-lancache._udp.local.", A, nil},
		{`node\ one._nix-lancache._udp.local.`, SRV, []uint16{SRV, A, AAAA, AAAA}},
		{`node\ one._nix-lancache._udp.local.`, TXT, []uint16{TXT}},
		{`node\ one._nix-lancache._udp.local.`, dns.TypeANY, []uint16{SRV, TXT, A, AAAA, AAAA}},
		{"lancache-x.local.", A, []uint16{A}},
		{"lancache-x.local.", AAAA, []uint16{AAAA, AAAA}},
		{"_services._dns-sd._udp.local.", PTR, []uint16{PTR}},
		{"_http._tcp.local.", PTR, nil},
	} {
		if got := types(q(tc.name, tc.typ)); !slices.Equal(got, tc.want) {
			t.Errorf("%s %s: %v, want %v", tc.name, dns.TypeToString[tc.typ], got, tc.want)
		}
	}
}

func TestParseAnnouncement(t *testing.T) {
	svc := Service{Instance: "n1", Service: "_nix-lancache._udp", Host: "lancache-n1", Port: 4000, TXT: []string{"v=1", "id=n1"}}
	if err := svc.Init(); err != nil {
		t.Fatal(err)
	}
	addrs := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("fd00::1")}
	service := ServiceName("_nix-lancache._udp", "")

	got := Parse(roundTrip(t, svc.Announcement(addrs, 120)), service)
	want := Instance{Name: "n1", Port: 4000, TXT: []string{"v=1", "id=n1"}, Addrs: addrs}
	if len(got) != 1 || !equalInstance(got[0], want) {
		t.Fatalf("Parse = %+v, want %+v (every address kept)", got, want)
	}

	bye := Parse(roundTrip(t, svc.Announcement(addrs, 0)), service)
	if len(bye) != 1 || !bye[0].Goodbye {
		t.Fatalf("goodbye parsed as %+v", bye)
	}

	// Other services, queries and error responses are not instances.
	other := svc
	other.Service = "_other._udp"
	if err := other.Init(); err != nil {
		t.Fatal(err)
	}
	if got := Parse(roundTrip(t, other.Announcement(addrs, 120)), service); len(got) != 0 {
		t.Fatalf("other service parsed: %+v", got)
	}
	m := svc.Announcement(addrs, 120)
	m.Response = false
	if got := Parse(m, service); len(got) != 0 {
		t.Fatalf("query parsed as instances: %+v", got)
	}
	m = svc.Announcement(addrs, 120)
	m.Rcode = dns.RcodeServerFailure
	if got := Parse(m, service); len(got) != 0 {
		t.Fatalf("error response parsed: %+v", got)
	}

	// No SRV: incomplete. Records in the additional section count.
	m = svc.Announcement(addrs, 120)
	m.Answer = slices.DeleteFunc(m.Answer, func(rr dns.RR) bool { return rr.Header().Rrtype == dns.TypeSRV })
	if got := Parse(m, service); len(got) != 0 {
		t.Fatalf("instance without SRV parsed: %+v", got)
	}
	m = svc.Announcement(addrs, 120)
	m.Answer, m.Extra = m.Answer[:1], m.Answer[1:]
	if got := Parse(roundTrip(t, m), service); len(got) != 1 || len(got[0].Addrs) != 3 {
		t.Fatalf("records split over sections: %+v", got)
	}
	// Names are case-insensitive.
	m = svc.Announcement(addrs, 120)
	for _, rr := range m.Answer {
		rr.Header().Name = strings.ToUpper(rr.Header().Name)
	}
	if got := Parse(roundTrip(t, m), service); len(got) != 1 {
		t.Fatalf("upper-case names: %+v", got)
	}
	// A sub-name deeper than one label is no instance.
	m = svc.Announcement(addrs, 120)
	for _, rr := range m.Answer {
		if h := rr.Header(); h.Rrtype == dns.TypeSRV || h.Rrtype == dns.TypeTXT {
			h.Name = "x." + h.Name
		}
	}
	if got := Parse(roundTrip(t, m), service); len(got) != 0 {
		t.Fatalf("deep name parsed: %+v", got)
	}
}

func TestParseBounded(t *testing.T) {
	service := ServiceName("_nix-lancache._udp", "")
	m := newResponse(0, nil, nil)
	// 100 instances, each with many addresses, in one packet.
	for i := range 100 {
		inst := fmt.Sprintf("n%d.%s", i, service)
		host := fmt.Sprintf("h%d.local.", i)
		m.Answer = append(m.Answer,
			&dns.PTR{Hdr: dns.RR_Header{Name: service, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: 120}, Ptr: inst},
			&dns.SRV{Hdr: dns.RR_Header{Name: inst, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 120}, Port: 1, Target: host},
			&dns.TXT{Hdr: dns.RR_Header{Name: inst, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 120}, Txt: []string{"v=1"}})
		for j := range 40 {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: host, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 120}, A: net.IPv4(10, 0, byte(i), byte(j))})
		}
	}
	got := Parse(m, service)
	if len(got) > maxInstances {
		t.Fatalf("%d instances from one packet, want at most %d", len(got), maxInstances)
	}
	for _, in := range got {
		if len(in.Addrs) > maxAddrsPerHost {
			t.Fatalf("%d addresses for one host", len(in.Addrs))
		}
	}
}

// FuzzParse feeds arbitrary packets to the unpacker and Parse.
func FuzzParse(f *testing.F) {
	svc := Service{Instance: "n1", Service: "_nix-lancache._udp", Host: "lancache-n1", Port: 4000, TXT: []string{"v=1", "id=n1"}}
	if err := svc.Init(); err != nil {
		f.Fatal(err)
	}
	for _, ttl := range []uint32{0, 120} {
		b, err := svc.Announcement([]netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fe80::1")}, ttl).Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	service := ServiceName("_nix-lancache._udp", "")
	f.Fuzz(func(t *testing.T, b []byte) {
		var m dns.Msg
		if m.Unpack(b) != nil {
			return
		}
		for _, in := range Parse(&m, service) {
			if in.Name == "" || len(in.Name) > MaxLabel || len(in.Addrs) > maxAddrsPerHost {
				t.Fatalf("bad instance %+v", in)
			}
		}
	})
}

func roundTrip(t *testing.T, m *dns.Msg) *dns.Msg {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("pack: %v", err)
	}
	var out dns.Msg
	if err := out.Unpack(b); err != nil {
		t.Fatalf("unpack: %v", err)
	}
	return &out
}

func equalInstance(a, b Instance) bool {
	return a.Name == b.Name && a.Port == b.Port && a.Goodbye == b.Goodbye &&
		slices.Equal(a.TXT, b.TXT) && slices.Equal(a.Addrs, b.Addrs)
}
