// Command lancache is a LAN-first peer cache for Nix. See `lancache help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `lancache — a LAN-first peer cache for Nix.

Every machine runs "lancache serve"; Nix uses it as a binary cache that
answers first, from this machine's store, its LAN neighbours or an upstream.

Usage:
  lancache serve   [flags]   run the daemon (see "lancache serve -h")
  lancache demo    [--headless] [--duration D]
                             three nodes in this process, no Nix needed: start here
  lancache top     [--http ADDR]
                             watch a daemon's neighbours and transfers live
  lancache status  [--http ADDR] [--json]
                             show what a running daemon serves
  lancache keygen  --fleet FILE
                             make a fleet key (peers without it are refused)
  lancache version           print the version

Point Nix at the daemon (nix.conf):
  substituters = http://127.0.0.1:37515 https://cache.nixos.org
  trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=

Every flag can also be set from the environment as LANCACHE_<FLAG>, e.g.
LANCACHE_CACHE_DIR=/srv/lancache for --cache-dir.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "serve":
		err = cmdServe(ctx, args[1:], stderr)
	case "status":
		err = cmdStatus(ctx, args[1:], stdout, stderr)
	case "demo":
		err = cmdDemo(ctx, args[1:], stdout, stderr)
	case "top":
		err = cmdTop(ctx, args[1:], stdout, stderr)
	case "keygen":
		err = cmdKeygen(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		err = cmdVersion(stdout)
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "lancache: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if errors.Is(err, errUsage) {
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "lancache %s: %v\n", args[0], err)
		return 1
	}
	return 0
}
