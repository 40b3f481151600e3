package demo

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/lancache/lancache/statusapi"
)

// Report prints one status line per node to w every interval until ctx is
// done.
func (d *Demo) Report(ctx context.Context, w io.Writer, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.PrintStatus(w)
	}
}

// PrintStatus prints one line per node and one line of totals.
func (d *Demo) PrintStatus(w io.Writer) {
	for i, n := range d.nodes {
		s := n.Status()
		connected, active := 0, 0
		for _, p := range s.Peers {
			if p.State == statusapi.StateConnected {
				connected++
			}
		}
		for _, t := range s.Transfers {
			if t.Active() {
				active++
			}
		}
		fmt.Fprintf(w, "%s  http %-15s  peers %d/%d  narinfo hits %-4d  from peers %-9s  to peers %-9s  active %d  verify failures %d\n",
			d.names[i], s.HTTPAddr, connected, len(d.nodes)-1, s.Totals.NarInfoHits,
			humanize.IBytes(s.Totals.BytesFromPeers), humanize.IBytes(s.Totals.BytesServedToPeers), active, s.Totals.VerificationFailures)
	}
	f, v, x := d.Counts()
	fmt.Fprintf(w, "demo: %d NARs fetched, %d verified, %d failed\n", f, v, x)
}
