package cache

import (
	"bytes"
	"errors"
	"net/http"
	"testing"
)

// A compressed narinfo need not say FileSize (Nix writes it, but it is
// optional). Its NAR is served whole, with no Content-Length (the length is
// unknown), never as an empty 200.
func TestHandlerServesNARWithoutFileSize(t *testing.T) {
	for _, c := range []string{"zstd", "xz"} {
		t.Run(c, func(t *testing.T) {
			info, file := testFile(t, c, 100_000)
			info.FileSize = 0
			src := newMemSource()
			h := src.add(info, file)
			srv, _ := serveTest(t, src)
			u, _ := narURL(h, info)
			resp, body, err := get(t, srv.URL+"/"+u)
			if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, file) {
				t.Fatalf("GET: %v %v, %d bytes, want %d", err, resp, len(body), len(file))
			}
			if resp.ContentLength != -1 || resp.Header.Get("Content-Length") != "" {
				t.Fatalf("Content-Length %q for a file of unknown size", resp.Header.Get("Content-Length"))
			}
			// A range of a file of unknown size cannot be checked against
			// it: the whole file is the answer.
			resp, body, err = get(t, srv.URL+"/"+u, "Range", "bytes=100-199")
			if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, file) {
				t.Fatalf("range: %v %v, %d bytes", err, resp, len(body))
			}
			req, _ := http.NewRequest(http.MethodHead, srv.URL+"/"+u, nil)
			hresp, err := http.DefaultClient.Do(req)
			if err != nil || hresp.StatusCode != 200 || hresp.Header.Get("Content-Length") != "" {
				t.Fatalf("HEAD: %v %v", err, hresp)
			}
			hresp.Body.Close()
		})
	}
}

// Without FileSize, what a Verifier takes of a compressed file is bounded by
// a limit derived from NarSize: a stream that stays valid forever (xz's
// stream padding, zstd's skippable frames) is cut off there.
func TestVerifierBoundWithoutFileSize(t *testing.T) {
	for _, c := range []string{"zstd", "xz"} {
		t.Run(c, func(t *testing.T) {
			info, file := testFile(t, c, 100_000)
			info.FileSize = 0
			v, err := NewVerifier(info)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.Write(file); err != nil {
				t.Fatal(err)
			}
			var filler []byte
			switch c {
			case "xz":
				filler = make([]byte, 64<<10) // stream padding
			case "zstd":
				// A skippable frame of 1 GiB, then its zero content.
				filler = append([]byte{0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0x40}, make([]byte, 64<<10-8)...)
			}
			limit := maxFileSize(info.NarSize)
			sent := int64(len(file))
			for err == nil && sent <= limit {
				_, err = v.Write(filler)
				sent += int64(len(filler))
				if c == "zstd" {
					filler = make([]byte, len(filler))
				}
			}
			v.Abort()
			if !errors.Is(err, ErrHashMismatch) {
				t.Fatalf("after %d bytes (limit %d): %v, want ErrHashMismatch", sent, limit, err)
			}

			// A good file without FileSize passes.
			v, _ = NewVerifier(info)
			v.Write(file)
			if err := v.Close(); err != nil {
				t.Fatalf("good file without FileSize: %v", err)
			}
		})
	}
}
