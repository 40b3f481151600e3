// Package oci builds lancache's container image for NAS boxes without a
// container engine: one layer holding the static binary (plus a CA bundle
// for https upstreams) on an empty base, one image per platform, gathered
// in an image index and written as an OCI image layout directory.
package oci

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// What the image runs and offers. Tests check the config against these.
const (
	BinPath  = "/usr/bin/lancache"
	CacheDir = "/var/cache/lancache"
	StateDir = "/var/lib/lancache"
	UID      = 65532 // unprivileged; owns CacheDir and StateDir in the image
	HTTPPort = "37515/tcp"
	QUICPort = "37516/udp"
	// CABundle is where the CA bundle goes, and where Go looks first.
	CABundle = "/etc/ssl/certs/ca-certificates.crt"
	// RefNameAnnotation tags the index in index.json (skopeo's oci:DIR:TAG).
	RefNameAnnotation = "org.opencontainers.image.ref.name"
)

// Entrypoint runs the appliance: no local store, NAR cache on the volume,
// HTTP reachable from the LAN. Arguments given to `docker run IMAGE ...`
// are appended (e.g. --upstream URL).
var Entrypoint = []string{BinPath, "serve", "--store-root", "none", "--cache-dir", CacheDir, "--http", "0.0.0.0:37515"}

// Volumes are the directories worth keeping across container re-creation:
// the NAR cache and the node identity.
var Volumes = []string{CacheDir, StateDir}

// Platform is one image of the index with the binary built for it.
type Platform struct {
	Arch    string // GOARCH / OCI architecture: amd64, arm64, arm
	Variant string // "v7" for arm
	Binary  string // static lancache for this platform
}

func (p Platform) String() string {
	if p.Variant != "" {
		return "linux/" + p.Arch + "/" + p.Variant
	}
	return "linux/" + p.Arch
}

// Options says what to build and where.
type Options struct {
	Version   string
	Platforms []Platform
	// CABundle is a PEM file copied to /etc/ssl/certs/ca-certificates.crt;
	// empty or missing means none (plain-http upstreams only).
	CABundle string
	Created  time.Time // image and file times; fixed for reproducible output
	Layout   string    // OCI layout directory to (re)create
	// Tarballs, when set, is a directory that also gets one
	// `docker load`-able tarball per platform.
	Tarballs string
}

// Build writes the OCI layout (and the tarballs, if asked).
func Build(o Options) error {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var adds []mutate.IndexAddendum
	for _, p := range o.Platforms {
		img, err := image(o, p)
		if err != nil {
			return fmt.Errorf("image %s: %w", p, err)
		}
		adds = append(adds, mutate.IndexAddendum{
			Add: img,
			Descriptor: v1.Descriptor{
				MediaType: types.OCIManifestSchema1,
				Platform:  &v1.Platform{OS: "linux", Architecture: p.Arch, Variant: p.Variant},
			},
		})
		if o.Tarballs != "" {
			tag, err := name.NewTag("lancache:" + tagSafe(o.Version))
			if err != nil {
				return err
			}
			if err := tarball.WriteToFile(path.Join(o.Tarballs, TarballName(p)), tag, img); err != nil {
				return fmt.Errorf("tarball %s: %w", p, err)
			}
		}
	}
	idx = mutate.AppendManifests(idx, adds...)
	if err := os.RemoveAll(o.Layout); err != nil {
		return err
	}
	lp, err := layout.Write(o.Layout, empty.Index)
	if err != nil {
		return fmt.Errorf("write OCI layout %s: %w", o.Layout, err)
	}
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{RefNameAnnotation: tagSafe(o.Version)})); err != nil {
		return fmt.Errorf("write OCI layout %s: %w", o.Layout, err)
	}
	return nil
}

// TarballName is the file name of a platform's `docker load` tarball.
func TarballName(p Platform) string {
	return "lancache-image-" + p.Arch + p.Variant + ".tar"
}

// tagSafe makes a version usable as an image tag ([A-Za-z0-9_.-]).
func tagSafe(v string) string {
	b := []byte(v)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			b[i] = '_'
		}
	}
	return string(b)
}

func image(o Options, p Platform) (v1.Image, error) {
	layerTar, hasCA, err := rootfs(o, p)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	env := []string{
		"PATH=/usr/bin",
		// An appliance pulls through from the public cache unless told otherwise
		// (LANCACHE_UPSTREAM= with an empty value turns that off).
		"LANCACHE_UPSTREAM=https://cache.nixos.org",
	}
	if hasCA {
		env = append(env, "SSL_CERT_FILE="+CABundle)
	}
	vols := map[string]struct{}{}
	for _, v := range Volumes {
		vols[v] = struct{}{}
	}
	cfg := &v1.ConfigFile{
		Architecture: p.Arch,
		Variant:      p.Variant,
		OS:           "linux",
		Created:      v1.Time{Time: o.Created},
		Config: v1.Config{
			Entrypoint:   Entrypoint,
			Env:          env,
			ExposedPorts: map[string]struct{}{HTTPPort: {}, QUICPort: {}},
			Volumes:      vols,
			User:         fmt.Sprintf("%d:%d", UID, UID),
			WorkingDir:   StateDir,
			Labels: map[string]string{
				"org.opencontainers.image.title":       "lancache",
				"org.opencontainers.image.description": "LAN-first peer cache for Nix (appliance mode)",
				"org.opencontainers.image.version":     o.Version,
				"org.opencontainers.image.source":      "https://github.com/lancache/lancache",
			},
		},
		RootFS: v1.RootFS{Type: "layers"},
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, err
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: o.Created}, CreatedBy: "lancache packaging/cmd/lancache-dist", Comment: "static lancache binary"},
	})
	if err != nil {
		return nil, err
	}
	return img, nil
}

// rootfs returns the single layer's tar: the binary, an optional CA bundle,
// a passwd entry for the unprivileged user and its writable directories.
func rootfs(o Options, p Platform) ([]byte, bool, error) {
	bin, err := os.ReadFile(p.Binary)
	if err != nil {
		return nil, false, err
	}
	var ca []byte
	if o.CABundle != "" {
		ca, err = os.ReadFile(o.CABundle)
		if err != nil && !os.IsNotExist(err) {
			return nil, false, err
		}
	}
	type entry struct {
		mode  int64
		uid   int
		data  []byte
		isDir bool
	}
	files := map[string]entry{
		"etc/":                {mode: 0o755, isDir: true},
		"etc/passwd":          {mode: 0o644, data: []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nlancache:x:%d:%d:lancache:%s:/sbin/nologin\n", UID, UID, StateDir))},
		"etc/group":           {mode: 0o644, data: []byte(fmt.Sprintf("root:x:0:\nlancache:x:%d:\n", UID))},
		"tmp/":                {mode: 0o1777, isDir: true},
		"usr/":                {mode: 0o755, isDir: true},
		"usr/bin/":            {mode: 0o755, isDir: true},
		"usr/bin/lancache":    {mode: 0o755, data: bin},
		"var/":                {mode: 0o755, isDir: true},
		"var/cache/":          {mode: 0o755, isDir: true},
		"var/lib/":            {mode: 0o755, isDir: true},
		"var/cache/lancache/": {mode: 0o750, uid: UID, isDir: true},
		"var/lib/lancache/":   {mode: 0o700, uid: UID, isDir: true},
	}
	if len(ca) > 0 {
		files["etc/ssl/"] = entry{mode: 0o755, isDir: true}
		files["etc/ssl/certs/"] = entry{mode: 0o755, isDir: true}
		files["etc/ssl/certs/ca-certificates.crt"] = entry{mode: 0o644, data: ca}
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := files[n]
		h := &tar.Header{Name: n, Mode: e.mode, Uid: e.uid, Gid: e.uid, ModTime: o.Created, Format: tar.FormatPAX}
		if e.isDir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, false, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, false, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, false, err
	}
	return buf.Bytes(), len(ca) > 0, nil
}
