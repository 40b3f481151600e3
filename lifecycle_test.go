package lancache_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lancache/lancache"
)

// chrootStore makes a Nix store under a temp root with one path, with the
// real nix-store, or returns "none" (and says why) where that cannot run.
func chrootStore(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Log("not root: testing without a local store")
		return "none"
	}
	if _, err := exec.LookPath("nix-store"); err != nil {
		t.Log("no nix-store on PATH: testing without a local store")
		return "none"
	}
	root, dir := t.TempDir(), filepath.Join(t.TempDir(), "p")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	cmd := exec.Command("nix-store", "--store", root, "--add", dir)
	cmd.Env = append(os.Environ(), "NIX_CONFIG=build-users-group =\nsandbox = false", "XDG_CACHE_HOME="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nix-store --add: %v\n%s", err, out)
	}
	return root
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot count file descriptors, and CI=true forbids skipping: %v", err)
		}
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(ents)
}

// A New that fails part-way releases what it had opened: the Nix database,
// the NAR cache's directory lock and the peer socket. Opening the same
// cache directory again succeeds, and no descriptor is left behind.
func TestNewReleasesOnError(t *testing.T) {
	root := chrootStore(t)
	busy, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name string
		bad  func(*lancache.Config)
		want string
	}{
		{"bad upstream", func(c *lancache.Config) { c.Upstreams = []string{"ftp://nope"} }, "--upstream"},
		{"QUIC address in use", func(c *lancache.Config) { c.QUICAddr = busy.LocalAddr().String() }, "--quic"},
		{"mDNS refuses the name", func(c *lancache.Config) { c.NoMDNS, c.Name = false, "bad\x01name" }, "mDNS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			good := lancache.Config{
				StoreRoot: root, CacheDir: t.TempDir(), StateDir: t.TempDir(), Name: "n",
				HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", NoMDNS: true,
				TrustedPublicKeys: lancache.DefaultTrustedPublicKeys,
			}
			before := openFDs(t)
			cfg := good
			tc.bad(&cfg)
			n, err := lancache.New(context.Background(), cfg)
			if err == nil {
				n.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %s", err, tc.want)
			}
			if after := openFDs(t); after > before {
				t.Errorf("%d file descriptors open before the failed New, %d after", before, after)
			}
			n, err = lancache.New(context.Background(), good)
			if err != nil {
				t.Fatalf("New on the same cache directory after a failed one: %v", err)
			}
			n.Close()
		})
	}
}
