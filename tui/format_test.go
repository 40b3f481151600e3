package tui

import (
	"math"
	"testing"
	"time"
)

func TestFormatBytes(t *testing.T) {
	for _, c := range []struct {
		in   uint64
		want string
	}{
		{0, "0 B"},
		{1, "1 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{10*1024 - 52, "9.9 KiB"},
		{10*1024 - 51, "10 KiB"}, // rounds to 10.0: shown without the decimal
		{999 * 1024, "999 KiB"},
		{1024*1024 - 1, "1.0 MiB"}, // 1023.999 KiB would round to "1024 KiB"
		{1023 * 1024, "1023 KiB"},
		{42 * mib, "42 MiB"},
		{5*gib + 300*mib, "5.3 GiB"},
		{1 << 40, "1.0 TiB"},
		{math.MaxUint64, "16 EiB"},
	} {
		if got := formatBytes(c.in); got != c.want {
			t.Errorf("formatBytes(%d) = %q, want %q", c.in, got, c.want)
		}
		if len(formatBytes(c.in)) > 8 {
			t.Errorf("formatBytes(%d) = %q, wider than 8", c.in, formatBytes(c.in))
		}
	}
	if got := formatSigned(-5); got != "0 B" {
		t.Errorf("formatSigned(-5) = %q", got)
	}
}

func TestFormatRate(t *testing.T) {
	for _, c := range []struct {
		in   float64
		want string
	}{
		{0, "-"},
		{-1, "-"},
		{math.NaN(), "-"},
		{math.Inf(1), "-"},
		{512, "512 B/s"},
		{12.5 * mib, "12 MiB/s"},
		{1.25 * gib, "1.2 GiB/s"},
	} {
		if got := formatRate(c.in); got != c.want {
			t.Errorf("formatRate(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestFormatETA(t *testing.T) {
	for _, c := range []struct {
		remaining int64
		rate      float64
		want      string
	}{
		{0, 0, "0s"},
		{100, 0, "--"},
		{100, -1, "--"},
		{-1, 100, "--"},
		{100, math.NaN(), "--"},
		{100, 1000, "<1s"},
		{45 * mib, mib, "45s"},
		{185 * mib, mib, "3m05s"},
		{(2*3600 + 7*60) * kib, kib, "2h07m"},
		{1 << 62, 1, ">99h"},
	} {
		if got := formatETA(c.remaining, c.rate); got != c.want {
			t.Errorf("formatETA(%d, %v) = %q, want %q", c.remaining, c.rate, got, c.want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	for _, c := range []struct {
		in   time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{0, "0s"},
		{59 * time.Second, "59s"},
		{61 * time.Second, "1m01s"},
		{3*time.Hour + 4*time.Minute + 59*time.Second, "3h04m"},
		{50 * time.Hour, "2d02h"},
	} {
		if got := formatDuration(c.in); got != c.want {
			t.Errorf("formatDuration(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestHitRatio(t *testing.T) {
	if _, ok := hitRatio(0, 0); ok {
		t.Error("hitRatio(0, 0) is known, want unknown")
	}
	if r, ok := hitRatio(3, 1); !ok || r != 0.75 {
		t.Errorf("hitRatio(3, 1) = %v, %v", r, ok)
	}
	for _, c := range []struct {
		hits, misses uint64
		want         string
	}{
		{0, 0, "n/a"},
		{0, 5, "0.0%"},
		{5, 0, "100.0%"},
		{412, 88, "82.4%"},
		{math.MaxUint64, math.MaxUint64, "50.0%"}, // no overflow
	} {
		if got := formatHitRatio(c.hits, c.misses); got != c.want {
			t.Errorf("formatHitRatio(%d, %d) = %q, want %q", c.hits, c.misses, got, c.want)
		}
	}
}

func TestBytesSaved(t *testing.T) {
	if got := bytesSaved(100, 30); got != 70 {
		t.Errorf("bytesSaved(100, 30) = %d", got)
	}
	if got := bytesSaved(30, 100); got != 0 {
		t.Errorf("bytesSaved(30, 100) = %d, want 0", got)
	}
}

func TestFormatSmall(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{formatRTT(0), "-"},
		{formatRTT(0.83), "0.8ms"},
		{formatRTT(12.4), "12ms"},
		{formatRTT(25000), "25s"},
		{formatCount(999), "999"},
		{formatCount(1234), "1.2k"},
		{formatCount(48213), "48k"},
		{formatCount(999_499), "999k"},
		{formatCount(999_500), "1.0M"},
		{formatCount(12_345_678), "12M"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

func TestFitColumns(t *testing.T) {
	cols := []column{
		{width: 4, prio: 9},
		{width: 3, flex: true, max: 6, prio: 8},
		{width: 5, prio: 1},
		{width: 2, flex: true, prio: 5},
	}
	for _, c := range []struct {
		total int
		want  []int
	}{
		{18, []int{4, 3, 5, 2}},   // exactly the minimum: 4+3+5+2 + 4 gaps
		{24, []int{4, 6, 5, 5}},   // slack shared; column 1 stops at its max
		{17, []int{4, 6, 0, 4}},   // lowest priority dropped, space shared again
		{5, []int{4, 0, 0, 0}},    // only the most important left
		{2, []int{4, 0, 0, 0}},    // never drops the last column
		{100, []int{4, 6, 5, 81}}, // the unbounded flexible column takes the rest
	} {
		got := fitColumns(cols, c.total)
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("fitColumns(%d) = %v, want %v", c.total, got, c.want)
				break
			}
		}
	}
}

func TestAllocate(t *testing.T) {
	for _, c := range []struct {
		want  []int
		avail int
		order []int
		out   []int
	}{
		{[]int{5, 5, 5}, 20, []int{0, 1, 2}, []int{5, 5, 5}},
		{[]int{5, 5, 5}, 7, []int{1, 0, 2}, []int{2, 3, 2}},
		{[]int{1, 9, 2}, 8, []int{0, 1, 2}, []int{1, 5, 2}},
		{[]int{3, 3, 3}, 1, []int{0, 1, 2}, []int{1, 1, 1}}, // at least one each
	} {
		got := allocate(c.want, c.avail, c.order)
		for i := range got {
			if got[i] != c.out[i] {
				t.Errorf("allocate(%v, %d, %v) = %v, want %v", c.want, c.avail, c.order, got, c.out)
				break
			}
		}
	}
}
