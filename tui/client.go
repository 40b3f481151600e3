package tui

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/lancache/lancache/statusapi"
)

// maxStatusBytes bounds one status document, polled or streamed.
const maxStatusBytes = 16 << 20

// errNoStream means the daemon does not offer the event stream (an older
// daemon, or a proxy in between): poll instead.
var errNoStream = errors.New("daemon has no event stream")

// StatusMsg is one message of the status feed: a fresh snapshot of the
// daemon, or the reason there is none and when the feed tries again.
type StatusMsg struct {
	// Status is the daemon's status; nil when Err is set.
	Status *statusapi.Status
	// Streaming tells whether Status came from the event stream (true) or
	// from polling.
	Streaming bool
	// Err says why the daemon could not be reached.
	Err error
	// Attempt counts the failed attempts in a row, from 1, with Err.
	Attempt int
	// RetryIn is how long the feed waits before its next attempt, with Err.
	RetryIn time.Duration
}

// Client follows one daemon's status over HTTP. It prefers the Server-Sent
// Events stream and polls the status document once a second when the stream
// is missing (404) or drops, retrying the stream now and then. When the
// daemon cannot be reached it backs off exponentially, reporting each
// failure, and never gives up on its own.
type Client struct {
	addr string
	hc   *http.Client

	pollInterval  time.Duration // between polls while polling
	requestTO     time.Duration // bounds one poll
	idleTimeout   time.Duration // a stream silent this long is dead
	minBackoff    time.Duration // first wait after a failure
	maxBackoff    time.Duration // longest wait after failures
	dropRetry     time.Duration // poll at least this long after the stream drops
	noStreamRetry time.Duration // poll this long after a 404 before trying the stream again
}

// NewClient returns a client for the daemon whose HTTP listener is addr
// (host:port, or a URL with a scheme). hc may be nil for a default client;
// it must not have an overall Timeout, which would cut the stream.
func NewClient(addr string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{}
	}
	return &Client{
		addr:          addr,
		hc:            hc,
		pollInterval:  time.Second,
		requestTO:     5 * time.Second,
		idleTimeout:   5 * time.Second,
		minBackoff:    time.Second,
		maxBackoff:    15 * time.Second,
		dropRetry:     2 * time.Second,
		noStreamRetry: 30 * time.Second,
	}
}

func (c *Client) url(path string) string {
	base := c.addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return strings.TrimSuffix(base, "/") + path
}

// Run follows the daemon until ctx is done, calling emit (from Run's own
// goroutine) with every snapshot and every failure. It returns ctx's error.
func (c *Client) Run(ctx context.Context, emit func(StatusMsg)) error {
	var (
		failures    int
		streamAfter time.Time // don't try the stream before this
	)
	for {
		if !time.Now().Before(streamAfter) {
			got, connected, err := c.stream(ctx, emit)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if got {
				failures = 0
			}
			switch {
			case errors.Is(err, errNoStream):
				streamAfter = time.Now().Add(c.noStreamRetry)
			case !connected:
				// Nothing answers at addr: polling would fail the same way.
				failures++
				wait := c.backoff(failures)
				emit(StatusMsg{Err: err, Attempt: failures, RetryIn: wait})
				if err := sleep(ctx, wait); err != nil {
					return err
				}
				continue
			default:
				streamAfter = time.Now().Add(c.dropRetry)
			}
		}
		st, err := c.Fetch(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := c.pollInterval
		if err != nil {
			failures++
			wait = c.backoff(failures)
			emit(StatusMsg{Err: err, Attempt: failures, RetryIn: wait})
		} else {
			failures = 0
			emit(StatusMsg{Status: st})
		}
		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// backoff is the wait after the n-th failure in a row: minBackoff doubled
// per failure, capped at maxBackoff.
func (c *Client) backoff(n int) time.Duration {
	d := c.minBackoff
	for i := 1; i < n && d < c.maxBackoff; i++ {
		d *= 2
	}
	return min(d, c.maxBackoff)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Fetch gets one status snapshot from GET /_lancache/status.
func (c *Client) Fetch(ctx context.Context) (*statusapi.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, c.requestTO)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(statusapi.StatusPath), nil)
	if err != nil {
		return nil, fmt.Errorf("status request for %s: %w", c.addr, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get status from %s: %w", c.addr, unwrapURL(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get status from %s: %s", c.addr, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatusBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read status from %s: %w", c.addr, err)
	}
	if len(body) > maxStatusBytes {
		return nil, fmt.Errorf("status from %s exceeds %d bytes", c.addr, maxStatusBytes)
	}
	return decodeStatus(c.addr, body)
}

func decodeStatus(addr string, body []byte) (*statusapi.Status, error) {
	var st statusapi.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("status from %s is not lancache status JSON: %w", addr, err)
	}
	sanitizeStatus(&st)
	return &st, nil
}

// stream follows GET /_lancache/events until it ends, emitting each event's
// status. connected tells whether the daemon answered at all, got whether
// at least one status arrived. It returns errNoStream when the daemon has
// no stream, and otherwise why the stream ended.
func (c *Client) stream(ctx context.Context, emit func(StatusMsg)) (got, connected bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	errIdle := fmt.Errorf("event stream from %s silent for %s", c.addr, c.idleTimeout)
	// The watchdog cuts a stream that stays silent, including one whose
	// headers never come: a half-open connection would otherwise hang here.
	watchdog := time.AfterFunc(c.idleTimeout, func() { cancel(errIdle) })
	defer watchdog.Stop()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(statusapi.EventsPath), nil)
	if err != nil {
		return false, false, fmt.Errorf("events request for %s: %w", c.addr, err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.hc.Do(req)
	if err != nil {
		return false, false, streamErr(ctx, fmt.Errorf("get events from %s: %w", c.addr, unwrapURL(err)))
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusNotImplemented, http.StatusNotAcceptable:
		return false, true, fmt.Errorf("%w: %s answered %s", errNoStream, c.addr, resp.Status)
	default:
		return false, true, fmt.Errorf("get events from %s: %s", c.addr, resp.Status)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		return false, true, fmt.Errorf("%w: %s sent %q", errNoStream, c.addr, mt)
	}

	err = readEvents(resp.Body, func(data []byte) error {
		watchdog.Reset(c.idleTimeout)
		st, err := decodeStatus(c.addr, data)
		if err != nil {
			return err
		}
		got = true
		emit(StatusMsg{Status: st, Streaming: true})
		return nil
	})
	if err == nil {
		err = fmt.Errorf("event stream from %s ended", c.addr)
	}
	return got, true, streamErr(ctx, err)
}

// unwrapURL drops the *url.Error layer of an HTTP client error, which
// repeats the method and URL the message already names.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// streamErr prefers the reason the stream's context was cancelled (the
// watchdog) over the I/O error that cancellation caused.
func streamErr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// readEvents parses a Server-Sent Events stream and calls fn with the data
// of each event (data lines joined by "\n"). Comments, event names, ids and
// retry fields are ignored. It returns nil at the end of the stream, or the
// first error of r or fn.
func readEvents(r io.Reader, fn func(data []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxStatusBytes)
	var data bytes.Buffer
	hasData := false
	for sc.Scan() {
		line := bytes.TrimSuffix(sc.Bytes(), []byte("\r"))
		if len(line) == 0 {
			if hasData {
				if err := fn(data.Bytes()); err != nil {
					return err
				}
			}
			data.Reset()
			hasData = false
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		if string(field) != "data" {
			continue // comment (empty field), event, id, retry
		}
		if hasData {
			data.WriteByte('\n')
		}
		data.Write(value)
		hasData = true
	}
	return sc.Err()
}
