package transfer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/statusapi"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// The rate of an active transfer is its current rate (bytes over the last
// few seconds), not the average since it started: it falls to zero when
// the transfer stalls and shows a speed-up at once.
func TestTransferRateIsCurrent(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)}
	ts := &transfers{now: clk.now}
	ts.init()
	x := ts.start(cache.Hash{1}, "p", 1<<30)

	const mib = 1 << 20
	// feed receives rate bytes per second for d, in 50 ms steps.
	feed := func(rate float64, d time.Duration) {
		for step := 50 * time.Millisecond; d > 0; d -= step {
			clk.advance(step)
			x.add(int64(rate * step.Seconds()))
		}
	}
	rate := func() float64 {
		l := ts.list()
		if len(l) != 1 {
			t.Fatalf("%d transfers listed, want 1", len(l))
		}
		return l[0].Rate
	}
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 0.05*want {
			t.Errorf("%s: rate %.2f MiB/s, want %.2f MiB/s", what, got/mib, want/mib)
		}
	}

	feed(2*mib, 500*time.Millisecond)
	near("half a second in", rate(), 2*mib)

	feed(4*mib, 10*time.Second)
	near("steady 4 MiB/s", rate(), 4*mib)

	clk.advance(rateWindow + rateBucket)
	if got := rate(); got != 0 {
		t.Errorf("stalled for %v: rate %.2f MiB/s, want 0 (the average since the start is %.2f MiB/s)",
			rateWindow+rateBucket, got/mib, float64(41*mib)/clk.t.Sub(x.start).Seconds()/mib)
	}

	feed(16*mib, rateWindow)
	near("sped up to 16 MiB/s", rate(), 16*mib)

	// Half the window later, at 8 MiB/s: the window holds half of each.
	feed(8*mib, rateWindow/2)
	near("slowed to 8 MiB/s for half the window", rate(), 12*mib)

	// A finished transfer's rate is its average.
	done := x.done
	elapsed := clk.t.Sub(x.start).Seconds()
	x.finish(nil)
	clk.advance(time.Minute)
	l := ts.list()
	if len(l) != 1 || l[0].Result != statusapi.ResultOK {
		t.Fatalf("after finish: %+v", l)
	}
	near("finished", l[0].Rate, float64(done)/elapsed)
}

// A meter that has seen nothing, or whose bytes are all older than the
// window, reads zero; a long gap does not leave stale buckets behind.
func TestRateMeterGaps(t *testing.T) {
	start := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	m := rateMeter{start: start}
	if r := m.rate(start); r != 0 {
		t.Fatalf("rate at start = %v", r)
	}
	m.add(start.Add(100*time.Millisecond), 1000)
	// 17 buckets later the old bucket's slot is reused: it must have been
	// cleared.
	later := start.Add(100*time.Millisecond + (rateBuckets+1)*rateBucket)
	m.add(later, 500)
	want := 500 / later.Sub(start.Add(time.Duration(m.slot(later)-rateBuckets+1)*rateBucket)).Seconds()
	if r := m.rate(later); math.Abs(r-want) > 1e-9 {
		t.Fatalf("rate after a gap = %v, want %v", r, want)
	}
	if r := m.rate(later.Add(time.Hour)); r != 0 {
		t.Fatalf("rate an hour later = %v", r)
	}
}

// How a transfer ended is one of the status API's results.
func TestTransferResult(t *testing.T) {
	for _, c := range []struct {
		err  error
		want statusapi.Result
	}{
		{nil, statusapi.ResultOK},
		{fmt.Errorf("NAR x from [a]: %w", cache.ErrHashMismatch), statusapi.ResultHashMismatch},
		{fmt.Errorf("NAR x: write: %w", context.Canceled), statusapi.ResultCanceled},
		{errors.New("no peer left"), statusapi.ResultFailed},
	} {
		if got := result(c.err); got != c.want {
			t.Errorf("result(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
