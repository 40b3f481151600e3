package demo

import (
	"context"
	"strings"
	"testing"
	"time"
)

// The demo moves real NARs between three nodes over QUIC, through the real
// HTTP endpoint, and every one verifies.
func TestDemoTransfersVerify(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	d, err := Start(ctx, Config{Dir: t.TempDir(), PathsPerNode: 4, MaxPathSize: 1 << 20, ReadRate: -1})
	if err != nil {
		t.Fatal(err)
	}
	var verified int64
	if err := d.Run(ctx, func() {
		go func() {
			// Stop once enough transfers went through.
			for ctx.Err() == nil {
				if _, v, _ := d.Counts(); v >= 6 {
					verified = v
					cancel()
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}); err != nil {
		t.Fatal(err)
	}
	f, v, x := d.Counts()
	if v < 6 || x != 0 {
		t.Fatalf("fetched %d verified %d failed %d (saw %d)", f, v, x, verified)
	}
	var sb strings.Builder
	d.PrintStatus(&sb)
	if !strings.Contains(sb.String(), "demo-a") || !strings.Contains(sb.String(), "0 failed") {
		t.Fatalf("status:\n%s", sb.String())
	}
}
