package transfer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/lancache/lancache/cache"
)

func frame(ver, typ byte, length uint32, payload []byte) []byte {
	b := []byte{ver, typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[2:], length)
	return append(b, payload...)
}

func TestReadFrameRejects(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
	}{
		{"bad version", frame(2, typePing, 16, make([]byte, 16))},
		{"unknown type", frame(1, 0x7e, 0, nil)},
		{"oversized hello", frame(1, typeHello, maxPayload[typeHello]+1, nil)},
		{"oversized ping", frame(1, typePing, 17, make([]byte, 17))},
		{"oversized snapshot", frame(1, typeSnapshot, 1<<31, nil)},
		{"resync with payload", frame(1, typeResync, 1, []byte{0})},
		{"truncated header", []byte{1, typePing, 0}},
		{"truncated payload", frame(1, typePing, 16, make([]byte, 3))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := readFrame(bytes.NewReader(tt.in))
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("readFrame = %v, want ErrProtocol", err)
			}
		})
	}
	if _, _, err := readFrame(bytes.NewReader(nil)); err != io.EOF {
		t.Fatalf("empty stream: %v, want io.EOF", err)
	}
}

func TestMessagesRoundTrip(t *testing.T) {
	h := &hello{Version: 1, Caps: 5, ID: "abc", Name: "host-1", Proof: bytes.Repeat([]byte{7}, proofLen)}
	var buf bytes.Buffer
	if err := writeFrame(&buf, typeHello, h.marshal()); err != nil {
		t.Fatal(err)
	}
	typ, p, err := readFrame(&buf)
	if err != nil || typ != typeHello {
		t.Fatal(typ, err)
	}
	h2, err := parseHello(p)
	if err != nil || h2.ID != h.ID || h2.Name != h.Name || !bytes.Equal(h2.Proof, h.Proof) || h2.Caps != 5 {
		t.Fatalf("hello round trip: %+v, %v", h2, err)
	}

	d := &delta{From: 3, To: 5, FP: 99, Changes: []cache.Delta{{Hash: cache.Hash{1}}, {Hash: cache.Hash{2}, Removed: true}}}
	d2, err := parseDelta(d.marshal())
	if err != nil || d2.From != 3 || d2.To != 5 || d2.FP != 99 || !slices.Equal(d2.Changes, d.Changes) {
		t.Fatalf("delta round trip: %+v, %v", d2, err)
	}
	bad := (&delta{From: 3, To: 9, Changes: d.Changes}).marshal()
	if _, err := parseDelta(bad); !errors.Is(err, ErrProtocol) {
		t.Fatalf("delta with wrong seq span: %v", err)
	}

	r := &narReq{Hash: cache.Hash{9}, NarHash: cache.NarHash{8}, NarSize: 100, Offset: 10, Length: toEnd, Accept: acceptZstd | acceptCompress}
	r2, err := parseNarReq(r.marshal())
	if err != nil || *r2 != *r {
		t.Fatalf("narReq round trip: %+v, %v", r2, err)
	}
	if _, err := parseNarReq(append(r.marshal(), 0)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("trailing byte accepted: %v", err)
	}
	if _, err := parseNarReq((&narReq{NarSize: 10, Offset: 11}).marshal()); !errors.Is(err, ErrProtocol) {
		t.Fatalf("offset beyond the NAR accepted: %v", err)
	}
	if _, err := parseNarReq((&narReq{Accept: 0x80}).marshal()); !errors.Is(err, ErrProtocol) {
		t.Fatalf("unknown accept bit accepted: %v", err)
	}
	resp := &narResp{Status: statusOK, Encoding: encChunked, Length: toEnd}
	if r2, err := parseNarResp(resp.marshal()); err != nil || *r2 != *resp {
		t.Fatalf("narResp round trip: %+v, %v", r2, err)
	}
	if _, err := parseNarResp((&narResp{Encoding: 9}).marshal()); !errors.Is(err, ErrProtocol) {
		t.Fatalf("unknown encoding accepted: %v", err)
	}
	if _, err := parseHello((&hello{Name: "a\x00b"}).marshal()); !errors.Is(err, ErrProtocol) {
		t.Fatalf("control character in name accepted: %v", err)
	}
}

func TestKeysRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 2, 10, 1000, 100_000} {
		hs := make([]cache.Hash, n)
		for i := range hs {
			binary.LittleEndian.PutUint64(hs[i][:], rand.Uint64())
			binary.LittleEndian.PutUint64(hs[i][8:], uint64(i))
		}
		keys := keysOf(hs)
		k, data := encodeKeys(keys)
		got, err := decodeKeys(data, len(keys), k)
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if !slices.Equal(got, keys) {
			t.Fatalf("n=%d: keys differ", n)
		}
		if n == 100_000 {
			size := len((&snapshot{Count: uint32(len(keys)), K: k, Data: data}).marshal()) + frameHeaderLen
			t.Logf("snapshot of %d paths: %d bytes on the wire (%.1f bits/path)", n, size, float64(size*8)/float64(n))
			if size > 512<<10 {
				t.Errorf("snapshot of 100k paths is %d bytes, want well under 1 MiB", size)
			}
		}
	}
	// Extremes: keys 0 and 2^48-1.
	keys := []uint64{0, 1, keyMask - 1, keyMask}
	k, data := encodeKeys(keys)
	if got, err := decodeKeys(data, len(keys), k); err != nil || !slices.Equal(got, keys) {
		t.Fatalf("extremes: %v %v", got, err)
	}
}

func TestDecodeKeysRejects(t *testing.T) {
	keys := []uint64{5, 900, 1 << 40}
	k, data := encodeKeys(keys)
	if _, err := decodeKeys(data, 4, k); err == nil {
		t.Error("count too large accepted")
	}
	if _, err := decodeKeys(data, 2, k); err == nil {
		t.Error("trailing keys accepted")
	}
	if _, err := decodeKeys(append(data, 0), 3, k); err == nil {
		t.Error("trailing byte accepted")
	}
	if _, err := decodeKeys(bytes.Repeat([]byte{0xff}, 64), 1, 0); err == nil {
		t.Error("overlong quotient accepted")
	}
	if _, err := decodeKeys(nil, 1<<30, 30); err == nil {
		t.Error("impossible count accepted")
	}
}

// FuzzFrame feeds arbitrary bytes to the frame reader and every message
// parser: they must reject or accept without panicking, and accepted
// messages must re-encode to the same payload.
func FuzzFrame(f *testing.F) {
	f.Add(frame(1, typeHello, 0, nil))
	f.Add(append([]byte{1, typeHello, 0, 0, 0, 13}, (&hello{Version: 1, ID: "x", Name: "y"}).marshal()...))
	f.Add(frame(1, typePing, 16, make([]byte, 16)))
	f.Add(frame(1, typeDelta, 26+21, append(make([]byte, 8), (&delta{From: 0, To: 1, Changes: []cache.Delta{{}}}).marshal()[8:]...)))
	f.Add(frame(1, typeNarReq, 0, (&narReq{NarSize: 5, Accept: acceptXZ}).marshal()))
	f.Add(frame(1, typeNarResp, 10, (&narResp{Status: statusOK, Encoding: encZstd, Length: 10}).marshal()))
	f.Add(frame(1, typeSnapshot, 1<<30, nil))
	f.Add(frame(1, typeFlightReq, 0, (&flightReq{NarSize: 9, FileSize: 5, Comp: "zstd", Offset: 2, Flags: flagFetch}).marshal()))
	f.Add(frame(1, typeFlightAd, 0, marshalFlightAds([]flightAd{{Role: adFetching, Have: 3, FileSize: 7}})))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		typ, p, err := readFrame(bytes.NewReader(in))
		if err != nil {
			return
		}
		if uint64(len(p)) > uint64(maxPayload[typ]) {
			t.Fatalf("payload of %d bytes beyond bound", len(p))
		}
		switch typ {
		case typeHello:
			if h, err := parseHello(p); err == nil && !bytes.Equal(h.marshal(), p) {
				t.Fatal("hello does not round-trip")
			}
		case typeSnapshot:
			if s, err := parseSnapshot(p); err == nil {
				if s.Count < 1<<16 {
					decodeKeys(s.Data, int(s.Count), s.K)
				}
			}
		case typeDelta:
			if d, err := parseDelta(p); err == nil && !bytes.Equal(d.marshal(), p) {
				t.Fatal("delta does not round-trip")
			}
		case typePing:
			parsePing(p)
		case typeNarInfoReq:
			parseNarInfoReq(p)
		case typeNarInfoResp:
			parseNarInfoResp(p)
		case typeNarReq:
			if m, err := parseNarReq(p); err == nil && !bytes.Equal(m.marshal(), p) {
				t.Fatal("narReq does not round-trip")
			}
		case typeNarResp:
			parseNarResp(p)
		case typeFlightReq:
			if m, err := parseFlightReq(p); err == nil && !bytes.Equal(m.marshal(), p) {
				t.Fatal("flightReq does not round-trip")
			}
		case typeFlightAd:
			if ads, err := parseFlightAds(p); err == nil && !bytes.Equal(marshalFlightAds(ads), p) {
				t.Fatal("flight ads do not round-trip")
			}
		}
	})
}

// FuzzInventory checks the inventory coding: arbitrary data must decode
// or fail cleanly, and any set of keys must round-trip.
func FuzzInventory(f *testing.F) {
	k, data := encodeKeys([]uint64{1, 2, 3, 1 << 30, keyMask})
	f.Add(data, uint16(5), k)
	f.Add([]byte{0xff, 0x00}, uint16(1), uint8(0))
	f.Add([]byte{}, uint16(0), uint8(47))
	f.Fuzz(func(t *testing.T, data []byte, count uint16, k uint8) {
		keys, err := decodeKeys(data, int(count), k)
		if err != nil {
			// Use the input as a key set instead.
			var ks []uint64
			for i := 0; i+6 <= len(data); i += 6 {
				ks = append(ks, binary.BigEndian.Uint64(append([]byte{0, 0}, data[i:i+6]...)))
			}
			slices.Sort(ks)
			ks = slices.Compact(ks)
			k2, enc := encodeKeys(ks)
			got, err := decodeKeys(enc, len(ks), k2)
			if err != nil || !slices.Equal(got, ks) {
				t.Fatalf("round trip of %d keys: %v", len(ks), err)
			}
			return
		}
		if len(keys) != int(count) {
			t.Fatalf("decoded %d keys, want %d", len(keys), count)
		}
		for i := range keys {
			if keys[i] > keyMask || i > 0 && keys[i] <= keys[i-1] {
				t.Fatal("decoded keys not sorted, distinct and in range")
			}
		}
		// Canonical: re-encoding with the same parameter gives the input.
		if k == riceParam(len(keys)) {
			if _, enc := encodeKeys(keys); !bytes.Equal(enc, data) {
				t.Fatal("accepted a non-canonical coding")
			}
		}
	})
}

func TestFlightMessages(t *testing.T) {
	req := &flightReq{NarSize: 100, FileSize: 40, Comp: "xz", Offset: 40, Flags: flagFetch}
	req.Hash[0], req.NarHash[1], req.FileHash[2] = 1, 2, 3
	got, err := parseFlightReq(req.marshal())
	if err != nil || *got != *req {
		t.Fatalf("flightReq round trip: %+v, %v; want %+v", got, err, req)
	}
	ads := []flightAd{{Role: adFetching, Have: 5, FileSize: 9}, {Role: adFollowing, Have: 7}, {Role: adDone}}
	ads[1].Hash[19] = 9
	gotAds, err := parseFlightAds(marshalFlightAds(ads))
	if err != nil || len(gotAds) != 3 || gotAds[1] != ads[1] {
		t.Fatalf("flight ads round trip: %+v, %v", gotAds, err)
	}
	for name, m := range map[string]*flightReq{
		"unknown flag":     {NarSize: 1, Comp: "none", Flags: 0x80},
		"no NarSize":       {Comp: "none"},
		"offset past file": {NarSize: 1, FileSize: 4, Comp: "zstd", Offset: 5},
		"compression":      {NarSize: 1, Comp: "lz4"},
	} {
		if _, err := parseFlightReq(m.marshal()); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: accepted (%v)", name, err)
		}
	}
	for name, a := range map[string][]flightAd{
		"role":          {{Role: 3}},
		"have past end": {{Role: adFetching, Have: 10, FileSize: 9}},
	} {
		if _, err := parseFlightAds(marshalFlightAds(a)); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: accepted (%v)", name, err)
		}
	}
	if _, err := parseFlightAds(append(marshalFlightAds(ads), 0)); !errors.Is(err, ErrProtocol) {
		t.Errorf("trailing byte accepted (%v)", err)
	}
	long := make([]flightAd, maxFlightAds+1)
	if _, err := parseFlightAds(marshalFlightAds(long)); !errors.Is(err, ErrProtocol) {
		t.Errorf("%d ads accepted (%v)", len(long), err)
	}
}
