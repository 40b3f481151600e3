// Package integration holds the end-to-end tests that run the real
// `lancache` binary against the real Nix client: chroot Nix stores with a
// signed closure, `nix copy` through the daemon's HTTP binary-cache face,
// share policies, hostile request paths, and process lifecycle.
//
// The tests need root and Nix (Debian's nix-bin) plus a static busybox
// (busybox-static) to build store paths; without them they skip, except
// when CI=true, where a missing prerequisite fails the run. They build
// ./cmd/lancache once per run (with -race when the tests run with -race);
// LANCACHE_BIN points them at a prebuilt binary instead.
//
// bench/ holds benchmark scripts that are run by hand, not by CI.
package integration
