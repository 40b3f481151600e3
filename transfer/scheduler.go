package transfer

import (
	"cmp"
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
		if c := cmp.Compare(ra.active, rb.active); c != 0 {
			return c
		}
		return cmp.Compare(ra.rtt, rb.rtt)
	})
	return out
}

// NarInfo answers for h from the peers that offer it, trying the best
// first and the next on error or after NarInfoTimeout. A narinfo must be
// for h and, unless AcceptUnsigned is set, signed by a trusted key. When no
// peer offers h it returns cache.ErrNotFound at once, from memory (unless a
// peer that just connected has not sent its inventory yet: then it waits
// for it, up to inventoryWait); when the peers that offer it all fail, an
// error wrapping cache.ErrNotFound, so that the endpoint answers 404 and
// Nix moves on.
//
// The narinfo describes the NAR as this node serves it: uncompressed
// (Compression none, FileHash and FileSize those of the NAR), whatever form
// each holder keeps it in, since WriteNAR fetches it from any of them. A
// narinfo learned from a peer is remembered for a while, so the NAR
// request that follows costs no second round trip.
func (n *Node) NarInfo(ctx context.Context, h cache.Hash) (*cache.NarInfo, error) {
	ss := n.holders(h, nil)
	if len(ss) == 0 {
		if !n.awaitInventories(ctx) {
			return nil, cache.ErrNotFound
		}
		if ss = n.holders(h, nil); len(ss) == 0 {
			return nil, cache.ErrNotFound
		}
	}
	// The narinfo is remembered with the peer it came from, and used while
	// that peer still offers the path: a holder that only claims to have it
	// (and would fail the NAR request) is asked, and found out, as before.
	if info, from := n.infos.get(h); info != nil && slices.ContainsFunc(ss, func(s *session) bool { return s.id == from }) {
		return asServed(info), nil
	}
	var errs []error
	for _, s := range ss {
		actx, cancel := context.WithTimeout(ctx, n.cfg.NarInfoTimeout)
		info, err := s.fetchNarInfo(actx, h)
		cancel()
		if err == nil {
			err = n.checkNarInfo(h, info)
			if err == nil {
				n.infos.put(h, info, s.id)
				return asServed(info), nil
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

// asServed is info as this node serves it to Nix: the uncompressed NAR.
func asServed(info *cache.NarInfo) *cache.NarInfo {
	out := *info
	out.URL = "nar/" + info.NarHash.Base32() + ".nar"
	out.Compression = "none"
	out.FileHash = info.NarHash.String()
	out.FileSize = info.NarSize
	return &out
}

// inventoryWait bounds how long a narinfo miss waits for the inventory of a
// peer that has just connected. Nix remembers a 404 for an hour
// (narinfo-cache-negative-ttl): answering one because a neighbour's list is
// still on its way (after boot, say) would hide that neighbour's paths.
const inventoryWait = 3 * time.Second

// awaitInventories waits until every peer connected less than
// inventoryWait ago has sent its first inventory, or that time has passed.
// It reports whether there was any such peer.
func (n *Node) awaitInventories(ctx context.Context) bool {
	now := time.Now()
	n.mu.Lock()
	var pending []*session
	for _, s := range n.sessions {
		if !s.synced() && now.Sub(s.since) < inventoryWait {
			pending = append(pending, s)
		}
	}
	n.mu.Unlock()
	if len(pending) > 0 && n.testHookAwait != nil {
		n.testHookAwait()
	}
	for _, s := range pending {
		t := time.NewTimer(time.Until(s.since.Add(inventoryWait)))
		select {
		case <-s.firstInventory:
		case <-s.ctx.Done():
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false
		}
		t.Stop()
	}
	return len(pending) > 0
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

// Files up to Config.VerifyFirstMax (default defaultVerifyFirstMax) are
// verified whole before their first byte is released, within a node-wide
// budget of verifyFirstBudget bytes held in memory. A peer that sends bad
// bytes is then routed around inside the same response: the caller (Nix)
// sees one good response from the next holder, instead of a broken one it
// would resume with a Range request from another holder (and still fail,
// its first part being bad). Larger files, or any file when the budget is
// spent, stream with the holdBack tail only.
//
// The default is 1 MiB, not more: holding a NAR back delays Nix's import
// of it by its whole transfer time, which on a closure's dependency chain
// adds up (measured: 373 paths at 1 Gbit/s took 1.33x nginx's time with
// 32 MiB, 1.10x with none; docs/benchmarks.md). Most paths of a closure
// are small, so most still get the in-response reroute.
const (
	defaultVerifyFirstMax = 1 << 20
	verifyFirstBudget     = 128 << 20
	maxVerifyAttempts     = 3
)

// WriteNAR streams the NAR info describes from the peers that offer it
// into w, checking it against info's NarHash as it goes. Every holder can
// serve it, whatever form it keeps the path in: requests name positions in
// the uncompressed NAR, a holder sends its .nar.zst or .nar.xz as it is when
// that is the whole request, or the NAR bytes (compressed chunk by chunk on
// the fly where the data compresses), and WriteNAR decodes. When the serving peer
// fails mid-stream, the transfer resumes at the same NAR byte on the next
// holder; w sees one uninterrupted stream.
//
// If the bytes do not verify, the peer is blocklisted for BlocklistFor when
// it alone sent them, or when it sent bytes that did not decode. When
// several peers contributed, none is blamed yet: what each sent is
// remembered (a digest per segment), and the next transfer of the path that
// verifies tells which of them sent other bytes than the good copy, and
// only those are blocklisted (libtorrent's smart ban). For a NAR verified
// before release (see Config.VerifyFirstMax) the transfer starts again on the
// holders; otherwise WriteNAR returns an error wrapping
// cache.ErrHashMismatch.
//
// A range (offset > 0 or length >= 0, from an HTTP Range request) cannot be
// verified on its own: WriteNAR fetches the whole NAR from byte 0, writes
// only the range and still verifies the whole NAR before releasing the
// range's last bytes. Nix only sends ranges to resume a download, so the
// extra bytes are rare.
//
// info must describe the NAR uncompressed (as NarInfo returns it); the
// peers cannot produce another node's compressed file byte for byte.
func (n *Node) WriteNAR(ctx context.Context, w io.Writer, info *cache.NarInfo, offset, length int64) error {
	h, err := info.Hash()
	if err != nil {
		return err
	}
	if cache.NormCompression(info.Compression) != "none" {
		return fmt.Errorf("%w: NAR %s: peers serve NARs uncompressed, not as %s", cache.ErrNotFound, h, info.Compression)
	}
	size := int64(info.NarSize)
	if offset < 0 || offset > size {
		return fmt.Errorf("NAR %s: offset %d outside the %d-byte NAR", h, offset, size)
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
		out := &cache.RangeWriter{W: w, Skip: offset, Left: end - offset, Hold: hold}
		keep := n.keep(h, info)
		err := n.fetchVerified(ctx, h, info, out, x, keep)
		if keep != nil {
			if err == nil {
				if kerr := keep.Commit(); kerr != nil {
					n.log.Warn("keeping a NAR fetched from peers failed", "hash", h.String(), "err", kerr)
				}
			} else {
				keep.Abort(err)
			}
		}
		if errors.Is(err, cache.ErrHashMismatch) && out.Untouched() && attempt < maxVerifyAttempts && ctx.Err() == nil {
			n.log.Info("NAR failed verification before any byte was released; fetching it again", "hash", h.String(), "attempt", attempt+1)
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
			if err = out.Release(); err != nil {
				err = fmt.Errorf("NAR %s: write: %w", h, err)
			}
		}
		x.finish(err)
		return err
	}
}

// keep starts keeping the NAR in the node's NAR cache, if it has one and
// the path is not there or on its way already.
func (n *Node) keep(h cache.Hash, info *cache.NarInfo) KeepWriter {
	if n.cfg.Keeper == nil {
		return nil
	}
	kw, err := n.cfg.Keeper.Keep(info)
	if err != nil {
		n.log.Debug("not keeping NAR fetched from peers", "hash", h.String(), "err", err)
		return nil
	}
	return kw
}

// accept is what this node asks holders to send.
func (n *Node) accept() byte {
	switch n.cfg.Compression {
	case CompressNever:
		return 0
	case CompressAlways:
		return acceptZstd | acceptXZ | acceptCompress | acceptForce
	}
	// xz decodes at 40-80 MB/s, slower than a LAN, but a holder that has
	// only the .nar.xz would decode it as slowly itself.
	return acceptZstd | acceptXZ | acceptCompress
}

// fetchVerified runs one transfer of the whole NAR through a hash into out,
// failing over between holders. A mismatch returns an error wrapping
// cache.ErrHashMismatch.
func (n *Node) fetchVerified(ctx context.Context, h cache.Hash, info *cache.NarInfo, out *cache.RangeWriter, x *transfer, keep KeepWriter) error {
	size := int64(info.NarSize)
	sink := newNarSink(size, out, x, keep, n.blame.probes(h))
	tried := make(map[*session]bool)
	var errs []error
	for sink.n < size {
		ss := n.holders(h, tried)
		if len(ss) == 0 {
			if len(tried) == 0 {
				return fmt.Errorf("%w: NAR %s: no peer offers it", cache.ErrNotFound, h)
			}
			return fmt.Errorf("NAR %s: no peer left to fetch byte %d from: %w", h, sink.n, errors.Join(errs...))
		}
		s := ss[0]
		tried[s] = true
		x.setPeer(s)
		pos := sink.n
		if pos > 0 {
			x.failover()
			n.log.Info("resuming NAR on another peer", "hash", h.String(), "peer", s.id, "offset", pos)
		}
		sink.begin(s.id)
		req := &narReq{Hash: h, NarHash: info.NarHash, NarSize: info.NarSize, Offset: uint64(pos), Length: toEnd, Accept: n.accept()}
		_, err := s.fetchNAR(ctx, req, sink)
		if err == nil {
			continue
		}
		var se *errSink
		switch {
		case errors.As(err, &se) && sink.verifyErr != nil:
			return n.mismatch(h, sink, sink.verifyErr)
		case errors.As(err, &se):
			// The caller went away (Nix hung up): nobody's fault.
			return fmt.Errorf("NAR %s: write: %w", h, se.err)
		case errors.Is(err, errBadData):
			// Proof against this peer alone: its own response does not
			// decode, or is longer than the NAR.
			n.ban(s.id, s.name, h, err)
			n.mismatches.Add(1)
			return fmt.Errorf("NAR %s: %w: %w", h, cache.ErrHashMismatch, err)
		case ctx.Err() != nil:
			return fmt.Errorf("NAR %s: %w", h, ctx.Err())
		}
		n.log.Info("peer failed to serve NAR", "peer", s.id, "hash", h.String(), "offset", sink.n, "err", err)
		errs = append(errs, err)
	}
	if err := sink.verify(info); err != nil {
		return n.mismatch(h, sink, err)
	}
	// A good copy: judge the peers that sent parts of earlier bad ones.
	for _, p := range n.blame.judge(h, sink) {
		n.ban(p, "", h, errors.New("sent bytes that differ from the verified NAR"))
	}
	return nil
}

// mismatch handles a transfer that failed verification: the peer that sent
// all of it is blocklisted; when several did, their segments are remembered
// until a good copy tells who lied.
func (n *Node) mismatch(h cache.Hash, sink *narSink, verr error) error {
	n.mismatches.Add(1)
	peers := sink.contributors()
	if len(peers) == 1 {
		n.ban(peers[0], "", h, verr)
	} else {
		n.blame.suspect(h, sink.segments())
		n.log.Warn("NAR from several peers does not match its signed NarHash; blame waits for a good copy", "hash", h.String(), "peers", peers)
	}
	err := verr
	if !errors.Is(err, cache.ErrHashMismatch) {
		err = fmt.Errorf("%w: %w", cache.ErrHashMismatch, verr)
	}
	return fmt.Errorf("NAR %s from %v: %w", h, peers, err)
}

// ban blocklists a peer that sent bad bytes for h.
func (n *Node) ban(id, name string, h cache.Hash, why error) {
	until := n.blocklist(id)
	n.log.Warn("peer sent a NAR that does not match its signed NarHash; blocklisted", "peer", id, "name", name, "hash", h.String(), "until", until.Format(time.RFC3339), "why", why)
}
