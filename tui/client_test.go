package tui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lancache/lancache/internal/syncbuf"
)

// statusJSON is a status document whose uptime tells test snapshots apart.
func statusJSON(t *testing.T, uptime float64) []byte {
	t.Helper()
	st := emptyStatus()
	st.UptimeSeconds = uptime
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sendEvent writes one Server-Sent Event carrying a status.
func sendEvent(t *testing.T, w http.ResponseWriter, uptime float64) {
	fmt.Fprintf(w, "data: %s\n\n", statusJSON(t, uptime))
	w.(http.Flusher).Flush()
}

func startEvents(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
}

// fastClient is a client with test-sized timings.
func fastClient(addr string) *Client {
	c := NewClient(addr, nil)
	c.pollInterval = 10 * time.Millisecond
	c.requestTO = time.Second
	c.idleTimeout = time.Second
	c.minBackoff = 10 * time.Millisecond
	c.maxBackoff = 40 * time.Millisecond
	c.dropRetry = 30 * time.Millisecond
	c.noStreamRetry = time.Hour
	return c
}

// follow runs c until the test ends and returns its updates.
func follow(t *testing.T, c *Client) <-chan StatusMsg {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	updates := make(chan StatusMsg)
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, func(u StatusMsg) {
			select {
			case updates <- u:
			case <-ctx.Done():
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return updates
}

func next(t *testing.T, updates <-chan StatusMsg) StatusMsg {
	t.Helper()
	select {
	case u := <-updates:
		return u
	case <-time.After(5 * time.Second):
		t.Fatal("no update within 5s")
		return StatusMsg{}
	}
}

func hostPort(ts *httptest.Server) string {
	return strings.TrimPrefix(ts.URL, "http://")
}

func TestClientStreams(t *testing.T) {
	var polls atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_lancache/events", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept") != "text/event-stream" {
			t.Errorf("events Accept = %q", r.Header.Get("Accept"))
		}
		startEvents(w)
		fmt.Fprint(w, ": a comment\n\nevent: status\nid: 1\n")
		for i := 1; i <= 3; i++ {
			sendEvent(t, w, float64(i))
		}
		<-r.Context().Done()
	})
	mux.HandleFunc("GET /_lancache/status", func(w http.ResponseWriter, r *http.Request) {
		polls.Add(1)
		w.Write(statusJSON(t, 100))
	})
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close) // after the client stops: Close waits for open streams

	updates := follow(t, fastClient(hostPort(ts)))
	for i := 1; i <= 3; i++ {
		u := next(t, updates)
		if u.Err != nil || u.Status == nil || !u.Streaming || u.Status.UptimeSeconds != float64(i) {
			t.Fatalf("update %d: %+v, want streamed status with uptime %d", i, u, i)
		}
		if u.Status.Name != "alpha" {
			t.Errorf("status name %q", u.Status.Name)
		}
	}
	if n := polls.Load(); n != 0 {
		t.Errorf("%d polls while the stream works, want none", n)
	}
}

func TestClientPollsWithoutStream(t *testing.T) {
	var streams atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_lancache/events", func(w http.ResponseWriter, r *http.Request) {
		streams.Add(1)
		http.NotFound(w, r)
	})
	var polls atomic.Int32
	mux.HandleFunc("GET /_lancache/status", func(w http.ResponseWriter, r *http.Request) {
		w.Write(statusJSON(t, float64(polls.Add(1))))
	})
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close) // after the client stops: Close waits for open streams

	updates := follow(t, fastClient(ts.URL)) // a URL works as well as host:port
	for i := 1; i <= 3; i++ {
		u := next(t, updates)
		if u.Err != nil || u.Status == nil || u.Streaming || u.Status.UptimeSeconds != float64(i) {
			t.Fatalf("update %d: %+v, want polled status %d", i, u, i)
		}
	}
	if n := streams.Load(); n != 1 {
		t.Errorf("asked for the stream %d times, want once (then poll)", n)
	}
}

// TestClientReconnects: the stream drops, the client polls, then takes the
// stream again.
func TestClientReconnects(t *testing.T) {
	var streams atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_lancache/events", func(w http.ResponseWriter, r *http.Request) {
		n := streams.Add(1)
		startEvents(w)
		sendEvent(t, w, float64(n))
		if n == 1 {
			return // drop the first stream after one event
		}
		<-r.Context().Done()
	})
	mux.HandleFunc("GET /_lancache/status", func(w http.ResponseWriter, r *http.Request) {
		w.Write(statusJSON(t, 100))
	})
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close) // after the client stops: Close waits for open streams

	updates := follow(t, fastClient(hostPort(ts)))
	if u := next(t, updates); !u.Streaming || u.Status.UptimeSeconds != 1 {
		t.Fatalf("first update %+v, want streamed 1", u)
	}
	polled := 0
	for {
		u := next(t, updates)
		if u.Err != nil {
			t.Fatalf("error %v", u.Err)
		}
		if !u.Streaming {
			polled++
			continue
		}
		if u.Status.UptimeSeconds != 2 {
			t.Fatalf("streamed %v, want the second stream's 2", u.Status.UptimeSeconds)
		}
		break
	}
	if polled == 0 {
		t.Error("no polling between the streams")
	}
}

// TestClientSilentStream: a stream that never sends is abandoned for
// polling.
func TestClientSilentStream(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_lancache/events", func(w http.ResponseWriter, r *http.Request) {
		startEvents(w)
		<-r.Context().Done()
	})
	mux.HandleFunc("GET /_lancache/status", func(w http.ResponseWriter, r *http.Request) {
		w.Write(statusJSON(t, 7))
	})
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close) // after the client stops: Close waits for open streams

	c := fastClient(hostPort(ts))
	c.idleTimeout = 50 * time.Millisecond
	updates := follow(t, c)
	if u := next(t, updates); u.Err != nil || u.Streaming || u.Status.UptimeSeconds != 7 {
		t.Fatalf("update %+v, want a polled status", u)
	}
}

// TestClientUnreachable: nothing listens; the client reports each failure
// with a growing, bounded backoff and does not give up.
func TestClientUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	updates := follow(t, fastClient(addr))
	for i, want := range []time.Duration{10, 20, 40, 40, 40} {
		u := next(t, updates)
		if u.Err == nil || u.Status != nil {
			t.Fatalf("update %d: %+v, want an error", i, u)
		}
		if u.Attempt != i+1 || u.RetryIn != want*time.Millisecond {
			t.Errorf("update %d: attempt %d retry in %s, want %d, %s", i, u.Attempt, u.RetryIn, i+1, want*time.Millisecond)
		}
		if !strings.Contains(u.Err.Error(), addr) {
			t.Errorf("error %q does not name %s", u.Err, addr)
		}
	}
}

// TestClientRecovers: the daemon goes away and comes back; the client
// reports the outage and then streams again, counting attempts afresh.
func TestClientRecovers(t *testing.T) {
	var down atomic.Bool
	hangUp := func(w http.ResponseWriter) bool {
		if !down.Load() {
			return false
		}
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
		return true
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_lancache/events", func(w http.ResponseWriter, r *http.Request) {
		if hangUp(w) {
			return
		}
		startEvents(w)
		sendEvent(t, w, 1)
		for !down.Load() {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	mux.HandleFunc("GET /_lancache/status", func(w http.ResponseWriter, r *http.Request) {
		if !hangUp(w) {
			w.Write(statusJSON(t, 100))
		}
	})
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close) // after the client stops: Close waits for open streams

	updates := follow(t, fastClient(hostPort(ts)))
	if u := next(t, updates); !u.Streaming {
		t.Fatalf("first update %+v, want streamed", u)
	}
	down.Store(true)
	var errs int
	for errs < 2 {
		if u := next(t, updates); u.Err != nil {
			errs++
			if u.Attempt != errs {
				t.Errorf("failure %d reported as attempt %d", errs, u.Attempt)
			}
		}
	}
	down.Store(false)
	for {
		u := next(t, updates)
		if u.Err == nil && u.Streaming {
			break
		}
	}
	down.Store(true)
	for {
		u := next(t, updates)
		if u.Err != nil {
			if u.Attempt != 1 {
				t.Errorf("first failure after recovery is attempt %d, want 1", u.Attempt)
			}
			break
		}
	}
}

func TestReadEvents(t *testing.T) {
	in := ": hello\r\n\r\n" +
		"event: status\r\ndata: {\"a\":1}\r\n\r\n" +
		"data:no-space\n\n" +
		"data: line1\ndata: line2\nid: 7\nretry: 100\n\n" +
		"data: unterminated at EOF"
	var got []string
	if err := readEvents(strings.NewReader(in), func(d []byte) error {
		got = append(got, string(d))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{`{"a":1}`, "no-space", "line1\nline2"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events %q, want %q", got, want)
	}

	stop := errors.New("stop")
	if err := readEvents(strings.NewReader("data: x\n\ndata: y\n\n"), func([]byte) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("callback error lost: %v", err)
	}
	huge := "data: " + strings.Repeat("x", maxStatusBytes+1) + "\n\n"
	if err := readEvents(strings.NewReader(huge), func([]byte) error { return nil }); err == nil {
		t.Error("an event over the size bound was accepted")
	}
}

func TestFetchErrors(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_lancache/status", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "not json")
	})
	ts := httptest.NewServer(mux)
	defer ts.Close()
	if _, err := fastClient(hostPort(ts)).Fetch(context.Background()); err == nil || !strings.Contains(err.Error(), "not lancache status JSON") {
		t.Errorf("bad JSON: %v", err)
	}
	ts404 := httptest.NewServer(http.NotFoundHandler())
	defer ts404.Close()
	if _, err := fastClient(hostPort(ts404)).Fetch(context.Background()); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("404: %v", err)
	}
}

// TestRun runs the whole program against a fake daemon and quits with q.
func TestRun(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_lancache/events", func(w http.ResponseWriter, r *http.Request) {
		startEvents(w)
		st := busyStatus()
		b, _ := json.Marshal(st)
		fmt.Fprintf(w, "data: %s\n\n", b)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close) // after the client stops: Close waits for open streams

	in, keys := io.Pipe()
	defer keys.Close()
	var out syncbuf.Buffer
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), Options{
			Addr: hostPort(ts), Input: in, Output: &out, Width: 80, Height: 24,
			Env: []string{"TERM=xterm-256color", "NO_COLOR=1"},
		})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "firefox") {
		if time.Now().After(deadline) {
			t.Fatalf("no transfer on screen after 5s; output:\n%q", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	io.WriteString(keys, "q")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after q")
	}
	if hasColour(out.String()) {
		t.Error("NO_COLOR output has colour")
	}
}

// TestRunCancel: cancelling the context ends Run without an error.
func TestRunCancel(t *testing.T) {
	in, keys := io.Pipe()
	defer keys.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Addr: "127.0.0.1:1", Input: in, Output: io.Discard, Env: []string{"TERM=dumb"}})
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
