package packaging

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lancache/lancache/packaging/internal/deb"
	"github.com/lancache/lancache/packaging/internal/oci"
)

// elfMachine is the machine each target's binary must be built for.
var elfMachine = map[string]elf.Machine{
	"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "armhf": elf.EM_ARM,
	"linux/amd64": elf.EM_X86_64, "linux/arm64": elf.EM_AARCH64, "linux/arm/v7": elf.EM_ARM,
}

// checkStaticELF checks a binary's machine and that it has no interpreter
// (statically linked, CGO_ENABLED=0).
func checkStaticELF(t *testing.T, what string, data []byte, want elf.Machine) {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Errorf("%s: not an ELF file: %v", what, err)
		return
	}
	if f.Machine != want {
		t.Errorf("%s: ELF machine %s, want %s", what, f.Machine, want)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s: has an ELF interpreter: not static", what)
		}
	}
}

// TestDeb builds the .deb for every architecture and checks it with dpkg-deb.
func TestDeb(t *testing.T) {
	dpkgDeb := needTool(t, "dpkg-deb")
	r := buildDist(t)
	wantVersion := strings.ReplaceAll(r.Version, "-", "~")
	for _, arch := range []string{"amd64", "arm64", "armhf"} {
		t.Run(arch, func(t *testing.T) {
			p := r.Debs[arch]
			out, err := exec.Command(dpkgDeb, "-c", p).CombinedOutput()
			if err != nil {
				t.Fatalf("dpkg-deb -c %s: %v\n%s", p, err, out)
			}
			listing := map[string]string{} // path -> mode column
			for _, l := range strings.Split(string(out), "\n") {
				f := strings.Fields(l)
				if len(f) >= 6 {
					listing[strings.TrimPrefix(f[5], ".")] = f[0]
				}
			}
			for path, mode := range map[string]string{
				deb.BinPath: "-rwxr-xr-x", deb.UnitPath: "-rw-r--r--", deb.EnvPath: "-rw-r--r--", deb.ManPath: "-rw-r--r--",
			} {
				if got, ok := listing[path]; !ok {
					t.Errorf("%s lacks %s; dpkg-deb -c:\n%s", filepath.Base(p), path, out)
				} else if got != mode {
					t.Errorf("%s: %s has mode %s, want %s", filepath.Base(p), path, got, mode)
				}
			}
			for field, want := range map[string]string{"Package": "lancache", "Architecture": arch, "Version": wantVersion} {
				got, err := exec.Command(dpkgDeb, "-f", p, field).Output()
				if err != nil || strings.TrimSpace(string(got)) != want {
					t.Errorf("%s: field %s = %q (%v), want %q", filepath.Base(p), field, strings.TrimSpace(string(got)), err, want)
				}
			}
			ctrl := t.TempDir()
			if out, err := exec.Command(dpkgDeb, "-e", p, ctrl).CombinedOutput(); err != nil {
				t.Fatalf("dpkg-deb -e: %v\n%s", err, out)
			}
			if conf, _ := os.ReadFile(filepath.Join(ctrl, "conffiles")); strings.TrimSpace(string(conf)) != deb.EnvPath {
				t.Errorf("conffiles = %q, want %s", conf, deb.EnvPath)
			}
			for _, s := range []string{"postinst", "prerm", "postrm"} {
				if fi, err := os.Stat(filepath.Join(ctrl, s)); err != nil || fi.Mode().Perm()&0o111 == 0 {
					t.Errorf("maintainer script %s missing or not executable (%v)", s, err)
				}
			}
			files := debFiles(t, dpkgDeb, p)
			checkStaticELF(t, filepath.Base(p)+":"+deb.BinPath, files[deb.BinPath], elfMachine[arch])
			man := files[deb.ManPath]
			zr, err := gzip.NewReader(bytes.NewReader(man))
			if err != nil {
				t.Fatalf("man page: %v", err)
			}
			roff, _ := io.ReadAll(zr)
			for _, s := range []string{".TH LANCACHE 1", `\-\-cache\-dir`, "LANCACHE_CACHE_DIR", `\-\-trusted\-public\-keys`} {
				if !bytes.Contains(roff, []byte(s)) {
					t.Errorf("man page lacks %q", s)
				}
			}
		})
	}
}

// debFiles returns the regular files of a .deb's data archive.
func debFiles(t *testing.T, dpkgDeb, p string) map[string][]byte {
	t.Helper()
	out, err := exec.Command(dpkgDeb, "--fsys-tarfile", p).Output()
	if err != nil {
		t.Fatalf("dpkg-deb --fsys-tarfile %s: %v", p, err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(out))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			data, _ := io.ReadAll(tr)
			files[strings.TrimPrefix(h.Name, ".")] = data
		}
	}
	return files
}

// TestDebInstall installs the amd64 package on this machine, runs
// `lancache version` and the installed unit's command line (as the
// package's user, with its environment file, on loopback ports), then
// removes and purges the package.
func TestDebInstall(t *testing.T) {
	needRoot(t)
	dpkg := needTool(t, "dpkg")
	if arch, _ := exec.Command(dpkg, "--print-architecture").Output(); strings.TrimSpace(string(arch)) != "amd64" {
		skipOrFail(t, "machine architecture is %s, the install test uses the amd64 package", strings.TrimSpace(string(arch)))
	}
	if exec.Command("dpkg-query", "-W", "-f=${Status}", "lancache").Run() == nil {
		if out, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "lancache").Output(); strings.Contains(string(out), "installed") && !strings.Contains(string(out), "not-installed") && !strings.Contains(string(out), "config-files") {
			skipOrFail(t, "a lancache package is already installed here (%s); not replacing it", out)
		}
	}
	r := buildDist(t)
	purge := func() {
		if out, err := exec.Command(dpkg, "--purge", "lancache").CombinedOutput(); err != nil {
			t.Logf("dpkg --purge lancache: %v\n%s", err, out)
		}
	}
	out, err := exec.Command(dpkg, "-i", r.Debs["amd64"]).CombinedOutput()
	if err != nil {
		purge()
		t.Fatalf("dpkg -i: %v\n%s", err, out)
	}
	t.Cleanup(purge)
	t.Logf("dpkg -i: %s", out)

	v, err := exec.Command(deb.BinPath, "version").Output()
	if err != nil || strings.TrimSpace(string(v)) != "lancache "+r.Version {
		t.Fatalf("%s version = %q (%v), want %q", deb.BinPath, v, err, "lancache "+r.Version)
	}
	u, err := user.Lookup("lancache")
	if err != nil {
		t.Fatalf("postinst did not create the lancache user: %v", err)
	}
	if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
		verifyUnit(t, analyze, deb.UnitPath) // now with the real binary and man page
	}
	// As installed: the env file's defaults, so the local Nix store (/) when
	// this machine has one; and as an appliance, without a store.
	if _, err := os.Stat("/nix/var/nix/db/db.sqlite"); err == nil {
		t.Run("smoke-store", func(t *testing.T) { smokeInstalledUnit(t, u, nil) })
	} else {
		t.Logf("no Nix database at /nix/var/nix/db: smoke test with a local store skipped")
	}
	t.Run("smoke-appliance", func(t *testing.T) {
		smokeInstalledUnit(t, u, []string{"LANCACHE_STORE_ROOT=none"})
	})

	if out, err := exec.Command(dpkg, "-r", "lancache").CombinedOutput(); err != nil {
		t.Fatalf("dpkg -r: %v\n%s", err, out)
	}
	if _, err := os.Stat(deb.BinPath); err == nil {
		t.Errorf("%s still there after dpkg -r", deb.BinPath)
	}
	if _, err := os.Stat(deb.EnvPath); err != nil {
		t.Errorf("dpkg -r removed the conffile %s: %v", deb.EnvPath, err)
	}
	if out, err := exec.Command(dpkg, "--purge", "lancache").CombinedOutput(); err != nil {
		t.Fatalf("dpkg --purge: %v\n%s", err, out)
	}
	if _, err := os.Stat(deb.EnvPath); err == nil {
		t.Errorf("%s still there after purge", deb.EnvPath)
	}
	if _, err := user.Lookup("lancache"); err == nil {
		t.Errorf("the lancache user is still there after purge")
	}
}

// smokeInstalledUnit runs the ExecStart line of the installed unit the way
// systemd would (user, EnvironmentFile) without systemd, which this machine
// does not run as PID 1. State dir, ports and mDNS are overridden through
// the environment (a temporary state dir, free loopback ports, no mDNS:
// nothing may leave loopback), and so is whatever extra says.
func smokeInstalledUnit(t *testing.T, u *user.User, extra []string) {
	unit, err := os.ReadFile(deb.UnitPath)
	if err != nil {
		t.Fatal(err)
	}
	var argv []string
	var envFile string
	for _, l := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
			argv = strings.Fields(strings.TrimLeft(v, "-@+!:"))
		}
		if v, ok := strings.CutPrefix(l, "EnvironmentFile="); ok {
			envFile = strings.TrimPrefix(v, "-")
		}
	}
	if len(argv) == 0 || envFile != deb.EnvPath {
		t.Fatalf("installed unit: ExecStart %q, EnvironmentFile %q", argv, envFile)
	}
	env, err := readEnvFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	base, err := os.MkdirTemp("", "lancache-smoke-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	state := filepath.Join(base, "state")
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(state, uid, gid); err != nil {
		t.Fatal(err)
	}
	httpAddr, quicAddr := freeTCP(t), freeUDP(t)
	env = append(env, "LANCACHE_STATE_DIR="+state, "LANCACHE_HTTP="+httpAddr, "LANCACHE_QUIC="+quicAddr, "LANCACHE_NO_MDNS=true", "PATH=/usr/bin:/bin", "HOME="+state)
	env = append(env, extra...)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = state
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// exited is closed when the daemon has exited, with its error in waitErr.
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()

	body, err := getCacheInfo(ctx, httpAddr, exited)
	if err != nil {
		cmd.Process.Kill()
		<-exited
		t.Fatalf("%s (env %s): %v\nlogs:\n%s", strings.Join(argv, " "), envFile, err, logs.String())
	}
	for _, want := range []string{"StoreDir: /nix/store", "Priority: 30"} {
		if !strings.Contains(body, want) {
			t.Errorf("/nix-cache-info lacks %q:\n%s", want, body)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("lancache serve exited with %v after SIGTERM\nlogs:\n%s", waitErr, logs.String())
		}
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Errorf("lancache serve did not stop within 15s of SIGTERM\nlogs:\n%s", logs.String())
	}
	if entries, _ := os.ReadDir(state); len(entries) == 0 {
		t.Errorf("state dir %s is empty: no node identity written", state)
	}
	t.Logf("served /nix-cache-info as user %s from %s:\n%s", u.Username, httpAddr, body)
}

// getCacheInfo polls GET /nix-cache-info until the daemon answers (with curl
// when present, as an admin would) or exits.
func getCacheInfo(ctx context.Context, addr string, exited <-chan struct{}) (string, error) {
	url := "http://" + addr + "/nix-cache-info"
	curl, _ := exec.LookPath("curl")
	var last error
	for {
		var body []byte
		if curl != "" {
			body, last = exec.CommandContext(ctx, curl, "-fsS", "--max-time", "2", url).Output()
		} else {
			var resp *http.Response
			if resp, last = http.Get(url); last == nil {
				body, last = io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					last = fmt.Errorf("%s: %s", url, resp.Status)
				}
			}
		}
		if last == nil {
			return string(body), nil
		}
		select {
		case <-exited:
			return "", fmt.Errorf("daemon exited before answering")
		case <-ctx.Done():
			return "", fmt.Errorf("no answer from %s: %v", url, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// readEnvFile reads a systemd EnvironmentFile (KEY=VALUE, # comments,
// optional quotes).
func readEnvFile(p string) ([]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var env []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || l[0] == '#' || l[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return nil, fmt.Errorf("%s: bad line %q", p, l)
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		env = append(env, strings.TrimSpace(k)+"="+v)
	}
	return env, sc.Err()
}

func freeTCP(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func freeUDP(t *testing.T) string {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// TestOCIImage reads the OCI layout from index.json down to each
// platform's config and layer.
func TestOCIImage(t *testing.T) {
	r := buildDist(t)
	readJSON := func(p string, v any) {
		t.Helper()
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, v); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
	blob := func(digest string) string {
		alg, hex, _ := strings.Cut(digest, ":")
		return filepath.Join(r.Layout, "blobs", alg, hex)
	}
	type descriptor struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Annotations map[string]string `json:"annotations"`
		Platform    *struct {
			OS, Architecture, Variant string
		} `json:"platform"`
	}
	var layoutFile struct{ ImageLayoutVersion string }
	readJSON(filepath.Join(r.Layout, "oci-layout"), &layoutFile)
	if layoutFile.ImageLayoutVersion != "1.0.0" {
		t.Errorf("oci-layout version %q", layoutFile.ImageLayoutVersion)
	}
	var top struct{ Manifests []descriptor }
	readJSON(filepath.Join(r.Layout, "index.json"), &top)
	if len(top.Manifests) != 1 || top.Manifests[0].MediaType != "application/vnd.oci.image.index.v1+json" {
		t.Fatalf("index.json should hold one image index, has %+v", top.Manifests)
	}
	if got := top.Manifests[0].Annotations[oci.RefNameAnnotation]; got != r.Version {
		t.Errorf("index ref name %q, want %q", got, r.Version)
	}
	var idx struct{ Manifests []descriptor }
	readJSON(blob(top.Manifests[0].Digest), &idx)
	platforms := map[string]bool{}
	for _, m := range idx.Manifests {
		if m.Platform == nil {
			t.Fatalf("manifest %s has no platform", m.Digest)
		}
		plat := m.Platform.OS + "/" + m.Platform.Architecture
		if m.Platform.Variant != "" {
			plat += "/" + m.Platform.Variant
		}
		platforms[plat] = true
		t.Run(strings.ReplaceAll(plat, "/", "_"), func(t *testing.T) {
			var man struct {
				MediaType string     `json:"mediaType"`
				Config    descriptor `json:"config"`
				Layers    []descriptor
			}
			readJSON(blob(m.Digest), &man)
			if man.MediaType != "application/vnd.oci.image.manifest.v1+json" || man.Config.MediaType != "application/vnd.oci.image.config.v1+json" {
				t.Errorf("media types: manifest %q, config %q", man.MediaType, man.Config.MediaType)
			}
			var cfg struct {
				Architecture, OS, Variant string
				Config                    struct {
					Entrypoint   []string
					Cmd          []string
					Env          []string
					User         string
					ExposedPorts map[string]struct{}
					Volumes      map[string]struct{}
				} `json:"config"`
			}
			readJSON(blob(man.Config.Digest), &cfg)
			if cfg.OS+"/"+cfg.Architecture+map[bool]string{true: "/" + cfg.Variant}[cfg.Variant != ""] != plat {
				t.Errorf("config says %s/%s/%s for %s", cfg.OS, cfg.Architecture, cfg.Variant, plat)
			}
			wantEntry := "/usr/bin/lancache serve --store-root none --cache-dir /var/cache/lancache --http 0.0.0.0:37515"
			if got := strings.Join(cfg.Config.Entrypoint, " "); got != wantEntry {
				t.Errorf("entrypoint %q, want %q", got, wantEntry)
			}
			for _, p := range []string{"37515/tcp", "37516/udp"} {
				if _, ok := cfg.Config.ExposedPorts[p]; !ok {
					t.Errorf("port %s not exposed: %v", p, cfg.Config.ExposedPorts)
				}
			}
			if _, ok := cfg.Config.Volumes["/var/cache/lancache"]; !ok {
				t.Errorf("no volume /var/cache/lancache: %v", cfg.Config.Volumes)
			}
			if cfg.Config.User == "" || strings.HasPrefix(cfg.Config.User, "0") {
				t.Errorf("image runs as %q, want an unprivileged user", cfg.Config.User)
			}
			if len(man.Layers) != 1 {
				t.Fatalf("%d layers, want 1", len(man.Layers))
			}
			f, err := os.Open(blob(man.Layers[0].Digest))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			zr, err := gzip.NewReader(f)
			if err != nil {
				t.Fatal(err)
			}
			tr := tar.NewReader(zr)
			seen := map[string]*tar.Header{}
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				seen[strings.TrimSuffix(h.Name, "/")] = h
				if h.Name == "usr/bin/lancache" {
					data, _ := io.ReadAll(tr)
					checkStaticELF(t, plat+" /usr/bin/lancache", data, elfMachine[plat])
				}
			}
			if h := seen["var/cache/lancache"]; h == nil || h.Typeflag != tar.TypeDir || strconv.Itoa(h.Uid) != strings.Split(cfg.Config.User, ":")[0] {
				t.Errorf("var/cache/lancache missing or not owned by the image user: %+v", h)
			}
			if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err == nil && seen["etc/ssl/certs/ca-certificates.crt"] == nil {
				t.Errorf("CA bundle not in the layer although the build machine has one")
			}
		})
	}
	for _, want := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
		if !platforms[want] {
			t.Errorf("index lacks %s (has %v)", want, platforms)
		}
	}
	for plat, p := range r.Tarballs {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Errorf("docker-loadable tarball for %s: %v", plat, err)
		}
	}
}
