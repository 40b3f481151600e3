package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"

	"github.com/mattn/go-isatty"

	"github.com/lancache/lancache/tui"
)

// cmdTop runs `lancache top`: the terminal UI following a running daemon.
func cmdTop(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("top", flag.ContinueOnError)
	addr := fs.String("http", "127.0.0.1:37515", "`ADDR` of the daemon's HTTP listener")
	setUsage(fs, "top [--http ADDR]", "Watch a running lancache daemon: neighbours, transfers and totals.\nKeys: q quits, tab/arrows move between panes, s changes the sort.\nSet NO_COLOR to draw without colour.")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if f, ok := stdout.(*os.File); ok && !isatty.IsTerminal(f.Fd()) {
		return errors.New("lancache top draws on a terminal and stdout is not one; in scripts use 'lancache status' or 'lancache status --json'")
	}
	return tui.Run(ctx, tui.Options{Addr: *addr, Output: stdout})
}
