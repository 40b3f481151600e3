package packaging

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lancache/lancache/packaging/internal/dist"
	"github.com/lancache/lancache/packaging/internal/manpage"
)

// nixConfig lets Debian's nix-bin evaluate as root without a build-users
// group or sandbox, with the new CLI (for `nix hash path`).
const nixConfig = "build-users-group =\nsandbox = false\nexperimental-features = nix-command flakes"

// repoRoot is the lancache checkout under test: the parent of packaging/,
// or LANCACHE_REPO (e.g. a clean export of a commit while the work tree is
// mid-edit).
func repoRoot(t testing.TB) string {
	t.Helper()
	if r := os.Getenv("LANCACHE_REPO"); r != "" {
		return r
	}
	r, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// skipOrFail skips a test that cannot run here, unless CI=true: CI's
// machine is supposed to have everything, so there a skip is a failure.
func skipOrFail(t testing.TB, format string, a ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, a...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("cannot run under CI=true: %s", msg)
	}
	t.Skip("skipped: " + msg)
}

func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		skipOrFail(t, "%s not found (Debian: apt-get install %s)", name, map[string]string{
			"nix-instantiate": "nix-bin", "nix": "nix-bin", "dpkg": "dpkg", "dpkg-deb": "dpkg",
			"systemd-analyze": "systemd", "groff": "groff-base",
		}[name])
	}
	return p
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root (dpkg -i, a system user)")
	}
}

func nixCmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "NIX_CONFIG="+nixConfig)
	return cmd
}

// TestNixParse parses every .nix file of the repository.
func TestNixParse(t *testing.T) {
	nixInstantiate := needTool(t, "nix-instantiate")
	root := repoRoot(t)
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "dist" || d.Name() == "vendor" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".nix") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"flake.nix", "packaging/nixos/module.nix", "packaging/darwin/module.nix"} {
		if !contains(files, filepath.Join(root, want)) {
			t.Errorf("%s is missing", want)
		}
	}
	for _, f := range files {
		out, err := nixCmd(context.Background(), nixInstantiate, "--parse", f).CombinedOutput()
		if err != nil {
			t.Errorf("nix-instantiate --parse %s: %v\n%s", f, err, out)
		}
	}
	t.Logf("parsed %d .nix files", len(files))
}

// TestNixEval evaluates the NixOS and nix-darwin modules and the flake with
// a stub lib and stub packages (nixtest/eval.nix) and reports every check
// that does not hold. What this cannot cover is listed in README.md
// ("What the tests cannot check here").
func TestNixEval(t *testing.T) {
	nixInstantiate := needTool(t, "nix-instantiate")
	out, err := nixCmd(context.Background(), nixInstantiate, "--eval", "--strict", "--json", "nixtest/eval.nix").Output()
	if err != nil {
		t.Fatalf("nix-instantiate --eval nixtest/eval.nix: %v\n%s", err, stderrOf(err))
	}
	var checks map[string]bool
	if err := json.Unmarshal(out, &checks); err != nil {
		t.Fatalf("eval.nix result: %v\n%s", err, out)
	}
	if len(checks) < 30 {
		t.Errorf("only %d checks evaluated", len(checks))
	}
	names := make([]string, 0, len(checks))
	for n := range checks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !checks[n] {
			t.Errorf("nixtest/eval.nix: check %s is false", n)
		}
	}
}

// TestNixOSUnitVerify renders the systemd unit the NixOS module defines
// (as NixOS would, roughly) and lets systemd-analyze check every key.
func TestNixOSUnitVerify(t *testing.T) {
	nixInstantiate := needTool(t, "nix-instantiate")
	analyze := needTool(t, "systemd-analyze")
	out, err := nixCmd(context.Background(), nixInstantiate, "--eval", "--strict", "--json", "nixtest/units.nix").Output()
	if err != nil {
		t.Fatalf("nix-instantiate --eval nixtest/units.nix: %v\n%s", err, stderrOf(err))
	}
	var units map[string]map[string]any
	if err := json.Unmarshal(out, &units); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, sc := range units {
		var b strings.Builder
		b.WriteString("[Unit]\nDescription=lancache (" + name + ")\n\n[Service]\n")
		keys := make([]string, 0, len(sc))
		for k := range sc {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			for _, v := range unitValues(sc[k]) {
				if k == "ExecStart" {
					// The stub store path does not exist; systemd-analyze wants an executable.
					v = regexp.MustCompile(`^/nix/store/\S+/bin/lancache`).ReplaceAllString(v, "/bin/true")
				}
				fmt.Fprintf(&b, "%s=%s\n", k, v)
			}
		}
		b.WriteString("\n[Install]\nWantedBy=multi-user.target\n")
		unit := filepath.Join(dir, "lancache-"+name+".service")
		if err := os.WriteFile(unit, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		verifyUnit(t, analyze, unit)
	}
}

// TestDebianUnitVerify checks packaging/systemd/lancache.service.
func TestDebianUnitVerify(t *testing.T) {
	analyze := needTool(t, "systemd-analyze")
	src, err := os.ReadFile("systemd/lancache.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(t.TempDir(), "lancache.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(src), "/usr/bin/lancache", "/bin/true")), 0o644); err != nil {
		t.Fatal(err)
	}
	verifyUnit(t, analyze, unit)
	for _, want := range []string{
		"ExecStart=/usr/bin/lancache serve", "EnvironmentFile=-/etc/default/lancache", "User=lancache",
		"StateDirectory=lancache", "CacheDirectory=lancache", "ProtectSystem=strict", "NoNewPrivileges=yes",
		"CapabilityBoundingSet=\n", "RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX",
	} {
		if !strings.Contains(string(src), want) {
			t.Errorf("lancache.service lacks %q", want)
		}
	}
}

// unitValues renders a NixOS serviceConfig value as unit-file values.
func unitValues(v any) []string {
	switch v := v.(type) {
	case bool:
		if v {
			return []string{"true"}
		}
		return []string{"false"}
	case float64:
		return []string{fmt.Sprint(int64(v))}
	case []any:
		var out []string
		for _, x := range v {
			out = append(out, unitValues(x)...)
		}
		return out
	default:
		return []string{fmt.Sprint(v)}
	}
}

// verifyUnit fails on anything systemd-analyze says about the unit file.
func verifyUnit(t *testing.T, analyze, unit string) {
	t.Helper()
	out, _ := exec.Command(analyze, "verify", "--man=no", unit).CombinedOutput()
	var complaints []string
	for _, l := range strings.Split(string(out), "\n") {
		// Other units on the machine may have problems of their own.
		if strings.Contains(l, filepath.Base(unit)) {
			complaints = append(complaints, l)
		}
	}
	if len(complaints) > 0 {
		t.Errorf("systemd-analyze verify %s:\n%s", unit, strings.Join(complaints, "\n"))
	}
}

var (
	distOnce sync.Once
	distRes  *dist.Result
	distErr  error
	distDir  string
)

// buildDist builds every artefact once per test binary.
func buildDist(t *testing.T) *dist.Result {
	t.Helper()
	distOnce.Do(func() {
		distDir, distErr = os.MkdirTemp("", "lancache-dist-test-")
		if distErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		start := time.Now()
		distRes, distErr = dist.Build(ctx, dist.Options{
			Repo: repoRoot(t), Out: distDir, Deb: true, OCI: true,
			CABundle: "/etc/ssl/certs/ca-certificates.crt",
		})
		t.Logf("built dist in %s", time.Since(start).Round(time.Second))
	})
	if distErr != nil {
		t.Fatalf("build dist: %v", distErr)
	}
	return distRes
}

func TestMain(m *testing.M) {
	code := m.Run()
	if distDir != "" {
		os.RemoveAll(distDir)
	}
	os.Exit(code)
}

// TestEnvFileDocumentsEveryFlag keeps /etc/default/lancache and the man
// page in step with `lancache serve -h`.
func TestEnvFileDocumentsEveryFlag(t *testing.T) {
	r := buildDist(t)
	flags, err := manpage.ParseFlags(r.Help.Serve, "")
	if err != nil {
		t.Fatal(err)
	}
	env, err := os.ReadFile("systemd/lancache.env")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(string(env)))
	for sc.Scan() {
		l := strings.TrimLeft(strings.TrimSpace(sc.Text()), "#")
		if k, _, ok := strings.Cut(l, "="); ok && strings.HasPrefix(k, "LANCACHE_") {
			documented[k] = true
		}
	}
	for _, f := range flags {
		if f.Env == "" {
			t.Errorf("serve -h shows no environment variable for --%s", f.Name)
			continue
		}
		if !documented[f.Env] {
			t.Errorf("packaging/systemd/lancache.env does not document %s (--%s)", f.Env, f.Name)
		}
		delete(documented, f.Env)
	}
	for k := range documented {
		t.Errorf("packaging/systemd/lancache.env documents %s, which `lancache serve` does not accept", k)
	}
}

// TestFlakeVendorHash recomputes buildGoModule's vendorHash (the NAR hash
// of `go mod vendor`) for the current go.mod and compares it with flake.nix.
func TestFlakeVendorHash(t *testing.T) {
	nix := needTool(t, "nix")
	root := repoRoot(t)
	flake, err := os.ReadFile(filepath.Join(root, "flake.nix"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`vendorHash = "([^"]+)";`).FindSubmatch(flake)
	if m == nil {
		t.Fatal(`flake.nix has no vendorHash = "...";`)
	}
	// Vendor a copy: `go mod vendor` must not touch the work tree.
	src := filepath.Join(t.TempDir(), "src")
	if err := copyModule(root, src); err != nil {
		t.Fatal(err)
	}
	vendor := filepath.Join(t.TempDir(), "vendor")
	cmd := exec.Command("go", "mod", "vendor", "-o", vendor)
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go mod vendor: %v\n%s", err, out)
	}
	out, err := nixCmd(context.Background(), nix, "hash", "path", "--type", "sha256", "--sri", vendor).Output()
	if err != nil {
		t.Fatalf("nix hash path: %v\n%s", err, stderrOf(err))
	}
	if got := strings.TrimSpace(string(out)); got != string(m[1]) {
		t.Errorf("flake.nix has vendorHash = %q, but `go mod vendor` of the current go.mod hashes to %q: put that in flake.nix", m[1], got)
	}
}

// copyModule copies the main module's files (not .git, packaging/, which
// is a module of its own, or dist/).
func copyModule(from, to string) error {
	return filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			if rel == ".git" || rel == "packaging" || rel == "dist" {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), data, 0o644)
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
