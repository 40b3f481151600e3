package integration

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// noStoreLog is what the first log lines of a daemon without a local Nix
// store must say in some form.
var noStoreLog = regexp.MustCompile(`(?i)(\bno|without|not serving)( an?| the)? (local )?(nix )?store`)

// runLancache runs the binary to completion, bounded by a timeout, and
// returns its combined output and exit code (-1 if it did not exit).
func runLancache(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, lancacheBin(t), args...)
	cmd.Env = append(daemonEnv(t), env...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case ctx.Err() != nil:
		t.Errorf("lancache %s did not finish within 20s", strings.Join(args, " "))
		return string(out), -1
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	}
	t.Fatalf("lancache %s: %v", strings.Join(args, " "), err)
	return "", -1
}

// noPanic fails the test if out shows a Go panic or fatal error.
func noPanic(t *testing.T, what, out string) {
	t.Helper()
	if strings.Contains(out, "panic:") || strings.Contains(out, "fatal error:") || strings.Contains(out, "goroutine 1 [") {
		t.Errorf("%s crashed:\n%s", what, out)
	}
}

// testKey returns a fresh public key name:base64 that signed nothing: for
// daemons that need a valid --trusted-public-keys but no Nix.
func testKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return "unused-1:" + base64.StdEncoding.EncodeToString(pub)
}

func randomHash() string {
	var b [20]byte
	rand.Read(b[:])
	return nixbase32.EncodeToString(b[:])
}

// TestServeWithoutStore starts the daemon on a root that holds no Nix DB
// (as on a machine without Nix, or an appliance) and with --store-root
// none: it must start, say so, name its address, and answer 404s.
func TestServeWithoutStore(t *testing.T) {
	for _, root := range []string{"empty-dir", "none"} {
		t.Run(root, func(t *testing.T) {
			storeRoot := root
			if root == "empty-dir" {
				storeRoot = t.TempDir()
			}
			d := startDaemon(t, serveOpts{StoreRoot: storeRoot, Keys: []string{testKey(t)}})
			body := d.wantStatus(t, "GET", "/nix-cache-info", 200)
			if !strings.Contains(string(body), "StoreDir: /nix/store") {
				t.Errorf("/nix-cache-info lacks StoreDir: %q", body)
			}
			miss := "/" + randomHash() + ".narinfo"
			d.wantStatus(t, "GET", miss, 404)
			d.wantStatus(t, "HEAD", miss, 404)
			for _, p := range []string{
				"/nar/" + randomHash() + "-" + strings.Repeat("1", 52) + ".nar",
				"/nar/" + strings.Repeat("1", 52) + ".nar",
			} {
				if resp, body := d.get(t, "GET", p); resp.StatusCode != 404 && resp.StatusCode != 400 {
					t.Errorf("GET %s: %s, want 404 (or 400 for a name it never hands out); body %q", p, resp.Status, clip(body))
				}
			}
			logs := d.Logs()
			if !noStoreLog.MatchString(logs) {
				t.Errorf("the log does not say that no local store is served (want a match for %s):\n%s", noStoreLog, logs)
			}
			_, port, _ := net.SplitHostPort(d.Addr)
			if !strings.Contains(logs, ":"+port) {
				t.Errorf("the log does not say where Nix should point (%s):\n%s", d.URL, logs)
			}
			d.Stop(syscall.SIGTERM)
		})
	}
}

// TestServeDefaults starts `lancache serve` with only what a test must
// set (addresses, state dir, no mDNS) on a root without a Nix DB: the
// defaults, including the built-in trusted key, must let it start.
func TestServeDefaults(t *testing.T) {
	d := startDaemonWith(t, func(httpPort, quicPort int) ([]string, []string) {
		return []string{"serve",
			"--store-root", t.TempDir(),
			"--http", fmt.Sprintf("127.0.0.1:%d", httpPort),
			"--quic", fmt.Sprintf("127.0.0.1:%d", quicPort),
			"--state-dir", t.TempDir(),
			"--no-mdns",
		}, nil
	})
	d.wantStatus(t, "GET", "/"+randomHash()+".narinfo", 404)
	d.Stop(syscall.SIGTERM)
}

// TestUnreadableStore gives the daemon a store whose DB is not a SQLite
// file: whether it exits or keeps serving, it must name the file and not
// panic.
func TestUnreadableStore(t *testing.T) {
	root := t.TempDir()
	db := filepath.Join(root, "nix", "var", "nix", "db", "db.sqlite")
	for _, dir := range []string{filepath.Join(root, "nix", "store"), filepath.Dir(db)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(db, []byte(strings.Repeat("this is not a database\n", 512)), 0o644); err != nil {
		t.Fatal(err)
	}
	httpPort, quicPort := freePort(t, "tcp"), freePort(t, "udp")
	d := startProcess(t, serveArgs(t, serveOpts{StoreRoot: root, Keys: []string{testKey(t)}}, httpPort, quicPort), nil)
	d.Addr = fmt.Sprintf("127.0.0.1:%d", httpPort)
	d.URL = "http://" + d.Addr
	if err := d.waitReady(readyTimeout); err == nil {
		// Still serving: a lookup must not fail with a 5xx, and the error
		// must have been logged by now.
		resp, body := d.get(t, "GET", "/"+randomHash()+".narinfo")
		if resp.StatusCode >= 500 {
			t.Errorf("lookup with an unreadable DB: %s %q", resp.Status, clip(body))
		}
		d.Stop(syscall.SIGTERM)
	} else if d.alive() {
		t.Fatalf("neither exited nor served: %v", err)
	} else {
		t.Logf("exited: %v", d.cmd.ProcessState)
	}
	logs := d.Logs()
	noPanic(t, "lancache serve with a corrupt DB", logs)
	if !strings.Contains(logs, "db.sqlite") {
		t.Errorf("the output does not name the unreadable file db.sqlite:\n%s", logs)
	}
}

// TestEnvFlags configures `lancache serve` through LANCACHE_<FLAG>
// variables only.
func TestEnvFlags(t *testing.T) {
	d := startDaemonWith(t, func(httpPort, quicPort int) ([]string, []string) {
		return []string{"serve"}, []string{
			"LANCACHE_STORE_ROOT=" + t.TempDir(),
			fmt.Sprintf("LANCACHE_HTTP=127.0.0.1:%d", httpPort),
			fmt.Sprintf("LANCACHE_QUIC=127.0.0.1:%d", quicPort),
			"LANCACHE_STATE_DIR=" + t.TempDir(),
			"LANCACHE_SHARE=all",
			"LANCACHE_NO_MDNS=true",
			"LANCACHE_TRUSTED_PUBLIC_KEYS=" + testKey(t) + " " + testKey(t),
		}
	})
	d.wantStatus(t, "GET", "/"+randomHash()+".narinfo", 404)
	d.Stop(syscall.SIGTERM)
}

// TestCLI checks the subcommands that do not serve: version and help, and
// that bad flags are refused instead of ignored.
func TestCLI(t *testing.T) {
	t.Run("version", func(t *testing.T) {
		out, code := runLancache(t, nil, "version")
		if code != 0 || strings.TrimSpace(out) == "" {
			t.Errorf("lancache version: exit %d, output %q; want 0 and a version", code, out)
		}
	})
	t.Run("help", func(t *testing.T) {
		out, _ := runLancache(t, nil, "serve", "--help")
		noPanic(t, "lancache serve --help", out)
		for _, flag := range []string{"store-root", "http", "share", "trusted-public-keys"} {
			if !strings.Contains(out, flag) {
				t.Errorf("lancache serve --help does not mention %s:\n%s", flag, out)
			}
		}
		out, _ = runLancache(t, nil, "--help")
		noPanic(t, "lancache --help", out)
		if !strings.Contains(out, "serve") {
			t.Errorf("lancache --help does not mention serve:\n%s", out)
		}
	})
	for _, bad := range [][]string{
		{"serve", "--no-such-flag"},
		{"serve", "--store-root", "none", "--http", "127.0.0.1:1", "--quic", "127.0.0.1:1", "--no-mdns", "--share", "bogus"},
		{"no-such-command"},
	} {
		t.Run(strings.Join(bad, " "), func(t *testing.T) {
			out, code := runLancache(t, nil, bad...)
			noPanic(t, "lancache "+strings.Join(bad, " "), out)
			if code <= 0 {
				t.Errorf("lancache %s: exit %d, want a failure; output:\n%s", strings.Join(bad, " "), code, out)
			}
		})
	}
}

// TestSignals checks that SIGTERM and SIGINT stop a daemon that has served
// requests promptly with status 0, closing its listener, also while a
// client stalls in the middle of a NAR download.
func TestSignals(t *testing.T) {
	fx := newStoreFixture(t)

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			d := startDaemon(t, serveOpts{StoreRoot: fx.Root, Keys: []string{fx.Key}})
			checkServed(t, d, fx, fx.Top)
			d.Stop(sig)
			if c, err := net.DialTimeout("tcp", d.Addr, time.Second); err == nil {
				c.Close()
				t.Errorf("%s still accepts connections after exiting", d.Addr)
			}
		})
	}

	t.Run("stalled-download", func(t *testing.T) {
		d := startDaemon(t, serveOpts{StoreRoot: fx.Root, Keys: []string{fx.Key}})
		// The edge-case tree's NAR (8 MiB) is more than the socket buffers
		// of both ends take in.
		ni, err := parseNarinfo(d.wantStatus(t, "GET", "/"+hashPart(fx.EdgeCases)+".narinfo", 200))
		if err != nil || one(ni, "URL") == "" {
			t.Fatalf("narinfo of %s: %v %q", fx.EdgeCases, err, ni)
		}
		u, err := url.Parse(one(ni, "URL"))
		if err != nil {
			t.Fatal(err)
		}
		base, _ := url.Parse(d.URL + "/")
		conn, err := net.Dial("tcp", d.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.(*net.TCPConn).SetReadBuffer(4096) // make the stall come early
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", base.ResolveReference(u).RequestURI(), d.Addr)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReaderSize(conn, 4096)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read NAR response: %v", err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("GET NAR of %s: %s", fx.EdgeCases, resp.Status)
		}
		if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
			t.Fatalf("read the first NAR bytes: %v", err)
		}
		// The client now stops reading with most of the NAR unsent.
		d.StopWithin(syscall.SIGTERM, 20*time.Second)
	})
}
