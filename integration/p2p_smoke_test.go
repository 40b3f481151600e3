package integration

import (
	"path/filepath"
	"testing"
)

// Two hosts on a LAN: host a serves a signed closure from its chroot store;
// host b has no store and substitutes the closure through its own endpoint,
// streamed over QUIC from a and verified; Nix on b checks it again.
func TestPeerSubstitutionSmoke(t *testing.T) {
	fx := newStoreFixture(t)
	l := newLAN(t, 201)
	a, b := l.addHost("a"), l.addHost("b")
	a.startDaemon(t, nsServe{StoreRoot: fx.Root, Keys: []string{fx.Key}})
	db := b.startDaemon(t, nsServe{Keys: []string{fx.Key}, Args: []string{"--peer", a.IP + ":37516"}})
	waitPeers(t, db, 1)
	dst := filepath.Join(t.TempDir(), "dst")
	mustRun(t, fx.Env, "ip", "netns", "exec", b.NS, "nix", "copy", "--from", db.URL, "--to", dst, fx.Top)
	for _, p := range fx.Closure {
		mustRun(t, fx.Env, "nix-store", "--store", dst, "--verify-path", p)
	}
}
