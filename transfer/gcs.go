package transfer

import (
	"fmt"
	"math/bits"
	"slices"

	"github.com/lancache/lancache/cache"
)

// keyBits is the width of the inventory keys peers exchange and index: the
// top 48 bits of cache.HashKey (xxhash64 of the store-path hash).
//
// Two store paths share a key with probability 2^-48, so with a peer
// offering 1M paths a lookup of a path it does not have matches by
// accident with probability 1M/2^48 ≈ 4e-9. Such a false positive costs one
// narinfo round trip answered "not found" — never wrong bytes, since all
// bytes are checked against the signed NarHash.
const keyBits = 48

const keyMask = 1<<keyBits - 1

// keyOf is the inventory key of a store-path hash.
func keyOf(h cache.Hash) uint64 { return cache.HashKey(h) >> (64 - keyBits) }

// keysOf returns the sorted distinct keys of hs.
func keysOf(hs []cache.Hash) []uint64 {
	ks := make([]uint64, len(hs))
	for i, h := range hs {
		ks[i] = keyOf(h)
	}
	slices.Sort(ks)
	return slices.Compact(ks)
}

// riceParam picks the Rice parameter for n keys spread over 2^keyBits:
// floor(log2(mean gap)).
func riceParam(n int) uint8 {
	if n <= 1 {
		return keyBits - 1
	}
	gap := uint64(1<<keyBits) / uint64(n)
	if gap <= 1 {
		return 0
	}
	return uint8(bits.Len64(gap) - 1)
}

// encodeKeys codes sorted distinct keys (each < 2^keyBits) as a
// Golomb-Rice coded set: the gaps d0 = k0, di = ki - k(i-1) - 1, each as
// (d >> k) one-bits, a zero-bit, then the low k bits of d, most significant
// bit first, padded with zero bits to a whole byte. With n keys this costs
// about keyBits - log2(n) + 2 bits per key: 100k paths take ~390 KB, 1M
// ~3.5 MB, against 20 bytes per raw hash.
func encodeKeys(keys []uint64) (k uint8, data []byte) {
	k = riceParam(len(keys))
	w := bitWriter{b: make([]byte, 0, len(keys)*(int(k)+3)/8+8)}
	prev := uint64(0)
	for i, v := range keys {
		d := v
		if i > 0 {
			d = v - prev - 1
		}
		prev = v
		w.unary(d >> k)
		w.bits(d&(1<<k-1), k)
	}
	return k, w.flush()
}

// decodeKeys decodes exactly count keys coded by encodeKeys, rejecting
// anything that is not the canonical coding of a sorted set of distinct
// keys below 2^keyBits: short or trailing data, non-zero padding, overflow.
// count must already be checked against the caller's bound.
func decodeKeys(data []byte, count int, k uint8) ([]uint64, error) {
	if k >= keyBits {
		return nil, fmt.Errorf("%w: rice parameter %d", ErrProtocol, k)
	}
	// Every key costs at least k+1 bits: reject impossible counts before
	// allocating for them.
	if uint64(count)*uint64(k+1) > uint64(len(data))*8 {
		return nil, fmt.Errorf("%w: %d keys cannot fit in %d bytes", ErrProtocol, count, len(data))
	}
	keys := make([]uint64, count)
	r := bitReader{b: data}
	prev := uint64(0)
	for i := range keys {
		q, ok := r.unary(keyMask >> k)
		if !ok {
			return nil, fmt.Errorf("%w: inventory key %d: bad quotient", ErrProtocol, i)
		}
		lo, ok := r.bits(k)
		if !ok {
			return nil, fmt.Errorf("%w: inventory key %d: truncated", ErrProtocol, i)
		}
		d := q<<k | lo
		v := d
		if i > 0 {
			v = prev + d + 1
			if v <= prev { // wrapped
				return nil, fmt.Errorf("%w: inventory key %d overflows", ErrProtocol, i)
			}
		}
		if v > keyMask {
			return nil, fmt.Errorf("%w: inventory key %d exceeds %d bits", ErrProtocol, i, keyBits)
		}
		keys[i] = v
		prev = v
	}
	if !r.paddingOK() {
		return nil, fmt.Errorf("%w: inventory has trailing data", ErrProtocol)
	}
	return keys, nil
}

type bitWriter struct {
	b   []byte
	acc uint64 // pending bits, right-aligned
	n   uint   // number of pending bits (< 8 after each call)
}

func (w *bitWriter) bits(v uint64, n uint8) {
	for n > 0 {
		// Add up to 56-w.n bits at a time so acc never overflows.
		take := min(uint(n), 56-w.n)
		n -= uint8(take)
		w.acc = w.acc<<take | (v>>n)&(1<<take-1)
		w.n += take
		for w.n >= 8 {
			w.n -= 8
			w.b = append(w.b, byte(w.acc>>w.n))
		}
	}
}

func (w *bitWriter) unary(q uint64) {
	for q >= 32 {
		w.bits(1<<32-1, 32)
		q -= 32
	}
	w.bits((1<<q-1)<<1, uint8(q+1))
}

func (w *bitWriter) flush() []byte {
	if w.n > 0 {
		w.b = append(w.b, byte(w.acc<<(8-w.n)))
		w.n = 0
	}
	return w.b
}

type bitReader struct {
	b   []byte
	pos uint64 // bit position
}

func (r *bitReader) bit() (uint64, bool) {
	i := r.pos >> 3
	if i >= uint64(len(r.b)) {
		return 0, false
	}
	v := uint64(r.b[i]>>(7-r.pos&7)) & 1
	r.pos++
	return v, true
}

// unary reads one-bits up to a zero-bit; more than max one-bits fail.
func (r *bitReader) unary(max uint64) (uint64, bool) {
	var q uint64
	for {
		// Fast path: count leading ones of the rest of the current byte.
		i := r.pos >> 3
		if i >= uint64(len(r.b)) {
			return 0, false
		}
		off := r.pos & 7
		rest := r.b[i] << off // remaining bits, left-aligned
		ones := uint64(bits.LeadingZeros8(^rest))
		if avail := 8 - off; ones < avail {
			q += ones
			r.pos += ones + 1
			return q, q <= max
		}
		q += 8 - off
		r.pos += 8 - off
		if q > max {
			return 0, false
		}
	}
}

func (r *bitReader) bits(n uint8) (uint64, bool) {
	if r.pos+uint64(n) > uint64(len(r.b))*8 {
		return 0, false
	}
	var v uint64
	for n > 0 {
		i := r.pos >> 3
		off := uint8(r.pos & 7)
		avail := 8 - off
		take := min(avail, n)
		chunk := uint64(r.b[i]<<off) >> (8 - take)
		v = v<<take | chunk
		r.pos += uint64(take)
		n -= take
	}
	return v, true
}

// paddingOK reports whether what is left is less than a byte of zero bits.
func (r *bitReader) paddingOK() bool {
	total := uint64(len(r.b)) * 8
	if total-r.pos >= 8 {
		return false
	}
	for r.pos < total {
		if v, _ := r.bit(); v != 0 {
			return false
		}
	}
	return true
}
