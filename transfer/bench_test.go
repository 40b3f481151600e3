package transfer

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/lancache/lancache/cache"
)

const benchFileSize = 64 << 20

// BenchmarkPeerThroughput fetches a 64 MiB uncompressed NAR from a peer
// over loopback through the whole path: request stream, local source,
// sha256 verification, output. Compare with BenchmarkRawQUIC.
func BenchmarkPeerThroughput(b *testing.B) {
	key := newTestKey(b, "bench-1")
	a := startNode(b, "a", &key, nil)
	c := startNode(b, "c", &key, nil)
	info, data := makePath(b, &key, "big", benchFileSize)
	a.share(info, data)
	connect(c, a)
	h := hashOf(b, info)
	waitFor(b, "inventory", func() bool { return offers(c, a.ID(), h) })
	ctx := context.Background()
	b.SetBytes(benchFileSize)
	b.ResetTimer()
	for b.Loop() {
		if err := c.WriteNAR(ctx, io.Discard, info, 0, -1); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawQUIC sends 64 MiB on one quic-go stream over loopback, with
// the same TLS setup and QUIC config as nodes: the ceiling for
// BenchmarkPeerThroughput.
func BenchmarkRawQUIC(b *testing.B) {
	idA, _ := loadIdentity(b.TempDir())
	idB, _ := loadIdentity(b.TempDir())
	listen := func() (*quic.Transport, *net.UDPConn) {
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		return &quic.Transport{Conn: udp}, udp
	}
	trA, udpA := listen()
	trB, udpB := listen()
	defer func() { trA.Close(); trB.Close(); udpA.Close(); udpB.Close() }()
	cfg := Config{KeepAlive: 10 * time.Second}
	cfg.setDefaults()
	qconf := &quic.Config{MaxIdleTimeout: time.Minute, KeepAlivePeriod: cfg.KeepAlive, MaxIncomingStreams: 100}
	ln, err := trA.Listen(idA.serverTLS(), qconf)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx := context.Background()
	type accepted struct {
		conn *quic.Conn
		err  error
	}
	ch := make(chan accepted, 1)
	go func() {
		conn, err := ln.Accept(ctx)
		ch <- accepted{conn, err}
	}()
	client, err := trB.Dial(ctx, udpA.LocalAddr(), idB.clientTLS(idA.id), qconf)
	if err != nil {
		b.Fatal(err)
	}
	defer client.CloseWithError(0, "")
	acc := <-ch
	if acc.err != nil {
		b.Fatal(acc.err)
	}
	server := acc.conn
	defer server.CloseWithError(0, "")
	buf := make([]byte, 256<<10)
	rand.NewChaCha8([32]byte{}).Read(buf)
	b.SetBytes(benchFileSize)
	b.ResetTimer()
	for b.Loop() {
		done := make(chan error, 1)
		go func() {
			st, err := server.AcceptStream(ctx)
			if err != nil {
				done <- err
				return
			}
			for sent := 0; sent < benchFileSize; sent += len(buf) {
				if _, err := st.Write(buf); err != nil {
					done <- err
					return
				}
			}
			done <- st.Close()
		}()
		st, err := client.OpenStreamSync(ctx)
		if err != nil {
			b.Fatal(err)
		}
		st.Write([]byte{0}) // make the stream known to the server
		st.Close()
		rbuf := make([]byte, 256<<10)
		n, err := io.CopyBuffer(io.Discard, st, rbuf)
		if err != nil || n != benchFileSize {
			b.Fatal(n, err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNarInfoMiss asks a node connected to 3 peers with 100k paths
// each for paths nobody has, and reports the p99 latency.
func BenchmarkNarInfoMiss(b *testing.B) {
	d := startNode(b, "d", nil, nil)
	const perPeer = 100_000
	var peers []*testNode
	for i := range 3 {
		p := startNode(b, "p", nil, nil)
		hs := make([]cache.Hash, perPeer)
		for j := range hs {
			binary.BigEndian.PutUint64(hs[j][:], rand.Uint64())
			binary.BigEndian.PutUint64(hs[j][8:], uint64(i))
		}
		p.inv.Add(hs...)
		connect(d, p)
		peers = append(peers, p)
	}
	waitFor(b, "inventories", func() bool {
		total := 0
		for _, ps := range d.Peers() {
			total += ps.Paths
		}
		return total == 3*perPeer
	})
	misses := make([]cache.Hash, 4096)
	for i := range misses {
		binary.BigEndian.PutUint64(misses[i][:], rand.Uint64())
		misses[i][19] = 0xff
	}
	ctx := context.Background()
	lat := make([]time.Duration, 0, 1<<20)
	b.ResetTimer()
	i := 0
	for b.Loop() {
		t0 := time.Now()
		_, err := d.NarInfo(ctx, misses[i%len(misses)])
		el := time.Since(t0)
		if !errors.Is(err, cache.ErrNotFound) {
			b.Fatal(err)
		}
		if len(lat) < cap(lat) {
			lat = append(lat, el)
		}
		i++
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*50/100].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
	_ = peers
}

// BenchmarkNarInfoHit is a narinfo round trip to a peer over loopback,
// signature check included.
func BenchmarkNarInfoHit(b *testing.B) {
	key := newTestKey(b, "bench-1")
	a := startNode(b, "a", &key, nil)
	c := startNode(b, "c", &key, nil)
	info, data := makePath(b, &key, "small", 1000)
	a.share(info, data)
	connect(c, a)
	h := hashOf(b, info)
	waitFor(b, "inventory", func() bool { return offers(c, a.ID(), h) })
	ctx := context.Background()
	for b.Loop() {
		if _, err := c.NarInfo(ctx, h); err != nil {
			b.Fatal(err)
		}
	}
}

// indexBytesPerEntry fills an index with peers × perPeer (peer, key)
// entries and returns the heap bytes per entry.
func indexBytesPerEntry(peers, perPeer int, shared bool) float64 {
	keys := make([][]uint64, peers)
	for p := range keys {
		r := rand.New(rand.NewPCG(uint64(p), 1))
		if shared {
			r = rand.New(rand.NewPCG(0, 1))
		}
		ks := make([]uint64, perPeer)
		for i := range ks {
			ks[i] = r.Uint64() & keyMask
		}
		slices.Sort(ks)
		keys[p] = slices.Compact(ks)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	x := newIndex(peers*perPeer, nil)
	entries := 0
	for p := range peers {
		if err := x.replace(&session{}, len(keys[p]), sliceKeys(keys[p])); err != nil {
			panic(err)
		}
		entries += len(keys[p])
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(x)
	runtime.KeepAlive(keys)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(entries)
}

// TestIndexMemory measures the index for 1M (peer, path) entries: 4 peers
// with disjoint paths (worst case) and 4 peers with the same paths.
func TestIndexMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates ~100 MB")
	}
	disjoint := indexBytesPerEntry(4, 250_000, false)
	shared := indexBytesPerEntry(4, 250_000, true)
	t.Logf("index: %.1f bytes/entry for 1M entries over 4 peers with disjoint paths, %.1f with the same paths", disjoint, shared)
	if disjoint > 64 {
		t.Errorf("index uses %.1f bytes per entry, want ≤ 64", disjoint)
	}
}

// BenchmarkIndexMemory reports the index's bytes per (peer, path) entry
// for 1M entries over 4 peers with disjoint paths.
func BenchmarkIndexMemory(b *testing.B) {
	var v float64
	for b.Loop() {
		v = indexBytesPerEntry(4, 250_000, false)
	}
	b.ReportMetric(v, "bytes/entry")
}

// BenchmarkSnapshotCoding encodes and decodes a 100k-path inventory.
func BenchmarkSnapshotCoding(b *testing.B) {
	hs := make([]cache.Hash, 100_000)
	for i := range hs {
		binary.BigEndian.PutUint64(hs[i][:], rand.Uint64())
	}
	var size int
	for b.Loop() {
		keys := keysOf(hs)
		k, data := encodeKeys(keys)
		if _, err := decodeKeys(data, len(keys), k); err != nil {
			b.Fatal(err)
		}
		size = len(data)
	}
	b.ReportMetric(float64(size), "wire-bytes")
}
