package transfer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
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

// decodeKeys decodes exactly count keys coded by encodeKeys (see
// keyDecoder for what it rejects). count must already be checked against
// the caller's bound.
func decodeKeys(data []byte, count int, k uint8) ([]uint64, error) {
	d, err := newKeyDecoder(bytes.NewReader(data), int64(len(data)), count, k)
	if err != nil {
		return nil, err
	}
	keys := make([]uint64, count)
	for i := range keys {
		if keys[i], err = d.next(); err != nil {
			return nil, err
		}
	}
	return keys, d.end()
}

// keyDecoder decodes a Golomb-Rice coded key set as it streams in, so that
// a snapshot costs neither its payload nor a slice of its keys in memory.
// It rejects anything that is not the canonical coding of a sorted set of
// distinct keys below 2^keyBits: short or trailing data, non-zero padding,
// overflow. Errors of the underlying reader are returned as they are (a
// timeout is not a protocol violation); an early EOF is ErrProtocol.
type keyDecoder struct {
	r     io.ByteReader
	left  int64 // bytes of the coded set not yet read from r
	k     uint8
	count int // keys to decode
	i     int // keys decoded
	prev  uint64
	acc   uint64 // pending bits, left-aligned
	nacc  uint   // number of pending bits
}

// newKeyDecoder decodes count keys with Rice parameter k from the next size
// bytes of r.
func newKeyDecoder(r io.ByteReader, size int64, count int, k uint8) (*keyDecoder, error) {
	if k >= keyBits {
		return nil, fmt.Errorf("%w: rice parameter %d", ErrProtocol, k)
	}
	// Every key costs at least k+1 bits: reject impossible counts before
	// reading for them.
	if uint64(count)*uint64(k+1) > uint64(size)*8 {
		return nil, fmt.Errorf("%w: %d keys cannot fit in %d bytes", ErrProtocol, count, size)
	}
	return &keyDecoder{r: r, left: size, k: k, count: count}, nil
}

// fill tops up acc to more than 56 bits, or to what is left.
func (d *keyDecoder) fill() error {
	for d.nacc <= 56 && d.left > 0 {
		b, err := d.r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%w: inventory truncated with %d bytes missing", ErrProtocol, d.left)
			}
			return fmt.Errorf("read inventory: %w", err)
		}
		d.left--
		d.acc |= uint64(b) << (56 - d.nacc)
		d.nacc += 8
	}
	return nil
}

// next returns the next key.
func (d *keyDecoder) next() (uint64, error) {
	if d.i >= d.count {
		return 0, fmt.Errorf("%w: more than %d inventory keys", ErrProtocol, d.count)
	}
	// Quotient: one-bits up to a zero-bit.
	var q uint64
	for {
		if err := d.fill(); err != nil {
			return 0, err
		}
		if d.nacc == 0 {
			return 0, fmt.Errorf("%w: inventory key %d: truncated", ErrProtocol, d.i)
		}
		ones := uint(bits.LeadingZeros64(^d.acc))
		if ones < d.nacc {
			q += uint64(ones)
			d.acc <<= ones + 1
			d.nacc -= ones + 1
			break
		}
		q += uint64(d.nacc)
		d.acc, d.nacc = 0, 0
		if q > keyMask>>d.k {
			break
		}
	}
	if q > keyMask>>d.k {
		return 0, fmt.Errorf("%w: inventory key %d: bad quotient", ErrProtocol, d.i)
	}
	if err := d.fill(); err != nil {
		return 0, err
	}
	if d.nacc < uint(d.k) {
		return 0, fmt.Errorf("%w: inventory key %d: truncated", ErrProtocol, d.i)
	}
	lo := d.acc >> (64 - uint(d.k)) // 0 when k is 0
	d.acc <<= d.k
	d.nacc -= uint(d.k)
	v := q<<d.k | lo
	if d.i > 0 {
		v += d.prev + 1
		if v <= d.prev { // wrapped
			return 0, fmt.Errorf("%w: inventory key %d overflows", ErrProtocol, d.i)
		}
	}
	if v > keyMask {
		return 0, fmt.Errorf("%w: inventory key %d exceeds %d bits", ErrProtocol, d.i, keyBits)
	}
	d.i++
	d.prev = v
	return v, nil
}

// end checks that all count keys were read and that what is left is less
// than a byte of zero bits.
func (d *keyDecoder) end() error {
	if d.i != d.count {
		return fmt.Errorf("%w: %d of %d inventory keys read", ErrProtocol, d.i, d.count)
	}
	if err := d.fill(); err != nil {
		return err
	}
	if d.left > 0 || d.nacc >= 8 || d.acc != 0 {
		return fmt.Errorf("%w: inventory has trailing data", ErrProtocol)
	}
	return nil
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
