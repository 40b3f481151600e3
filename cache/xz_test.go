package cache

import (
	"bytes"
	"errors"
	"io"
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

// noXZ is a lookPath that finds no xz(1).
func noXZ(string) (string, error) { return "", exec.ErrNotFound }

// The xz(1) and pure-Go decoders accept exactly the same files: trailing
// bytes after the last stream are an error for both (xz --single-stream
// ignored them, so a file with garbage appended passed the NarHash check).
func TestXZDecodersAgree(t *testing.T) {
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("xz(1) is not installed: only one decoder to compare")
	}
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
