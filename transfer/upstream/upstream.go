// Package upstream pulls store paths through from upstream Nix binary caches
// (--upstream URL, repeatable, tried in order), such as cache.nixos.org.
//
// Narinfos are signature-checked against the trusted keys before anyone sees
// them and cached in memory, misses with a TTL. NARs are downloaded once into
// the on-disk NAR cache (narcache), verified against the signed NarHash while
// they stream, and every concurrent requester of the same NAR streams from
// that one growing download. Upstream failures and timeouts are answered as
// cache.ErrNotFound (a fast 404 for Nix), logged and counted; nothing here
// can make a request hang past its configured deadline.
//
// The package does not serve HTTP and does not talk to peers.
package upstream

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/cache/narcache"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// Defaults for zero Config fields.
const (
	DefaultNarInfoTimeout = 3 * time.Second
	DefaultNARIdleTimeout = 30 * time.Second
	DefaultNARTimeout     = 2 * time.Hour
	DefaultNegativeTTL    = time.Minute
	DefaultPositiveTTL    = time.Hour
	DefaultDownBackoff    = 10 * time.Second
	DefaultMaxNarInfos    = 1 << 16
)

// copyBufSize is the read size of NAR downloads: large enough that the
// per-chunk costs (verifier hand-off, file write, follower wake-ups) vanish.
const copyBufSize = 256 << 10

// Config configures an Upstream.
type Config struct {
	// URLs are the upstream binary caches, tried in order
	// (e.g. https://cache.nixos.org).
	URLs []string
	// TrustedKeys are the keys a narinfo must be signed with
	// (--trusted-public-keys). A narinfo without a valid signature by one of
	// them is refused.
	TrustedKeys []signature.PublicKey
	// Client makes the requests. Nil means a client with bounded dial and
	// TLS handshake times that honours the proxy environment variables.
	Client *http.Client

	// NarInfoTimeout bounds one narinfo request to one upstream, from dial
	// to the last byte. A lookup takes at most len(URLs) times this.
	NarInfoTimeout time.Duration
	// NARIdleTimeout fails a NAR download that receives nothing (headers or
	// body bytes) for this long.
	NARIdleTimeout time.Duration
	// NARTimeout bounds a whole NAR download.
	NARTimeout time.Duration
	// NegativeTTL is how long "no upstream has it" is remembered.
	NegativeTTL time.Duration
	// PositiveTTL is how long a fetched narinfo is answered from memory.
	PositiveTTL time.Duration
	// DownBackoff is how long an upstream that failed (network error,
	// timeout, 5xx, 429) is skipped, so that a dead upstream costs one
	// timeout, not one per path.
	DownBackoff time.Duration
	// MaxNarInfos bounds the narinfos remembered in memory, and separately
	// the remembered misses.
	MaxNarInfos int

	// Logger receives upstream failures; nil discards them.
	Logger *slog.Logger
}

// Stats are the counters of an Upstream.
type Stats struct {
	NarInfoHits      uint64 // lookups answered with a narinfo (from memory or upstream)
	NarInfoMisses    uint64 // lookups answered "not found" (including remembered misses)
	NarInfoErrors    uint64 // narinfo requests that failed: network, timeout, bad status, bad narinfo
	NarInfoUntrusted uint64 // narinfos refused for lacking a trusted signature
	NarInfoFetches   uint64 // narinfo requests sent upstream
	NARDownloads     uint64 // NAR downloads started upstream
	NARBytes         uint64 // NAR file bytes received from upstreams
	NARErrors        uint64 // NAR downloads that failed for another reason than bad bytes
	VerifyFailures   uint64 // NAR downloads whose bytes did not match the signed NarHash
	RangeResumes     uint64 // FetchFile continuations upstream answered with the rest only (206)
	RestartResumes   uint64 // FetchFile continuations read from the start, upstream ignoring Range
}

type counters struct {
	narInfoHits, narInfoMisses, narInfoErrors, narInfoUntrusted, narInfoFetches atomic.Uint64
	narDownloads, narBytes, narErrors, verifyFailures                           atomic.Uint64
	rangeResumes, restartResumes                                                atomic.Uint64
}

// Upstream is a cache.Source backed by upstream binary caches and, for NARs,
// by the on-disk NAR cache. It is safe for concurrent use. Close stops it.
type Upstream struct {
	cfg    Config
	ups    []*upstream
	client *http.Client
	store  *narcache.Cache
	dec    *cache.Decompressors // for the verifiers of direct streams
	log    *slog.Logger
	stats  counters
	now    func() time.Time // test hook
	onWait func()           // test hook: a lookup waits for a shared narinfo request

	ctx    context.Context // lifetime of downloads and fetches
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	known     map[cache.Hash]*known
	knownLRU  list.List // of *known, most recent first
	missing   map[cache.Hash]time.Time
	flights   map[cache.Hash]*flight
	downloads map[cache.Hash]*download
	// uncacheable: paths whose download into the NAR cache failed for a
	// local reason (a full disk): streamed directly until the time given.
	uncacheable map[cache.Hash]time.Time
}

// upstream is one configured binary cache.
type upstream struct {
	base      string       // URL without trailing slash
	downUntil atomic.Int64 // unix nanoseconds; skipped before then
}

// known is a trusted narinfo and the upstream it came from.
type known struct {
	hash    cache.Hash
	info    *cache.NarInfo // URL relative to up
	up      *upstream
	fetched time.Time
	elem    *list.Element
}

// flight is one narinfo lookup that concurrent callers share.
type flight struct {
	done chan struct{}
	k    *known
	err  error
}

// download is one NAR download into the NAR cache.
type download struct {
	done chan struct{}
	err  error // set before done is closed
}

// New returns an Upstream for cfg. store may be nil (no --cache-dir): NARs
// are then streamed from upstream to each requester, verified, without
// coalescing.
func New(cfg Config, store *narcache.Cache) (*Upstream, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("upstream: no URLs")
	}
	if len(cfg.TrustedKeys) == 0 {
		return nil, errors.New("upstream: no trusted public keys: every narinfo would be refused")
	}
	setDefault(&cfg.NarInfoTimeout, DefaultNarInfoTimeout)
	setDefault(&cfg.NARIdleTimeout, DefaultNARIdleTimeout)
	setDefault(&cfg.NARTimeout, DefaultNARTimeout)
	setDefault(&cfg.NegativeTTL, DefaultNegativeTTL)
	setDefault(&cfg.PositiveTTL, DefaultPositiveTTL)
	setDefault(&cfg.DownBackoff, DefaultDownBackoff)
	if cfg.MaxNarInfos <= 0 {
		cfg.MaxNarInfos = DefaultMaxNarInfos
	}
	u := &Upstream{
		cfg:       cfg,
		client:    cfg.Client,
		store:     store,
		dec:       new(cache.Decompressors),
		log:       cfg.Logger,
		now:       time.Now,
		known:     make(map[cache.Hash]*known),
		missing:   make(map[cache.Hash]time.Time),
		flights:   make(map[cache.Hash]*flight),
		downloads: make(map[cache.Hash]*download),

		uncacheable: make(map[cache.Hash]time.Time),
	}
	if u.log == nil {
		u.log = slog.New(slog.DiscardHandler)
	}
	u.log = u.log.With("component", "upstream")
	if u.client == nil {
		u.client = defaultClient()
	}
	for _, s := range cfg.URLs {
		p, err := url.Parse(s)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || p.RawQuery != "" || p.Fragment != "" {
			return nil, fmt.Errorf("upstream %q: want an http:// or https:// URL of a binary cache", s)
		}
		u.ups = append(u.ups, &upstream{base: strings.TrimRight(p.String(), "/")})
	}
	u.ctx, u.cancel = context.WithCancel(context.Background())
	return u, nil
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

func defaultClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = 5 * time.Second
	tr.MaxIdleConnsPerHost = 32
	return &http.Client{Transport: tr}
}

// Close cancels lookups and downloads in progress and waits for them to end.
// Requesters following a cancelled download get an error.
func (u *Upstream) Close() error {
	u.mu.Lock()
	u.closed = true
	u.mu.Unlock()
	u.cancel()
	u.wg.Wait()
	return nil
}

// Stats returns a snapshot of the counters.
func (u *Upstream) Stats() Stats {
	c := &u.stats
	return Stats{
		NarInfoHits:      c.narInfoHits.Load(),
		NarInfoMisses:    c.narInfoMisses.Load(),
		NarInfoErrors:    c.narInfoErrors.Load(),
		NarInfoUntrusted: c.narInfoUntrusted.Load(),
		NarInfoFetches:   c.narInfoFetches.Load(),
		NARDownloads:     c.narDownloads.Load(),
		NARBytes:         c.narBytes.Load(),
		NARErrors:        c.narErrors.Load(),
		VerifyFailures:   c.verifyFailures.Load(),
		RangeResumes:     c.rangeResumes.Load(),
		RestartResumes:   c.restartResumes.Load(),
	}
}

// NarInfo returns the narinfo of h from the first upstream that has it with
// a trusted signature. The URL is relative to that upstream; callers that
// serve it rewrite URL as they need. A path no upstream has, an untrusted
// narinfo, and every upstream failure give cache.ErrNotFound, at most
// len(URLs) times NarInfoTimeout after the call (at once when remembered).
// Concurrent lookups of one path share one request per upstream.
func (u *Upstream) NarInfo(ctx context.Context, h cache.Hash) (*cache.NarInfo, error) {
	k, err := u.lookup(ctx, h)
	if err != nil {
		return nil, err
	}
	info := *k.info
	return &info, nil
}

func (u *Upstream) lookup(ctx context.Context, h cache.Hash) (*known, error) {
	now := u.now()
	u.mu.Lock()
	if k := u.known[h]; k != nil && now.Sub(k.fetched) < u.cfg.PositiveTTL {
		u.knownLRU.MoveToFront(k.elem)
		u.mu.Unlock()
		u.stats.narInfoHits.Add(1)
		return k, nil
	}
	if exp, ok := u.missing[h]; ok {
		if now.Before(exp) {
			u.mu.Unlock()
			u.stats.narInfoMisses.Add(1)
			return nil, fmt.Errorf("narinfo %s upstream: %w (remembered)", h, cache.ErrNotFound)
		}
		delete(u.missing, h)
	}
	f := u.flights[h]
	if f == nil {
		if u.closed {
			u.mu.Unlock()
			return nil, fmt.Errorf("narinfo %s upstream: closed: %w", h, cache.ErrNotFound)
		}
		f = &flight{done: make(chan struct{})}
		u.flights[h] = f
		u.wg.Add(1)
		go u.fetchNarInfo(h, f)
	}
	u.mu.Unlock()

	if u.onWait != nil {
		u.onWait()
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("narinfo %s upstream: %w", h, ctx.Err())
	}
	if f.k == nil {
		u.stats.narInfoMisses.Add(1)
		return nil, f.err
	}
	u.stats.narInfoHits.Add(1)
	return f.k, nil
}

// fetchNarInfo runs one shared lookup: the upstreams in order, each bounded
// by NarInfoTimeout. Its result is remembered: a narinfo as known, a miss
// for NegativeTTL if every upstream answered (not if one failed).
func (u *Upstream) fetchNarInfo(h cache.Hash, f *flight) {
	defer u.wg.Done()
	var k *known
	definite := true
	for _, up := range u.ups {
		if until := up.downUntil.Load(); until != 0 && u.now().UnixNano() < until {
			definite = false
			continue
		}
		info, err := u.getNarInfo(up, h)
		if err == nil {
			k = &known{hash: h, info: info, up: up, fetched: u.now()}
			break
		}
		switch {
		case errors.Is(err, errMissing):
		case errors.Is(err, errUntrusted):
			u.stats.narInfoUntrusted.Add(1)
			u.log.Warn("refusing narinfo without a trusted signature", "upstream", up.base, "hash", h, "err", err)
		case errors.Is(err, cache.ErrBadNarInfo), errors.Is(err, errUnusable):
			u.stats.narInfoErrors.Add(1)
			u.log.Warn("unusable narinfo from upstream", "upstream", up.base, "hash", h, "err", err)
		default:
			u.stats.narInfoErrors.Add(1)
			definite = false
			if u.ctx.Err() == nil {
				u.markDown(up, err)
			}
		}
	}

	u.mu.Lock()
	delete(u.flights, h)
	switch {
	case k != nil:
		u.rememberLocked(k)
		f.k = k
	default:
		if definite {
			u.rememberMissLocked(h)
		}
		f.err = fmt.Errorf("narinfo %s upstream: %w", h, cache.ErrNotFound)
	}
	u.mu.Unlock()
	close(f.done)
}

func (u *Upstream) markDown(up *upstream, err error) {
	until := u.now().Add(u.cfg.DownBackoff).UnixNano()
	if old := up.downUntil.Swap(until); old < u.now().UnixNano() {
		u.log.Warn("upstream failed; skipping it for a while", "upstream", up.base, "for", u.cfg.DownBackoff, "err", err)
	}
}

func (u *Upstream) rememberLocked(k *known) {
	if old := u.known[k.hash]; old != nil {
		u.knownLRU.Remove(old.elem)
	}
	k.elem = u.knownLRU.PushFront(k)
	u.known[k.hash] = k
	for len(u.known) > u.cfg.MaxNarInfos {
		old := u.knownLRU.Remove(u.knownLRU.Back()).(*known)
		delete(u.known, old.hash)
	}
}

func (u *Upstream) rememberMissLocked(h cache.Hash) {
	now := u.now()
	if len(u.missing) >= u.cfg.MaxNarInfos {
		for mh, exp := range u.missing {
			if !now.Before(exp) {
				delete(u.missing, mh)
			}
		}
		// Still full: forget an arbitrary half (map order is random).
		for mh := range u.missing {
			if len(u.missing) < u.cfg.MaxNarInfos/2 {
				break
			}
			delete(u.missing, mh)
		}
	}
	u.missing[h] = now.Add(u.cfg.NegativeTTL)
}

var (
	errMissing   = errors.New("upstream does not have it")
	errUntrusted = errors.New("no signature by a trusted key")
	errUnusable  = errors.New("unusable narinfo")
)

// getNarInfo fetches, parses and checks <up>/<hash>.narinfo.
func (u *Upstream) getNarInfo(up *upstream, h cache.Hash) (*cache.NarInfo, error) {
	ctx, cancel := context.WithTimeout(u.ctx, u.cfg.NarInfoTimeout)
	defer cancel()
	u.stats.narInfoFetches.Add(1)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, up.base+"/"+h.String()+".narinfo", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "lancache")
	resp, err := u.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s.narinfo: %w", h, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusNotFound, resp.StatusCode == http.StatusGone, resp.StatusCode == http.StatusForbidden:
		// S3-backed caches answer 403 for keys that do not exist.
		return nil, errMissing
	default:
		return nil, fmt.Errorf("GET %s.narinfo: status %s", h, resp.Status)
	}
	info, err := cache.ParseNarInfo(resp.Body)
	if err != nil {
		if ctx.Err() != nil {
			// A body cut off by the deadline is a failed request.
			return nil, fmt.Errorf("GET %s.narinfo: %w", h, ctx.Err())
		}
		return nil, err
	}
	if ih, err := info.Hash(); err != nil || ih != h {
		return nil, fmt.Errorf("%w: answer for %s names %s", errUnusable, h, info.StorePath)
	}
	if !strings.HasPrefix(info.StorePath, cache.StoreDir+"/") {
		return nil, fmt.Errorf("%w: %s is not in %s", errUnusable, info.StorePath, cache.StoreDir)
	}
	if _, err := cache.CompressionExt(info.Compression); err != nil {
		return nil, fmt.Errorf("%w: %w", errUnusable, err)
	}
	if !info.SignedBy(u.cfg.TrustedKeys) {
		return nil, fmt.Errorf("%w: %s", errUntrusted, info.StorePath)
	}
	return info, nil
}

// WriteNAR writes bytes [offset, offset+length) of the NAR file info
// describes (length < 0: to the end) to w.
//
// If the NAR cache holds the file, or is already downloading it, the bytes
// come from there. Otherwise one download from the upstream that gave the
// narinfo starts into the NAR cache, and this and every concurrent request
// for the same file stream from it as it grows. The download does not belong
// to the requester: it goes on when the requester leaves, bounded by
// NARTimeout and NARIdleTimeout. Bad bytes (a NarHash mismatch) end every
// follower with an error wrapping cache.ErrHashMismatch and are never
// committed. Without a NAR cache, or for a file too large for it, each
// request downloads and verifies on its own.
//
// It returns cache.ErrNotFound, before writing anything, when no upstream
// has the path with the same NarHash and compression as info.
func (u *Upstream) WriteNAR(ctx context.Context, w io.Writer, info *cache.NarInfo, offset, length int64) error {
	h, err := info.Hash()
	if err != nil {
		return fmt.Errorf("NAR of %q upstream: %w: %w", info.StorePath, cache.ErrNotFound, err)
	}
	if u.store != nil {
		err := u.store.WriteNAR(ctx, w, info, offset, length)
		if !errors.Is(err, cache.ErrNotFound) {
			return err
		}
	}
	k, err := u.lookup(ctx, h)
	if err != nil {
		return err
	}
	if k.info.NarHash != info.NarHash || k.info.NarSize != info.NarSize || cache.NormCompression(k.info.Compression) != cache.NormCompression(info.Compression) {
		return fmt.Errorf("NAR %s upstream: upstream's narinfo describes another file: %w", h, cache.ErrNotFound)
	}
	if u.store != nil {
		d, err := u.startDownload(k)
		if err == nil {
			err = u.store.WriteNAR(ctx, w, info, offset, length)
			if !errors.Is(err, cache.ErrNotFound) {
				return err
			}
			// The entry is gone already: the download failed, or it was
			// committed and evicted at once, or the cache holds another
			// compression of it.
			if d != nil {
				select {
				case <-d.done:
				case <-ctx.Done():
					return fmt.Errorf("NAR %s upstream: %w", h, ctx.Err())
				}
				if d.err != nil && !errors.Is(d.err, errLocalWrite) {
					return fmt.Errorf("NAR %s upstream: %w", h, d.err)
				}
				// A local write error: the bytes are fine, the cache
				// could not keep them; stream them directly below.
			}
		} else if !errors.Is(err, errDirect) {
			return err
		}
	}
	return u.direct(ctx, w, k, offset, length)
}

// errDirect means the NAR cache cannot take the file; stream it directly.
var errDirect = errors.New("NAR cache cannot take this file")

// startDownload starts the download of k's NAR into the NAR cache unless it
// runs already. It returns the download it started or joined, nil if another
// writer of the NAR cache has the path (a peer transfer) or it is committed,
// and errDirect if the cache cannot take it.
func (u *Upstream) startDownload(k *known) (*download, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, fmt.Errorf("NAR %s upstream: closed: %w", k.hash, cache.ErrNotFound)
	}
	if d := u.downloads[k.hash]; d != nil {
		return d, nil
	}
	if until, ok := u.uncacheable[k.hash]; ok {
		if u.now().Before(until) {
			return nil, errDirect
		}
		delete(u.uncacheable, k.hash)
	}
	wr, err := u.store.Begin(k.info)
	switch {
	case err == nil:
	case errors.Is(err, narcache.ErrBusy), errors.Is(err, narcache.ErrExists):
		return nil, nil
	default:
		u.log.Warn("NAR cache cannot take a download; streaming it directly", "hash", k.hash, "err", err)
		return nil, errDirect
	}
	d := &download{done: make(chan struct{})}
	u.downloads[k.hash] = d
	u.wg.Add(1)
	go u.download(d, k, wr)
	return d, nil
}

// download fetches k's NAR into wr and commits it. It runs on the
// Upstream's context, not a requester's.
func (u *Upstream) download(d *download, k *known, wr *narcache.Writer) {
	defer u.wg.Done()
	ctx, cancel := context.WithTimeout(u.ctx, u.cfg.NARTimeout)
	defer cancel()
	start := u.now()
	n, err := u.fetchNAR(ctx, k, wr)
	if err == nil {
		if err = wr.Commit(); err != nil && !errors.Is(err, cache.ErrHashMismatch) {
			// A failed fsync, rename or narinfo write: the bytes were good.
			err = fmt.Errorf("%w: %w", errLocalWrite, err)
		}
	} else {
		wr.Abort(err)
	}
	u.noteNARResult(k, err)
	if err == nil {
		u.log.Debug("NAR downloaded", "upstream", k.up.base, "path", k.info.StorePath, "bytes", n, "took", u.now().Sub(start))
	}
	u.mu.Lock()
	if errors.Is(err, errLocalWrite) {
		// The cache cannot hold it now (disk full, I/O error): the next
		// requests stream it directly, verified, instead of failing the
		// same way. Nix retries the one that failed.
		if len(u.uncacheable) >= maxUncacheable {
			clear(u.uncacheable)
		}
		u.uncacheable[k.hash] = u.now().Add(uncacheableFor)
		u.log.Warn("NAR cache write failed; serving this path directly from upstream for a while", "path", k.info.StorePath, "for", uncacheableFor, "err", err)
	}
	delete(u.downloads, k.hash)
	d.err = err
	u.mu.Unlock()
	close(d.done)
}

func (u *Upstream) noteNARResult(k *known, err error) {
	switch {
	case err == nil:
	case errors.Is(err, cache.ErrHashMismatch):
		u.stats.verifyFailures.Add(1)
		u.log.Error("upstream sent a NAR that does not match its signed NarHash", "upstream", k.up.base, "path", k.info.StorePath, "err", err)
	default:
		u.stats.narErrors.Add(1)
		u.log.Warn("NAR download failed", "upstream", k.up.base, "path", k.info.StorePath, "err", err)
	}
}

var errIdle = errors.New("no data from upstream")

// errLocalWrite marks a download that failed because the NAR cache could not
// take the bytes (not because of upstream or the bytes themselves).
var errLocalWrite = errors.New("writing to the NAR cache failed")

const (
	uncacheableFor = 10 * time.Minute
	maxUncacheable = 4096
)

// fetchNAR copies k's NAR file from its upstream to dst, failing when the
// upstream is silent for NARIdleTimeout.
func (u *Upstream) fetchNAR(ctx context.Context, k *known, dst io.Writer) (int64, error) {
	return u.fetchFrom(ctx, k, dst, 0)
}

// fetchFrom copies k's NAR file from byte offset to its end from its
// upstream to dst, failing when the upstream is silent for NARIdleTimeout.
// For offset > 0 it asks for the rest with a Range request; an upstream
// that ignores it (200) is read from the start, the first offset bytes
// discarded. Every body byte received counts in NARBytes: it is what the
// WAN carried.
func (u *Upstream) fetchFrom(ctx context.Context, k *known, dst io.Writer, offset int64) (int64, error) {
	u.stats.narDownloads.Add(1)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(u.cfg.NARIdleTimeout, func() { cancel(fmt.Errorf("%w for %s", errIdle, u.cfg.NARIdleTimeout)) })
	defer idle.Stop()
	fail := func(err error) error {
		if cause := context.Cause(ctx); cause != nil {
			err = cause
		}
		return fmt.Errorf("GET %s from %s: %w", k.info.URL, k.up.base, err)
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.up.base+"/"+k.info.URL, nil)
	if err != nil {
		return 0, fail(err)
	}
	req.Header.Set("User-Agent", "lancache")
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return 0, fail(err)
	}
	defer resp.Body.Close()
	var skip int64
	switch {
	case resp.StatusCode == http.StatusOK:
		skip = offset
		if offset > 0 {
			u.stats.restartResumes.Add(1)
		}
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		if err := checkContentRange(resp.Header.Get("Content-Range"), offset, cache.FileSize(k.info)); err != nil {
			return 0, fail(err)
		}
		u.stats.rangeResumes.Add(1)
	default:
		return 0, fail(fmt.Errorf("status %s", resp.Status))
	}
	buf := make([]byte, copyBufSize)
	var n int64
	for {
		idle.Reset(u.cfg.NARIdleTimeout)
		m, rerr := resp.Body.Read(buf)
		// The timer measures the upstream's silence, not the time dst takes
		// (a slow requester in direct mode).
		idle.Stop()
		if m > 0 {
			u.stats.narBytes.Add(uint64(m))
			p := buf[:m]
			if skip > 0 {
				d := min(skip, int64(len(p)))
				p, skip = p[d:], skip-d
			}
			if len(p) > 0 {
				if _, err := dst.Write(p); err != nil {
					if _, isCache := dst.(*narcache.Writer); isCache && !errors.Is(err, cache.ErrHashMismatch) {
						err = fmt.Errorf("%w: %w", errLocalWrite, err)
					}
					return n, fmt.Errorf("GET %s from %s: %w", k.info.URL, k.up.base, err)
				}
				n += int64(len(p))
			}
		}
		if rerr == io.EOF {
			if skip > 0 {
				return n, fail(fmt.Errorf("file ended before byte %d", offset))
			}
			return n, nil
		}
		if rerr != nil {
			return n, fail(rerr)
		}
	}
}

// checkContentRange checks that a 206 answer to "Range: bytes=offset-"
// starts at offset and runs to the end of the file (size, when known).
func checkContentRange(cr string, offset, size int64) error {
	var first, last int64
	var total string
	if _, err := fmt.Sscanf(cr, "bytes %d-%d/%s", &first, &last, &total); err != nil {
		return fmt.Errorf("partial content with Content-Range %q: %w", cr, err)
	}
	if first != offset || last < first {
		return fmt.Errorf("partial content %q for a request from byte %d", cr, offset)
	}
	if total != "*" {
		t, err := strconv.ParseInt(total, 10, 64)
		switch {
		case err != nil:
			return fmt.Errorf("partial content with Content-Range %q: %w", cr, err)
		case last != t-1:
			return fmt.Errorf("partial content %q stops before the end of the file", cr)
		case size > 0 && t != size:
			return fmt.Errorf("partial content %q of a file of %d bytes", cr, size)
		}
	}
	return nil
}

// ErrWrite wraps the errors of the writer FetchFile writes to, so that a
// caller tells them from upstream failures.
var ErrWrite = errors.New("writing the fetched bytes failed")

// FetchFile writes the NAR file info describes, as an upstream serves it
// (compressed as info.Compression), from byte offset to its end, to w, and
// returns how many bytes it wrote. It is for a caller that verifies and
// keeps the bytes itself, such as a node continuing a download another one
// started: FetchFile does not verify, does not use the NAR cache and does
// not coalesce. From offset > 0 it asks upstream for the rest only (HTTP
// Range), or, when upstream ignores ranges, reads the file from its start
// and skips the first offset bytes.
//
// It returns an error wrapping cache.ErrNotFound, before writing anything,
// when no upstream has the path as the file info describes (NarHash,
// NarSize, compression; FileHash and FileSize when both narinfos have
// them). Errors of w wrap ErrWrite.
func (u *Upstream) FetchFile(ctx context.Context, w io.Writer, info *cache.NarInfo, offset int64) (int64, error) {
	h, err := info.Hash()
	if err != nil {
		return 0, fmt.Errorf("NAR file of %q upstream: %w: %w", info.StorePath, cache.ErrNotFound, err)
	}
	if offset < 0 {
		return 0, fmt.Errorf("NAR file %s upstream: negative offset %d", h, offset)
	}
	k, err := u.lookup(ctx, h)
	if err != nil {
		return 0, err
	}
	if !sameFile(k.info, info) {
		return 0, fmt.Errorf("NAR file %s upstream: upstream's narinfo describes another file: %w", h, cache.ErrNotFound)
	}
	switch size := cache.FileSize(k.info); {
	case size > 0 && offset > size:
		return 0, fmt.Errorf("NAR file %s upstream: offset %d beyond the %d-byte file", h, offset, size)
	case size > 0 && offset == size:
		return 0, nil // nothing left: no request (a range from the end is not satisfiable)
	}
	u.mu.Lock()
	closed := u.closed
	u.mu.Unlock()
	if closed {
		return 0, fmt.Errorf("NAR file %s upstream: closed: %w", h, cache.ErrNotFound)
	}
	ctx, stop := context.WithTimeout(ctx, u.cfg.NARTimeout)
	defer stop()
	// Close ends the fetch too.
	defer context.AfterFunc(u.ctx, stop)()
	n, err := u.fetchFrom(ctx, k, writeErrs{w}, offset)
	if err != nil {
		if !errors.Is(err, ErrWrite) {
			u.noteNARResult(k, err)
		}
		return n, fmt.Errorf("NAR file %s upstream: %w", h, err)
	}
	return n, nil
}

// sameFile reports whether two narinfos of a path describe the same file.
func sameFile(a, b *cache.NarInfo) bool {
	if a.NarHash != b.NarHash || a.NarSize != b.NarSize || cache.NormCompression(a.Compression) != cache.NormCompression(b.Compression) {
		return false
	}
	if a.FileHash != "" && b.FileHash != "" && a.FileHash != b.FileHash {
		return false
	}
	return a.FileSize == 0 || b.FileSize == 0 || a.FileSize == b.FileSize
}

// writeErrs wraps the errors of w with ErrWrite.
type writeErrs struct{ w io.Writer }

func (e writeErrs) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrWrite, err)
	}
	return n, err
}

// direct streams k's NAR from upstream to w, verified, without the NAR
// cache. The whole file is read (bytes outside the range are discarded)
// because only the whole file can be checked against the NarHash; the last
// byte of the range is written only after the check passed, so that bad
// bytes never make a complete response.
func (u *Upstream) direct(ctx context.Context, w io.Writer, k *known, offset, length int64) error {
	v, err := u.dec.NewVerifier(k.info)
	if err != nil {
		return fmt.Errorf("NAR %s upstream: %w", k.hash, err)
	}
	ctx, cancel := context.WithTimeout(ctx, u.cfg.NARTimeout)
	defer cancel()
	// The last byte waits for the verdict.
	rw := &cache.RangeWriter{W: w, Skip: offset, Left: length, Hold: 1}
	_, err = u.fetchNAR(ctx, k, io.MultiWriter(v, rw))
	if err != nil {
		v.Abort()
		if rw.Err() == nil {
			u.noteNARResult(k, err)
		}
		return fmt.Errorf("NAR %s upstream: %w", k.hash, err)
	}
	if err := v.Close(); err != nil {
		u.noteNARResult(k, err)
		return fmt.Errorf("NAR %s upstream: %w", k.hash, err)
	}
	if rw.Skip > 0 || rw.Left > 0 {
		return fmt.Errorf("NAR %s upstream: range %d+%d beyond the file", k.hash, offset, length)
	}
	if err := rw.Release(); err != nil {
		return fmt.Errorf("NAR %s upstream: %w", k.hash, err)
	}
	return nil
}
