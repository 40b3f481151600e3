package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/ulikunitz/xz"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/statusapi"
)

// compressible returns n bytes of text-like data that zstd shrinks.
func compressible(n int, seed uint64) []byte {
	r := mrand.New(mrand.NewPCG(seed, 7))
	words := []string{"lib", "store", "nix", "/usr/share/doc", "ELF", "\x00\x00\x00\x00", "GLIBC_2.34", "the ", "quick ", "brown ", "fox\n"}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		if r.IntN(2000) == 0 {
			var x [8]byte
			rand.Read(x[:])
			b.Write(x[:])
		}
	}
	return b.Bytes()[:n]
}

// inForm returns the narinfo and file bytes of a path (info, nar) held in
// form comp: "none", "zstd" or "xz" (made with encoders this package does
// not use to decode: an independent check of the decoding side).
func inForm(t testing.TB, info *cache.NarInfo, nar []byte, comp string) (*cache.NarInfo, []byte) {
	t.Helper()
	out := *info
	out.Compression = comp
	var file []byte
	switch comp {
	case "none":
		return &out, nar
	case "zstd":
		e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
		if err != nil {
			t.Fatal(err)
		}
		file = e.EncodeAll(nar, nil)
	case "xz":
		var b bytes.Buffer
		w, err := xz.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(nar)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		file = b.Bytes()
	}
	sum := sha256.Sum256(file)
	out.FileHash = "sha256:" + nixbase32.EncodeToString(sum[:])
	out.FileSize = uint64(len(file))
	ext, _ := cache.CompressionExt(comp)
	out.URL = "nar/" + nixbase32.EncodeToString(sum[:]) + ".nar" + ext
	return &out, file
}

// signedCompressible is makePath with compressible content.
func signedCompressible(t testing.TB, key *testKey, name string, size int) (*cache.NarInfo, []byte) {
	info, _ := makePath(t, key, name, 1)
	data := compressible(size, uint64(size))
	info.NarHash = sha256.Sum256(data)
	info.NarSize = uint64(size)
	sig, err := key.sk.Sign(rand.Reader, info.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	info.Sigs = []string{sig.String()}
	return info, data
}

func servedNarInfos(ns ...*testNode) (n int64) {
	for _, x := range ns {
		n += x.narInfosServed.Load()
	}
	return n
}

// Every pair of forms: the narinfo comes from holder A, the NAR from holder
// B, whatever form each keeps; the NAR request sends no narinfo request.
func TestAnyHolderAnyForm(t *testing.T) {
	key := newTestKey(t, "test-1")
	forms := []string{"none", "zstd", "xz"}
	for _, fa := range forms {
		for _, fb := range forms {
			t.Run(fa+"-"+fb, func(t *testing.T) {
				a := startNode(t, "a", &key, nil)
				b := startNode(t, "b", &key, nil)
				c := startNode(t, "c", &key, nil)
				info, nar := signedCompressible(t, &key, "p-"+fa+fb, 700<<10+3)
				a.share(inForm(t, info, nar, fa))
				b.share(inForm(t, info, nar, fb))
				h := hashOf(t, info)
				connect(c, a)
				connect(c, b)
				waitFor(t, "inventories", func() bool { return offers(c, a.ID(), h) && offers(c, b.ID(), h) })
				busy := func(id string, n int32) {
					for _, s := range c.holders(h, nil) {
						if s.id == id {
							s.active.Add(n)
						}
					}
				}
				ctx := context.Background()
				busy(b.ID(), 5) // the narinfo comes from a
				got, err := c.NarInfo(ctx, h)
				if err != nil {
					t.Fatal(err)
				}
				if got.Compression != "none" || got.FileSize != info.NarSize || got.FileHash != info.NarHash.String() || !got.SignedBy(c.cfg.TrustedKeys) {
					t.Fatalf("narinfo as served: %+v", got)
				}
				if a.narInfosServed.Load() != 1 || b.narInfosServed.Load() != 0 {
					t.Fatalf("narinfo requests: a %d, b %d", a.narInfosServed.Load(), b.narInfosServed.Load())
				}
				busy(b.ID(), -5)
				busy(a.ID(), 5) // the NAR comes from b
				defer busy(a.ID(), -5)
				// The endpoint asks for the narinfo again with the NAR
				// request: answered from memory.
				before := servedNarInfos(a, b)
				if _, err := c.NarInfo(ctx, h); err != nil {
					t.Fatal(err)
				}
				var buf bytes.Buffer
				if err := c.WriteNAR(ctx, &buf, got, 0, -1); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf.Bytes(), nar) {
					t.Fatal("NAR differs")
				}
				if n := servedNarInfos(a, b) - before; n != 0 {
					t.Fatalf("the NAR request cost %d narinfo requests to peers", n)
				}
				if ts := c.Transfers(); ts[0].Peer != b.ID() || ts[0].Result != statusapi.ResultOK {
					t.Fatalf("transfer %+v", ts[0])
				}
				// A resume (Range) from the compressed holder decodes there.
				buf.Reset()
				if err := c.WriteNAR(ctx, &buf, got, 5000, 100); err != nil || !bytes.Equal(buf.Bytes(), nar[5000:5100]) {
					t.Fatalf("range: %v", err)
				}
			})
		}
	}
}

// The serving holder dies mid-NAR; the other, holding another form, takes
// over at the same NAR byte.
func TestFailoverAcrossForms(t *testing.T) {
	key := newTestKey(t, "test-1")
	for _, tc := range []struct{ first, second string }{{"zstd", "none"}, {"none", "xz"}, {"xz", "zstd"}} {
		t.Run(tc.first+"-then-"+tc.second, func(t *testing.T) {
			a := startNode(t, "a", &key, func(c *Config) { c.VerifyFirstMax = 1 })
			b := startNode(t, "b", &key, nil)
			c := startNode(t, "c", &key, func(c *Config) { c.VerifyFirstMax = 1 })
			info, nar := signedCompressible(t, &key, "big", 6<<20)
			pa := a.share(inForm(t, info, nar, tc.first))
			pa.failAt, pa.failures = int64(len(pa.data))/2, -1
			b.share(inForm(t, info, nar, tc.second))
			h := hashOf(t, info)
			connect(c, a)
			connect(c, b)
			waitFor(t, "inventories", func() bool { return offers(c, a.ID(), h) && offers(c, b.ID(), h) })
			// a first: b looks busy.
			for _, s := range c.holders(h, nil) {
				if s.id == b.ID() {
					s.active.Add(5)
					defer s.active.Add(-5)
				}
			}
			got, _, err := fetch(context.Background(), c, h)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, nar) {
				t.Fatal("NAR differs")
			}
			ts := c.Transfers()
			// An xz decoder (xz(1)) may drop what it decoded when its
			// input breaks: then b serves from byte 0, no failover.
			if ts[0].Peer != b.ID() || ts[0].Failovers != 1 && !(tc.first == "xz" && ts[0].Failovers == 0) {
				t.Fatalf("transfer %+v, want one failover to b", ts[0])
			}
		})
	}
}

// Bytes on the wire: a compressible path held uncompressed goes compressed;
// random data goes raw; CompressNever gets raw bytes.
func TestCompressionOnTheFly(t *testing.T) {
	key := newTestKey(t, "test-1")
	a := startNode(t, "a", &key, nil)
	b := startNode(t, "b", &key, func(c *Config) { c.Compression = CompressAlways })
	plain := startNode(t, "plain", &key, func(c *Config) { c.Compression = CompressNever })
	text, tdata := signedCompressible(t, &key, "text", 4<<20)
	random, rdata := makePath(t, &key, "random", 4<<20)
	a.share(text, tdata)
	a.share(random, rdata)
	connect(b, a)
	connect(plain, a)
	waitFor(t, "inventory", func() bool {
		return offers(b, a.ID(), hashOf(t, random)) && offers(plain, a.ID(), hashOf(t, random))
	})
	wire := func(n *testNode, info *cache.NarInfo, data []byte) int64 {
		before := n.Peers()[0].BytesIn
		got, _, err := fetch(context.Background(), n, hashOf(t, info))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("fetch %s: %v", info.Name(), err)
		}
		return n.Peers()[0].BytesIn - before
	}
	if w := wire(b, text, tdata); w > int64(len(tdata))*2/3 {
		t.Errorf("compressible path: %d bytes on the wire for %d", w, len(tdata))
	}
	if w := wire(b, random, rdata); w > int64(len(rdata))*101/100 {
		t.Errorf("random path: %d bytes on the wire for %d", w, len(rdata))
	}
	if w := wire(plain, text, tdata); w != int64(len(tdata)) {
		t.Errorf("NoCompression: %d bytes on the wire for %d", w, len(tdata))
	}
}

// memKeeper is a Keeper in memory.
type memKeeper struct {
	mu        sync.Mutex
	committed map[cache.Hash][]byte
	aborted   int
}

type memKeep struct {
	k    *memKeeper
	info *cache.NarInfo
	buf  bytes.Buffer
}

func (k *memKeeper) Keep(info *cache.NarInfo) (KeepWriter, error) {
	return &memKeep{k: k, info: info}, nil
}
func (w *memKeep) Write(p []byte) (int, error) { return w.buf.Write(p) }
func (w *memKeep) Commit() error {
	if sha256.Sum256(w.buf.Bytes()) != w.info.NarHash {
		return errors.New("bad bytes committed")
	}
	h, _ := w.info.Hash()
	w.k.mu.Lock()
	w.k.committed[h] = w.buf.Bytes()
	w.k.mu.Unlock()
	return nil
}
func (w *memKeep) Abort(error) { w.k.mu.Lock(); w.k.aborted++; w.k.mu.Unlock() }

// A node with a keeper keeps what it fetched from peers, once verified,
// and nothing of a bad copy.
func TestKeepFetched(t *testing.T) {
	key := newTestKey(t, "test-1")
	k := &memKeeper{committed: map[cache.Hash][]byte{}}
	a := startNode(t, "a", &key, nil)
	b := startNode(t, "b", &key, func(c *Config) { c.Keeper = k })
	info, data := makePath(t, &key, "kept", 3<<20)
	a.share(inForm(t, info, data, "zstd"))
	bad, bdata := makePath(t, &key, "bad", 1<<20)
	wrong := slices.Clone(bdata)
	wrong[7] ^= 1
	a.share(bad, wrong)
	connect(b, a)
	waitFor(t, "inventory", func() bool { return offers(b, a.ID(), hashOf(t, bad)) })
	if _, _, err := fetch(context.Background(), b, hashOf(t, info)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := fetch(context.Background(), b, hashOf(t, bad)); !errors.Is(err, cache.ErrHashMismatch) {
		t.Fatalf("bad copy: %v", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if !bytes.Equal(k.committed[hashOf(t, info)], data) || len(k.committed) != 1 || k.aborted == 0 {
		t.Fatalf("kept %d paths, %d aborted", len(k.committed), k.aborted)
	}
}

// Blame only whoever sent bytes that differ from a good copy: a failover
// stream that fails verification bans nobody at once; the next good copy
// tells which segment was bad.
func TestSmartBan(t *testing.T) {
	key := newTestKey(t, "test-1")
	for _, tc := range []struct {
		name        string
		liarFirst   bool  // the liar serves the first segment
		verifyFirst int64 // Config.VerifyFirstMax of the fetching node
	}{
		{"liar-first", true, 8 << 20}, {"liar-second", false, 8 << 20},
		{"liar-first-streamed", true, 0}, {"liar-second-streamed", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first := startNode(t, "first", &key, nil)
			second := startNode(t, "second", &key, nil)
			b := startNode(t, "b", &key, func(c *Config) { c.VerifyFirstMax = tc.verifyFirst })
			info, data := makePath(t, &key, "victim", 4<<20)
			bad := slices.Clone(data)
			if tc.liarFirst {
				bad[1000] ^= 1
			} else {
				bad[3<<20] ^= 1
			}
			liar, honest := first, second
			if !tc.liarFirst {
				liar, honest = second, first
			}
			liar.share(info, bad)
			honest.share(info, data)
			// first serves up to 2 MiB, once, then dies; second serves
			// the rest.
			pf := first.src.get(hashOf(t, info))
			pf.failAt, pf.failures = 2<<20, 1
			h := hashOf(t, info)
			connect(b, first)
			connect(b, second)
			waitFor(t, "inventories", func() bool { return offers(b, first.ID(), h) && offers(b, second.ID(), h) })
			for _, s := range b.holders(h, nil) {
				if s.id == second.ID() {
					s.active.Add(5) // first is the first choice
				}
			}
			// Verified first, the bad copy is fetched again inside the same
			// request; streamed, the first request fails (its caller,
			// Nix, sees a broken response) and the retry gets a good copy.
			var got []byte
			var err error
			for try := 0; try < 3; try++ {
				if got, _, err = fetch(context.Background(), b, h); err == nil {
					break
				}
				if tc.verifyFirst > 0 || !errors.Is(err, cache.ErrHashMismatch) {
					t.Fatalf("fetch: %v", err)
				}
			}
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("fetch: %v", err)
			}
			for _, p := range b.Peers() {
				blocked := !p.BlocklistedUntil.IsZero()
				if p.ID == honest.ID() && blocked {
					t.Errorf("honest peer %s blocklisted", p.Name)
				}
				if p.ID == liar.ID() && !blocked {
					t.Errorf("liar %s not blocklisted", p.Name)
				}
			}
		})
	}
}

// A narinfo miss right after a peer connected waits for its inventory
// instead of answering a 404 that Nix would remember for an hour.
func TestMissWaitsForFirstInventory(t *testing.T) {
	key := newTestKey(t, "test-1")
	n := startNode(t, "n", &key, nil)
	info, _ := makePath(t, &key, "early", 1000)
	h := hashOf(t, info)
	p := dialRaw(t, n)
	ctrl := p.hello(t)
	waitFor(t, "session", func() bool { return connected(n, p.id.id) })
	// Serve the narinfo request that follows.
	go func() {
		st, err := p.conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		readFrame(st)
		text, _ := info.MarshalText()
		writeFrame(st, typeNarInfoResp, append([]byte{statusOK}, text...))
		st.Close()
	}()
	waiting := make(chan struct{})
	var once sync.Once
	n.testHookAwait = func() { once.Do(func() { close(waiting) }) }
	res := make(chan error, 1)
	go func() {
		_, err := n.NarInfo(context.Background(), h)
		res <- err
	}()
	select {
	case <-waiting:
	case err := <-res:
		t.Fatalf("NarInfo answered before the peer's inventory arrived: %v", err)
	}
	k, data := encodeKeys(keysOf([]cache.Hash{h}))
	if err := writeFrame(ctrl, typeSnapshot, (&snapshot{Seq: 1, Count: 1, K: k, Data: data}).marshal()); err != nil {
		t.Fatal(err)
	}
	if err := <-res; err != nil {
		t.Fatalf("NarInfo after the inventory arrived: %v", err)
	}
}

func TestChunkedRoundTrip(t *testing.T) {
	cd, err := newCodecs()
	if err != nil {
		t.Fatal(err)
	}
	defer cd.close()
	random := make([]byte, 3<<20+11)
	rand.Read(random)
	for name, data := range map[string][]byte{"random": random, "text": compressible(3<<20+11, 1), "tiny": []byte("x"), "empty": nil} {
		t.Run(name, func(t *testing.T) {
			var wire bytes.Buffer
			cw := newChunkWriter(&wire, cd, false, int64(len(data))/2)
			if name == "text" {
				// Writes to memory take no time: the policy alone
				// would send raw chunks. Check it separately.
				cw.force = true
			}
			for p := data; len(p) > 0; {
				k := min(len(p), 100_000)
				if _, err := cw.Write(p[:k]); err != nil {
					t.Fatal(err)
				}
				p = p[k:]
			}
			if err := cw.Close(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(newChunkReader(bytes.NewReader(wire.Bytes()), cd.dec))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("round trip: %v (%d bytes, want %d)", err, len(got), len(data))
			}
			if name == "text" && wire.Len() > len(data)/2 {
				t.Errorf("text: %d bytes on the wire for %d", wire.Len(), len(data))
			}
			if name == "random" && wire.Len() > len(data)+len(data)/100 {
				t.Errorf("random: %d bytes on the wire for %d", wire.Len(), len(data))
			}
		})
	}
	hdr := func(kind byte, raw, enc uint32) []byte {
		return []byte{kind, byte(raw >> 24), byte(raw >> 16), byte(raw >> 8), byte(raw), byte(enc >> 24), byte(enc >> 16), byte(enc >> 8), byte(enc)}
	}
	z := cd.enc.EncodeAll(bytes.Repeat([]byte("a"), 2<<20), nil) // decodes to more than maxChunk
	for name, in := range map[string][]byte{
		"truncated header": {0, 0, 0},
		"zero chunk":       hdr(chunkRaw, 0, 0),
		"oversized chunk":  hdr(chunkRaw, maxChunk+1, maxChunk+1),
		"raw size differs": append(hdr(chunkRaw, 2, 3), 1, 2, 3),
		"unknown kind":     append(hdr(7, 1, 1), 1),
		"bomb":             append(hdr(chunkZstd, 1000, uint32(len(z))), z...),
		"short body":       append(hdr(chunkRaw, 5, 5), 1, 2),
		"garbage zstd":     append(hdr(chunkZstd, 4, 4), 1, 2, 3, 4),
	} {
		if _, err := io.ReadAll(newChunkReader(bytes.NewReader(in), cd.dec)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The policy compresses every chunk of data that compresses, and backs off
// from data that does not.
func TestCompressPolicy(t *testing.T) {
	var p compressPolicy
	for i := range 100 {
		if !p.compress() {
			t.Fatalf("compressible data: chunk %d not compressed", i)
		}
		p.sawCompress(sendChunk, sendChunk/4)
	}
	// Incompressible chunks: tried less and less often, down to one chunk
	// in 4*probeEvery; a chunk that compresses resets that.
	tries := 0
	for range 400 {
		if p.compress() {
			tries++
			p.sawCompress(1000, 999)
		}
	}
	if tries > 20 {
		t.Errorf("random data: compression tried on %d of 400 chunks", tries)
	}
	p.sawCompress(1000, 300)
	if p.backoff != 0 || !p.compress() {
		t.Error("a chunk that compresses does not end the back-off")
	}
}
