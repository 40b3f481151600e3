package integration

import (
	"encoding/json"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lancache/lancache"
)

// listed returns the names of the peers a daemon lists as connected.
func listed(d *daemon) []string {
	st, err := d.status()
	if err != nil {
		return nil
	}
	var names []string
	for _, p := range st.Peers {
		if p.State == "connected" {
			names = append(names, p.Name)
		}
	}
	sort.Strings(names)
	return names
}

func waitListed(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

// Four hosts with no peer flags find each other over mDNS; a crashed one
// leaves the others' lists and comes back on restart; a host of another
// fleet is never listed; a path is then substituted over mDNS alone; a host
// on another subnet is reached only through --peer.
func TestMDNSDiscovery(t *testing.T) {
	fx := newStoreFixture(t)
	l := newLAN(t, 202)
	var hosts []*host
	for _, n := range []string{"m1", "m2", "m3", "m4"} {
		hosts = append(hosts, l.addHost(n))
	}
	stranger := l.addHost("stranger")
	fleetKey := filepath.Join(t.TempDir(), "fleet.key")
	mustRun(t, nil, lancacheBin(t), "keygen", "--fleet", fleetKey)

	keys := []string{fx.Key}
	states := make([]string, len(hosts))
	daemons := make([]*daemon, len(hosts))
	start := time.Now()
	for i, h := range hosts {
		states[i] = t.TempDir()
		o := nsServe{Keys: keys, MDNS: true, StateDir: states[i]}
		if i == 0 {
			o.StoreRoot = fx.Root // m1 holds the closure
		}
		daemons[i] = h.startDaemon(t, o)
	}
	sd := stranger.startDaemon(t, nsServe{Keys: keys, MDNS: true, Args: []string{"--fleet-key", fleetKey}})

	want := func(i int) []string {
		var names []string
		for j, h := range hosts {
			if j != i {
				names = append(names, h.Name)
			}
		}
		return names
	}
	took := waitListed(t, "each host lists the other 3", 5*time.Second+time.Since(start), func() bool {
		for i, d := range daemons {
			if strings.Join(listed(d), ",") != strings.Join(want(i), ",") {
				return false
			}
		}
		return true
	})
	t.Logf("all 4 hosts listed each other %v after the last one was ready", took)

	// `lancache status --json` says the same.
	out := mustRun(t, nil, "ip", "netns", "exec", hosts[1].NS, lancacheBin(t), "status", "--json")
	var st lancache.Status
	if err := json.Unmarshal(out, &st); err != nil || len(st.Peers) != 3 {
		t.Fatalf("lancache status --json: %v, %d peers\n%s", err, len(st.Peers), out)
	}

	// A crash: gone from the others within 30 s.
	daemons[3].kill()
	took = waitListed(t, "the crashed host leaves the others' lists", 30*time.Second, func() bool {
		for _, d := range daemons[:3] {
			for _, n := range listed(d) {
				if n == hosts[3].Name {
					return false
				}
			}
		}
		return true
	})
	t.Logf("crashed host gone after %v", took)
	// Restart with the same identity: listed again.
	daemons[3] = hosts[3].startDaemon(t, nsServe{Keys: keys, MDNS: true, StateDir: states[3]})
	took = waitListed(t, "the restarted host is listed again", 10*time.Second, func() bool {
		for i, d := range daemons {
			if strings.Join(listed(d), ",") != strings.Join(want(i), ",") {
				return false
			}
		}
		return true
	})
	t.Logf("restarted host back after %v", took)

	// The other fleet was never listed, and lists nobody.
	for _, d := range append(daemons, sd) {
		st, _ := d.status()
		for _, p := range st.Peers {
			if p.Name == stranger.Name || (d == sd && p.State == "connected") {
				t.Fatalf("fleet boundary crossed: %s lists %s (%s)", st.Name, p.Name, p.State)
			}
		}
	}

	// Substitution over mDNS alone: m3 fetches m1's closure.
	dst := filepath.Join(t.TempDir(), "dst")
	mustRun(t, fx.Env, "ip", "netns", "exec", hosts[2].NS, "nix", "copy", "--from", daemons[2].URL, "--to", dst, fx.Top)
	for _, p := range fx.Closure {
		mustRun(t, fx.Env, "nix-store", "--store", dst, "--verify-path", p)
	}

	// A host on a second bridge (other subnet, a router between them, so no
	// multicast) is reached only through --peer.
	l2 := newLAN(t, 203)
	far := l2.addHost("far")
	route(t, l, l2)
	fd := far.startDaemon(t, nsServe{Keys: keys, MDNS: true, Args: []string{"--peer", hosts[0].IP + ":37516"}})
	waitListed(t, "the far host connects through --peer", 10*time.Second, func() bool {
		return strings.Join(listed(fd), ",") == hosts[0].Name
	})
	time.Sleep(2 * time.Second) // several mDNS rounds: still only the static peer
	if got := listed(fd); strings.Join(got, ",") != hosts[0].Name {
		t.Fatalf("far host lists %v, want only %s", got, hosts[0].Name)
	}
	dst2 := filepath.Join(t.TempDir(), "dst2")
	mustRun(t, fx.Env, "ip", "netns", "exec", far.NS, "nix", "copy", "--from", fd.URL, "--to", dst2, fx.Top)
	for _, d := range daemons {
		d.Stop(syscall.SIGTERM)
	}
}
