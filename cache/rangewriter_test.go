package cache

import (
	"bytes"
	"errors"
	"testing"
)

func TestRangeWriter(t *testing.T) {
	src := make([]byte, 1000)
	for i := range src {
		src[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		name              string
		skip, left, hold  int64
		piece             int
		wantBeforeRelease int
	}{
		{"whole", 0, -1, 0, 64, 1000},
		{"range", 100, 300, 0, 64, 300},
		{"hold-last", 0, -1, 1, 64, 999},
		{"hold-tail-small-writes", 10, 500, 64, 7, 436},
		{"hold-tail-big-writes", 10, 500, 64, 300, 436},
		{"hold-all", 0, 1000, 1000, 100, 0},
		{"hold-more-than-range", 900, -1, 4096, 33, 0},
		{"empty-range", 50, 0, 10, 64, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			rw := &RangeWriter{W: &out, Skip: tc.skip, Left: tc.left, Hold: tc.hold}
			for p := src; len(p) > 0; {
				k := min(tc.piece, len(p))
				if n, err := rw.Write(p[:k]); err != nil || n != k {
					t.Fatalf("Write = %d, %v", n, err)
				}
				p = p[k:]
			}
			if out.Len() != tc.wantBeforeRelease {
				t.Fatalf("%d bytes out before Release, want %d", out.Len(), tc.wantBeforeRelease)
			}
			if rw.Untouched() != (tc.wantBeforeRelease == 0) {
				t.Fatalf("Untouched = %v with %d bytes out", rw.Untouched(), out.Len())
			}
			if err := rw.Release(); err != nil {
				t.Fatal(err)
			}
			end := int64(len(src))
			if tc.left >= 0 {
				end = min(end, tc.skip+tc.left)
			}
			if want := src[tc.skip:end]; !bytes.Equal(out.Bytes(), want) {
				t.Fatalf("got %d bytes, want %d (%d..%d)", out.Len(), len(want), tc.skip, end)
			}
		})
	}
	t.Run("stop-when-done", func(t *testing.T) {
		var out bytes.Buffer
		rw := &RangeWriter{W: &out, Skip: 3, Left: 5, StopWhenDone: true}
		if _, err := rw.Write(src[:4]); err != nil {
			t.Fatal(err)
		}
		if _, err := rw.Write(src[4:20]); !errors.Is(err, ErrRangeDone) || !rw.Done() || !bytes.Equal(out.Bytes(), src[3:8]) {
			t.Fatalf("err %v, done %v, %d bytes", err, rw.Done(), out.Len())
		}
	})
	t.Run("destination-error", func(t *testing.T) {
		bad := errors.New("disk full")
		rw := &RangeWriter{W: failWriter{bad}, Left: -1}
		if _, err := rw.Write(src); !errors.Is(err, bad) || !errors.Is(rw.Err(), bad) {
			t.Fatalf("err %v, Err %v", err, rw.Err())
		}
	})
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }
