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
	"github.com/lancache/lancache/demo"
	"github.com/lancache/lancache/statusapi"
	"github.com/lancache/lancache/tui"
)

// `lancache top` on a real node's status: node A's NAR cache holds a copy
// of a signed path with one byte flipped (its size unchanged, so A serves
// it). Node B fetches the path from A for its Nix, finds the hash mismatch
// and records the transfer. The TUI's own client follows B's event stream
// and its model, fed that real snapshot, shows the transfer as a bad hash
// from peer "a", and the verify failure in the header.
//
// The test lives in the root package because it starts Nodes; package tui
// stays free of the daemon and reads it over HTTP like any user.
func TestTopShowsRealHashMismatch(t *testing.T) {
	sk, pk, err := signature.GenerateKeypair("test-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	paths, err := demo.Populate(context.Background(), dir, sk, "liar", 7, 1, 200_000)
	if err != nil {
		t.Fatal(err)
	}
	nars, err := filepath.Glob(filepath.Join(dir, "nar", "*"))
	if err != nil || len(nars) != 1 {
		t.Fatalf("NAR files in %s: %v %v; want one", dir, nars, err)
	}
	flip(t, nars[0], 100_000)

	a := startNode(t, lancache.Config{CacheDir: dir, TrustedPublicKeys: pk.String(), Name: "a"})
	b := startNode(t, lancache.Config{TrustedPublicKeys: pk.String(), Name: "b", Peers: []string{a.QUICAddr().String()}})
	base := "http://" + b.HTTPAddr().String()
	h := paths[0].Hash.String()

	// Wait until B knows A holds the path (A's inventory has arrived).
	var narinfo string
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := httpGet(t, base+"/"+h+".narinfo")
		if code == http.StatusOK {
			narinfo = string(body)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("narinfo of %s via B: still %d", h, code)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var url string
	for _, l := range strings.Split(narinfo, "\n") {
		if u, ok := strings.CutPrefix(l, "URL: "); ok {
			url = u
		}
	}
	resp, err := http.Get(base + "/" + url)
	if err != nil {
		t.Fatal(err)
	}
	got, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK && rerr == nil && len(got) == int(paths[0].Info.NarSize) {
		t.Fatalf("B delivered all %d bytes of A's corrupt copy", len(got))
	}

	// B has recorded the transfer when its response ends (WriteNAR
	// finishes the record before it returns): the first snapshot of the
	// stream has it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var msg tui.StatusMsg
	tui.NewClient(b.HTTPAddr().String(), nil).Run(ctx, func(m tui.StatusMsg) {
		if m.Status != nil && msg.Status == nil {
			msg = m
			cancel()
		}
	})
	if msg.Status == nil || !msg.Streaming {
		t.Fatalf("no status from B's event stream (streaming %v)", msg.Streaming)
	}
	var x *statusapi.TransferStatus
	for i := range msg.Status.Transfers {
		if msg.Status.Transfers[i].Hash == h {
			x = &msg.Status.Transfers[i]
		}
	}
	if x == nil || x.Result != statusapi.ResultHashMismatch || x.Source != statusapi.SourcePeer || x.Peer != "a" {
		t.Fatalf("B's transfer of %s: %+v; want a hash mismatch from peer a", h, x)
	}

	m := tui.NewModel(nil, tui.Options{Addr: b.HTTPAddr().String(), NoColor: true})
	next, _ := m.Update(msg)
	screen := ansi.Strip(next.(tui.Model).View().Content)
	var row string
	for _, l := range strings.Split(screen, "\n") {
		if strings.Contains(l, "liar-0") {
			row = l
		}
	}
	if !strings.Contains(row, "BAD HASH") || !strings.Contains(row, " a ") {
		t.Errorf("recent transfer row %q: want BAD HASH from a; screen:\n%s", row, screen)
	}
	if !strings.Contains(screen, "verify failures 1") {
		t.Errorf("header lacks the verify failure; screen:\n%s", screen)
	}
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
