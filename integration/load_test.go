package integration

import (
	"bufio"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// loadDuration is how long TestLoad drives the daemon:
// $LANCACHE_LOAD_SECONDS, default 10.
func loadDuration(t *testing.T) time.Duration {
	s := os.Getenv("LANCACHE_LOAD_SECONDS")
	if s == "" {
		return 10 * time.Second
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("LANCACHE_LOAD_SECONDS=%q: want a number of seconds", s)
	}
	return time.Duration(n) * time.Second
}

// TestLoad drives one daemon serving the fixture store with 200 narinfo
// requests a second (half hits, half misses) and 20 NAR downloads at a
// time (issue 8), and prints the peak RSS (VmHWM), goroutines before and
// after, narinfo latency percentiles and throughput. It asserts only
// generous sanity bounds: no errors, every NAR whole, goroutines back near
// the baseline, memory bounded. Run it alone for figures:
//
//	sudo go test -count=1 -run TestLoad -v ./integration/ (add LANCACHE_LOAD_SECONDS=60)
func TestLoad(t *testing.T) {
	fx := newStoreFixture(t)
	d := startDaemon(t, serveOpts{StoreRoot: fx.Root, Keys: []string{fx.Key}})
	dur := loadDuration(t)
	const narinfoRate, narWorkers, narinfoWorkers = 200, 20, 32

	// The NAR URLs and sizes of the closure, from the daemon itself.
	type nar struct {
		url  string
		size int64
	}
	var nars []nar
	var hits []string
	for _, p := range fx.Closure {
		h := hashPart(p)
		hits = append(hits, "/"+h+".narinfo")
		ni, err := parseNarinfo(d.wantStatus(t, "GET", "/"+h+".narinfo", 200))
		if err != nil {
			t.Fatal(err)
		}
		size, _ := strconv.ParseInt(one(ni, "FileSize"), 10, 64)
		if size == 0 {
			size, _ = strconv.ParseInt(one(ni, "NarSize"), 10, 64)
		}
		nars = append(nars, nar{"/" + one(ni, "URL"), size})
	}
	d.client.CloseIdleConnections()
	time.Sleep(200 * time.Millisecond)
	before := goroutines(t, d)

	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: narWorkers + narinfoWorkers}}
	defer client.CloseIdleConnections()
	var (
		errs      atomic.Int64
		firstErr  sync.Once
		errMsg    string
		narCount  atomic.Int64
		narBytes  atomic.Int64
		latMu     sync.Mutex
		latencies []time.Duration
		wg        sync.WaitGroup
	)
	fail := func(format string, args ...any) {
		errs.Add(1)
		firstErr.Do(func() { errMsg = fmt.Sprintf(format, args...) })
	}
	start := time.Now()
	deadline := start.Add(dur)

	// NAR downloads: narWorkers loops, each fetching NARs round-robin.
	for w := range narWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; time.Now().Before(deadline); i++ {
				n := nars[i%len(nars)]
				resp, err := client.Get(d.URL + n.url)
				if err != nil {
					fail("GET %s: %v", n.url, err)
					continue
				}
				got, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || got != n.size {
					fail("GET %s: %s, %d of %d bytes, %v", n.url, resp.Status, got, n.size, err)
					continue
				}
				narCount.Add(1)
				narBytes.Add(got)
			}
		}()
	}

	// Narinfo requests, paced at narinfoRate, served by a pool.
	jobs := make(chan string, narinfoWorkers)
	for range narinfoWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range jobs {
				t0 := time.Now()
				resp, err := client.Get(d.URL + p)
				if err != nil {
					fail("GET %s: %v", p, err)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				took := time.Since(t0)
				want := 404
				if slices.Contains(hits, p) {
					want = 200
				}
				if resp.StatusCode != want {
					fail("GET %s: %s, want %d", p, resp.Status, want)
				}
				latMu.Lock()
				latencies = append(latencies, took)
				latMu.Unlock()
			}
		}()
	}
	tick := time.NewTicker(time.Second / narinfoRate)
	var peak uint64
	var sent, dropped int
	for i := 0; time.Now().Before(deadline); i++ {
		<-tick.C
		p := hits[i%len(hits)]
		if i%2 == 1 {
			var b [20]byte
			rand.Read(b[:])
			p = "/" + nixbase32.EncodeToString(b[:]) + ".narinfo"
		}
		select {
		case jobs <- p:
			sent++
		default:
			dropped++ // every worker busy: the daemon is behind
		}
		if i%narinfoRate == 0 {
			peak = max(peak, vmHWM(t, d))
		}
	}
	tick.Stop()
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	peak = max(peak, vmHWM(t, d))
	client.CloseIdleConnections()

	// The daemon's goroutines should return to the baseline once the
	// clients have gone.
	var after int
	for settle := time.Now().Add(10 * time.Second); ; {
		after = goroutines(t, d)
		if after <= before+5 || time.Now().After(settle) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}

	slices.Sort(latencies)
	pct := func(q float64) time.Duration {
		if len(latencies) == 0 {
			return 0
		}
		return latencies[min(len(latencies)-1, int(q*float64(len(latencies))))]
	}
	t.Logf("load for %v (race=%v): %d narinfo requests (%.0f/s, %d not sent: all %d workers busy), p50 %v p99 %v max %v; %d NARs (%d MiB, %.0f MiB/s) by %d concurrent downloaders; peak RSS (VmHWM) %d MiB; goroutines %d before, %d after; %d errors",
		elapsed.Round(time.Millisecond), raceEnabled, len(latencies), float64(len(latencies))/elapsed.Seconds(), dropped, narinfoWorkers,
		pct(0.5).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), pct(1).Round(time.Microsecond),
		narCount.Load(), narBytes.Load()>>20, float64(narBytes.Load())/(1<<20)/elapsed.Seconds(), narWorkers,
		peak>>20, before, after, errs.Load())

	if n := errs.Load(); n > 0 {
		t.Errorf("%d failed requests; the first: %s", n, errMsg)
	}
	if sent < int(dur.Seconds())*narinfoRate/2 {
		t.Errorf("only %d narinfo requests were sent in %v", sent, dur)
	}
	if p99 := pct(0.99); p99 > 2*time.Second {
		t.Errorf("p99 narinfo latency %v; a lookup must stay fast under load", p99)
	}
	if after > before+5 {
		t.Errorf("goroutines: %d before the load, %d 10 s after it; something leaks", before, after)
	}
	if limit := uint64(1 << 30); peak > limit {
		t.Errorf("peak RSS %d MiB beyond %d MiB", peak>>20, limit>>20)
	}
	if narCount.Load() == 0 {
		t.Error("no NAR download finished")
	}
	d.Stop(syscall.SIGTERM)
}

// goroutines reads go_goroutines from the daemon's /metrics.
func goroutines(t *testing.T, d *daemon) int {
	t.Helper()
	code, body, err := d.fetch("GET", "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	d.client.CloseIdleConnections()
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("go_goroutines %q: %v", v, err)
			}
			return int(f)
		}
	}
	t.Fatal("no go_goroutines in /metrics")
	return 0
}

// vmHWM is the daemon process's peak resident set size in bytes.
func vmHWM(t *testing.T, d *daemon) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("daemon status: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/<pid>/status")
	return 0
}
