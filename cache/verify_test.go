package cache

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// testFile returns a NAR-like payload, its narinfo for compression c and the
// file bytes as they would be served.
func testFile(t testing.TB, c string, size int) (*NarInfo, []byte) {
	t.Helper()
	nar := make([]byte, size)
	r := rand.New(rand.NewPCG(1, uint64(size)))
	// Text-like and compressible, as most of a store path is.
	words := []string{"lib", "share", "/nix/store/", "hello", "\x00\x00", "ELF", "GLIBC_2.34", "usage: ", "\n"}
	for i := 0; i < size; {
		i += copy(nar[i:], words[r.IntN(len(words))])
	}
	info := &NarInfo{
		StorePath:   "/nix/store/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-test",
		NarHash:     sha256.Sum256(nar),
		NarSize:     uint64(size),
		Compression: c,
	}
	var file bytes.Buffer
	switch c {
	case "none":
		file.Write(nar)
	case "zstd":
		w, _ := zstd.NewWriter(&file)
		w.Write(nar)
		w.Close()
	case "xz":
		w, _ := xz.NewWriter(&file)
		w.Write(nar)
		w.Close()
	}
	info.FileSize = uint64(file.Len())
	return info, file.Bytes()
}

func TestVerifier(t *testing.T) {
	for _, c := range []string{"none", "zstd", "xz"} {
		t.Run(c, func(t *testing.T) {
			info, file := testFile(t, c, 300_000)
			check := func(data []byte) error {
				v, err := NewVerifier(info)
				if err != nil {
					t.Fatal(err)
				}
				// Odd-sized chunks, like a network.
				for len(data) > 0 {
					n := min(len(data), 7919)
					if _, err := v.Write(data[:n]); err != nil {
						v.Abort()
						return err
					}
					data = data[n:]
				}
				return v.Close()
			}
			if err := check(file); err != nil {
				t.Fatalf("good file: %v", err)
			}
			bad := bytes.Clone(file)
			bad[len(bad)/2] ^= 0x40
			if err := check(bad); !errors.Is(err, ErrHashMismatch) {
				t.Fatalf("flipped byte: %v, want ErrHashMismatch", err)
			}
			if err := check(file[:len(file)-1]); !errors.Is(err, ErrHashMismatch) {
				t.Fatalf("truncated: %v, want ErrHashMismatch", err)
			}
			if err := check(append(bytes.Clone(file), 0)); !errors.Is(err, ErrHashMismatch) {
				t.Fatalf("one byte too many: %v, want ErrHashMismatch", err)
			}
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	for _, c := range []string{"none", "zstd", "xz"} {
		b.Run(c, func(b *testing.B) {
			info, file := testFile(b, c, 16<<20)
			b.SetBytes(int64(info.NarSize))
			for range b.N {
				v, _ := NewVerifier(info)
				io.Copy(v, bytes.NewReader(file))
				if err := v.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
