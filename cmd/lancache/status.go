package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/lancache/lancache"
	"github.com/lancache/lancache/statusapi"
)

func cmdVersion(w io.Writer) error {
	_, err := fmt.Fprintf(w, "lancache %s\n", lancache.Version)
	return err
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	addr := fs.String("http", "127.0.0.1:37515", "`ADDR` of the daemon's HTTP listener")
	asJSON := fs.Bool("json", false, "print the raw status JSON")
	setUsage(fs, "status [--http ADDR] [--json]", "Show what a running lancache daemon serves.")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*addr+statusapi.StatusPath, nil)
	if err != nil {
		return fmt.Errorf("--http %q: %w", *addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("no lancache daemon answers at %s (is 'lancache serve' running? pass --http if it listens elsewhere): %w", *addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("daemon at %s answered %s", *addr, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read status from %s: %w", *addr, err)
	}
	if *asJSON {
		_, err = stdout.Write(body)
		return err
	}
	var st statusapi.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("status from %s is not lancache status JSON: %w", *addr, err)
	}
	fmt.Fprintf(stdout, "lancache %s on %s, up %s\n", st.Version, st.Name, (time.Duration(st.UptimeSeconds) * time.Second).String())
	if st.StoreRoot != "" {
		fmt.Fprintf(stdout, "local store %s: %d paths, %d shared (policy %s)\n", st.StoreRoot, st.StorePaths, st.SharedPaths, st.Share)
	} else {
		fmt.Fprintf(stdout, "no local store\n")
	}
	if c := st.Cache; c != nil {
		fmt.Fprintf(stdout, "NAR cache %s: %d entries, %s of %s\n", c.Dir, c.Entries, humanize.IBytes(uint64(c.UsedBytes)), humanize.IBytes(uint64(c.MaxBytes)))
	}
	for _, u := range st.Upstreams {
		fmt.Fprintf(stdout, "upstream %s\n", u)
	}
	t := st.Totals
	fmt.Fprintf(stdout, "narinfo: %d hits, %d misses; to Nix %s, from peers %s, from upstream %s, to peers %s; %d verification failures\n",
		t.NarInfoHits, t.NarInfoMisses, humanize.IBytes(t.BytesServedToNix), humanize.IBytes(t.BytesFromPeers),
		humanize.IBytes(t.BytesFromUpstream), humanize.IBytes(t.BytesServedToPeers), t.VerificationFailures)
	fmt.Fprintf(stdout, "%d peers\n", len(st.Peers))
	for _, p := range st.Peers {
		block := ""
		if p.BlocklistedUntil != nil {
			block = " BLOCKLISTED until " + p.BlocklistedUntil.Format(time.TimeOnly)
		}
		fmt.Fprintf(stdout, "  %-20s %-24s %-10s rtt %6.2fms  %7d paths  in %s  out %s%s\n", p.Name, p.Address, p.State,
			p.RTTMillis, p.PathsAdvertised, humanize.IBytes(p.BytesFromPeer), humanize.IBytes(p.BytesToPeer), block)
	}
	return nil
}
