package transfer

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"fmt"
	"hash"
	"slices"
	"sync"
	"time"

	"github.com/lancache/lancache/cache"
)

// narSink receives the NAR bytes of one transfer, from byte 0, whichever
// peers they come from: it hashes them (the NarHash check), writes them to
// the output and to the keeper, and records which peer sent which segment,
// with a digest of each, so that a bad NAR can be blamed on whoever sent
// other bytes than a good copy has there.
type narSink struct {
	out  *cache.RangeWriter
	x    *transfer
	keep KeepWriter
	h    hash.Hash // sha256 of bytes [0, n)
	n    int64
	size int64 // NarSize

	segs []segment
	seg  hash.Hash // sha256 of the current segment, when it does not start at 0

	probes []*probe // digests wanted of the bytes at suspect segments

	verifyErr error
}

// segment is what one peer sent of a transfer: NAR bytes [start, end) with
// digest sha256(bytes) — for a segment at 0, the marshalled sha256 state
// after its bytes, which is as telling and costs no second hash.
type segment struct {
	peer       string
	start, end int64
	digest     []byte
}

// probe asks a transfer for the digest of bytes [start, end), as segment
// defines it.
type probe struct {
	start, end int64
	h          hash.Hash // for start > 0
	digest     []byte
}

func newNarSink(size int64, out *cache.RangeWriter, x *transfer, keep KeepWriter, probes []*probe) *narSink {
	return &narSink{size: size, out: out, x: x, keep: keep, h: sha256.New(), probes: probes}
}

// begin starts the segment of peer, at the current position.
func (s *narSink) begin(peer string) {
	s.end()
	s.segs = append(s.segs, segment{peer: peer, start: s.n, end: s.n})
	if s.n > 0 {
		s.seg = sha256.New()
	}
}

// end closes the current segment.
func (s *narSink) end() {
	if len(s.segs) == 0 {
		return
	}
	g := &s.segs[len(s.segs)-1]
	if g.digest != nil {
		return
	}
	g.end = s.n
	if g.start == 0 {
		g.digest = stateOf(s.h)
	} else {
		g.digest = s.seg.Sum(nil)
	}
}

func stateOf(h hash.Hash) []byte {
	b, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic(fmt.Sprintf("sha256 state: %v", err)) // cannot happen
	}
	return b
}

func (s *narSink) Write(p []byte) (int, error) {
	if s.n+int64(len(p)) > s.size {
		s.verifyErr = fmt.Errorf("%w: more than %d bytes", cache.ErrHashMismatch, s.size)
		return 0, s.verifyErr
	}
	s.hashProbed(p)
	if s.seg != nil {
		s.seg.Write(p)
	}
	s.n += int64(len(p))
	s.x.add(int64(len(p)))
	if s.keep != nil {
		if _, err := s.keep.Write(p); err != nil {
			// A full disk must not fail the transfer: stop keeping.
			s.keep.Abort(err)
			s.keep = nil
		}
	}
	return s.out.Write(p)
}

// hashProbed feeds p, at position s.n, into the whole-NAR hash, taking the
// hash state wherever a probe of a segment at 0 ends inside p, and into the
// probes of other segments.
func (s *narSink) hashProbed(p []byte) {
	pos := s.n
	for _, pr := range s.probes {
		if pr.digest != nil || pr.end <= pos || pr.start >= pos+int64(len(p)) {
			continue
		}
		if pr.start > 0 {
			a, b := max(pr.start, pos), min(pr.end, pos+int64(len(p)))
			pr.h.Write(p[a-pos : b-pos])
			if b == pr.end {
				pr.digest = pr.h.Sum(nil)
			}
		}
	}
	for len(p) > 0 {
		cut := int64(len(p))
		var at *probe
		for _, pr := range s.probes {
			if pr.start == 0 && pr.digest == nil && pr.end > pos && pr.end-pos <= cut {
				cut, at = pr.end-pos, pr
			}
		}
		s.h.Write(p[:cut])
		p, pos = p[cut:], pos+cut
		if at != nil {
			st := stateOf(s.h)
			for _, pr := range s.probes {
				if pr.start == 0 && pr.end == pos {
					pr.digest = st
				}
			}
		}
	}
}

// verify checks the whole NAR against info.
func (s *narSink) verify(info *cache.NarInfo) error {
	s.end()
	if uint64(s.n) != info.NarSize {
		return fmt.Errorf("%w: got %d NAR bytes, narinfo says %d", cache.ErrHashMismatch, s.n, info.NarSize)
	}
	if !bytes.Equal(s.h.Sum(nil), info.NarHash[:]) {
		return fmt.Errorf("%w: %s", cache.ErrHashMismatch, info.StorePath)
	}
	return nil
}

// contributors lists the peers that sent bytes, in order, once each.
func (s *narSink) contributors() []string {
	var out []string
	for _, g := range s.segments() {
		if !slices.Contains(out, g.peer) {
			out = append(out, g.peer)
		}
	}
	return out
}

// segments are the non-empty segments of the transfer.
func (s *narSink) segments() []segment {
	s.end()
	var out []segment
	for _, g := range s.segs {
		if g.end > g.start {
			out = append(out, g)
		}
	}
	return out
}

// blame remembers, per path, the segments of transfers that failed
// verification with more than one contributor, until a good copy judges
// them. It is bounded: the oldest paths are forgotten first.
type blame struct {
	mu    sync.Mutex
	byKey map[cache.Hash]*suspects
	order []cache.Hash
}

type suspects struct {
	at   time.Time
	segs []segment
}

const (
	maxBlamePaths = 256
	maxBlameSegs  = 64
	blameTTL      = time.Hour
)

func newBlame() *blame { return &blame{byKey: make(map[cache.Hash]*suspects)} }

// suspect records the segments of a bad transfer of h.
func (b *blame) suspect(h cache.Hash, segs []segment) {
	b.mu.Lock()
	defer b.mu.Unlock()
	sp := b.byKey[h]
	if sp == nil {
		for len(b.order) >= maxBlamePaths {
			delete(b.byKey, b.order[0])
			b.order = b.order[1:]
		}
		sp = &suspects{}
		b.byKey[h] = sp
		b.order = append(b.order, h)
	}
	sp.at = time.Now()
	sp.segs = append(sp.segs, segs...)
	if len(sp.segs) > maxBlameSegs {
		sp.segs = sp.segs[len(sp.segs)-maxBlameSegs:]
	}
}

// probes returns what a transfer of h must measure to judge its suspects.
func (b *blame) probes(h cache.Hash) []*probe {
	b.mu.Lock()
	defer b.mu.Unlock()
	sp := b.byKey[h]
	if sp == nil || time.Since(sp.at) > blameTTL {
		return nil
	}
	out := make([]*probe, 0, len(sp.segs))
	for _, g := range sp.segs {
		pr := &probe{start: g.start, end: g.end}
		if g.start > 0 {
			pr.h = sha256.New()
		}
		out = append(out, pr)
	}
	return out
}

// judge compares the suspects of h with the good transfer in sink, forgets
// them, and returns the peers whose bytes differed from the good copy.
func (b *blame) judge(h cache.Hash, sink *narSink) []string {
	if len(sink.probes) == 0 {
		return nil
	}
	b.mu.Lock()
	sp := b.byKey[h]
	delete(b.byKey, h)
	for i, k := range b.order {
		if k == h {
			b.order = append(b.order[:i], b.order[i+1:]...)
			break
		}
	}
	b.mu.Unlock()
	if sp == nil {
		return nil
	}
	var guilty []string
	for _, g := range sp.segs {
		for _, pr := range sink.probes {
			if pr.start == g.start && pr.end == g.end && pr.digest != nil && !bytes.Equal(pr.digest, g.digest) && !slices.Contains(guilty, g.peer) {
				guilty = append(guilty, g.peer)
			}
		}
	}
	return guilty
}

// infoCache remembers narinfos learned from peers for a while, bounded in
// number (the oldest go first), so that the NAR request following a narinfo
// request costs no second round trip.
type infoCache struct {
	mu    sync.Mutex
	ttl   time.Duration
	max   int
	byKey map[cache.Hash]infoEntry
	order []cache.Hash // insertion order, for eviction
}

type infoEntry struct {
	info *cache.NarInfo
	from string // id of the peer it came from
	at   time.Time
}

const (
	infoCacheSize = 16384
	infoCacheTTL  = 10 * time.Minute
)

func newInfoCache(max int, ttl time.Duration) *infoCache {
	return &infoCache{max: max, ttl: ttl, byKey: make(map[cache.Hash]infoEntry)}
}

func (c *infoCache) get(h cache.Hash) (*cache.NarInfo, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[h]
	if !ok || time.Since(e.at) > c.ttl {
		return nil, ""
	}
	return e.info, e.from
}

func (c *infoCache) put(h cache.Hash, info *cache.NarInfo, from string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byKey[h]; !ok {
		for len(c.order) >= c.max {
			delete(c.byKey, c.order[0])
			c.order = c.order[1:]
		}
		c.order = append(c.order, h)
	}
	c.byKey[h] = infoEntry{info: info, from: from, at: time.Now()}
}
