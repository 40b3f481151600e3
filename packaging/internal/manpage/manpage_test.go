package manpage

import (
	"os/exec"
	"strings"
	"testing"
)

// serveHelp is the shape `lancache serve -h` prints (cmd/lancache/flags.go).
const serveHelp = `Usage: lancache serve [flags]

Run the lancache daemon.

Flags (each also from the environment variable shown):
  --cache-dir DIR
    	on-disk NAR cache DIR
    	[LANCACHE_CACHE_DIR]
  --cache-max-size string
    	size bound of --cache-dir, e.g. 50GiB (default 10GiB)
    	[LANCACHE_CACHE_MAX_SIZE]
  --name NAME
    	NAME advertised to peers (default buildhost)
    	[LANCACHE_NAME]
  --no-mdns 
    	disable mDNS discovery
    	[LANCACHE_NO_MDNS]
  --trusted-public-keys KEYS
    	space-separated KEYS
    	whose signatures count (default cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=)
    	[LANCACHE_TRUSTED_PUBLIC_KEYS]
`

func TestParseFlags(t *testing.T) {
	flags, err := ParseFlags(serveHelp, "buildhost")
	if err != nil {
		t.Fatal(err)
	}
	want := []Flag{
		{Name: "cache-dir", Arg: "DIR", Usage: "on-disk NAR cache DIR", Env: "LANCACHE_CACHE_DIR"},
		{Name: "cache-max-size", Arg: "VALUE", Usage: "size bound of --cache-dir, e.g. 50GiB", Default: "10GiB", Env: "LANCACHE_CACHE_MAX_SIZE"},
		{Name: "name", Arg: "NAME", Usage: "NAME advertised to peers", Default: "the host name", Env: "LANCACHE_NAME"},
		{Name: "no-mdns", Usage: "disable mDNS discovery", Env: "LANCACHE_NO_MDNS"},
		{Name: "trusted-public-keys", Arg: "KEYS", Usage: "space-separated KEYS whose signatures count", Default: "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=", Env: "LANCACHE_TRUSTED_PUBLIC_KEYS"},
	}
	if len(flags) != len(want) {
		t.Fatalf("got %d flags, want %d: %+v", len(flags), len(want), flags)
	}
	for i := range want {
		if flags[i] != want[i] {
			t.Errorf("flag %d:\n got %+v\nwant %+v", i, flags[i], want[i])
		}
	}
}

func TestParseFlagsEmpty(t *testing.T) {
	if _, err := ParseFlags("Usage: lancache serve\n", ""); err == nil {
		t.Error("no error for a help text without flags")
	}
}

func TestRender(t *testing.T) {
	flags, err := ParseFlags(serveHelp, "")
	if err != nil {
		t.Fatal(err)
	}
	help := "lancache — a LAN-first peer cache for Nix.\n\nEvery machine runs it.\n\nUsage:\n  lancache serve   [flags]   run the daemon\n  lancache version           print the version\n\nPoint Nix at the daemon:\n  substituters = http://127.0.0.1:37515\n"
	roff := string(Render(Page{Version: "1.2.3", Date: "2026-01-02", Help: help, Flags: flags}))
	for _, s := range []string{
		`.TH LANCACHE 1 "2026-01-02" "lancache 1.2.3"`,
		`lancache \- a LAN\-first peer cache for Nix`,
		`.BI "\-\-cache\-dir " DIR`,
		`.B \-\-no\-mdns`,
		".BR LANCACHE_NAME .",
		`lancache serve   [flags]   run the daemon`,
		".SH NOTES",
	} {
		if !strings.Contains(roff, s) {
			t.Errorf("rendered page lacks %q:\n%s", s, roff)
		}
	}
	// groff, when present, must not warn about the page.
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Log("groff not found: roff syntax not checked")
		return
	}
	cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-z")
	cmd.Stdin = strings.NewReader(roff)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("groff -ww: %v\n%s", err, out)
	}
}
