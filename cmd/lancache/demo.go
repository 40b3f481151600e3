package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/mattn/go-isatty"

	"github.com/lancache/lancache/demo"
	"github.com/lancache/lancache/tui"
)

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	headless := fs.Bool("headless", false, "print status lines instead of opening 'lancache top'")
	duration := fs.Duration("duration", 0, "stop after `D` (e.g. 30s; default: until Ctrl-C, or q in the UI)")
	verbose := fs.Bool("verbose", false, "show the nodes' logs")
	setUsage(fs, "demo [--headless] [--duration D]",
		"Run three lancache nodes in this process on loopback, each with a cache of\nsynthetic signed store paths, fetching from each other over QUIC through\ntheir real HTTP endpoints; then watch them in 'lancache top'. Needs no Nix\nand no network.")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if !*headless && !isatty.IsTerminal(os.Stdout.Fd()) {
		fmt.Fprintln(stderr, "lancache demo: stdout is not a terminal: printing status lines instead of opening 'lancache top'")
		*headless = true
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	dir, err := os.MkdirTemp("", "lancache-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	log := slog.New(slog.DiscardHandler)
	if *verbose {
		log = slog.New(slog.NewTextHandler(stderr, nil))
	}
	fmt.Fprintf(stderr, "lancache demo: generating synthetic signed store paths in %s ...\n", dir)
	d, err := demo.Start(ctx, demo.Config{Dir: dir, Logger: log})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ui := make(chan error, 1)
	err = d.Run(ctx, func() {
		addr := d.Node(0).HTTPAddr().String()
		if *headless {
			fmt.Fprintf(stdout, "lancache demo: 3 nodes up; demo-a serves Nix on http://%s (try: lancache top --http %s)\n", addr, addr)
			go d.Report(ctx, stdout, time.Second)
			return
		}
		go func() {
			ui <- runTop(ctx, addr, stdout)
			cancel()
		}()
	})
	if err != nil {
		return err
	}
	if !*headless {
		if err := <-ui; err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	d.PrintStatus(stdout)
	f, v, x := d.Counts()
	switch {
	case x > 0:
		return fmt.Errorf("%d of %d transfers failed verification or were cut off", x, f)
	case v == 0 && *duration >= 5*time.Second:
		return errors.New("no transfer completed")
	}
	return nil
}

// runTop opens the terminal UI on a node of the demo.
func runTop(ctx context.Context, addr string, stdout io.Writer) error {
	return tui.Run(ctx, tui.Options{Addr: addr, Output: stdout})
}
