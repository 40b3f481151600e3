package transfer

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestIdentityPersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	a, err := loadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, NodeKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("node key mode %v, want 0600", fi.Mode().Perm())
	}
	b, err := loadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if a.id != b.id || len(a.id) != 32 {
		t.Fatalf("id changed across loads or malformed: %q %q", a.id, b.id)
	}
	c, err := loadIdentity(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if c.id == a.id {
		t.Fatal("two state directories share an id")
	}
}

func TestFleetKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet.key")
	if err := GenerateFleetKey(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("fleet key mode %v, want 0600", fi.Mode().Perm())
	}
	k1, err := LoadFleetKey(path)
	if err != nil || len(k1) != fleetKeyLen {
		t.Fatalf("load: %d bytes, %v", len(k1), err)
	}
	if err := GenerateFleetKey(path); err == nil {
		t.Fatal("GenerateFleetKey overwrote an existing key")
	}
	k2, _ := LoadFleetKey(path)
	if !bytes.Equal(k1, k2) {
		t.Fatal("key changed")
	}
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, []byte("c2hvcnQ=\n"), 0o600)
	if _, err := LoadFleetKey(bad); err == nil {
		t.Fatal("short key accepted")
	}
}
