package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// makeEdgeTree builds a tree with every NAR edge case: regular, executable
// and empty files, nested empty directories, absolute, relative and dangling
// symlinks, unicode names and names that sort differently bytewise.
func makeEdgeTree(t testing.TB) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "tree")
	mk := func(p string, data string, mode os.FileMode) {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	mk("bin/hello", "#!/bin/sh\necho hello\n", 0o755)
	mk("empty", "", 0o644)
	mk("empty-exe", "", 0o700)
	mk("ro", "read only", 0o444)
	mk("odd-mode", "x", 0o654)
	mk("A", "upper", 0o644)
	mk("a", "lower", 0o644)
	mk("a b", "space", 0o644)
	mk("a-b", "dash", 0o644)
	mk("a.b", "dot", 0o644)
	mk("ünïcødé/日本語.txt", "unicode", 0o644)
	mk("big", string(bytes.Repeat([]byte("0123456789abcdef"), 1<<18)), 0o644)
	for _, d := range []string{"empty-dir", "nested/empty/dirs/deep"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{
		"abs-link":      "/etc/passwd",
		"rel-link":      "bin/hello",
		"dangling-link": "does/not/exist",
		"dir-link":      "nested",
	} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func nixDump(t testing.TB, path string) []byte {
	t.Helper()
	out, err := exec.Command("nix-store", "--dump", path).Output()
	if err != nil {
		t.Fatalf("nix-store --dump %s: %v", path, err)
	}
	return out
}

func TestDumpNARMatchesNixStoreDump(t *testing.T) {
	needNix(t)
	root := makeEdgeTree(t)
	for _, p := range []string{root, filepath.Join(root, "bin/hello"), filepath.Join(root, "empty"), filepath.Join(root, "abs-link"), filepath.Join(root, "empty-dir")} {
		want := nixDump(t, p)
		var got bytes.Buffer
		if err := DumpNAR(context.Background(), &got, p, 0, -1); err != nil {
			t.Fatalf("DumpNAR(%s): %v", p, err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("DumpNAR(%s): %d bytes differ from nix-store --dump (%d bytes)", p, got.Len(), len(want))
		}
	}
}

func TestDumpNARRanges(t *testing.T) {
	needNix(t)
	root := makeEdgeTree(t)
	full := nixDump(t, root)
	n := int64(len(full))
	cases := []struct{ off, length int64 }{
		{0, n}, {0, -1}, {0, 1}, {1, 1}, {n - 1, 1}, {n - 1, -1}, {12345, 100000},
		{n / 2, -1}, {n / 3, n / 3}, {0, 0}, {n, 0}, {narBufSize - 1, 3}, {narBufSize, narBufSize + 7},
	}
	for _, c := range cases {
		var got bytes.Buffer
		err := DumpNAR(context.Background(), &got, root, c.off, c.length)
		if err != nil {
			t.Fatalf("range (%d,%d): %v", c.off, c.length, err)
		}
		end := n
		if c.length >= 0 {
			end = c.off + c.length
		}
		if !bytes.Equal(got.Bytes(), full[c.off:end]) {
			t.Fatalf("range (%d,%d): got %d bytes, want slice of %d", c.off, c.length, got.Len(), end-c.off)
		}
	}
	// A range past the end is an error, not a short success.
	if err := DumpNAR(context.Background(), io.Discard, root, n-10, 20); err == nil {
		t.Fatal("range past the end: want error")
	}
}

func TestDumpNARCancelled(t *testing.T) {
	root := makeEdgeTree(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := DumpNAR(ctx, io.Discard, root, 0, -1); err == nil {
		t.Fatal("cancelled context: want error")
	}
}

func BenchmarkDumpNAR(b *testing.B) {
	root := filepath.Join(b.TempDir(), "tree")
	if err := os.MkdirAll(root, 0o755); err != nil {
		b.Fatal(err)
	}
	// 64 MiB in files of varying size, like a typical package.
	data := bytes.Repeat([]byte{0xa5}, 4<<20)
	var total int
	for i := 0; total < 64<<20; i++ {
		size := len(data) >> (i % 8)
		if err := os.WriteFile(filepath.Join(root, "f"+string(rune('a'+i%26))+string(rune('a'+i/26))), data[:size], 0o644); err != nil {
			b.Fatal(err)
		}
		total += size
	}
	var cw countWriter
	if err := DumpNAR(context.Background(), &cw, root, 0, -1); err != nil {
		b.Fatal(err)
	}
	b.Run("discard", func(b *testing.B) {
		b.SetBytes(cw.n)
		for range b.N {
			if err := DumpNAR(context.Background(), io.Discard, root, 0, -1); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Same tree with sha256 as the consumer, as a verifying peer sees it.
	b.Run("sha256", func(b *testing.B) {
		b.SetBytes(cw.n)
		for range b.N {
			h := sha256.New()
			if err := DumpNAR(context.Background(), h, root, 0, -1); err != nil {
				b.Fatal(err)
			}
		}
	})
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }
