package discovery

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func sight(id string, addrs ...string) sighting {
	s := sighting{ID: id, Name: "host-" + id, Version: 1}
	for _, a := range addrs {
		s.Addrs = append(s.Addrs, ap(a))
	}
	return s
}

// step applies a sighting and returns the event kind it produced (0: none).
func step(t *testing.T, tab *table, s sighting, now time.Time, alive bool) EventKind {
	t.Helper()
	ev, ok, _ := tab.observe(s, now, alive)
	if !ok {
		return 0
	}
	if ev.Peer.ID != s.ID {
		t.Fatalf("event for %q, want %q", ev.Peer.ID, s.ID)
	}
	return ev.Kind
}

func TestTableAppearUpdate(t *testing.T) {
	tab := newTable(10, 15*time.Second)
	if k := step(t, tab, sight("a", "10.0.0.1:4000"), t0, false); k != Appeared {
		t.Fatalf("first sighting: %v, want appeared", k)
	}
	if k := step(t, tab, sight("a", "10.0.0.1:4000"), t0.Add(time.Second), false); k != 0 {
		t.Fatalf("same sighting again: %v, want no event", k)
	}
	// A second address (heard on another interface) is added, not swapped.
	if k := step(t, tab, sight("a", "[fd00::1]:4000"), t0.Add(2*time.Second), false); k != Updated {
		t.Fatalf("new address: %v, want updated", k)
	}
	if k := step(t, tab, sight("a", "10.0.0.1:4000"), t0.Add(3*time.Second), false); k != 0 {
		t.Fatalf("known address: %v, want no event", k)
	}
	got := tab.list()[0].Addrs
	want := []netip.AddrPort{ap("10.0.0.1:4000"), ap("[fd00::1]:4000")}
	if !slices.Equal(got, want) {
		t.Fatalf("addrs %v, want %v (sorted, IPv4 first)", got, want)
	}
	// A restart on another port replaces the addresses at once.
	if k := step(t, tab, sight("a", "10.0.0.1:5000"), t0.Add(4*time.Second), false); k != Updated {
		t.Fatalf("new port: %v, want updated", k)
	}
	if got := tab.list()[0].Addrs; !slices.Equal(got, []netip.AddrPort{ap("10.0.0.1:5000")}) {
		t.Fatalf("after port change: %v", got)
	}
	// A new name is an update too.
	s := sight("a", "10.0.0.1:5000")
	s.Name = "renamed"
	if k := step(t, tab, s, t0.Add(5*time.Second), false); k != Updated {
		t.Fatalf("new name: %v, want updated", k)
	}
}

func TestTableExpiry(t *testing.T) {
	const maxAge = 15 * time.Second
	tab := newTable(10, maxAge)
	step(t, tab, sight("a", "10.0.0.1:4000"), t0, false)
	step(t, tab, sight("b", "10.0.0.2:4000"), t0, false)
	step(t, tab, sight("c", "10.0.0.3:4000"), t0, false)

	// b keeps answering; a and c go silent; c has a live connection.
	for i := 1; i <= 3; i++ {
		step(t, tab, sight("b", "10.0.0.2:4000"), t0.Add(time.Duration(i)*5*time.Second), false)
	}
	if evs := tab.expire(t0.Add(maxAge), nil); len(evs) != 0 {
		t.Fatalf("at exactly maxAge: %v, want nothing yet", evs)
	}
	now := t0.Add(maxAge + time.Millisecond)
	if got := tab.stale(now); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("stale = %v, want [a c]", got)
	}
	evs := tab.expire(now, map[string]bool{"c": true})
	if len(evs) != 1 || evs[0].Kind != Gone || evs[0].Peer.ID != "a" {
		t.Fatalf("expire = %+v, want a gone", evs)
	}
	if got := ids(tab.list()); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("peers = %v, want [b c]", got)
	}
	// c was vouched for: it counts as seen now and keeps its only address,
	// though that address has not been heard for longer than maxAge.
	for _, p := range tab.list() {
		if p.ID == "c" && len(p.Addrs) != 1 {
			t.Fatalf("c lost its address while vouched for: %+v", p)
		}
	}
	for _, e := range tab.expire(now.Add(maxAge), nil) {
		if e.Peer.ID == "c" {
			t.Fatalf("c expired too early: %+v", e)
		}
	}
	evs = tab.expire(now.Add(maxAge+time.Millisecond), nil)
	if !slices.ContainsFunc(evs, func(e Event) bool { return e.Kind == Gone && e.Peer.ID == "c" }) {
		t.Fatalf("c not gone once nobody vouches: %+v", evs)
	}
}

func TestTableTouch(t *testing.T) {
	tab := newTable(10, 15*time.Second)
	step(t, tab, sight("a", "10.0.0.1:4000"), t0, false)
	tab.touch("a", t0.Add(10*time.Second))
	tab.touch("unknown", t0.Add(10*time.Second))
	if evs := tab.expire(t0.Add(20*time.Second), nil); len(evs) != 0 {
		t.Fatalf("touched peer expired: %+v", evs)
	}
	if len(tab.list()) != 1 {
		t.Fatalf("touch of an unknown id added a peer")
	}
	if evs := tab.expire(t0.Add(26*time.Second), nil); len(evs) != 1 || evs[0].Kind != Gone {
		t.Fatalf("after touch + maxAge: %+v, want gone", evs)
	}
}

func TestTableAddressAgeing(t *testing.T) {
	tab := newTable(10, 15*time.Second)
	step(t, tab, sight("a", "10.0.0.1:4000", "10.0.1.1:4000"), t0, false)
	// The peer keeps answering, but only with one of its addresses.
	step(t, tab, sight("a", "10.0.0.1:4000"), t0.Add(10*time.Second), false)
	evs := tab.expire(t0.Add(16*time.Second), nil)
	if len(evs) != 1 || evs[0].Kind != Updated || !slices.Equal(evs[0].Peer.Addrs, []netip.AddrPort{ap("10.0.0.1:4000")}) {
		t.Fatalf("expire = %+v, want updated without 10.0.1.1", evs)
	}
}

func TestTableGoodbye(t *testing.T) {
	tab := newTable(10, 15*time.Second)
	step(t, tab, sight("a", "10.0.0.1:4000"), t0, false)
	bye := sighting{ID: "a", Name: "host-a", Version: 1, Goodbye: true}
	if k := step(t, tab, bye, t0.Add(time.Second), true); k != 0 {
		t.Fatalf("goodbye while alive: %v, want kept", k)
	}
	if k := step(t, tab, bye, t0.Add(2*time.Second), false); k != Gone {
		t.Fatalf("goodbye: %v, want gone", k)
	}
	if k := step(t, tab, sighting{ID: "zz", Goodbye: true}, t0, false); k != 0 {
		t.Fatalf("goodbye of an unknown peer: %v", k)
	}
	if len(tab.list()) != 0 {
		t.Fatalf("peers left: %v", tab.list())
	}
}

func TestTableBounds(t *testing.T) {
	tab := newTable(3, 15*time.Second)
	for i := range 10 {
		_, _, res := tab.observe(sight(fmt.Sprint(i), "10.0.0.1:4000"), t0, false)
		if want := observed; i >= 3 {
			want = ignoredFull
			if res != want {
				t.Fatalf("peer %d: %v, want ignoredFull", i, res)
			}
		}
	}
	if n := len(tab.list()); n != 3 {
		t.Fatalf("%d peers tracked, want 3", n)
	}
	// Addresses per peer are bounded; the oldest go first.
	for i := range 3 * maxPeerAddrs {
		step(t, tab, sight("0", fmt.Sprintf("10.1.%d.%d:4000", i/250, i%250)), t0.Add(time.Duration(i)*time.Millisecond), false)
	}
	addrs := tab.list()[0].Addrs
	if len(addrs) != maxPeerAddrs {
		t.Fatalf("%d addresses kept, want %d", len(addrs), maxPeerAddrs)
	}
	if last := ap(fmt.Sprintf("10.1.0.%d:4000", 3*maxPeerAddrs-1)); !slices.Contains(addrs, last) {
		t.Fatalf("newest address %v evicted: %v", last, addrs)
	}
}

func ids(ps []Peer) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.ID)
	}
	return out
}
