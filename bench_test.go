package lancache

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/lancache/lancache/cache"
)

// BenchmarkEndpointNarInfoMiss measures what a miss costs Nix at the HTTP
// endpoint of a node whose 3 peers each advertise 100k paths: a narinfo
// request for a hash nobody has, over a keep-alive connection. It reports
// the p50 and p99 latency.
func BenchmarkEndpointNarInfoMiss(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	newNode := func(name string) *Node {
		n, err := New(ctx, Config{
			StoreRoot: "none", HTTPAddr: "127.0.0.1:0", QUICAddr: "127.0.0.1:0", NoMDNS: true,
			StateDir: b.TempDir(), Name: name, TrustedPublicKeys: DefaultTrustedPublicKeys,
		})
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
	client := newNode("client")
	var peers []*Node
	for i := range 3 {
		p := newNode(fmt.Sprintf("peer%d", i))
		hs := make([]cache.Hash, 100_000)
		for j := range hs {
			rand.Read(hs[j][:])
		}
		p.inv.Add(hs...) // advertised; the miss path never asks for them
		peers = append(peers, p)
	}
	done := make(chan struct{})
	all := append([]*Node{client}, peers...)
	for _, n := range all {
		go func() { n.Run(ctx); done <- struct{}{} }()
		<-n.Ready()
	}
	for _, p := range peers {
		client.AddPeer(p.QUICAddr().String())
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		total := 0
		for _, p := range client.peers.Peers() {
			total += p.Paths
		}
		if total >= 300_000 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("inventories not synced: %d paths", total)
		}
		time.Sleep(20 * time.Millisecond)
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	base := "http://" + client.HTTPAddr().String() + "/"
	var miss cache.Hash
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		rand.Read(miss[:])
		start := time.Now()
		resp, err := hc.Get(base + miss.String() + ".narinfo")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		lat = append(lat, time.Since(start))
		if resp.StatusCode != http.StatusNotFound {
			b.Fatalf("miss answered %d", resp.StatusCode)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	cancel()
	for range all {
		<-done
	}
}
