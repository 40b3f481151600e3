package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/lancache/lancache/internal/syncbuf"
)

const (
	// busyboxPath is the static busybox (Debian busybox-static) that the
	// fixture derivations use as builder: the chroot store has no libc.
	busyboxPath = "/bin/busybox"

	// readyTimeout bounds how long a daemon may take to answer
	// /nix-cache-info after it was started.
	readyTimeout = 30 * time.Second
	// stopTimeout bounds how long a daemon may take to exit after SIGTERM
	// or SIGINT.
	stopTimeout = 10 * time.Second
	// cmdTimeout bounds every nix command a test runs.
	cmdTimeout = 3 * time.Minute

	// sentinel is written to files just outside the served store; no
	// response may ever contain it.
	sentinel = "LANCACHE-TEST-SENTINEL-6f1d0c"
)

var (
	workDir string // per-run scratch dir, removed by TestMain

	binOnce sync.Once
	binPath string
	binErr  error
)

// TestMain owns the per-run scratch dir holding the daemon binary. The
// binary itself is built on first use by lancacheBin, not here, so that
// `go test -list` (used by test.sh to find fuzz targets) stays cheap.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lancache-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	workDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// lancacheBin returns the path of the daemon under test: $LANCACHE_BIN if
// set, else ./cmd/lancache built once per run (with -race when the tests
// run with -race, so races in the daemon fail its exit status).
func lancacheBin(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if p := os.Getenv("LANCACHE_BIN"); p != "" {
			binPath = p
			return
		}
		binPath, binErr = goBuild("lancache", "github.com/lancache/lancache/cmd/lancache", raceEnabled)
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// goBuild builds pkg into the run's scratch dir as name (a relative path).
func goBuild(name, pkg string, race bool) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("find the go tool to build %s: %w", pkg, err)
	}
	out := filepath.Join(workDir, name)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	args = append(args, pkg)
	start := time.Now()
	if b, err := exec.Command(goTool, args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	fmt.Fprintf(os.Stderr, "integration: built %s (race=%v) in %v\n", out, race, time.Since(start).Round(time.Millisecond))
	return out, nil
}

// skipOrFail skips the test with the reason, or fails it when CI=true: on
// CI a missing prerequisite is a broken CI script, not a reason to pass.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true, so this prerequisite may not be skipped: "+format, args...)
	}
	t.Skipf(format, args...)
}

// requireNix skips (or on CI fails) the test unless it can build into
// chroot Nix stores: root, the Nix tools, and a static busybox.
func requireNix(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root: builds into chroot Nix stores (--store DIR) need it; run ./test.sh as root (sudo ./test.sh)")
	}
	for _, tool := range []string{"nix", "nix-build", "nix-store"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, "needs %s on PATH (apt-get install nix-bin): %v", tool, err)
		}
	}
	if err := checkStatic(busyboxPath); err != nil {
		skipOrFail(t, "needs a static busybox at %s (apt-get install busybox-static): %v", busyboxPath, err)
	}
}

// checkStatic reports an error unless file is a statically linked ELF
// executable (no program interpreter).
func checkStatic(file string) error {
	f, err := elf.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", file)
		}
	}
	return nil
}

// nixEnv returns the environment for one test's nix commands: no build
// users, no sandbox, no substituters unless a command adds one, narinfo
// answers never cached, and its own HOME and XDG dirs so that nothing is
// shared with the user or another test. Only keys are trusted.
func nixEnv(t testing.TB, keys ...string) []string {
	t.Helper()
	home := t.TempDir()
	conf := []string{
		"build-users-group =",
		"sandbox = false",
		"experimental-features = nix-command",
		"substituters =",
		"narinfo-cache-negative-ttl = 0",
		"narinfo-cache-positive-ttl = 0",
		"connect-timeout = 5",
		"require-sigs = true",
		"trusted-public-keys = " + strings.Join(keys, " "),
	}
	drop := []string{"NIX_CONFIG", "NIX_REMOTE", "NIX_PATH", "NIX_USER_CONF_FILES", "HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(drop, k) && !strings.HasPrefix(k, "LANCACHE_") {
			env = append(env, kv)
		}
	}
	return append(env,
		"NIX_CONFIG="+strings.Join(conf, "\n"),
		"HOME="+home,
		"XDG_CACHE_HOME="+filepath.Join(home, "cache"),
		"XDG_CONFIG_HOME="+filepath.Join(home, "config"),
		"XDG_DATA_HOME="+filepath.Join(home, "data"),
		"XDG_STATE_HOME="+filepath.Join(home, "state"),
	)
}

// daemonEnv is the environment of a lancache process: nixEnv, and for a
// -race binary no 1 s sleep at exit (races still exit 66).
func daemonEnv(t testing.TB) []string {
	return append(nixEnv(t), "GORACE=atexit_sleep_ms=0")
}

// cmdResult is what a finished command printed.
type cmdResult struct {
	Stdout []byte
	Stderr string
	Err    error
}

// run runs name with args in env, bounded by cmdTimeout.
func run(env []string, name string, args ...string) cmdResult {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return cmdResult{Stdout: stdout.Bytes(), Stderr: stderr.String(), Err: err}
}

// mustRun is run that fails the test on error and returns stdout.
func mustRun(t testing.TB, env []string, name string, args ...string) []byte {
	t.Helper()
	r := run(env, name, args...)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	return r.Stdout
}

// lines splits command output into its non-empty lines.
func lines(b []byte) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// pathInfo is one entry of `nix path-info --json`.
type pathInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    int64    `json:"narSize"`
	References []string `json:"references"`
	Deriver    string   `json:"deriver"`
	Signatures []string `json:"signatures"`
	CA         string   `json:"ca"`
}

// pathInfos returns `nix path-info --json` of paths in store, keyed by
// path. It reads both the array (Nix 2.8) and the object (newer Nix) form.
func pathInfos(t testing.TB, env []string, store string, args ...string) map[string]pathInfo {
	t.Helper()
	out := mustRun(t, env, "nix", append([]string{"path-info", "--store", store, "--json"}, args...)...)
	infos := map[string]pathInfo{}
	var list []pathInfo
	if err := json.Unmarshal(out, &list); err == nil {
		for _, pi := range list {
			infos[pi.Path] = pi
		}
		return infos
	}
	var obj map[string]*pathInfo
	if err := json.Unmarshal(out, &obj); err != nil {
		t.Fatalf("parse nix path-info --json: %v\n%s", err, out)
	}
	for p, pi := range obj {
		if pi == nil {
			t.Fatalf("nix path-info: %s is not valid in %s", p, store)
		}
		pi.Path = p
		infos[p] = *pi
	}
	return infos
}

// decodeHash decodes a sha256 hash in any of Nix's spellings: SRI
// (sha256-<base64>), or sha256:<nixbase32|base16|base64>.
func decodeHash(s string) ([]byte, error) {
	var digest string
	switch {
	case strings.HasPrefix(s, "sha256-"):
		digest = strings.TrimPrefix(s, "sha256-")
		return base64.StdEncoding.DecodeString(digest)
	case strings.HasPrefix(s, "sha256:"):
		digest = strings.TrimPrefix(s, "sha256:")
	default:
		return nil, fmt.Errorf("hash %q: not sha256", s)
	}
	switch len(digest) {
	case nixbase32.EncodedLen(sha256.Size):
		return nixbase32.DecodeString(digest)
	case hex.EncodedLen(sha256.Size):
		return hex.DecodeString(digest)
	case base64.StdEncoding.EncodedLen(sha256.Size):
		return base64.StdEncoding.DecodeString(digest)
	}
	return nil, fmt.Errorf("hash %q: bad length", s)
}

// hashPart returns the 32-character lookup key of a store path.
func hashPart(storePath string) string {
	b := path.Base(storePath)
	if len(b) < 32 {
		return b
	}
	return b[:32]
}

// storeFixture is a chroot Nix store holding a small signed closure and a
// few paths that the share policy must treat differently.
type storeFixture struct {
	Dir  string // sources, keys and a sentinel file
	Root string // the store root: Root/nix/store, Root/nix/var/nix/db

	Key      string // public key test-1:..., signed Closure
	OtherKey string // public key other-1:..., signed only Foreign

	Top       string   // references mid, leaf and busybox
	Closure   []string // Top and everything it references, sorted
	EdgeCases string   // the NAR edge-case tree, in Closure
	Private   string   // built here, unsigned; references leaf
	Foreign   string   // signed only by OtherKey

	Info map[string]pathInfo // all of the above, from the source DB
	Env  []string            // nix environment trusting Key only
}

// fixtureNix builds the closure. The builder is a static busybox imported
// as a directory so that argv0 is "sh"; the edge-case tree is imported the
// same way. Store paths are the same in every fixture.
const fixtureNix = `
let
  bb = builtins.path { path = ./bb; name = "busybox"; };
  edge = builtins.path { path = ./edge; name = "edge-cases"; };
  drv = name: script: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "${bb}/sh";
    args = [ "-c" script ];
  };
  leaf = drv "leaf" "echo hello > $out";
  mid = drv "mid" "${bb}/busybox mkdir $out; echo ${leaf} > $out/ref; ${bb}/busybox ln -s ${edge} $out/edge";
in {
  top = drv "top" "${bb}/busybox mkdir -p $out/bin; echo ${mid} ${leaf} > $out/refs; ${bb}/busybox ln -s ${bb}/busybox $out/bin/busybox";
  private = drv "private" "echo private ${leaf} > $out";
  foreign = drv "foreign" "echo signed elsewhere > $out";
}
`

// newStoreFixture builds a fresh fixture store in the test's temp dir.
func newStoreFixture(t testing.TB) *storeFixture {
	t.Helper()
	requireNix(t)
	start := time.Now()
	dir := t.TempDir()
	fx := &storeFixture{Dir: dir, Root: filepath.Join(dir, "store")}
	env := nixEnv(t)

	bb := filepath.Join(dir, "src", "bb")
	if err := os.MkdirAll(bb, 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, busyboxPath, filepath.Join(bb, "busybox"), 0o755)
	mustSymlink(t, "busybox", filepath.Join(bb, "sh"))
	writeEdgeTree(t, filepath.Join(dir, "src", "edge"))
	nixFile := filepath.Join(dir, "src", "fixture.nix")
	if err := os.WriteFile(nixFile, []byte(fixtureNix), 0o644); err != nil {
		t.Fatal(err)
	}

	out := mustRun(t, env, "nix-build", "--store", fx.Root, nixFile, "-A", "top", "-A", "private", "-A", "foreign", "--no-out-link")
	for _, p := range lines(out) {
		switch {
		case strings.HasSuffix(p, "-top"):
			fx.Top = p
		case strings.HasSuffix(p, "-private"):
			fx.Private = p
		case strings.HasSuffix(p, "-foreign"):
			fx.Foreign = p
		}
	}
	if fx.Top == "" || fx.Private == "" || fx.Foreign == "" {
		t.Fatalf("nix-build printed %q; want top, private and foreign", out)
	}

	fx.Key = genKey(t, env, dir, "test-1")
	fx.OtherKey = genKey(t, env, dir, "other-1")
	mustRun(t, env, "nix", "store", "sign", "--store", fx.Root, "-k", filepath.Join(dir, "test-1.sk"), "-r", fx.Top)
	mustRun(t, env, "nix", "store", "sign", "--store", fx.Root, "-k", filepath.Join(dir, "other-1.sk"), fx.Foreign)

	fx.Closure = lines(mustRun(t, env, "nix-store", "--store", fx.Root, "-qR", fx.Top))
	slices.Sort(fx.Closure)
	for _, p := range fx.Closure {
		if strings.HasSuffix(p, "-edge-cases") {
			fx.EdgeCases = p
		}
	}
	if len(fx.Closure) != 5 || fx.EdgeCases == "" {
		t.Fatalf("closure of %s is %q; want top, mid, leaf, busybox, edge-cases", fx.Top, fx.Closure)
	}
	fx.Info = pathInfos(t, env, fx.Root, append([]string{fx.Private, fx.Foreign}, fx.Closure...)...)
	for _, p := range fx.Closure {
		if len(fx.Info[p].Signatures) == 0 {
			t.Fatalf("fixture: %s is not signed after nix store sign", p)
		}
	}
	if len(fx.Info[fx.Private].Signatures) != 0 {
		t.Fatalf("fixture: private path %s is signed: %q", fx.Private, fx.Info[fx.Private].Signatures)
	}

	for _, f := range []string{filepath.Join(dir, "SENTINEL"), filepath.Join(fx.Root, "SENTINEL"), filepath.Join(fx.Root, "nix", "SENTINEL")} {
		if err := os.WriteFile(f, []byte(sentinel+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fx.Env = nixEnv(t, fx.Key)
	t.Logf("fixture store %s built in %v", fx.Root, time.Since(start).Round(time.Millisecond))
	return fx
}

// physical returns where storePath lives on disk in the fixture.
func (fx *storeFixture) physical(storePath string) string {
	return filepath.Join(fx.Root, storePath)
}

// genKey creates a binary-cache signing key pair NAME.sk/NAME.pk in dir
// and returns the public key.
func genKey(t testing.TB, env []string, dir, name string) string {
	t.Helper()
	sk, pk := filepath.Join(dir, name+".sk"), filepath.Join(dir, name+".pk")
	mustRun(t, env, "nix-store", "--generate-binary-cache-key", name, sk, pk)
	b, err := os.ReadFile(pk)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// writeEdgeTree writes a tree exercising what the NAR format has to get
// right: executable and empty files (and both), sizes that need padding, a
// file spanning many write buffers, nested empty directories, absolute,
// relative, dangling and looping symlinks, unicode and odd names, and
// names whose byte order differs from a case-insensitive one.
func writeEdgeTree(t testing.TB, root string) {
	t.Helper()
	big := make([]byte, 8<<20+13) // more than loopback socket buffers hold
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i+8 <= len(big); i += 8 {
		binary.LittleEndian.PutUint64(big[i:], rng.Uint64())
	}
	files := []struct {
		name string
		data string
		mode os.FileMode
	}{
		{"empty", "", 0o644},
		{"empty-exe", "", 0o755},
		{"exe", "#!/bin/sh\necho hello\n", 0o755},
		{"one", "1", 0o644},
		{"seven", "1234567", 0o644},
		{"eight", "12345678", 0o644},
		{"nine", "123456789", 0o644},
		{"big.bin", string(big), 0o644},
		{"Zebra", "upper case sorts first\n", 0o644},
		{"apple", "lower case sorts after\n", 0o644},
		{"-dash", "leading dash\n", 0o644},
		{"with space.txt", "space\n", 0o644},
		{"ünïcödé/файл.txt", "日本語\n", 0o644},
		{"ünïcödé/日本語.txt", "unicode\n", 0o755},
		{"ünïcödé/🦄", "emoji\n", 0o644},
		{"nested/deeper/file", "deep\n", 0o644},
	}
	for _, f := range files {
		p := filepath.Join(root, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.data), f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil { // not subject to umask
			t.Fatal(err)
		}
	}
	for _, d := range []string{"emptydir", "a/b/c", "d/e/f/g", "nested/empty"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := []struct{ name, target string }{
		{"links/abs-dangling", "/nix/store/00000000000000000000000000000000-does-not-exist"},
		{"links/abs-outside", "/etc/passwd"},
		{"links/rel", "../exe"},
		{"links/rel-dir", "../a/b"},
		{"links/dangling-rel", "../nowhere/at/all"},
		{"links/self", "self"},
		{"links/ünïcödé", "../ünïcödé/🦄"},
		{"links/long", strings.Repeat("x/", 150) + "end"},
	}
	for _, l := range links {
		p := filepath.Join(root, l.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mustSymlink(t, l.target, p)
	}
}

func copyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t testing.TB, target, name string) {
	t.Helper()
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
}

// serveOpts are the flags of one `lancache serve`.
type serveOpts struct {
	StoreRoot string   // --store-root
	Share     string   // --share; "" means signed
	Keys      []string // --trusted-public-keys, joined by spaces; nil: the default
	Args      []string // extra arguments
}

// daemon is one running `lancache serve` process.
type daemon struct {
	t      testing.TB
	Addr   string // HTTP listen address, 127.0.0.1:port
	URL    string // http://Addr
	cmd    *exec.Cmd
	out    *syncbuf.Buffer
	exited chan struct{}
	client *http.Client

	mu      sync.Mutex
	stopped bool
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// serveArgs returns the command line of `lancache serve` for o on the
// given loopback ports, with its own state dir and mDNS off.
func serveArgs(t testing.TB, o serveOpts, httpPort, quicPort int) []string {
	share := o.Share
	if share == "" {
		share = "signed"
	}
	args := []string{"serve",
		"--store-root", o.StoreRoot,
		"--http", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"--quic", fmt.Sprintf("127.0.0.1:%d", quicPort),
		"--state-dir", t.TempDir(),
		"--share", share,
		"--no-mdns",
	}
	if len(o.Keys) > 0 {
		args = append(args, "--trusted-public-keys", strings.Join(o.Keys, " "))
	}
	return append(args, o.Args...)
}

// startDaemon starts `lancache serve` with o on free loopback ports and
// waits until it answers /nix-cache-info. The daemon is stopped (and its
// exit checked) when the test ends, if the test did not stop it.
func startDaemon(t testing.TB, o serveOpts) *daemon {
	t.Helper()
	return startDaemonWith(t, func(httpPort, quicPort int) ([]string, []string) {
		return serveArgs(t, o, httpPort, quicPort), nil
	})
}

// startDaemonWith is startDaemon for a command line and extra environment
// that launch makes for the given ports.
func startDaemonWith(t testing.TB, launch func(httpPort, quicPort int) (args, env []string)) *daemon {
	t.Helper()
	for attempt := 1; ; attempt++ {
		httpPort, quicPort := freePort(t, "tcp"), freePort(t, "udp")
		args, env := launch(httpPort, quicPort)
		d := startProcess(t, args, env)
		d.Addr = fmt.Sprintf("127.0.0.1:%d", httpPort)
		d.URL = "http://" + d.Addr
		err := d.waitReady(readyTimeout)
		if err == nil {
			return d
		}
		if attempt < 3 && !d.alive() && strings.Contains(d.Logs(), "address already in use") {
			continue // lost the race for the port
		}
		t.Fatalf("lancache %s: %v\n--- daemon output ---\n%s", strings.Join(d.cmd.Args[1:], " "), err, d.Logs())
	}
}

// startProcess starts the lancache binary with args and extra env; it is
// stopped with SIGTERM at the end of the test if still running.
//
// prog, when given, is the program to run instead of the lancache binary
// (e.g. "ip" for `ip netns exec NS lancache ...`, which execs lancache in
// place, so signals reach it).
func startProcess(t testing.TB, args, env []string, prog ...string) *daemon {
	t.Helper()
	d := &daemon{
		t:      t,
		out:    &syncbuf.Buffer{},
		exited: make(chan struct{}),
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{}},
	}
	bin := lancacheBin(t)
	if len(prog) > 0 {
		bin = prog[0]
	}
	d.cmd = exec.Command(bin, args...)
	d.cmd.Env = append(daemonEnv(t), env...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start lancache: %v", err)
	}
	go func() {
		d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.mu.Lock()
		stopped := d.stopped
		d.mu.Unlock()
		if !stopped && d.alive() {
			d.Stop(syscall.SIGTERM)
		}
		d.client.CloseIdleConnections()
		if t.Failed() {
			t.Logf("--- lancache %s output ---\n%s", strings.Join(args, " "), d.Logs())
		}
	})
	return d
}

// Logs returns everything the daemon wrote to stdout and stderr so far.
func (d *daemon) Logs() string { return d.out.String() }

// alive reports whether the process has not exited yet.
func (d *daemon) alive() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// waitReady polls /nix-cache-info until it answers 200.
func (d *daemon) waitReady(timeout time.Duration) error {
	return d.waitReadyWith(&http.Client{Timeout: 2 * time.Second}, timeout)
}

// Stop sends sig and fails the test unless the daemon exits with status 0
// within stopTimeout; it then kills it.
func (d *daemon) Stop(sig os.Signal) {
	d.t.Helper()
	d.StopWithin(sig, stopTimeout)
}

// StopWithin is Stop with another deadline.
func (d *daemon) StopWithin(sig os.Signal, timeout time.Duration) {
	d.t.Helper()
	d.mu.Lock()
	d.stopped = true
	d.mu.Unlock()
	d.client.CloseIdleConnections()
	if err := d.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		d.t.Errorf("signal lancache: %v", err)
	}
	start := time.Now()
	select {
	case <-d.exited:
	case <-time.After(timeout):
		d.cmd.Process.Kill()
		<-d.exited
		d.t.Errorf("lancache did not exit within %v of %v; killed it", timeout, sig)
		return
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		d.t.Errorf("lancache exited with %v after %v; want status 0", d.cmd.ProcessState, sig)
	} else {
		d.t.Logf("lancache exited 0 %v after %v", time.Since(start).Round(time.Millisecond), sig)
	}
	if strings.Contains(d.Logs(), "WARNING: DATA RACE") {
		d.t.Errorf("the race detector reported a data race in lancache")
	}
}

// fetch is get for use off the test goroutine: it returns errors instead
// of failing the test.
func (d *daemon) fetch(method, path string) (int, []byte, error) {
	req, err := http.NewRequest(method, d.URL+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// get fetches path from the daemon with method and returns the response
// (body closed) and body.
func (d *daemon) get(t testing.TB, method, path string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, d.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, body
}

// wantStatus fails the test unless method path answers want.
func (d *daemon) wantStatus(t testing.TB, method, path string, want int) []byte {
	t.Helper()
	resp, body := d.get(t, method, path)
	if resp.StatusCode != want {
		t.Errorf("%s %s: status %s, want %d; body %q", method, path, resp.Status, want, clip(body))
	}
	return body
}

// rawRequest writes one HTTP/1.1 request with the target exactly as given
// (Go's client would normalise it) and reads the response. Writing and
// reading run concurrently so that a server answering an oversized request
// early is seen.
func rawRequest(addr, method, target string) (*http.Response, []byte, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	go func() {
		fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", method, target, addr)
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		return nil, nil, fmt.Errorf("read response: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return resp, body, fmt.Errorf("read body: %w", err)
	}
	return resp, body, nil
}

// parseNarinfo parses "Key: value" lines; Sig may repeat.
func parseNarinfo(b []byte) (map[string][]string, error) {
	m := map[string][]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" {
			continue
		}
		k, v, ok := strings.Cut(l, ": ")
		if !ok {
			if k, ok = strings.CutSuffix(l, ":"); !ok {
				return nil, fmt.Errorf("narinfo line %q: no colon", l)
			}
		}
		m[k] = append(m[k], v)
	}
	return m, nil
}

// one returns the single value of key in a parsed narinfo.
func one(m map[string][]string, key string) string {
	if len(m[key]) == 0 {
		return ""
	}
	return m[key][0]
}

// clip shortens a body for an error message.
func clip(b []byte) string {
	const n = 200
	if len(b) > n {
		return string(b[:n]) + "…(" + strconv.Itoa(len(b)) + " bytes)"
	}
	return string(b)
}

// serveHTTP serves handler on ln until the test ends or stop is called
// (idempotent); stop returns once the server's goroutine has.
func serveHTTP(t testing.TB, ln net.Listener, handler http.Handler) (stop func()) {
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	stop = func() {
		srv.Close()
		<-done
	}
	t.Cleanup(stop)
	return stop
}
