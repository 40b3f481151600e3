package integration

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// `lancache demo --headless --duration 10s`: three in-process nodes move
// real NARs over QUIC; every transfer verifies and it exits 0. No Nix, no
// root needed.
func TestDemoHeadless(t *testing.T) {
	out, err := exec.Command(lancacheBin(t), "demo", "--headless", "--duration", "10s").CombinedOutput()
	if err != nil {
		t.Fatalf("lancache demo: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`demo: (\d+) NARs fetched, (\d+) verified, (\d+) failed`).FindAllStringSubmatch(string(out), -1)
	if len(m) == 0 {
		t.Fatalf("no summary line:\n%s", out)
	}
	last := m[len(m)-1]
	if last[2] == "0" || last[3] != "0" {
		t.Fatalf("demo summary %q\n%s", last[0], out)
	}
	t.Logf("%s", last[0])
}

// addRandomPath adds a signed path of size random bytes to the fixture
// store and returns it.
func (fx *storeFixture) addRandomPath(t testing.TB, name string, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(dir, "data"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	env := nixEnv(t)
	p := strings.TrimSpace(string(mustRun(t, env, "nix-store", "--store", fx.Root, "--add", dir)))
	mustRun(t, env, "nix", "store", "sign", "--store", fx.Root, "-k", filepath.Join(fx.Dir, "test-1.sk"), p)
	return p
}

// `lancache top` in tmux, attached to the receiving daemon while a NAR
// streams from a peer: the screen names the serving peer and shows a
// progress line.
func TestTopShowsPeerTransfer(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		skipOrFail(t, "needs tmux (apt-get install tmux): %v", err)
	}
	fx := newStoreFixture(t)
	big := fx.addRandomPath(t, "big-download", 48<<20)
	l := newLAN(t, 204)
	seeder, leecher := l.addHost("seeder"), l.addHost("leecher")
	// 64 Mbit/s out of the seeder: the 48 MiB transfer lasts about 6 s.
	if out, err := seeder.command("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "64mbit", "burst", "64kb", "latency", "100ms").CombinedOutput(); err != nil {
		t.Fatalf("tc: %v %s", err, out)
	}
	seeder.startDaemon(t, nsServe{StoreRoot: fx.Root, Keys: []string{fx.Key}})
	ld := leecher.startDaemon(t, nsServe{Keys: []string{fx.Key}, Args: []string{"--peer", seeder.IP + ":37516"}})
	waitPeers(t, ld, 1)

	sock := fmt.Sprintf("lctop%d", os.Getpid())
	tmux := func(args ...string) (string, error) {
		out, err := exec.Command("tmux", append([]string{"-L", sock}, args...)...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { tmux("kill-server") })
	if out, err := tmux("new-session", "-d", "-x", "100", "-y", "30", "-e", "NO_COLOR=1",
		"ip netns exec "+leecher.NS+" "+lancacheBin(t)+" top --http 127.0.0.1:37515"); err != nil {
		t.Fatalf("tmux: %v %s", err, out)
	}

	copied := make(chan error, 1)
	go func() {
		r := run(fx.Env, "ip", "netns", "exec", leecher.NS, "nix", "copy", "--from", ld.URL, "--to", filepath.Join(t.TempDir(), "dst"), big)
		if r.Err != nil {
			r.Err = fmt.Errorf("%w: %s", r.Err, r.Stderr)
		}
		copied <- r.Err
	}()

	name := big[strings.Index(big, "-")+1:] // big-download
	progress := regexp.MustCompile(name + `.*\d+%`)
	var screen string
	deadline := time.Now().Add(30 * time.Second)
	for {
		screen, _ = tmux("capture-pane", "-p")
		if strings.Contains(screen, "seeder") && progress.MatchString(screen) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lancache top never showed the transfer from seeder; last screen:\n%s", screen)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("lancache top during the transfer:\n%s", screen)
	if err := <-copied; err != nil {
		t.Fatalf("nix copy: %v", err)
	}
	// q quits.
	tmux("send-keys", "q")
}
