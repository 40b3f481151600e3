package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/lancache/lancache/cache"
)

// TestBadBytesNeverComplete: whether followed through the NAR cache or
// streamed directly, a requester of a NAR whose bytes do not match the
// NarHash never receives the whole file, so that an HTTP client sees a
// response cut short rather than a complete one of bad bytes. Good files
// still arrive whole, ranges too.
func TestBadBytesNeverComplete(t *testing.T) {
	for _, withStore := range []bool{true, false} {
		for _, comp := range []string{"none", "zstd"} {
			t.Run(fmt.Sprintf("%s/store=%v", comp, withStore), func(t *testing.T) {
				f := newFixture(t, withStore, nil)
				bad := f.bc.add("bad", comp, 200_000, corrupt)
				got, err := fetch(t, f.up, bad.info, 0, -1)
				if !errors.Is(err, cache.ErrHashMismatch) {
					t.Fatalf("bad NAR: %v, want ErrHashMismatch", err)
				}
				if len(got) >= len(bad.file) {
					t.Fatalf("bad NAR: the requester got all %d bytes", len(got))
				}
				good := f.bc.add("good", comp, 200_000)
				got, err = fetch(t, f.up, good.info, 0, -1)
				if err != nil || !bytes.Equal(got, good.file) {
					t.Fatalf("good NAR: %v, %d of %d bytes", err, len(got), len(good.file))
				}
				n := int64(len(good.file))
				got, err = fetch(t, f.up, good.info, n-10, 10)
				if err != nil || !bytes.Equal(got, good.file[n-10:]) {
					t.Fatalf("good NAR, last 10 bytes: %v, %d bytes", err, len(got))
				}
			})
		}
	}
}
