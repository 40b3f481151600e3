package integration

import (
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// A daemon running as an unprivileged user (as the packaged service does)
// reads a Nix database that no Nix process has open, so it has no -wal/-shm
// files the user could use or create; it serves it, and follows it live
// once Nix writes to it again.
func TestUnprivilegedDaemonReadsIdleDatabase(t *testing.T) {
	fx := newStoreFixture(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		skipOrFail(t, "needs setpriv (util-linux): %v", err)
	}
	db := filepath.Join(fx.Root, "nix", "var", "nix", "db", "db.sqlite")
	// The state Nix leaves when idle: WAL checkpointed and removed.
	sdb, err := sql.Open("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sdb.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	sdb.Close() // the last connection removes -wal and -shm
	os.Remove(db + "-wal")
	os.Remove(db + "-shm")
	// Let the unprivileged user reach the store root (test dirs are 0700).
	for d := fx.Root; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	state := filepath.Join(fx.Dir, "state")
	os.MkdirAll(state, 0o700)
	os.Chown(state, 65534, 65534)

	httpPort, quicPort := freePort(t, "tcp"), freePort(t, "udp")
	args := append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", lancacheBin(t)},
		serveArgs(t, serveOpts{StoreRoot: fx.Root, Keys: []string{fx.Key}}, httpPort, quicPort)...)
	for i, a := range args {
		if a == "--state-dir" {
			args[i+1] = state
		}
	}
	d := startProcess(t, args, nil, "setpriv")
	d.Addr = fmt.Sprintf("127.0.0.1:%d", httpPort)
	d.URL = "http://" + d.Addr
	if err := d.waitReady(readyTimeout); err != nil {
		t.Fatalf("unprivileged daemon: %v\n%s", err, d.Logs())
	}
	if !strings.Contains(d.Logs(), "snapshot") {
		t.Errorf("expected the snapshot mode to be logged:\n%s", d.Logs())
	}
	d.wantStatus(t, "GET", "/"+hashPart(fx.Top)+".narinfo", 200)

	// Nix writes: a new signed path appears (and the -wal file with it).
	p := fx.addRandomPath(t, "late-arrival", 4096)
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, _, _ := d.fetch("GET", "/"+hashPart(p)+".narinfo")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("path registered after start not served (last status %d)\n%s", code, d.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	dst := filepath.Join(t.TempDir(), "dst")
	mustRun(t, fx.Env, "nix", "copy", "--from", d.URL, "--to", dst, fx.Top, p)
}
