// Package dist builds every distribution artefact of lancache from a
// checkout: static binaries for the Linux targets, the man page, the Debian
// packages and the OCI image. cmd/lancache-dist and the packaging tests
// both call Build.
package dist

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/lancache/lancache/packaging/internal/deb"
	"github.com/lancache/lancache/packaging/internal/gobuild"
	"github.com/lancache/lancache/packaging/internal/manpage"
	"github.com/lancache/lancache/packaging/internal/oci"
)

// DebArches are the Debian architectures built, in order.
var DebArches = []string{"amd64", "arm64", "armhf"}

// ociPlatforms pairs each image platform with the Debian arch whose binary it uses.
var ociPlatforms = []struct{ deb, arch, variant string }{
	{"amd64", "amd64", ""},
	{"arm64", "arm64", ""},
	{"armhf", "arm", "v7"},
}

// Options says what to build.
type Options struct {
	Repo     string // the lancache module (repository root)
	Out      string // output directory
	Version  string // linked into the binaries; "" keeps the source's
	Deb, OCI bool
	CABundle string    // for the image; missing is fine
	MTime    time.Time // file and image times; zero means the Unix epoch
	Log      io.Writer // progress lines; nil for none
}

// Result names what was built.
type Result struct {
	Version  string            // as the binary reports it
	Binaries map[string]string // Debian arch -> static binary
	Host     string            // a binary runnable on this machine
	ManPage  string            // lancache.1.gz
	Debs     map[string]string // Debian arch -> .deb
	Layout   string            // OCI layout directory
	Tarballs map[string]string // OCI platform -> docker-loadable tarball
	Help     gobuild.Help
}

// ParseEpoch reads SOURCE_DATE_EPOCH.
func ParseEpoch(s string) (time.Time, error) {
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", s, err)
	}
	return time.Unix(sec, 0).UTC(), nil
}

// Build builds what o asks for into o.Out.
func Build(ctx context.Context, o Options) (*Result, error) {
	logf := func(format string, a ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", a...)
		}
	}
	pkgDir := filepath.Join(o.Repo, "packaging")
	if _, err := os.Stat(filepath.Join(pkgDir, "systemd", "lancache.service")); err != nil {
		return nil, fmt.Errorf("repo %s: no packaging/systemd/lancache.service there: %w", o.Repo, err)
	}
	mtime := o.MTime
	if mtime.IsZero() {
		mtime = time.Unix(0, 0).UTC()
	}
	binDir := filepath.Join(o.Out, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, err
	}
	r := &Result{Binaries: map[string]string{}, Debs: map[string]string{}, Tarballs: map[string]string{}}
	for _, a := range DebArches {
		t := deb.Arches[a]
		target := gobuild.Target{OS: "linux", Arch: t.GOARCH, ARM: t.GOARM}
		p := filepath.Join(binDir, "lancache-linux-"+a)
		logf("build %s", target)
		if err := gobuild.Build(ctx, gobuild.Options{RepoRoot: o.Repo, Target: target, Version: o.Version, Out: p}); err != nil {
			return nil, err
		}
		r.Binaries[a] = p
	}
	r.Host = r.Binaries[hostDebArch()]
	if r.Host == "" {
		r.Host = filepath.Join(binDir, "lancache-host")
		if err := gobuild.Build(ctx, gobuild.Options{RepoRoot: o.Repo, Target: gobuild.Target{OS: runtime.GOOS, Arch: runtime.GOARCH}, Version: o.Version, Out: r.Host}); err != nil {
			return nil, err
		}
	}
	help, err := gobuild.Ask(ctx, r.Host)
	if err != nil {
		return nil, err
	}
	r.Help, r.Version = help, help.Version

	if o.Deb {
		hostname, _ := os.Hostname()
		flags, err := manpage.ParseFlags(help.Serve, hostname)
		if err != nil {
			return nil, err
		}
		r.ManPage = filepath.Join(o.Out, "lancache.1.gz")
		page := manpage.Render(manpage.Page{Version: help.Version, Date: mtime.Format("2006-01-02"), Help: help.Help, Flags: flags})
		if err := writeGzip(r.ManPage, page); err != nil {
			return nil, err
		}
		for _, a := range DebArches {
			p := filepath.Join(o.Out, deb.FileName(help.Version, a))
			logf("deb %s", p)
			err := deb.Build(deb.Options{
				Arch: a, Version: help.Version, Binary: r.Binaries[a], ManPage: r.ManPage,
				Unit:    filepath.Join(pkgDir, "systemd", "lancache.service"),
				EnvFile: filepath.Join(pkgDir, "systemd", "lancache.env"),
				Scripts: filepath.Join(pkgDir, "debian"),
				README:  filepath.Join(pkgDir, "README.md"),
				MTime:   mtime, Out: p,
			})
			if err != nil {
				return nil, err
			}
			r.Debs[a] = p
		}
	}
	if o.OCI {
		var plats []oci.Platform
		for _, p := range ociPlatforms {
			pl := oci.Platform{Arch: p.arch, Variant: p.variant, Binary: r.Binaries[p.deb]}
			plats = append(plats, pl)
			r.Tarballs[pl.String()] = filepath.Join(o.Out, oci.TarballName(pl))
		}
		r.Layout = filepath.Join(o.Out, "oci")
		logf("oci %s", r.Layout)
		if err := oci.Build(oci.Options{Version: help.Version, Platforms: plats, CABundle: o.CABundle, Created: mtime, Layout: r.Layout, Tarballs: o.Out}); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// hostDebArch is the Debian name of this machine's architecture, if one of
// the built ones.
func hostDebArch() string {
	if runtime.GOOS != "linux" {
		return ""
	}
	for a, t := range deb.Arches {
		if t.GOARCH == runtime.GOARCH && t.GOARCH != "arm" {
			return a
		}
	}
	return ""
}

// writeGzip writes data gzipped without a name or time in the header, so
// the output depends on data only.
func writeGzip(path string, data []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	zw, err := gzip.NewWriterLevel(f, gzip.BestCompression)
	if err == nil {
		_, err = zw.Write(data)
	}
	if err == nil {
		err = zw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
