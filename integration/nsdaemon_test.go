package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lancache/lancache"
)

// nsServe is how a daemon runs on a test host: `lancache serve` inside the
// host's namespace, HTTP on the host's 127.0.0.1 (as Nix reaches it) unless
// HTTP says otherwise, QUIC on the host's LAN address.
type nsServe struct {
	StoreRoot string   // --store-root; "" = none
	HTTP      string   // --http; "" = 127.0.0.1:37515
	QUICPort  int      // 0 = 37516
	Keys      []string // --trusted-public-keys
	Share     string   // "" = signed
	MDNS      bool     // false: --no-mdns
	StateDir  string   // "" = a new temp dir (a restart that keeps its identity passes the old one)
	Args      []string // more flags: --peer, --fleet-key, --cache-dir, ...
	Bin       string   // the lancache binary; "" = lancacheBin
}

// startDaemon starts lancache in the host's namespace and waits until its
// /nix-cache-info answers. The returned daemon's client dials inside the
// namespace, so d.get and friends work as on loopback.
func (h *host) startDaemon(t testing.TB, o nsServe) *daemon {
	t.Helper()
	if o.StoreRoot == "" {
		o.StoreRoot = "none"
	}
	if o.HTTP == "" {
		o.HTTP = "127.0.0.1:37515"
	}
	if o.QUICPort == 0 {
		o.QUICPort = 37516
	}
	if o.Share == "" {
		o.Share = "signed"
	}
	if o.StateDir == "" {
		o.StateDir = t.TempDir()
	}
	args := []string{"serve",
		"--store-root", o.StoreRoot,
		"--http", o.HTTP,
		"--quic", fmt.Sprintf("%s:%d", h.IP, o.QUICPort),
		"--state-dir", o.StateDir,
		"--share", o.Share,
		"--name", h.Name,
	}
	if !o.MDNS {
		args = append(args, "--no-mdns")
	}
	if len(o.Keys) > 0 {
		args = append(args, "--trusted-public-keys", strings.Join(o.Keys, " "))
	}
	args = append(args, o.Args...)
	if o.Bin == "" {
		o.Bin = lancacheBin(t)
	}
	d := startProcess(t, append([]string{"netns", "exec", h.NS, o.Bin}, args...), nil, "ip")
	d.Addr = o.HTTP
	d.URL = "http://" + o.HTTP
	d.client = h.httpClient(60 * time.Second)
	if err := d.waitReadyWith(h.httpClient(2*time.Second), readyTimeout); err != nil {
		t.Fatalf("lancache on %s: %v\n--- output ---\n%s", h.Name, err, d.Logs())
	}
	return d
}

// waitReadyWith polls /nix-cache-info through c until it answers 200.
func (d *daemon) waitReadyWith(c *http.Client, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	defer c.CloseIdleConnections()
	for {
		if !d.alive() {
			return fmt.Errorf("exited before answering /nix-cache-info: %v", d.cmd.ProcessState)
		}
		resp, err := c.Get(d.URL + "/nix-cache-info")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("/nix-cache-info not answering 200 after %v: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill stops the daemon with SIGKILL (a crash), without the exit checks of
// Stop.
func (d *daemon) kill() {
	d.mu.Lock()
	d.stopped = true
	d.mu.Unlock()
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.exited
}

// waitPeers waits until the daemon reports n connected peers that have sent
// their inventories.
func waitPeers(t testing.TB, d *daemon, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := d.status()
		if err == nil {
			connected := 0
			for _, p := range st.Peers {
				// Connected is not enough: a copy started before the
				// peer's inventory arrived would see 404s (Nix remembers
				// them for an hour).
				if p.State == "connected" && p.PathsAdvertised > 0 {
					connected++
				}
			}
			if connected >= n {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon %s: fewer than %d connected peers with inventories after 15s (%v)\n%s", d.Addr, n, err, d.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// status fetches the daemon's status.
func (d *daemon) status() (*lancache.Status, error) {
	code, body, err := d.fetch(http.MethodGet, "/_lancache/status")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("status: HTTP %d", code)
	}
	var st lancache.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, err
	}
	return &st, nil
}
