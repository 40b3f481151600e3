package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
	inv := NewInventory()
	ctx := context.Background()
	st := openSigned(t, root, pk, inv)
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

// addPaths adds many unsigned paths in one nix-store call.
func addPaths(t testing.TB, root, prefix string, n int) []string {
	t.Helper()
	args := []string{"nix-store", "--store", root, "--add"}
	for i := range n {
		dir := filepath.Join(t.TempDir(), fmt.Sprintf("%s%d", prefix, i))
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "file"), []byte("content of "+dir), 0o644)
		args = append(args, dir)
	}
	return strings.Fields(nixCmd(t, args...))
}

// A change to the database costs a few queries, not two per unshared path:
// paths without a trusted signature (.drv files, local builds) are not
// looked up again, and one with a trusted-named signature that does not
// verify is looked up once, not at every change.
func TestStoreRefreshCost(t *testing.T) {
	const unsigned = 40
	root, _ := chrootStore(t)
	paths := addPaths(t, root, "drv", unsigned)
	sk, pk := testKeys(t)
	// A key with the trusted key's name but other bytes: its signature
	// names a trusted key and never verifies.
	d := t.TempDir()
	nixCmd(t, "nix-store", "--generate-binary-cache-key", "lancache-test-1", filepath.Join(d, "sk"), filepath.Join(d, "pk"))
	forged := addPath(t, root, "forged")
	nixCmd(t, "nix", "store", "sign", "--store", root, "-k", filepath.Join(d, "sk"), forged)

	inv := NewInventory()
	ctx := context.Background()
	st := openSigned(t, root, pk, inv)
	cost := func(what string, max int64) {
		t.Helper()
		before := st.queries.Load()
		if err := st.refresh(ctx); err != nil {
			t.Fatal(err)
		}
		n := st.queries.Load() - before
		t.Logf("%s: %d queries", what, n)
		if n > max {
			t.Errorf("%s: %d queries, want at most %d (%d unshared paths)", what, n, max, unsigned+1)
		}
	}
	// load, count, one recheck query; a new row adds its references.
	cost("first refresh", 3)
	addPath(t, root, "new")
	cost("a new unsigned path", 4)
	cost("no change", 3)
	// A signature appears: that row alone is read in full (2 queries).
	nixCmd(t, "nix", "store", "sign", "--store", root, "-k", sk, paths[3])
	cost("one path signed", 5)
	cost("no change after signing", 3)
	// The forged row gains a good signature: its sigs changed, so it is
	// read again and shared.
	nixCmd(t, "nix", "store", "sign", "--store", root, "-k", sk, forged)
	cost("forged path signed properly", 5)
	for _, p := range []string{paths[3], forged} {
		h, _, _ := SplitStorePath(p)
		if !st.Has(h) || !inv.Has(h) {
			t.Fatalf("%s, signed later, is not shared", p)
		}
	}
	if valid, shared := st.Len(); valid != unsigned+2 || shared != 2 {
		t.Fatalf("valid %d shared %d, want %d 2", valid, shared, unsigned+2)
	}
}

// Swapping the database handle (as a snapshot store does when the file
// changes) never fails a lookup that is under way on the old one.
func TestStoreSwapUnderLookups(t *testing.T) {
	root, paths := chrootStore(t, "swapped")
	sk, pk := testKeys(t)
	nixCmd(t, "nix", "store", "sign", "--store", root, "-k", sk, paths[0])
	ctx := context.Background()
	st := openSigned(t, root, pk, nil)
	h, _, _ := SplitStorePath(paths[0])
	stop := make(chan struct{})
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				if _, err := st.NarInfo(ctx, h); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for range 30 {
		db, err := st.openDB(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		st.swap(db)
	}
	close(stop)
	wg.Wait()
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatalf("lookup during a handle swap: %v", err)
		}
	}
}

// openSigned opens the store at root sharing what the key pk signed.
func openSigned(t *testing.T, root, pk string, inv *Inventory) *Store {
	t.Helper()
	keys, err := ParsePublicKeys(pk)
	if err != nil {
		t.Fatal(err)
	}
	st, err := OpenStore(context.Background(), StoreConfig{Root: root, Policy: Policy{Mode: ShareSigned, Keys: keys}, Inventory: inv})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}
