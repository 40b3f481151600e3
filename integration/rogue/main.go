// Command rogue is a hostile LAN host for the integration tests: a real
// transfer.Node, with its own identity, that dials one peer and advertises
// made-up store paths it does not hold. It reads commands on stdin, one per
// line, and answers each with "ok" (or "error: ...") on stdout:
//
//	offer SEED N   make the offer N made-up hashes drawn from SEED
//
// A new offer replaces the previous one in steps of a quarter million
// paths, never offering more than the larger of the two, so that the peer
// receives a series of full snapshots (each outgrows the delta log). The
// rogue runs until stdin closes.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"

	"github.com/lancache/lancache/cache"
	"github.com/lancache/lancache/transfer"
)

func main() {
	listen := flag.String("listen", ":0", "UDP address to dial from")
	peer := flag.String("peer", "", "host:port of the peer to dial")
	name := flag.String("name", "rogue", "advertised name")
	state := flag.String("state-dir", "", "node identity directory")
	flag.Parse()
	if err := run(*listen, *peer, *name, *state); err != nil {
		fmt.Fprintln(os.Stderr, "rogue:", err)
		os.Exit(1)
	}
}

func run(listen, peer, name, state string) error {
	inv := cache.NewInventory()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	n, err := transfer.New(transfer.Config{ListenAddr: listen, StateDir: state, Name: name, Logger: log}, nothing{}, inv)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	n.AddPeer(peer, "")

	var cur []cache.Hash
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "offer" {
			fmt.Printf("error: unknown command %q\n", sc.Text())
			continue
		}
		seed, err1 := strconv.ParseUint(f[1], 10, 64)
		count, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil || count < 0 {
			fmt.Printf("error: bad numbers in %q\n", sc.Text())
			continue
		}
		next := fakeHashes(seed, count)
		const step = 250_000
		for i := 0; i < max(len(cur), len(next)); i += step {
			inv.Remove(cur[min(i, len(cur)):min(i+step, len(cur))]...)
			inv.Add(next[min(i, len(next)):min(i+step, len(next))]...)
		}
		cur = next
		fmt.Println("ok")
	}
	cancel()
	return <-done
}

// nothing is the rogue's store: it holds none of what it offers.
type nothing struct{}

func (nothing) NarInfo(context.Context, cache.Hash) (*cache.NarInfo, error) {
	return nil, cache.ErrNotFound
}

func (nothing) WriteNAR(context.Context, io.Writer, *cache.NarInfo, int64, int64) error {
	return cache.ErrNotFound
}

// fakeHashes returns n made-up store-path hashes drawn from seed.
func fakeHashes(seed uint64, n int) []cache.Hash {
	r := rand.New(rand.NewPCG(seed, 40))
	hs := make([]cache.Hash, n)
	for i := range hs {
		var b [24]byte
		for j := 0; j < len(b); j += 8 {
			v := r.Uint64()
			for k := range 8 {
				b[j+k] = byte(v >> (8 * k))
			}
		}
		copy(hs[i][:], b[:])
	}
	return hs
}
