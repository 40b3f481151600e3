// Package packaging holds the acceptance tests of lancache's distribution
// artefacts: the Nix files (flake, NixOS and nix-darwin modules), the
// Debian packages and the OCI image.
//
// The artefacts themselves are built by ./cmd/lancache-dist (wrapped by
// build.sh) from the internal packages gobuild, manpage, deb and oci. This
// directory is its own Go module so that the packagers' dependencies (nfpm,
// go-containerregistry) never enter the daemon's module graph.
package packaging
