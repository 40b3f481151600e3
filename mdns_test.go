package lancache

import (
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"github.com/lancache/lancache/discovery"
)

type fakeDialer struct{ dialed []string }

func (f *fakeDialer) AddPeer(addr, id string) { f.dialed = append(f.dialed, addr) }
func (f *fakeDialer) RemovePeer(addr string) {
	f.dialed = slices.DeleteFunc(f.dialed, func(a string) bool { return a == addr })
}

func TestMDNSFeed(t *testing.T) {
	d := &fakeDialer{dialed: []string{"10.0.0.9:37516"}} // the static peer, dialed at start
	f := newMDNSFeed(d, []string{"10.0.0.9:37516"}, slog.New(slog.DiscardHandler))
	ev := func(kind discovery.EventKind, id, addr string) {
		f.handle(discovery.Event{Kind: kind, Peer: discovery.Peer{ID: id, Addrs: []netip.AddrPort{netip.MustParseAddrPort(addr)}}})
	}
	ev(discovery.Appeared, "a", "10.0.0.2:37516")
	ev(discovery.Updated, "a", "10.0.0.3:37516")  // moved: redial the new address
	ev(discovery.Appeared, "s", "10.0.0.9:37516") // the static peer, also seen on mDNS
	if want := []string{"10.0.0.9:37516", "10.0.0.3:37516", "10.0.0.9:37516"}; !slices.Equal(d.dialed, want) {
		t.Fatalf("dialed %v, want %v", d.dialed, want)
	}
	ev(discovery.Gone, "a", "10.0.0.3:37516")
	ev(discovery.Gone, "s", "10.0.0.9:37516") // mDNS loses it: still a --peer
	if !slices.Contains(d.dialed, "10.0.0.9:37516") || slices.Contains(d.dialed, "10.0.0.3:37516") {
		t.Fatalf("after goodbyes dialed %v: want the static peer kept, the mDNS one dropped", d.dialed)
	}
}
