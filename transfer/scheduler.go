package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/lancache/lancache/cache"
)

// The Node is the peers' cache.Source for the Nix-facing endpoint.
var _ cache.Source = (*Node)(nil)

// holders returns the connected, not blocklisted peers whose inventory
// offers h, best first: fewest requests in flight, then lowest RTT. A miss
// is one xxhash and one map lookup per 64 peers, without allocating.
func (n *Node) holders(h cache.Hash, skip map[*session]bool) []*session {
	var buf [8]*session
	ss := n.idx.lookup(keyOf(h), buf[:0])
	if len(ss) == 0 {
		return nil
	}
	now := time.Now()
	out := make([]*session, 0, len(ss))
	for _, s := range ss {
		if skip[s] || s.ctx.Err() != nil || n.blocked(s.id, now) {
			continue
		}
		out = append(out, s)
	}
	type rank struct {
		active int32
		rtt    time.Duration
	}
	ranks := make(map[*session]rank, len(out))
	for _, s := range out {
		ranks[s] = rank{s.active.Load(), s.conn.ConnectionStats().SmoothedRTT}
	}
	slices.SortStableFunc(out, func(a, b *session) int {
		ra, rb := ranks[a], ranks[b]
		if ra.active != rb.active {
			return int(ra.active - rb.active)
		}
		return int(ra.rtt - rb.rtt)
	})
	return out
}

// NarInfo answers for h from the peers that offer it, trying the best
// first and the next on error or after NarInfoTimeout. A narinfo must be
// for h and, unless AcceptUnsigned is set, signed by a trusted key. When no
// peer offers h it returns cache.ErrNotFound at once, from memory; when the
// peers that offer it all fail, an error wrapping cache.ErrNotFound, so
// that the endpoint answers 404 and Nix moves on.
func (n *Node) NarInfo(ctx context.Context, h cache.Hash) (*cache.NarInfo, error) {
	ss := n.holders(h, nil)
	if len(ss) == 0 {
		return nil, cache.ErrNotFound
	}
	var errs []error
	for _, s := range ss {
		actx, cancel := context.WithTimeout(ctx, n.cfg.NarInfoTimeout)
		info, err := s.fetchNarInfo(actx, h)
		cancel()
		if err == nil {
			err = n.checkNarInfo(h, info)
			if err == nil {
				return info, nil
			}
			n.log.Info("narinfo from peer rejected", "peer", s.id, "hash", h.String(), "err", err)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("narinfo %s: %w", h, ctx.Err())
		}
		if !errors.Is(err, cache.ErrNotFound) {
			n.log.Debug("narinfo from peer failed", "peer", s.id, "hash", h.String(), "err", err)
		}
		errs = append(errs, fmt.Errorf("%s: %w", s, err))
	}
	return nil, fmt.Errorf("%w: narinfo %s: no peer could serve it: %w", cache.ErrNotFound, h, errors.Join(errs...))
}

// errUntrusted rejects a narinfo without a trusted signature.
var errUntrusted = errors.New("narinfo carries no signature by a trusted key")

func (n *Node) checkNarInfo(h cache.Hash, info *cache.NarInfo) error {
	got, err := info.Hash()
	if err != nil {
		return err
	}
	if got != h {
		return fmt.Errorf("narinfo is for %s, asked for %s", got, h)
	}
	if !n.cfg.AcceptUnsigned && !info.SignedBy(n.cfg.TrustedKeys) {
		return errUntrusted
	}
	return nil
}

// holdBack is how many bytes at the end of a response WriteNAR keeps back
// until the whole file has verified: a caller that cannot retract what it
// wrote (an HTTP response with Content-Length) never delivers a complete
// file that failed the check.
const holdBack = 64 << 10

// Files up to verifyFirstMax are verified whole before their first byte is
// released, within a node-wide budget of verifyFirstBudget bytes held in
// memory. A peer that sends bad bytes is then routed around inside the same
// response: the caller (Nix) sees one good response from the next holder,
// instead of a broken one it would resume with a Range request from another
// holder (and still fail, its first part being bad). Larger files, or any
// file when the budget is spent, stream with the holdBack tail only.
const (
	verifyFirstMax    = 32 << 20
	verifyFirstBudget = 128 << 20
	maxVerifyAttempts = 3
)

// WriteNAR streams the file info describes from the peers that offer it
// into w, checking it against info's NarHash as it goes. When the serving
// peer fails mid-stream, the transfer resumes at the same byte on the next
// holder; w sees one uninterrupted stream. If the bytes do not verify, every
// peer that contributed bytes is blocklisted for BlocklistFor (a mixed
// stream cannot tell which one lied), so the next request goes elsewhere;
// for a file verified before release (see verifyFirstMax) the transfer
// starts again on the remaining holders, otherwise WriteNAR returns an
// error wrapping cache.ErrHashMismatch.
//
// A range (offset > 0 or length >= 0, from an HTTP Range request) cannot be
// verified on its own: WriteNAR fetches the whole file from byte 0, writes
// only the range and still verifies the whole file before releasing the
// range's last bytes. Nix only sends ranges to resume a download, so the
// extra bytes are rare.
func (n *Node) WriteNAR(ctx context.Context, w io.Writer, info *cache.NarInfo, offset, length int64) error {
	h, err := info.Hash()
	if err != nil {
		return err
	}
	size := cache.FileSize(info)
	if offset < 0 || offset > size {
		return fmt.Errorf("NAR %s: offset %d outside the %d-byte file", h, offset, size)
	}
	end := size
	if length >= 0 && offset+length < size {
		end = offset + length
	}
	hold := min(holdBack, end-offset)
	if size <= n.cfg.VerifyFirstMax && n.holdBudget.TryAcquire(end-offset) {
		defer n.holdBudget.Release(end - offset)
		hold = end - offset
	}
	x := n.xfers.start(h, info.Name(), size)
	var mismatch error // the first verification failure, if any
	for attempt := 1; ; attempt++ {
		out := &rangeWriter{w: w, start: offset, end: end, hold: hold, held: make([]byte, 0, hold)}
		err := n.fetchVerified(ctx, h, info, size, out, x)
		if errors.Is(err, cache.ErrHashMismatch) && out.untouched() && attempt < maxVerifyAttempts && ctx.Err() == nil {
			n.log.Info("NAR failed verification before any byte was released; fetching it again from other holders", "hash", h.String(), "attempt", attempt+1)
			if mismatch == nil {
				mismatch = err
			}
			x.restart()
			continue
		}
		if err != nil && mismatch != nil && !errors.Is(err, cache.ErrHashMismatch) {
			// No good holder left: what went wrong is the bad copy.
			err = fmt.Errorf("%w (then: %v)", mismatch, err)
		}
		if err == nil {
			if err = out.release(); err != nil {
				err = fmt.Errorf("NAR %s: write: %w", h, err)
			}
		}
		x.finish(err)
		return err
	}
}

// fetchVerified runs one transfer of the whole file through a Verifier into
// out, failing over between holders. A mismatch blocklists the contributors
// and returns an error wrapping cache.ErrHashMismatch.
func (n *Node) fetchVerified(ctx context.Context, h cache.Hash, info *cache.NarInfo, size int64, out *rangeWriter, x *transfer) error {
	v, err := cache.NewVerifier(info)
	if err != nil {
		return fmt.Errorf("NAR %s: %w", h, err)
	}
	sink := &verifySink{v: v, out: out, x: x}
	tried := make(map[*session]bool)
	var contributors []*session
	var errs []error
	for v.Written() < size {
		ss := n.holders(h, tried)
		if len(ss) == 0 {
			v.Abort()
			if len(tried) == 0 {
				return fmt.Errorf("%w: NAR %s: no peer offers it", cache.ErrNotFound, h)
			}
			return fmt.Errorf("NAR %s: no peer left to fetch byte %d from: %w", h, v.Written(), errors.Join(errs...))
		}
		s := ss[0]
		tried[s] = true
		x.setPeer(s)
		pos := v.Written()
		if pos > 0 {
			x.failover()
			n.log.Info("resuming NAR on another peer", "hash", h.String(), "peer", s.id, "offset", pos)
		}
		req := &narReq{
			Hash: h, NarHash: info.NarHash, FileSize: uint64(size),
			Offset: uint64(pos), Length: toEnd, Compression: normCompression(info.Compression),
		}
		got, err := s.fetchNAR(ctx, req, sink)
		if got > 0 && !slices.Contains(contributors, s) {
			contributors = append(contributors, s)
		}
		if err == nil {
			continue
		}
		var se *errSink
		switch {
		case errors.As(err, &se) && sink.verifyErr != nil:
			v.Abort()
			return n.mismatch(h, contributors, sink.verifyErr)
		case errors.As(err, &se):
			// The caller went away (Nix hung up): nobody's fault.
			v.Abort()
			return fmt.Errorf("NAR %s: write: %w", h, se.err)
		case ctx.Err() != nil:
			v.Abort()
			return fmt.Errorf("NAR %s: %w", h, ctx.Err())
		}
		n.log.Info("peer failed to serve NAR", "peer", s.id, "hash", h.String(), "offset", v.Written(), "err", err)
		errs = append(errs, err)
	}
	if err := v.Close(); err != nil {
		return n.mismatch(h, contributors, err)
	}
	return nil
}

// mismatch blocklists the peers that sent bytes failing verification.
func (n *Node) mismatch(h cache.Hash, from []*session, verr error) error {
	ids := make([]string, len(from))
	for i, s := range from {
		ids[i] = s.id
		until := n.blocklist(s.id)
		n.log.Warn("peer sent a NAR that does not match its signed NarHash; blocklisted", "peer", s.id, "name", s.name, "hash", h.String(), "until", until.Format(time.RFC3339))
	}
	n.mismatches.Add(1)
	err := verr
	if !errors.Is(err, cache.ErrHashMismatch) {
		err = fmt.Errorf("%w: %w", cache.ErrHashMismatch, verr)
	}
	return fmt.Errorf("NAR %s from %v: %w", h, ids, err)
}

// verifySink passes fetched bytes through the Verifier, then to the output.
type verifySink struct {
	v         *cache.Verifier
	out       *rangeWriter
	x         *transfer
	verifyErr error
}

func (s *verifySink) Write(p []byte) (int, error) {
	if _, err := s.v.Write(p); err != nil {
		s.verifyErr = err
		return 0, err
	}
	s.x.add(int64(len(p)))
	return s.out.Write(p)
}

// rangeWriter writes the bytes of file positions [start, end) of a stream
// that begins at position 0, keeping the last hold bytes of the range until
// release.
type rangeWriter struct {
	w          io.Writer
	start, end int64
	hold       int64
	pos        int64  // file position of the next byte
	held       []byte // range bytes at [end-hold, end) seen so far
	written    int64  // bytes written to w
}

func (r *rangeWriter) Write(p []byte) (int, error) {
	n := len(p)
	lo, hi := r.pos, r.pos+int64(n)
	r.pos = hi
	// Clip to the range.
	a, b := max(lo, r.start), min(hi, r.end)
	if a >= b {
		return n, nil
	}
	cut := r.end - r.hold // range bytes from here on are held back
	if a < cut {
		k, err := r.w.Write(p[a-lo : min(b, cut)-lo])
		r.written += int64(k)
		if err != nil {
			return 0, err
		}
	}
	if b > cut {
		r.held = append(r.held, p[max(a, cut)-lo:b-lo]...)
	}
	return n, nil
}

// untouched reports whether nothing has been written to the destination.
func (r *rangeWriter) untouched() bool { return r.written == 0 }

// release writes the held-back bytes.
func (r *rangeWriter) release() error {
	if len(r.held) == 0 {
		return nil
	}
	k, err := r.w.Write(r.held)
	r.written += int64(k)
	r.held = nil
	return err
}
