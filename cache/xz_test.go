package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

func xzBytes(t testing.TB, data string) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := xz.NewWriter(&b)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(data))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// xzIndexStart is the offset of the index of a one-stream xz file: the
// stream's blocks end there.
func xzIndexStart(t testing.TB, f []byte) int {
	t.Helper()
	backward := (int(binary.LittleEndian.Uint32(f[len(f)-8:])) + 1) * 4
	i := len(f) - 12 - backward
	if i <= 12 || f[i] != 0 {
		t.Fatalf("no index at %d", i)
	}
	return i
}

// noXZ is a lookPath that finds no xz(1).
func noXZ(string) (string, error) { return "", exec.ErrNotFound }

// The xz(1) and pure-Go decoders accept exactly the same files: trailing
// bytes after the last stream are an error for both (xz --single-stream
// ignored them, so a file with garbage appended passed the NarHash check).
func TestXZDecodersAgree(t *testing.T) {
	needXZ(t, "only one decoder to compare")
	var lz bytes.Buffer
	lw, _ := lzma.NewWriter(&lz)
	lw.Write([]byte("legacy"))
	lw.Close()
	one, two := xzBytes(t, "first stream\n"), xzBytes(t, "second stream\n")
	cases := []struct {
		name string
		file []byte
		want string // "" means an error
	}{
		{"one stream", one, "first stream\n"},
		{"two streams", cat(one, two), "first stream\nsecond stream\n"},
		{"stream padding", cat(one, make([]byte, 8)), "first stream\n"},
		{"trailing garbage", cat(one, []byte("garbage!")), ""},
		{"bad padding", cat(one, make([]byte, 3)), ""},
		{"truncated", one[:len(one)-1], ""},
		{"truncated before the index", one[:xzIndexStart(t, one)], ""},
		{"second stream truncated before its index", cat(one, two[:xzIndexStart(t, two)]), ""},
		{"trailing stream header", cat(one, two[:12]), ""},
		{"trailing stream header and footer", cat(one, two[:12], two[len(two)-12:]), ""},
		{"lzma format", lz.Bytes(), ""},
		{"empty", nil, ""},
	}
	decoders := map[string]*Decompressors{"xz(1)": {}, "go": {lookPath: noXZ}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for name, d := range decoders {
				r, err := d.xzReader(bytes.NewReader(tc.file), xzProcessMin)
				var got []byte
				if err == nil {
					got, err = io.ReadAll(r)
					r.Close()
				}
				switch {
				case tc.want == "" && err == nil:
					t.Errorf("%s accepted it: %q", name, got)
				case tc.want != "" && (err != nil || string(got) != tc.want):
					t.Errorf("%s: %q, %v; want %q", name, got, err, tc.want)
				}
			}
		})
	}
}

// A large xz NAR (the xz(1) path) with bytes appended is refused by the
// Verifier, whichever decoder runs.
func TestVerifierRejectsXZTrailingData(t *testing.T) {
	info, file := testFile(t, "xz", xzProcessMin+1000)
	bad := cat(file, []byte("trailing garbage"))
	info.FileSize = uint64(len(bad)) // as a narinfo of the appended file says
	for name, d := range map[string]*Decompressors{"system": {}, "go": {lookPath: noXZ}} {
		v, err := d.NewVerifier(info)
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Write(bad)
		if err == nil {
			err = v.Close()
		} else {
			v.Abort()
		}
		if !errors.Is(err, ErrHashMismatch) {
			t.Errorf("%s: %v, want ErrHashMismatch", name, err)
		}
	}
}

// xz(1) is looked up once per Decompressors, and not at all for small NARs,
// which the pure-Go decoder handles without starting a process.
func TestXZLookedUpOnce(t *testing.T) {
	var lookups atomic.Int32
	d := &Decompressors{lookPath: func(f string) (string, error) {
		lookups.Add(1)
		return exec.LookPath(f)
	}}
	small, file := testFile(t, "xz", 10_000)
	check := func(info *NarInfo, file []byte) {
		v, err := d.NewVerifier(info)
		if err != nil {
			t.Error(err)
			return
		}
		v.Write(file)
		if err := v.Close(); err != nil {
			t.Error(err)
		}
	}
	check(small, file)
	check(small, file)
	if n := lookups.Load(); n != 0 {
		t.Fatalf("%d lookups of xz(1) for small NARs", n)
	}
	large, lfile := testFile(t, "xz", xzProcessMin)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { check(large, lfile) })
	}
	wg.Wait()
	if n := lookups.Load(); n != 1 {
		t.Fatalf("%d lookups of xz(1) for 3 large NARs, want 1", n)
	}
}

// The pure-Go decoder's framing check takes every file xz(1) writes: check
// types, several blocks (with their sizes in the headers, as multi-threaded
// xz writes them), compressed and stored LZMA2 chunks; and refuses each of
// them cut short, as xz(1) does.
func TestXZFramingOfXZOutput(t *testing.T) {
	needXZ(t, "no files of its to read")
	data := make([]byte, 600_000)
	rng := rand.NewChaCha8([32]byte{7})
	rng.Read(data[:200_000]) // incompressible: stored chunks
	for i := 200_000; i < len(data); i++ {
		data[i] = "lancache /nix/store "[i%20]
	}
	gop := &Decompressors{lookPath: noXZ}
	for _, args := range [][]string{
		{"--check=none"}, {"--check=crc32"}, {"--check=crc64"}, {"--check=sha256"},
		{"--block-size=100KiB", "-T2"}, {"-0", "--block-size=64KiB"},
	} {
		cmd := exec.Command("xz", append([]string{"-c"}, args...)...)
		cmd.Stdin = bytes.NewReader(data)
		file, err := cmd.Output()
		if err != nil {
			t.Fatalf("xz %v: %v", args, err)
		}
		for _, f := range [][]byte{file, cat(file, make([]byte, 4), file)} {
			r, _ := gop.xzReader(bytes.NewReader(f), 0)
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, bytes.Repeat(data, len(f)/len(file))) {
				t.Errorf("xz %v, %d bytes: %v", args, len(f), err)
			}
		}
		for _, cut := range []int{12, 13, 100, len(file) / 2, len(file) - 13, len(file) - 12, len(file) - 1} {
			r, err := gop.xzReader(bytes.NewReader(file[:cut]), 0)
			if err == nil {
				_, err = io.ReadAll(r)
			}
			if err == nil {
				t.Errorf("xz %v cut at %d of %d: accepted", args, cut, len(file))
			}
		}
	}
}

// FuzzXZDecodersAgree checks the pure-Go decoder with its framing check
// against xz(1), an independent implementation: both accept the same files
// and decode them to the same bytes.
func FuzzXZDecodersAgree(f *testing.F) {
	needXZ(f, "nothing to compare with")
	one, two := xzBytes(f, "first stream\n"), xzBytes(f, "second stream\n")
	f.Add(one)
	f.Add(cat(one, two))
	f.Add(cat(one, make([]byte, 4)))
	f.Add(cat(one, two[:12], two[len(two)-12:]))
	sys, gop := &Decompressors{}, &Decompressors{lookPath: noXZ}
	f.Fuzz(func(t *testing.T, data []byte) {
		decode := func(d *Decompressors) ([]byte, error) {
			r, err := d.xzReader(bytes.NewReader(data), xzProcessMin)
			if err != nil {
				return nil, err
			}
			defer r.Close()
			return io.ReadAll(io.LimitReader(r, 1<<20))
		}
		a, aerr := decode(sys)
		b, berr := decode(gop)
		if (aerr == nil) != (berr == nil) || !bytes.Equal(a, b) && aerr == nil {
			t.Fatalf("xz(1): %d bytes, %v; Go: %d bytes, %v", len(a), aerr, len(b), berr)
		}
	})
}
