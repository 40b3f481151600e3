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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*addr+"/_lancache/status", nil)
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
	var st lancache.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("status from %s is not lancache status JSON: %w", *addr, err)
	}
	fmt.Fprintf(stdout, "lancache %s on %s, up %s\n", st.Version, st.Name, (time.Duration(st.UptimeSeconds) * time.Second).String())
	if st.StoreRoot != "" {
		fmt.Fprintf(stdout, "local store %s: %d paths, %d shared (policy %s)\n", st.StoreRoot, st.StorePaths, st.SharedPaths, st.Share)
	} else {
		fmt.Fprintf(stdout, "no local store\n")
	}
	t := st.Totals
	fmt.Fprintf(stdout, "narinfo: %d hits, %d misses; served to Nix: %s\n", t.NarInfoHits, t.NarInfoMisses, humanize.IBytes(t.BytesServedToNix))
	return nil
}
