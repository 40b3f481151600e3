package xfers

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
	ts := NewTracker(clk.now)
	x := ts.Start(statusapi.SourcePeer, "0000000000000000000000000000000p", "p", 1<<30)

	const mib = 1 << 20
	// feed receives rate bytes per second for d, in 50 ms steps.
	feed := func(rate float64, d time.Duration) {
		for step := 50 * time.Millisecond; d > 0; d -= step {
			clk.advance(step)
			x.Add(int64(rate * step.Seconds()))
		}
	}
	rate := func() float64 {
		l := ts.List()
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

	clk.advance(RateWindow + rateBucket)
	if got := rate(); got != 0 {
		t.Errorf("stalled for %v: rate %.2f MiB/s, want 0 (the average since the start is %.2f MiB/s)",
			RateWindow+rateBucket, got/mib, float64(41*mib)/clk.t.Sub(x.start).Seconds()/mib)
	}

	feed(16*mib, RateWindow)
	near("sped up to 16 MiB/s", rate(), 16*mib)

	// Half the window later, at 8 MiB/s: the window holds half of each.
	feed(8*mib, RateWindow/2)
	near("slowed to 8 MiB/s for half the window", rate(), 12*mib)

	// A finished transfer's rate is its average.
	x.mu.Lock()
	done := x.done
	x.mu.Unlock()
	elapsed := clk.t.Sub(x.start).Seconds()
	x.Finish(nil)
	clk.advance(time.Minute)
	l := ts.List()
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
		if got := Result(c.err); got != c.want {
			t.Errorf("Result(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

// A discarded transfer is not listed; the recent list keeps the newest.
func TestTrackerLists(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)}
	ts := NewTracker(clk.now)
	ts.Start(statusapi.SourcePeer, "gone", "gone", 10).Discard()
	for i := range Recent + 5 {
		clk.advance(time.Second)
		ts.Start(statusapi.SourceCache, fmt.Sprint(i), "p", 10).Finish(nil)
	}
	clk.advance(time.Second)
	active := ts.Start(statusapi.SourcePeer, "active", "a", 10)
	l := ts.List()
	if len(l) != 1+Recent || l[0].Hash != "active" || !l[0].Finished.IsZero() || l[1].Hash != fmt.Sprint(Recent+4) {
		t.Fatalf("listed %d transfers, first %q then %q", len(l), l[0].Hash, l[1].Hash)
	}
	for _, s := range l {
		if s.Hash == "gone" {
			t.Fatal("a discarded transfer is listed")
		}
	}
	active.Finish(errors.New("boom"))
	if l := ts.List(); l[0].Hash != "active" || l[0].Result != statusapi.ResultFailed || l[0].Error != "boom" {
		t.Fatalf("after finish: %+v", l[0])
	}
}
