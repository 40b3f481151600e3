// Package deb builds lancache's Debian package with nfpm (as a library, so
// no dpkg tooling is needed on the build machine).
package deb

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

// Installed paths. Tests and docs refer to these.
const (
	BinPath     = "/usr/bin/lancache"
	UnitPath    = "/lib/systemd/system/lancache.service"
	EnvPath     = "/etc/default/lancache"
	ManPath     = "/usr/share/man/man1/lancache.1.gz"
	DocDir      = "/usr/share/doc/lancache"
	packageName = "lancache"
)

// Arches maps a Debian architecture to the Go target built for it.
var Arches = map[string]struct{ GOARCH, GOARM string }{
	"amd64": {"amd64", ""},
	"arm64": {"arm64", ""},
	"armhf": {"arm", "7"},
}

// Options names the files that go into the package.
type Options struct {
	Arch    string // Debian architecture: amd64, arm64 or armhf
	Version string // upstream version, e.g. 0.1.0-dev (becomes 0.1.0~dev)
	Binary  string // static lancache for Arch
	ManPage string // gzipped roff
	Unit    string // systemd unit file
	EnvFile string // /etc/default/lancache
	Scripts string // directory holding postinst, prerm, postrm
	README  string // copied to DocDir
	MTime   time.Time
	Out     string // .deb path to write
}

// FileName is the conventional name of the package file.
func FileName(version, arch string) string {
	return fmt.Sprintf("%s_%s_%s.deb", packageName, version, arch)
}

// Build writes the .deb.
func Build(o Options) error {
	if _, ok := Arches[o.Arch]; !ok {
		return fmt.Errorf("deb: unsupported architecture %q", o.Arch)
	}
	info := &nfpm.Info{
		Name:        packageName,
		Arch:        o.Arch,
		Platform:    "linux",
		Version:     o.Version,
		Section:     "net",
		Priority:    "optional",
		Maintainer:  "lancache maintainers <lancache@users.noreply.github.com>",
		Description: "LAN-first peer cache for Nix\nEvery machine on a LAN runs one lancache daemon. The daemons find each\nother over mDNS and stream NARs to each other over QUIC, verified against\nthe signed NarHash. To the local Nix the daemon is an HTTP binary cache\nthat answers before cache.nixos.org. Without a Nix store it runs as an\nappliance: an on-disk NAR cache that pulls through from an upstream cache.",
		Vendor:      "lancache",
		Homepage:    "https://github.com/lancache/lancache",
		MTime:       o.MTime,
		Overridables: nfpm.Overridables{
			Depends: []string{"adduser"},
			Contents: files.Contents{
				{Source: o.Binary, Destination: BinPath, FileInfo: &files.ContentFileInfo{Mode: 0o755, MTime: o.MTime}},
				{Source: o.Unit, Destination: UnitPath, FileInfo: &files.ContentFileInfo{Mode: 0o644, MTime: o.MTime}},
				// conffile: dpkg keeps the admin's edits on upgrade and asks on conflict.
				{Source: o.EnvFile, Destination: EnvPath, Type: files.TypeConfig, FileInfo: &files.ContentFileInfo{Mode: 0o644, MTime: o.MTime}},
				{Source: o.ManPage, Destination: ManPath, FileInfo: &files.ContentFileInfo{Mode: 0o644, MTime: o.MTime}},
				{Source: o.README, Destination: DocDir + "/README.md", FileInfo: &files.ContentFileInfo{Mode: 0o644, MTime: o.MTime}},
			},
			Scripts: nfpm.Scripts{
				PostInstall: filepath.Join(o.Scripts, "postinst"),
				PreRemove:   filepath.Join(o.Scripts, "prerm"),
				PostRemove:  filepath.Join(o.Scripts, "postrm"),
			},
			Deb: nfpm.Deb{Compression: "xz"},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return fmt.Errorf("deb %s: %w", o.Arch, err)
	}
	f, err := os.Create(o.Out)
	if err != nil {
		return err
	}
	if err := deb.Default.Package(info, f); err != nil {
		f.Close()
		return fmt.Errorf("deb %s: %w", o.Arch, err)
	}
	return f.Close()
}
