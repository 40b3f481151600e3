package lancache_test

import (
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/charmbracelet/x/ansi"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/lancache/lancache"
	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/demo"
	"github.com/lancache/lancache/statusapi"
	"github.com/lancache/lancache/tui"
)

// `lancache top` on real nodes' status. Node A's NAR cache holds two
// signed paths, one (liar-0) with a byte flipped (its size unchanged, so A
// serves it). Node B fetches both from A for its Nix: liar-0 fails its
// hash, liar-1 verifies. A's own Nix fetches liar-1 from A's cache. The
// TUI's own client follows each daemon's event stream, and its model, fed
// those real snapshots, shows on B the bad hash from peer "a" (and the
// verify failure in the header), and on A the transfer from its cache.
//
// The test lives in the root package because it starts Nodes; package tui
// stays free of the daemon and reads it over HTTP like any user.
func TestTopShowsRealTransfers(t *testing.T) {
	sk, pk, err := signature.GenerateKeypair("test-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	paths, err := demo.Populate(context.Background(), dir, sk, "liar", 7, 2, 200_000)
	if err != nil {
		t.Fatal(err)
	}
	bad, good := paths[0], paths[1]
	flip(t, narFile(t, dir, bad.Hash.String()), 100_000)

	a := startNode(t, lancache.Config{CacheDir: dir, TrustedPublicKeys: pk.String(), Name: "a"})
	b := startNode(t, lancache.Config{TrustedPublicKeys: pk.String(), Name: "b", Peers: []string{a.QUICAddr().String()}})
	baseA, baseB := "http://"+a.HTTPAddr().String(), "http://"+b.HTTPAddr().String()

	// Wait until B knows A holds the paths (A's inventory has arrived).
	deadline := time.Now().Add(10 * time.Second)
	for code := 0; code != http.StatusOK; {
		if code, _ = httpGet(t, baseB+"/"+good.Hash.String()+".narinfo"); time.Now().After(deadline) {
			t.Fatalf("narinfo of %s via B: still %d", good.Hash, code)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The good path first: after the bad one B blocklists A.
	for _, base := range []string{baseB, baseA} {
		if _, ok := getNAR(t, base, good); !ok {
			t.Fatalf("%s did not deliver %s", base, good.Info.StorePath)
		}
	}
	if nar, ok := getNAR(t, baseB, bad); ok {
		t.Fatalf("B delivered all %d bytes of A's corrupt copy", len(nar))
	}

	// Each transfer is recorded before its response ends, so the first
	// snapshot of each stream has them all.
	stB, screenB := top(t, b.HTTPAddr().String())
	stA, screenA := top(t, a.HTTPAddr().String())
	for _, w := range []struct {
		st      *statusapi.Status
		screen  string
		p       demo.Path
		src     statusapi.Source
		peer    string
		res     statusapi.Result
		columns []string // of its row on the screen
	}{
		{stB, screenB, bad, statusapi.SourcePeer, "a", statusapi.ResultHashMismatch, []string{"BAD HASH", " a "}},
		{stB, screenB, good, statusapi.SourcePeer, "a", statusapi.ResultOK, []string{"✓ ok", " a "}},
		{stA, screenA, good, statusapi.SourceCache, "", statusapi.ResultOK, []string{"✓ ok", " cache "}},
	} {
		name := w.p.Info.Name()
		var x *statusapi.TransferStatus
		for i := range w.st.Transfers {
			if w.st.Transfers[i].Hash == w.p.Hash.String() {
				x = &w.st.Transfers[i]
			}
		}
		if x == nil || x.Result != w.res || x.Source != w.src || x.Peer != w.peer {
			t.Errorf("%s: transfer of %s: %+v; want %s from %s %q", w.st.Name, name, x, w.res, w.src, w.peer)
		}
		var row string
		for _, l := range strings.Split(w.screen, "\n") {
			if strings.Contains(l, name) {
				row = l
			}
		}
		for _, c := range w.columns {
			if !strings.Contains(row, c) {
				t.Errorf("%s: row of %s %q lacks %q; screen:\n%s", w.st.Name, name, row, c, w.screen)
			}
		}
	}
	if !strings.Contains(screenB, "verify failures 1") {
		t.Errorf("B's header lacks the verify failure; screen:\n%s", screenB)
	}
}

// top follows the event stream of the daemon at addr with the TUI's own
// client until the first snapshot, and returns it and the screen the TUI's
// model draws from it (80x24, no colour, escape sequences stripped).
func top(t *testing.T, addr string) (*statusapi.Status, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var msg tui.StatusMsg
	tui.NewClient(addr, nil).Run(ctx, func(m tui.StatusMsg) {
		if m.Status != nil && msg.Status == nil {
			msg = m
			cancel()
		}
	})
	if msg.Status == nil || !msg.Streaming {
		t.Fatalf("no status from the event stream of %s (streaming %v)", addr, msg.Streaming)
	}
	m, _ := tui.NewModel(nil, tui.Options{Addr: addr, NoColor: true}).Update(msg)
	return msg.Status, ansi.Strip(m.(tui.Model).View().Content)
}

// getNAR fetches p's NAR from the binary cache at base, with the URL its
// narinfo there gives, and tells whether the whole file arrived.
func getNAR(t *testing.T, base string, p demo.Path) ([]byte, bool) {
	t.Helper()
	code, body := httpGet(t, base+"/"+p.Hash.String()+".narinfo")
	info, err := cache.ParseNarInfo(strings.NewReader(string(body)))
	if code != http.StatusOK || err != nil {
		t.Fatalf("narinfo of %s from %s: %d %v", p.Hash, base, code, err)
	}
	resp, err := http.Get(base + "/" + info.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	return got, resp.StatusCode == http.StatusOK && err == nil && len(got) == int(cache.FileSize(info))
}

// narFile is the file of the NAR cache at dir that holds hash's NAR.
func narFile(t *testing.T, dir, hash string) string {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, hash+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := cache.ParseNarInfo(f)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, info.URL)
}

// flip inverts one byte of file at off.
func flip(t *testing.T, file string, off int64) {
	t.Helper()
	if err := os.Chmod(file, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}
