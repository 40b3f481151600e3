// Package gobuild cross-compiles the static lancache binary and asks it for
// its own help and version, so that everything shipped beside it (man page,
// package version) is derived from the binary rather than restated.
package gobuild

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// VersionVar is the linker symbol that carries the version string.
const VersionVar = "github.com/lancache/lancache.Version"

// Target is a GOOS/GOARCH(/GOARM) triple.
type Target struct {
	OS   string // GOOS, e.g. linux
	Arch string // GOARCH, e.g. amd64, arm64, arm
	ARM  string // GOARM for Arch "arm", e.g. 7
}

func (t Target) String() string {
	if t.Arch == "arm" && t.ARM != "" {
		return t.OS + "/" + t.Arch + "/v" + t.ARM
	}
	return t.OS + "/" + t.Arch
}

// Options says what to build.
type Options struct {
	RepoRoot string // directory of the lancache Go module
	Target   Target
	// Version, when set, is linked into the binary; empty keeps the
	// version compiled into the source (lancache.Version).
	Version string
	Out     string // path of the binary to write
}

// Build compiles ./cmd/lancache statically: CGO_ENABLED=0, -trimpath,
// stripped. The result does not depend on the build machine's path or libc.
func Build(ctx context.Context, o Options) error {
	ldflags := "-s -w"
	if o.Version != "" {
		ldflags += " -X " + VersionVar + "=" + o.Version
	}
	out, err := filepath.Abs(o.Out)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", out, "./cmd/lancache")
	cmd.Dir = o.RepoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+o.Target.OS, "GOARCH="+o.Target.Arch, "GOARM="+o.Target.ARM, "GOFLAGS=-mod=readonly")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/lancache for %s: %w\n%s", o.Target, err, stderr.String())
	}
	return nil
}

// Help holds what a binary says about itself.
type Help struct {
	Version string // "0.1.0-dev", from `lancache version`
	Help    string // `lancache help`
	Serve   string // `lancache serve -h`
}

// Ask runs a binary built for the build machine and collects its version
// and help texts.
func Ask(ctx context.Context, bin string) (Help, error) {
	var h Help
	v, err := run(ctx, bin, "version")
	if err != nil {
		return h, err
	}
	f := strings.Fields(v)
	if len(f) != 2 || f[0] != "lancache" {
		return h, fmt.Errorf("%s version printed %q, want \"lancache VERSION\"", bin, v)
	}
	h.Version = f[1]
	if h.Help, err = run(ctx, bin, "help"); err != nil {
		return h, err
	}
	if h.Serve, err = run(ctx, bin, "serve", "-h"); err != nil {
		return h, err
	}
	return h, nil
}

// run returns stdout and stderr together: the flag package prints usage to
// stderr, the top-level help goes to stdout.
func run(ctx context.Context, bin string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	// No LANCACHE_* from the caller's environment may leak into defaults.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LANCACHE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s", bin, strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}
