package tui

import (
	"fmt"
	"math"
	"time"
)

// formatBytes renders a byte count compactly in IEC units ("512 B",
// "1.5 KiB", "42 MiB"), at most 8 characters wide.
func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n) / unit
	i := 0
	for {
		// Round the way the format below will, so 1023.7 KiB becomes
		// "1.0 MiB" rather than "1024 KiB".
		r := math.Round(v)
		if v < 10 {
			r = math.Round(v*10) / 10
		}
		if r < unit || i == len(units)-1 {
			break
		}
		v /= unit
		i++
	}
	if v < 9.95 {
		return fmt.Sprintf("%.1f %s", v, units[i])
	}
	return fmt.Sprintf("%.0f %s", v, units[i])
}

// formatSigned is formatBytes for a signed count; negative counts (which
// the daemon never sends) render as zero.
func formatSigned(n int64) string {
	if n < 0 {
		n = 0
	}
	return formatBytes(uint64(n))
}

// formatRate renders a transfer rate in bytes per second, or "-" when
// there is none.
func formatRate(bps float64) string {
	if bps <= 0 || math.IsNaN(bps) || math.IsInf(bps, 0) {
		return "-"
	}
	return formatBytes(uint64(bps)) + "/s"
}

// eta is the time left to move remaining bytes at rate bytes per second;
// ok is false when it cannot be known (no rate, unknown size).
func eta(remaining int64, rate float64) (d time.Duration, ok bool) {
	if remaining < 0 || rate <= 0 || math.IsNaN(rate) || math.IsInf(rate, 0) {
		return 0, false
	}
	secs := float64(remaining) / rate
	if secs > float64(math.MaxInt64/int64(time.Second)) {
		return time.Duration(math.MaxInt64), true
	}
	return time.Duration(secs * float64(time.Second)), true
}

// formatETA renders the time left to move remaining bytes at rate bytes per
// second: "<1s", "45s", "3m05s", "2h07m", or "--" when unknown.
func formatETA(remaining int64, rate float64) string {
	if remaining == 0 {
		return "0s"
	}
	d, ok := eta(remaining, rate)
	if !ok {
		return "--"
	}
	if d < time.Second {
		return "<1s"
	}
	if d >= 100*time.Hour {
		return ">99h"
	}
	return formatDuration(d)
}

// formatDuration renders a duration to the second, with at most two
// units: "45s", "12m05s", "3h04m", "2d03h".
func formatDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	default:
		return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
	}
}

// hitRatio is the share of narinfo lookups answered on the LAN; ok is false
// before the first lookup.
func hitRatio(hits, misses uint64) (ratio float64, ok bool) {
	total := float64(hits) + float64(misses)
	if total == 0 {
		return 0, false
	}
	return float64(hits) / total, true
}

// formatHitRatio renders hitRatio as a percentage, or "n/a" before the
// first lookup.
func formatHitRatio(hits, misses uint64) string {
	r, ok := hitRatio(hits, misses)
	if !ok {
		return "n/a"
	}
	return fmt.Sprintf("%.1f%%", r*100)
}

// formatRTT renders a round-trip time given in milliseconds.
func formatRTT(ms float64) string {
	switch {
	case ms <= 0 || math.IsNaN(ms) || math.IsInf(ms, 0):
		return "-"
	case ms < 10:
		return fmt.Sprintf("%.1fms", ms)
	case ms < 10000:
		return fmt.Sprintf("%.0fms", ms)
	default:
		return fmt.Sprintf("%.0fs", ms/1000)
	}
}

// formatCount renders a count compactly: "999", "12.3k", "4.5M".
func formatCount(n int) string {
	switch {
	case n < 1000:
		return fmt.Sprintf("%d", n)
	case n < 999_500:
		if n < 9_950 {
			return fmt.Sprintf("%.1fk", float64(n)/1e3)
		}
		return fmt.Sprintf("%.0fk", float64(n)/1e3)
	default:
		if n < 9_950_000 {
			return fmt.Sprintf("%.1fM", float64(n)/1e6)
		}
		return fmt.Sprintf("%.0fM", float64(n)/1e6)
	}
}

// bytesSaved is how much of what this node served to Nix did not come from
// the upstream cache: it came from the LAN or from the node's own disk.
// Upstream bytes fetched on behalf of peers are counted against it too, so
// on an appliance it is a lower bound.
func bytesSaved(servedToNix, fromUpstream uint64) uint64 {
	if fromUpstream >= servedToNix {
		return 0
	}
	return servedToNix - fromUpstream
}
