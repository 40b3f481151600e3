package lancache_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/lancache/lancache"
	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/demo"
)

// --share none: the node offers peers nothing, not even its NAR cache, yet
// still serves that cache to its own Nix.
func TestShareNoneOffersNothing(t *testing.T) {
	sk, pk, err := signature.GenerateKeypair("test-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	paths, err := demo.Populate(context.Background(), dir, sk, "pkg", 1, 3, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	a := startNode(t, lancache.Config{CacheDir: dir, TrustedPublicKeys: pk.String(), Share: "none", Name: "a"})
	if n := lancache.OfferedPaths(a.Node); n != 0 {
		t.Fatalf("--share none offers %d paths to peers", n)
	}
	b := startNode(t, lancache.Config{TrustedPublicKeys: pk.String(), Name: "b", Peers: []string{a.QUICAddr().String()}})
	waitUntil(t, "b connected to a", func() bool {
		ps := b.Status().Peers
		return len(ps) == 1 && ps[0].State == "connected" && ps[0].Name == "a"
	})
	if ps := b.Status().Peers; ps[0].PathsAdvertised != 0 {
		t.Fatalf("a advertises %d paths to b", ps[0].PathsAdvertised)
	}
	h := paths[0].Hash.String()
	if code, _ := httpGet(t, "http://"+b.HTTPAddr().String()+"/"+h+".narinfo"); code != 404 {
		t.Fatalf("b asked for a's cached path: %d, want 404", code)
	}
	// a's own Nix is still served from a's cache.
	code, body := httpGet(t, "http://"+a.HTTPAddr().String()+"/"+h+".narinfo")
	if code != 200 {
		t.Fatalf("a's narinfo to its own Nix: %d", code)
	}
	info, err := cache.ParseNarInfo(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	code, nar := httpGet(t, "http://"+a.HTTPAddr().String()+"/"+info.URL)
	v, _ := cache.NewVerifier(info)
	v.Write(nar)
	if code != 200 || v.Close() != nil {
		t.Fatalf("a's NAR to its own Nix: %d, verify %v", code, v.Close())
	}
	if st := a.Status(); st.Share != "none" || st.Totals.BytesServedToPeers != 0 {
		t.Fatalf("a: share %q, %d bytes served to peers", st.Share, st.Totals.BytesServedToPeers)
	}
}
