package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultPriority is the Priority in nix-cache-info: lower than
// cache.nixos.org's 40, so Nix asks the LAN first.
const DefaultPriority = 30

// maxRequestPath bounds the request paths the binary-cache API looks at.
const maxRequestPath = 512

// HandlerConfig configures the Nix-facing HTTP face.
type HandlerConfig struct {
	Priority int // nix-cache-info Priority (default DefaultPriority)
	Logger   *slog.Logger
}

// Handler is the Nix-facing HTTP binary-cache API: /nix-cache-info,
// /<hash>.narinfo and /nar/<hash>-<narhash>.nar[.ext], and the NAR URLs of
// other caches' layouts it can map to those (see serveOtherNAR). It asks
// its sources in order; a path none of them has is a 404 at once, and so is
// anything else a Nix client may ask for (log/, realisations/, ...).
type Handler struct {
	cfg     HandlerConfig
	sources []Source
	log     *slog.Logger
	stats   HandlerStats
}

// HandlerStats counts what the handler served. Fields are updated atomically.
type HandlerStats struct {
	NarInfoHits   atomic.Uint64
	NarInfoMisses atomic.Uint64
	NarRequests   atomic.Uint64
	NarBytes      atomic.Uint64 // bytes of NAR files sent to clients
	NarFailures   atomic.Uint64 // NAR responses aborted mid-stream
	BadRequests   atomic.Uint64
}

// NewHandler returns the HTTP face over sources, asked in order.
func NewHandler(cfg HandlerConfig, sources ...Source) *Handler {
	if cfg.Priority == 0 {
		cfg.Priority = DefaultPriority
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Handler{cfg: cfg, sources: sources, log: cfg.Logger}
}

// Stats returns the live counters.
func (hd *Handler) Stats() *HandlerStats { return &hd.stats }

// ServeHTTP implements http.Handler.
func (hd *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	p := r.URL.Path
	// Encoded characters (%2f, %2e, ...) never appear in the names we serve.
	// Unencoded ones Go would have encoded may: a realisation's name has a
	// "!" (Nix sends it as it is), and must get a 404, not a 400.
	if strings.ContainsAny(r.URL.EscapedPath(), "%\\") || len(p) > maxRequestPath || !strings.HasPrefix(p, "/") || strings.Contains(p, "..") || strings.Contains(p, "//") {
		hd.bad(w, "malformed request path")
		return
	}
	switch {
	case p == "/nix-cache-info":
		w.Header().Set("Content-Type", "text/x-nix-cache-info")
		fmt.Fprintf(w, "StoreDir: %s\nWantMassQuery: 1\nPriority: %d\n", StoreDir, hd.cfg.Priority)
	case strings.HasSuffix(p, ".narinfo") && strings.Count(p, "/") == 1:
		hd.serveNarInfo(w, r, strings.TrimSuffix(p[1:], ".narinfo"))
	case strings.HasPrefix(p, "/nar/") && strings.Count(p, "/") == 2:
		if name := strings.TrimPrefix(p, "/nar/"); isOwnNarName(name) {
			hd.serveNAR(w, r, name)
		} else {
			hd.serveOtherNAR(w, r, name)
		}
	default:
		http.NotFound(w, r)
	}
}

func (hd *Handler) bad(w http.ResponseWriter, msg string) {
	hd.stats.BadRequests.Add(1)
	http.Error(w, msg, http.StatusBadRequest)
}

// find asks the sources in order for h. Errors other than ErrNotFound are
// logged and the next source is asked: a broken source must not turn a
// miss into a 5xx.
func (hd *Handler) find(ctx context.Context, h Hash, accept func(*NarInfo) bool) (*NarInfo, Source) {
	for _, src := range hd.sources {
		info, err := src.NarInfo(ctx, h)
		if err != nil {
			if !errors.Is(err, ErrNotFound) && ctx.Err() == nil {
				hd.log.Warn("narinfo lookup failed", "hash", h, "err", err)
			}
			continue
		}
		if accept == nil || accept(info) {
			return info, src
		}
	}
	return nil, nil
}

// narURL is the URL the handler gives Nix for a source's copy of a path: it
// names the path and the NAR hash, so a NAR request can be routed again
// without state and never serves other bytes than the narinfo promised.
func narURL(h Hash, info *NarInfo) (string, error) {
	ext, err := CompressionExt(info.Compression)
	if err != nil {
		return "", err
	}
	return "nar/" + h.String() + "-" + info.NarHash.Base32() + ".nar" + ext, nil
}

func (hd *Handler) serveNarInfo(w http.ResponseWriter, r *http.Request, hs string) {
	h, err := ParseHash(hs)
	if err != nil {
		hd.bad(w, "malformed store path hash")
		return
	}
	info, _ := hd.find(r.Context(), h, func(info *NarInfo) bool {
		_, err := CompressionExt(info.Compression)
		return err == nil
	})
	if info == nil {
		hd.stats.NarInfoMisses.Add(1)
		http.NotFound(w, r)
		return
	}
	out := *info
	out.URL, _ = narURL(h, info)
	if out.Compression == "" {
		out.Compression = "none"
	}
	body, _ := out.MarshalText()
	hd.stats.NarInfoHits.Add(1)
	w.Header().Set("Content-Type", "text/x-nix-narinfo")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodHead {
		return
	}
	w.Write(body)
}

// parseNarName parses "<hash>-<narhash32>.nar[.ext]".
func parseNarName(name string) (h Hash, narHash string, ext string, err error) {
	base, ext, ok := strings.Cut(name, ".nar")
	if !ok || len(base) != HashLen+1+52 || base[HashLen] != '-' {
		return h, "", "", errors.New("not a NAR name")
	}
	if h, err = ParseHash(base[:HashLen]); err != nil {
		return h, "", "", err
	}
	if _, err := ParseNarHash("sha256:" + base[HashLen+1:]); err != nil {
		return h, "", "", err
	}
	return h, base[HashLen+1:], ext, nil
}

func (hd *Handler) serveNAR(w http.ResponseWriter, r *http.Request, name string) {
	h, narHash, ext, err := parseNarName(name)
	if err != nil {
		hd.bad(w, "malformed NAR name")
		return
	}
	hd.stats.NarRequests.Add(1)
	ctx := r.Context()
	tried := 0
	for _, src := range hd.sources {
		info, err := src.NarInfo(ctx, h)
		if err != nil {
			continue
		}
		if e, err := CompressionExt(info.Compression); err != nil || e != ext || info.NarHash.Base32() != narHash {
			continue
		}
		tried++
		size := FileSize(info)
		start, length, status, ok := parseRange(r.Header.Get("Range"), size)
		if !ok {
			w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			http.Error(w, "invalid range", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		hdr := w.Header()
		hdr.Set("Content-Type", "application/x-nix-nar")
		hdr.Set("Accept-Ranges", "bytes")
		if length >= 0 { // unknown (-1) when a compressed narinfo has no FileSize
			hdr.Set("Content-Length", strconv.FormatInt(length, 10))
		}
		if status == http.StatusPartialContent {
			hdr.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, start+length-1, size))
		}
		if r.Method == http.MethodHead {
			w.WriteHeader(status)
			return
		}
		lw := &lazyWriter{w: w, rc: http.NewResponseController(w), status: status, sent: &hd.stats.NarBytes}
		began := time.Now()
		err = src.WriteNAR(ctx, lw, info, start, length)
		if err == nil && (lw.n == length || length < 0) {
			if lw.n == 0 {
				w.WriteHeader(status)
			}
			return
		}
		if err == nil {
			err = fmt.Errorf("source wrote %d of %d bytes", lw.n, length)
		}
		if lw.n == 0 && ctx.Err() == nil {
			// Nothing sent yet: the next source may still serve it.
			hd.log.Warn("NAR source failed before sending; trying the next", "path", info.StorePath, "err", err)
			continue
		}
		hd.stats.NarFailures.Add(1)
		if ctx.Err() == nil {
			hd.log.Warn("NAR transfer aborted", "path", info.StorePath, "sent", lw.n, "of", length, "after", time.Since(began).Round(time.Millisecond), "err", err)
		}
		// Headers and part of the body are out: abort the connection so the
		// client sees a broken response, never a short or bad NAR.
		panic(http.ErrAbortHandler)
	}
	if tried == 0 {
		http.NotFound(w, r)
		return
	}
	http.Error(w, "no source could serve this NAR", http.StatusNotFound)
}

// writeStall is how long a client may take to accept the next piece of a
// NAR before the response is given up: a client that stops reading must not
// pin a transfer (and a peer stream) forever.
const writeStall = 60 * time.Second

// lazyWriter sends the status line with the first body byte, so a source
// that fails before writing leaves the response open for the next one. Each
// write must make progress within writeStall.
type lazyWriter struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	status int
	n      int64
	sent   *atomic.Uint64 // live count of bytes sent to clients
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if l.n == 0 && len(p) > 0 {
		l.w.WriteHeader(l.status)
	}
	l.rc.SetWriteDeadline(time.Now().Add(writeStall)) // unsupported in tests: ignored
	n, err := l.w.Write(p)
	l.n += int64(n)
	l.sent.Add(uint64(n))
	return n, err
}

// ReadFrom sends r with the response's own ReadFrom, which uses sendfile
// when r is a file (as the NAR cache's hits are), in pieces so that each
// must make progress within writeStall.
func (l *lazyWriter) ReadFrom(r io.Reader) (int64, error) {
	rf, ok := l.w.(io.ReaderFrom)
	if !ok {
		return io.Copy(writerOnly{l}, r)
	}
	return ReadFromInPieces(rf, writerOnly{l}, r, sendfilePiece, func() {
		if l.n == 0 {
			l.w.WriteHeader(l.status)
		}
		l.rc.SetWriteDeadline(time.Now().Add(writeStall))
	}, func(n int64) {
		l.n += n
		l.sent.Add(uint64(n))
	})
}

// ReadFromInPieces copies r to dst with dst's own ReadFrom (sendfile when
// r is an *io.LimitedReader of a file, as io.CopyN makes it) in pieces of
// at most piece bytes, calling before ahead of each piece and after with
// what it sent, so a wrapper of a response can push a deadline forward or
// count live without hiding the file from the response. A reader that is
// not an *io.LimitedReader is copied through w, the wrapper without its
// ReadFrom.
func ReadFromInPieces(dst io.ReaderFrom, w io.Writer, r io.Reader, piece int64, before func(), after func(n int64)) (int64, error) {
	lr, limited := r.(*io.LimitedReader)
	if !limited {
		return io.Copy(w, r)
	}
	var total int64
	for lr.N > 0 {
		if before != nil {
			before()
		}
		n, err := dst.ReadFrom(&io.LimitedReader{R: lr.R, N: min(lr.N, piece)})
		lr.N -= n
		total += n
		after(n)
		if err != nil || n == 0 {
			return total, err // n == 0: the file ended early
		}
	}
	return total, nil
}

// sendfilePiece is how much of a file one sendfile call may send.
const sendfilePiece = 8 << 20

// writerOnly hides a writer's ReadFrom, so io.Copy does not loop into it.
type writerOnly struct{ io.Writer }

// parseRange understands the single-range forms Nix and curl send
// ("bytes=a-b", "bytes=a-", "bytes=-n"). No header, or a size that is not
// known (-1): the whole file.
func parseRange(hdr string, size int64) (start, length int64, status int, ok bool) {
	if hdr == "" || size < 0 {
		return 0, size, http.StatusOK, true
	}
	spec, found := strings.CutPrefix(hdr, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, size, http.StatusOK, true // unsupported forms: whole file
	}
	a, b, found := strings.Cut(spec, "-")
	if !found {
		return 0, 0, 0, false
	}
	switch {
	case a == "":
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 || size == 0 {
			// The last n bytes of an empty file: unsatisfiable (RFC 9110
			// 14.1.2), not a 206 with "bytes 0--1/0".
			return 0, 0, 0, false
		}
		n = min(n, size)
		return size - n, n, http.StatusPartialContent, true
	default:
		s, err := strconv.ParseInt(a, 10, 64)
		if err != nil || s < 0 || s >= size {
			return 0, 0, 0, false
		}
		e := size - 1
		if b != "" {
			if e, err = strconv.ParseInt(b, 10, 64); err != nil || e < s {
				return 0, 0, 0, false
			}
			e = min(e, size-1)
		}
		return s, e - s + 1, http.StatusPartialContent, true
	}
}

var _ io.ReaderFrom = (*lazyWriter)(nil)
