package narcache

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/internal/syncbuf"
)

// TestFollowerNeverGetsWholeBadFile: a follower of a write receives every
// byte but the last while the write is open, and the last only after the
// commit; when the commit finds bad bytes, the follower never had them all.
func TestFollowerNeverGetsWholeBadFile(t *testing.T) {
	for _, bad := range []bool{false, true} {
		name := map[bool]string{false: "good", true: "bad"}[bad]
		t.Run(name, func(t *testing.T) {
			c := openCache(t, t.TempDir(), 1<<30, nil)
			it := newItem(t, name, "none", 100_000)
			if bad {
				it.info.NarHash[0] ^= 1
			}
			w, err := c.Begin(it.info)
			if err != nil {
				t.Fatal(err)
			}
			buf := &syncbuf.Buffer{}
			errc := make(chan error, 1)
			go func() { errc <- c.WriteNAR(context.Background(), buf, it.info, 0, -1) }()
			if _, err := w.Write(it.file); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for buf.Len() < len(it.file)-1 {
				if time.Now().After(deadline) {
					t.Fatalf("follower has %d of %d bytes", buf.Len(), len(it.file))
				}
				time.Sleep(time.Millisecond)
			}
			time.Sleep(20 * time.Millisecond) // room for a wrong last byte
			if n := buf.Len(); n != len(it.file)-1 {
				t.Fatalf("follower has %d of %d bytes before the commit; want all but the last", n, len(it.file))
			}
			cerr := w.Commit()
			ferr := <-errc
			if bad {
				if !errors.Is(cerr, cache.ErrHashMismatch) || !errors.Is(ferr, cache.ErrHashMismatch) {
					t.Fatalf("commit %v, follower %v; want ErrHashMismatch for both", cerr, ferr)
				}
				if buf.Len() >= len(it.file) {
					t.Fatalf("follower got all %d bytes of a bad file", buf.Len())
				}
				return
			}
			if cerr != nil || ferr != nil || buf.Len() != len(it.file) {
				t.Fatalf("commit %v, follower %v with %d of %d bytes", cerr, ferr, buf.Len(), len(it.file))
			}
		})
	}
}
