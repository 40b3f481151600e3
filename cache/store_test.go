package cache

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// nixEnv runs nix commands as a test may: no build users, no sandbox.
func nixCmd(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(),
		"NIX_CONFIG=build-users-group =\nsandbox = false\nexperimental-features = nix-command",
		"XDG_CACHE_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// chrootStore makes a chroot store holding the given dirs (added unsigned)
// and returns its root and the store paths.
func chrootStore(t testing.TB, names ...string) (string, []string) {
	t.Helper()
	needNix(t)
	if os.Getuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("chroot stores need root and CI=true forbids skipping")
		}
		t.Skip("chroot stores need root")
	}
	root := t.TempDir()
	var paths []string
	for _, n := range names {
		paths = append(paths, addPath(t, root, n))
	}
	return root, paths
}

func addPath(t testing.TB, root, name string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "file"), []byte("content of "+name), 0o644)
	return nixCmd(t, "nix-store", "--store", root, "--add", dir)
}

func testKeys(t testing.TB) (skFile, pk string) {
	t.Helper()
	d := t.TempDir()
	sk, pkf := filepath.Join(d, "sk"), filepath.Join(d, "pk")
	nixCmd(t, "nix-store", "--generate-binary-cache-key", "lancache-test-1", sk, pkf)
	b, _ := os.ReadFile(pkf)
	return sk, strings.TrimSpace(string(b))
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStoreFollowsRegistrationsAndGC(t *testing.T) {
	root, paths := chrootStore(t, "alpha", "beta", "gamma")
	sk, pk := testKeys(t)
	nixCmd(t, "nix", "store", "sign", "--store", root, "-k", sk, paths[0], paths[1])
	keys, err := ParsePublicKeys(pk)
	if err != nil {
		t.Fatal(err)
	}
	inv := NewInventory()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := OpenStore(ctx, StoreConfig{Root: root, Policy: Policy{Mode: ShareSigned, Keys: keys}, Inventory: inv, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	hashOf := func(p string) Hash {
		h, _, err := SplitStorePath(p)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	if valid, shared := st.Len(); valid != 3 || shared != 2 || inv.Len() != 2 {
		t.Fatalf("valid %d shared %d inventory %d", valid, shared, inv.Len())
	}
	// Unsigned: not served.
	if _, err := st.NarInfo(ctx, hashOf(paths[2])); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unsigned path: %v", err)
	}
	info, err := st.NarInfo(ctx, hashOf(paths[0]))
	if err != nil || !info.SignedBy(keys) || info.NarSize == 0 {
		t.Fatalf("signed path: %+v %v", info, err)
	}

	done := make(chan error, 1)
	go func() { done <- st.Run(ctx) }()

	// A new signed registration appears; signing an old path shares it.
	p4 := addPath(t, root, "delta")
	nixCmd(t, "nix", "store", "sign", "--store", root, "-k", sk, p4, paths[2])
	waitFor(t, "new and newly signed paths in the inventory", func() bool {
		return inv.Has(hashOf(p4)) && inv.Has(hashOf(paths[2]))
	})
	// Garbage collection removes them.
	nixCmd(t, "nix-store", "--store", root, "--delete", paths[1], p4)
	waitFor(t, "deleted paths to leave the inventory", func() bool {
		return !inv.Has(hashOf(paths[1])) && !inv.Has(hashOf(p4)) && inv.Len() == 2
	})
	if _, err := st.NarInfo(ctx, hashOf(p4)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted path: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestOpenStoreErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := OpenStore(ctx, StoreConfig{Root: t.TempDir()}); !errors.Is(err, ErrNoStore) {
		t.Fatalf("empty root: %v, want ErrNoStore", err)
	}
	root := t.TempDir()
	db := filepath.Join(root, "nix/var/nix/db/db.sqlite")
	os.MkdirAll(filepath.Dir(db), 0o755)
	os.WriteFile(db, []byte("this is not a database, just junk to make sqlite fail...................................................."), 0o644)
	_, err := OpenStore(ctx, StoreConfig{Root: root})
	if err == nil || errors.Is(err, ErrNoStore) || !strings.Contains(err.Error(), db) {
		t.Fatalf("corrupt DB: %v, want an error naming %s", err, db)
	}
}

// A path deleted and registered again between two polls comes back under a
// new row id: it must stay indexed and advertised exactly once.
func TestStoreReRegisteredPath(t *testing.T) {
	root, paths := chrootStore(t, "again", "other")
	sk, pk := testKeys(t)
	nixCmd(t, "nix", "store", "sign", "--store", root, "-k", sk, paths[0], paths[1])
	keys, err := ParsePublicKeys(pk)
	if err != nil {
		t.Fatal(err)
	}
	inv := NewInventory()
	ctx := context.Background()
	st, err := OpenStore(ctx, StoreConfig{Root: root, Policy: Policy{Mode: ShareSigned, Keys: keys}, Inventory: inv})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h, _, _ := SplitStorePath(paths[0])

	nixCmd(t, "nix-store", "--store", root, "--delete", paths[0])
	if again := addPath(t, root, "again"); again != paths[0] {
		t.Fatalf("re-added as %s, want %s", again, paths[0])
	}
	nixCmd(t, "nix", "store", "sign", "--store", root, "-k", sk, paths[0])
	if err := st.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if !st.Has(h) || !inv.Has(h) {
		t.Fatal("re-registered path lost from the index or the inventory")
	}
	if valid, shared := st.Len(); valid != 2 || shared != 2 || inv.Len() != 2 {
		t.Fatalf("valid %d shared %d inventory %d, want 2 2 2", valid, shared, inv.Len())
	}
	// Deleting it for good removes it once: no advertisement is left behind.
	nixCmd(t, "nix-store", "--store", root, "--delete", paths[0])
	if err := st.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if st.Has(h) || inv.Has(h) {
		t.Fatal("deleted path still indexed or advertised")
	}
	if valid, shared := st.Len(); valid != 1 || shared != 1 || inv.Len() != 1 {
		t.Fatalf("valid %d shared %d inventory %d, want 1 1 1", valid, shared, inv.Len())
	}
}
