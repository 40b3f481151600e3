package lancache_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/lancache/lancache"
	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/demo"
)

// slowUpstream is a binary cache serving one NAR in two halves: the second
// only once release is closed (or the request ends).
type slowUpstream struct {
	info    *cache.NarInfo
	nar     []byte
	started chan struct{} // closed once the first half is sent
	release chan struct{}
}

func newSlowUpstream(t *testing.T) (*slowUpstream, *httptest.Server, string) {
	t.Helper()
	sk, pk, err := signature.GenerateKeypair("test-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	nar, info, err := demo.SyntheticNAR(sk, "slow", 7, 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := info.Hash()
	info.URL = "nar/" + h.String() + ".nar"
	info.FileSize = uint64(len(nar))
	u := &slowUpstream{info: info, nar: nar, started: make(chan struct{}), release: make(chan struct{})}
	text, err := info.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/" + h.String() + ".narinfo":
			w.Write(text)
		case "/" + info.URL:
			w.Header().Set("Content-Length", strconv.Itoa(len(nar)))
			w.Write(nar[:len(nar)/2])
			http.NewResponseController(w).Flush()
			close(u.started)
			select {
			case <-u.release:
			case <-r.Context().Done():
				return
			}
			w.Write(nar[len(nar)/2:])
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return u, srv, pk.String()
}

// A NAR response in flight when Run's context ends is finished, and Run
// returns after it.
func TestShutdownDrainsResponses(t *testing.T) {
	up, srv, pk := newSlowUpstream(t)
	n := startNode(t, lancache.Config{Upstreams: []string{srv.URL}, TrustedPublicKeys: pk, Name: "drain"})
	base := "http://" + n.HTTPAddr().String()
	got := make(chan fetched, 1)
	url := narURL(t, base, up.info)
	go func() { got <- fetch(url) }()
	<-up.started
	n.cancel()
	// Shutdown has begun once the listener refuses new connections.
	waitUntil(t, "the HTTP listener to close", func() bool {
		c, err := net.Dial("tcp", n.HTTPAddr().String())
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	close(up.release)
	f := <-got
	v, err := cache.NewVerifier(up.info)
	if err != nil {
		t.Fatal(err)
	}
	v.Write(f.body)
	if verr := v.Close(); f.err != nil || f.code != 200 || len(f.body) != len(up.nar) || verr != nil {
		t.Fatalf("NAR in flight at shutdown: status %d, %d of %d bytes, error %v, verify: %v", f.code, len(f.body), len(up.nar), f.err, verr)
	}
	waitRun(t, n, "response finished")
}

// A response that does not finish within the grace period is cut, and Run
// still returns.
func TestShutdownGraceBounded(t *testing.T) {
	up, srv, pk := newSlowUpstream(t)
	defer close(up.release)
	n := startNode(t, lancache.Config{Upstreams: []string{srv.URL}, TrustedPublicKeys: pk, Name: "grace", ShutdownGrace: 50 * time.Millisecond})
	base := "http://" + n.HTTPAddr().String()
	got := make(chan fetched, 1)
	url := narURL(t, base, up.info)
	go func() { got <- fetch(url) }()
	<-up.started
	n.cancel()
	waitRun(t, n, "grace period")
	if f := <-got; f.err == nil && len(f.body) == len(up.nar) {
		t.Fatal("the stalled response was not cut")
	}
}

type fetched struct {
	code int
	body []byte
	err  error
}

// fetch GETs url and reads the whole body.
func fetch(url string) fetched {
	resp, err := http.Get(url)
	if err != nil {
		return fetched{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return fetched{code: resp.StatusCode, body: b, err: err}
}

// narURL asks the node at base for the narinfo of info's path and returns
// the URL of its NAR there.
func narURL(t *testing.T, base string, info *cache.NarInfo) string {
	t.Helper()
	h, _ := info.Hash()
	code, body := httpGet(t, base+"/"+h.String()+".narinfo")
	if code != 200 {
		t.Fatalf("narinfo: %d %s", code, body)
	}
	mine, err := cache.ParseNarInfo(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return base + "/" + mine.URL
}

// waitRun waits for n's Run to return nil, after its context was cancelled.
func waitRun(t *testing.T, n *testNode, after string) {
	t.Helper()
	select {
	case err := <-n.done:
		n.done <- err // for stop, at cleanup
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Run did not return after the %s", after)
	}
}
