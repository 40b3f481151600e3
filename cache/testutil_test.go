package cache

import (
	"os"
	"os/exec"
	"testing"
)

// needNix skips when the nix tools are missing, except under CI=true, where
// a skip would hide a broken setup and fails instead.
func needNix(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("nix-store"); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("nix-store not found, and CI=true forbids skipping (install nix-bin)")
	}
	t.Skip("nix-store not found: install nix-bin to run this test")
}

// needXZ skips when xz(1) is missing, except under CI=true, where test.sh
// installs it and a skip would hide the missing check: it fails instead.
func needXZ(t testing.TB, why string) {
	t.Helper()
	if _, err := exec.LookPath("xz"); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("xz(1) not found, and CI=true forbids skipping (install xz-utils): %s", why)
	}
	t.Skip("xz(1) is not installed: " + why)
}
