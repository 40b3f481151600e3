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
