package demo

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"golang.org/x/sync/errgroup"

	"github.com/lancache/lancache"
	"github.com/lancache/lancache/cache"
)

// Config configures a demo.
type Config struct {
	// Dir holds the nodes' caches and state (a temporary directory).
	Dir string
	// Nodes is the number of nodes (default 3).
	Nodes int
	// PathsPerNode is how many synthetic paths each node holds (default 12).
	PathsPerNode int
	// MaxPathSize bounds the size of a synthetic path (default 8 MiB); sizes
	// vary from 1/32 of it up.
	MaxPathSize int
	// ReadRate throttles how fast the demo's clients read NARs, in bytes per
	// second, so that transfers last long enough to watch (default 24 MiB/s;
	// negative: unthrottled).
	ReadRate int
	// Logger receives the nodes' logs (default: discarded).
	Logger *slog.Logger
}

// Demo is a running set of nodes.
type Demo struct {
	cfg   Config
	nodes []*lancache.Node
	names []string
	paths [][]Path

	fetched, verified, failed atomic.Int64
}

// Start populates the nodes' caches and creates the nodes, peered with each
// other over loopback. Run runs them.
func Start(ctx context.Context, cfg Config) (*Demo, error) {
	if cfg.Nodes <= 0 {
		cfg.Nodes = 3
	}
	if cfg.PathsPerNode <= 0 {
		cfg.PathsPerNode = 12
	}
	if cfg.MaxPathSize <= 0 {
		cfg.MaxPathSize = 8 << 20
	}
	if cfg.ReadRate == 0 {
		cfg.ReadRate = 24 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	sk, pk, err := signature.GenerateKeypair("lancache-demo-1", crand.Reader)
	if err != nil {
		return nil, fmt.Errorf("demo signing key: %w", err)
	}
	d := &Demo{cfg: cfg}
	for i := range cfg.Nodes {
		name := fmt.Sprintf("demo-%c", 'a'+i)
		dir := filepath.Join(cfg.Dir, name)
		paths, err := d.populate(ctx, filepath.Join(dir, "cache"), sk, name, uint64(i)<<32)
		if err != nil {
			d.closeNodes()
			return nil, err
		}
		n, err := lancache.New(ctx, lancache.Config{
			StoreRoot:         "none",
			CacheDir:          filepath.Join(dir, "cache"),
			CacheMaxSize:      1 << 30,
			HTTPAddr:          "127.0.0.1:0",
			QUICAddr:          "127.0.0.1:0",
			TrustedPublicKeys: pk.String(),
			Share:             "signed",
			NoMDNS:            true,
			StateDir:          filepath.Join(dir, "state"),
			Name:              name,
			Logger:            cfg.Logger.With("node", name),
		})
		if err != nil {
			d.closeNodes()
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		d.nodes = append(d.nodes, n)
		d.names = append(d.names, name)
		d.paths = append(d.paths, paths)
	}
	for i, n := range d.nodes {
		for j, m := range d.nodes {
			if i != j {
				n.AddPeer(m.QUICAddr().String())
			}
		}
	}
	return d, nil
}

func (d *Demo) populate(ctx context.Context, dir string, sk signature.SecretKey, name string, seed uint64) ([]Path, error) {
	r := rand.New(rand.NewPCG(seed, 7))
	var all []Path
	for i := range d.cfg.PathsPerNode {
		size := d.cfg.MaxPathSize/32 + r.IntN(d.cfg.MaxPathSize-d.cfg.MaxPathSize/32)
		ps, err := Populate(ctx, dir, sk, fmt.Sprintf("%s-pkg%02d", name, i), seed+uint64(i)*7919, 1, size)
		if err != nil {
			return nil, fmt.Errorf("populate %s: %w", dir, err)
		}
		all = append(all, ps...)
	}
	return all, nil
}

func (d *Demo) closeNodes() {
	for _, n := range d.nodes {
		n.Close()
	}
}

// Node returns the i-th node.
func (d *Demo) Node(i int) *lancache.Node { return d.nodes[i] }

// Counts returns how many NARs the demo clients fetched, verified and saw
// fail.
func (d *Demo) Counts() (fetched, verified, failed int64) {
	return d.fetched.Load(), d.verified.Load(), d.failed.Load()
}

// Run runs the nodes and a client per node that fetches the other nodes'
// paths through its node's HTTP endpoint, until ctx is done. ready is called
// once every node listens.
func (d *Demo) Run(ctx context.Context, ready func()) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, n := range d.nodes {
		g.Go(func() error { return n.Run(gctx) })
	}
	for _, n := range d.nodes {
		select {
		case <-n.Ready():
		case <-gctx.Done():
			return g.Wait()
		}
	}
	if ready != nil {
		ready()
	}
	var wg sync.WaitGroup
	for i := range d.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.client(gctx, i)
		}()
	}
	err := g.Wait()
	wg.Wait()
	return err
}

// client fetches random paths of the other nodes through node i, verifying
// each NAR against its narinfo as Nix would.
func (d *Demo) client(ctx context.Context, i int) {
	r := rand.New(rand.NewPCG(uint64(i), 99))
	hc := &http.Client{Timeout: 2 * time.Minute}
	base := "http://" + d.nodes[i].HTTPAddr().String()
	for ctx.Err() == nil {
		j := r.IntN(len(d.nodes) - 1)
		if j >= i {
			j++
		}
		p := d.paths[j][r.IntN(len(d.paths[j]))]
		err := d.fetch(ctx, hc, base, p)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, cache.ErrNotFound):
			// Not advertised yet (peers still connecting): not a failure.
		case err != nil:
			d.failed.Add(1)
			d.cfg.Logger.Warn("demo fetch failed", "via", d.names[i], "path", p.Info.StorePath, "err", err)
		default:
			d.verified.Add(1)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(100+r.IntN(400)) * time.Millisecond):
		}
	}
}

func (d *Demo) fetch(ctx context.Context, hc *http.Client, base string, p Path) error {
	body, status, err := get(ctx, hc, base+"/"+p.Hash.String()+".narinfo")
	if err != nil {
		return err
	}
	if status == http.StatusNotFound {
		return cache.ErrNotFound
	}
	if status != http.StatusOK {
		return fmt.Errorf("narinfo: HTTP %d", status)
	}
	info, err := cache.ParseNarInfo(body)
	if err != nil {
		return err
	}
	if info.NarHash != p.Info.NarHash {
		return fmt.Errorf("narinfo NarHash differs from the path's")
	}
	d.fetched.Add(1)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/"+info.URL, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("NAR: HTTP %d", resp.StatusCode)
	}
	v, err := cache.NewVerifier(info)
	if err != nil {
		return err
	}
	if _, err := io.Copy(v, d.throttle(ctx, resp.Body)); err != nil {
		v.Abort()
		return fmt.Errorf("NAR: %w", err)
	}
	return v.Close()
}

func get(ctx context.Context, hc *http.Client, url string) (io.Reader, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, cache.MaxNarInfoSize))
	return bytes.NewReader(b), resp.StatusCode, err
}

// throttle reads r at about ReadRate bytes per second.
func (d *Demo) throttle(ctx context.Context, r io.Reader) io.Reader {
	if d.cfg.ReadRate < 0 {
		return r
	}
	return &slowReader{ctx: ctx, r: r, rate: d.cfg.ReadRate, start: time.Now()}
}

type slowReader struct {
	ctx   context.Context
	r     io.Reader
	rate  int
	start time.Time
	n     int64
}

func (s *slowReader) Read(p []byte) (int, error) {
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	due := s.start.Add(time.Duration(float64(s.n) / float64(s.rate) * float64(time.Second)))
	if wait := time.Until(due); wait > 0 {
		select {
		case <-s.ctx.Done():
			return 0, s.ctx.Err()
		case <-time.After(wait):
		}
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	return n, err
}
