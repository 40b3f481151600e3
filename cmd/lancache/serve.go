package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/lancache/lancache"
	"github.com/lancache/lancache/cache/narcache"
)

func cmdServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	host, _ := os.Hostname()
	var (
		cfg       lancache.Config
		maxSize   string
		upstreams listFlag
		peers     listFlag
		ifaces    listFlag
		logFormat string
		logLevel  string
		verifyMax string
		pprofAddr string
	)
	fs.StringVar(&cfg.StoreRoot, "store-root", "/", "`DIR` holding nix/store and nix/var/nix/db; \"none\" for no local store (appliance)")
	fs.StringVar(&cfg.CacheDir, "cache-dir", "", "on-disk NAR cache `DIR`, laid out as a Nix binary cache (appliance mode)")
	fs.StringVar(&maxSize, "cache-max-size", "10GiB", "size bound of --cache-dir, e.g. 50GiB or 200GB")
	fs.StringVar(&cfg.HTTPAddr, "http", "127.0.0.1:37515", "`ADDR` of the Nix-facing binary cache and status API")
	fs.StringVar(&cfg.QUICAddr, "quic", ":37516", "UDP `ADDR` of the peer listener")
	fs.Var(&upstreams, "upstream", "pull-through binary cache `URL`, repeatable, tried in order; with --cache-dir each NAR is downloaded once for the LAN")
	fs.StringVar(&cfg.TrustedPublicKeys, "trusted-public-keys", lancache.DefaultTrustedPublicKeys, "space-separated `KEYS` (name:base64) whose signatures make a path shareable and a peer's narinfo acceptable")
	fs.StringVar(&cfg.Share, "share", "signed", "what this node offers to peers: signed (store paths signed by a trusted key, and the NAR cache), all (every store path, and the NAR cache), or none (nothing: no store path, no NAR cache entry; the local Nix is still served, and peers and upstreams are still used)")
	fs.StringVar(&cfg.FleetKeyFile, "fleet-key", "", "shared secret `FILE` (from 'lancache keygen --fleet'); peers without it are refused")
	fs.Var(&peers, "peer", "static peer `HOST:PORT` (QUIC), repeatable")
	fs.BoolVar(&cfg.NoMDNS, "no-mdns", false, "disable mDNS discovery (use --peer where multicast is blocked)")
	fs.StringVar(&cfg.PeerCompression, "peer-compression", "auto", "what to ask peers to send: auto (held .nar.zst/.nar.xz as they are; NARs held uncompressed compressed on the fly, chunk by chunk, while the data compresses), always (try every chunk, even of data that did not compress), never (plain NAR bytes)")
	fs.StringVar(&verifyMax, "verify-first-max", "1MiB", "NARs from peers up to this `SIZE` are verified whole before Nix gets a byte, so a bad peer is routed around inside one response; larger ones stream with the last 64 KiB held back until verified; 0: none")
	fs.Var(&ifaces, "interface", "network interface `NAME` for mDNS, repeatable (default: every up, multicast-capable, non-loopback one)")
	fs.StringVar(&cfg.StateDir, "state-dir", defaultStateDir(), "`DIR` for the node identity key and other state")
	fs.StringVar(&cfg.Name, "name", host, "`NAME` advertised to peers")
	fs.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&pprofAddr, debugPrefix+"pprof", "", "serve net/http/pprof on `ADDR` (debugging; not in the usage text)")
	setUsage(fs, "serve [flags]",
		"Run the lancache daemon: serve this machine's Nix store (and its LAN\nneighbours' and upstreams') to the local Nix as an HTTP binary cache.")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	size, err := narcache.ParseSize(maxSize)
	if err != nil {
		return fmt.Errorf("--cache-max-size %q: %w", maxSize, err)
	}
	cfg.CacheMaxSize = size
	if verifyMax == "0" {
		cfg.VerifyFirstMax = -1 // off: every NAR streams with the tail held back
	} else if cfg.VerifyFirstMax, err = narcache.ParseSize(verifyMax); err != nil {
		return fmt.Errorf("--verify-first-max %q: %w", verifyMax, err)
	}
	cfg.Upstreams, cfg.Peers, cfg.Interfaces = upstreams, peers, ifaces
	log, err := newLogger(stderr, logFormat, logLevel)
	if err != nil {
		return err
	}
	cfg.Logger = log
	if pprofAddr != "" {
		pctx, stopPprof := context.WithCancel(ctx)
		_, wait, err := startPprof(pctx, pprofAddr, log)
		if err != nil {
			stopPprof()
			return err
		}
		defer wait()
		defer stopPprof()
	}

	node, err := lancache.New(ctx, cfg)
	if err != nil {
		return err
	}
	if err := node.Run(ctx); err != nil {
		return err
	}
	log.Info("lancache stopped")
	return nil
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// defaultStateDir is /var/lib/lancache for root (the service), and the XDG
// state directory for a user trying lancache out.
func defaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/lancache"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "lancache")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "lancache")
	}
	return "/var/lib/lancache"
}
