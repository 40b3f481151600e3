package discovery

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lancache/lancache/discovery/internal/mdns"
)

func newTestDiscovery(t *testing.T, id, fleet string) *Discovery {
	t.Helper()
	d, err := New(Config{Name: "self", ID: id, Port: 37516, FleetTag: fleet})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// heard builds the packet a peer announces and returns what d accepts
// from it.
func heard(t *testing.T, d *Discovery, name string, txt []string, port uint16, addrs []string, ttl uint32) []sighting {
	t.Helper()
	svc := mdns.Service{Instance: name, Service: ServiceType, Host: "h", Port: port, TXT: txt}
	if err := svc.Init(); err != nil {
		t.Fatal(err)
	}
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	pkt := mdns.Packet{
		Msg:    svc.Announcement(as, ttl),
		Src:    netip.MustParseAddrPort("10.9.9.9:5353"),
		IfName: "eth0",
	}
	return d.accept(mdns.Parse(pkt.Msg, mdns.ServiceName(ServiceType, "")), pkt)
}

func TestAcceptFilters(t *testing.T) {
	d := newTestDiscovery(t, "self", "fleetA")
	v4 := []string{"10.0.0.2"}
	for _, tc := range []struct {
		name string
		txt  []string
		inst string
		port uint16
		ok   bool
	}{
		{"same fleet", []string{"v=1", "id=peer", "fleet=fleetA"}, "peer", 4000, true},
		{"ourselves", []string{"v=1", "id=self", "fleet=fleetA"}, "self", 37516, false},
		{"other fleet", []string{"v=1", "id=peer", "fleet=fleetB"}, "peer", 4000, false},
		{"no fleet", []string{"v=1", "id=peer"}, "peer", 4000, false},
		{"other version", []string{"v=2", "id=peer", "fleet=fleetA"}, "peer", 4000, false},
		{"malformed TXT", []string{"v=1", "id=pe/er", "fleet=fleetA"}, "peer", 4000, false},
		{"control character in name", []string{"v=1", "id=peer", "fleet=fleetA"}, "pe\x01er", 4000, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := heard(t, d, tc.inst, tc.txt, tc.port, v4, 120)
			if ok := len(got) == 1; ok != tc.ok {
				t.Fatalf("accepted = %+v, want accepted %v", got, tc.ok)
			}
			if tc.ok && (got[0].ID != "peer" || got[0].Version != 1 || got[0].Name != tc.inst) {
				t.Fatalf("sighting %+v", got[0])
			}
		})
	}

	// Without a fleet tag, only peers without one are accepted.
	open := newTestDiscovery(t, "self", "")
	if got := heard(t, open, "p", []string{"v=1", "id=peer"}, 4000, v4, 120); len(got) != 1 {
		t.Fatalf("fleetless peer refused by fleetless node")
	}
	if got := heard(t, open, "p", []string{"v=1", "id=peer", "fleet=x"}, 4000, v4, 120); len(got) != 0 {
		t.Fatalf("fleet peer accepted by fleetless node")
	}

	// A goodbye is a sighting with Goodbye set and no addresses needed.
	got := heard(t, d, "peer", []string{"v=1", "id=peer", "fleet=fleetA"}, 4000, nil, 0)
	if len(got) != 1 || !got[0].Goodbye {
		t.Fatalf("goodbye: %+v", got)
	}
}

func TestAcceptAddresses(t *testing.T) {
	d := newTestDiscovery(t, "self", "")
	txt := []string{"v=1", "id=peer"}
	got := heard(t, d, "peer", txt, 4000,
		[]string{"10.0.0.2", "fe80::2", "fd00::2", "0.0.0.0", "224.0.0.251", "255.255.255.255", "127.0.0.1", "::1", "ff02::fb", "::ffff:10.0.0.3"}, 120)
	if len(got) != 1 {
		t.Fatalf("not accepted: %+v", got)
	}
	want := []netip.AddrPort{
		netip.MustParseAddrPort("10.0.0.2:4000"),
		netip.MustParseAddrPort("[fe80::2%eth0]:4000"),
		netip.MustParseAddrPort("[fd00::2]:4000"),
		netip.MustParseAddrPort("10.0.0.3:4000"),
	}
	if !slices.Equal(got[0].Addrs, want) {
		t.Fatalf("addrs %v, want %v", got[0].Addrs, want)
	}
	// No usable address advertised: the packet's source stands in.
	got = heard(t, d, "peer", txt, 4000, []string{"127.0.0.1"}, 120)
	if len(got) != 1 || !slices.Equal(got[0].Addrs, []netip.AddrPort{netip.MustParseAddrPort("10.9.9.9:4000")}) {
		t.Fatalf("fallback to source: %+v", got)
	}
}

func TestNewValidates(t *testing.T) {
	good := Config{Name: "n", ID: "id", Port: 1}
	for name, mut := range map[string]func(*Config){
		"no id":          func(c *Config) { c.ID = "" },
		"bad id":         func(c *Config) { c.ID = "a b" },
		"port 0":         func(c *Config) { c.Port = 0 },
		"port too big":   func(c *Config) { c.Port = 70000 },
		"long name":      func(c *Config) { c.Name = strings.Repeat("n", 64) },
		"control name":   func(c *Config) { c.Name = "a\nb" },
		"bad fleet":      func(c *Config) { c.FleetTag = "a b" },
		"tiny interval":  func(c *Config) { c.QueryInterval = time.Millisecond },
		"negative round": func(c *Config) { c.MissedRounds = -1 },
	} {
		c := good
		mut(&c)
		if _, err := New(c); err == nil {
			t.Errorf("%s: New accepted %+v", name, c)
		}
	}
	d, err := New(Config{ID: "id", Port: 1})
	if err != nil {
		t.Fatalf("default name: %v", err)
	}
	if d.cfg.QueryInterval != DefaultQueryInterval || d.cfg.MissedRounds != DefaultMissedRounds || d.cfg.MaxPeers != DefaultMaxPeers || d.cfg.Name == "" {
		t.Fatalf("defaults not applied: %+v", d.cfg)
	}
	if d.maxAge >= 30*time.Second {
		t.Fatalf("default expiry %v, want well under 30s", d.maxAge)
	}
	if got := truncateName(strings.Repeat("é", 40)); len(got) > 63 || !validName(got) {
		t.Fatalf("truncateName gave %q", got)
	}
}
