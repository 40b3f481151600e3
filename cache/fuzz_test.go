package cache

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"
)

// fuzzCompressions are the compressions FuzzVerifier picks from; the
// seed corpus in testdata/fuzz/FuzzVerifier holds a good file of each.
var fuzzCompressions = []string{"none", "zstd", "xz", "bzip2"}

// FuzzVerifier feeds arbitrary file bytes, in arbitrary chunks, through
// the Verifier of one fixed signed NAR. Whatever the bytes, it must not
// panic or hang, must stop a decompression bomb at NarSize, and must accept
// only bytes that really are the NAR (checked independently, by the
// format's reference tool: see reference). This is the only reader of NAR bytes from peers
// and upstreams: lancache never parses a NAR's structure, it hashes it.
func FuzzVerifier(f *testing.F) {
	for i, c := range fuzzCompressions {
		if c == "bzip2" {
			continue // no encoder in the standard library
		}
		_, file := testFile(f, c, 4096)
		f.Add(file, uint8(i), uint16(0), true)
		f.Add(file, uint8(i), uint16(1000), false)
		f.Add(append(bytes.Clone(file), 0), uint8(i), uint16(7), true)
		f.Add(file[:len(file)/2], uint8(i), uint16(3), true)
		// Trailing garbage with no FileSize to catch it: only the
		// decoder can tell.
		f.Add(append(bytes.Clone(file), "trailing garbage"...), uint8(i), uint16(512), false)
	}
	f.Add([]byte("BZh91AY&SY"), uint8(3), uint16(0), true)
	// The narinfos are made once: compressing per input would dominate.
	infos := map[string]NarInfo{}
	files := map[string][]byte{}
	for _, c := range fuzzCompressions {
		info, file := testFile(f, c, 4096)
		infos[c], files[c] = *info, file
	}
	nar := files["none"]
	f.Fuzz(func(t *testing.T, data []byte, comp uint8, chunk uint16, withFileSize bool) {
		c := fuzzCompressions[int(comp)%len(fuzzCompressions)]
		info, good := infos[c], files[c]
		if !withFileSize && c != "none" {
			info.FileSize = 0 // narinfos may omit it
		}
		v, err := NewVerifier(&info)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			step := int(chunk)%4096 + 1
			for rest := data; len(rest) > 0; {
				n := min(step, len(rest))
				if _, err := v.Write(rest[:n]); err != nil {
					if !errors.Is(err, ErrHashMismatch) {
						done <- errors.New("write error does not wrap ErrHashMismatch: " + err.Error())
						return
					}
					v.Abort()
					done <- err
					return
				}
				rest = rest[n:]
			}
			done <- v.Close()
		}()
		select {
		case err = <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("Verifier hung on %d bytes of %s", len(data), c)
		}
		if err != nil {
			if !errors.Is(err, ErrHashMismatch) {
				t.Fatalf("verdict %v does not wrap ErrHashMismatch", err)
			}
			return
		}
		// Accepted: the bytes must decompress to exactly the NAR.
		if c == "none" {
			if !bytes.Equal(data, good) {
				t.Fatal("accepted bytes that are not the NAR")
			}
			return
		}
		got, err := reference(t, c, data, int64(info.NarSize))
		if err != nil || !bytes.Equal(got, nar) {
			t.Fatalf("accepted %s bytes that %s -dc decodes to something else (%d bytes, %v)", c, c, len(got), err)
		}
	})
}

// reference decodes file with the reference tool of its compression (xz
// from xz-utils, zstd, bzip2), reading every stream or frame to the end of
// the input as Nix's decoders do. It shares no code with the Verifier's
// decoders (Go ports; xz(1) in single-stream mode), so it is the fuzz
// oracle for what the bytes are. Output beyond max+1 bytes is an error.
func reference(t *testing.T, c string, file []byte, max int64) ([]byte, error) {
	t.Helper()
	path, err := exec.LookPath(c)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the oracle for %s needs %s(1): %v", c, c, err)
		}
		t.Skipf("the oracle for %s needs %s(1): %v", c, c, err)
	}
	var out, stderr bytes.Buffer
	cmd := exec.Command(path, "-dcq")
	cmd.Stdin = bytes.NewReader(file)
	cmd.Stdout = &capped{buf: &out, max: max + 1}
	cmd.Stderr = &capped{buf: &stderr, max: 4096}
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s -dcq: %w: %s", c, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out.Bytes(), nil
}

// capped is a writer that fails once max bytes have been written.
type capped struct {
	buf *bytes.Buffer
	max int64
}

func (w *capped) Write(p []byte) (int, error) {
	if int64(w.buf.Len()+len(p)) > w.max {
		return 0, errors.New("too much output")
	}
	return w.buf.Write(p)
}

// FuzzRange checks the Range header parser against every size: whatever
// it accepts lies inside the file, and a 200 is always the whole file.
func FuzzRange(f *testing.F) {
	for _, h := range []string{"", "bytes=0-", "bytes=0-0", "bytes=-1", "bytes=5-2", "bytes=0-1,3-4", "bytes=-0",
		"bytes=9223372036854775807-", "bytes=-9223372036854775808", "bytes= 1-2", "bytes=1-2-3", "items=1-2", "bytes=-"} {
		f.Add(h, int64(100))
	}
	f.Add("bytes=0-", int64(0))
	f.Fuzz(func(t *testing.T, hdr string, size int64) {
		if size < 0 {
			size = -(size + 1)
		}
		start, length, status, ok := parseRange(hdr, size)
		if !ok {
			return
		}
		switch status {
		case http.StatusOK:
			if start != 0 || length != size {
				t.Fatalf("%q of %d: 200 with start %d length %d", hdr, size, start, length)
			}
		case http.StatusPartialContent:
			if start < 0 || length <= 0 || start > size-length {
				t.Fatalf("%q of %d: 206 with start %d length %d outside the file", hdr, size, start, length)
			}
		default:
			t.Fatalf("%q: status %d", hdr, status)
		}
	})
}
