//go:build linux

package discovery_test

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkNetnsTimeToAllListed measures, with the default configuration,
// the time from starting four daemons at once until each lists the other
// three, over real multicast between network namespaces. Each iteration is
// one run; the figures are medians over the runs:
//
//	go test ./discovery -run '^$' -bench NetnsTimeToAllListed -benchtime 9x
//
// all-listed-ms is from the first process start until every node lists
// every other; node-from-exec-ms and node-from-run-ms are per node, from its
// process start and from its call of Run.
func BenchmarkNetnsTimeToAllListed(b *testing.B) {
	l := newLab(b, 4, false)
	var all, fromExec, fromRun []time.Duration
	for i := 0; i < b.N; i++ {
		ids := make([]string, 4)
		for j := range ids {
			ids[j] = fmt.Sprintf("r%dn%d", i, j)
		}
		first := time.Now()
		nodes := make([]*node, 4)
		for j, id := range ids {
			nodes[j] = l.start(j, nodeCfg{id: id})
		}
		for j, n := range nodes {
			others := slices.Delete(slices.Clone(ids), j, j+1)
			if _, ok := waitFor(30*time.Second, func() bool { return n.lists(others...) }); !ok {
				b.Fatalf("run %d: %s did not list %v within 30s", i, n.id, others)
			}
			now := time.Now()
			n.mu.Lock()
			fromExec = append(fromExec, now.Sub(n.started))
			fromRun = append(fromRun, now.Sub(n.runAt))
			n.mu.Unlock()
		}
		all = append(all, time.Since(first))
		for _, n := range nodes {
			n.stop()
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(median(all)), "all-listed-ms")
	b.ReportMetric(ms(median(fromExec)), "node-from-exec-ms")
	b.ReportMetric(ms(median(fromRun)), "node-from-run-ms")
	b.ReportMetric(0, "ns/op")
	b.Logf("%d runs of 4 nodes: all listed median %v (min %v, max %v); per node from exec median %v, from Run median %v",
		len(all), median(all), slices.Min(all), slices.Max(all), median(fromExec), median(fromRun))
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
