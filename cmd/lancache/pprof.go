package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// debugPrefix marks flags left out of the usage text: debugging aids for
// developers (documented in docs/benchmarks.md), not part of the CLI
// contract.
const debugPrefix = "debug-"

// startPprof serves net/http/pprof's handlers under /debug/pprof/ on addr
// (--debug-pprof), on a listener of its own, apart from the Nix-facing
// HTTP face, until ctx ends. It returns the address it listens on and a
// function that waits until the server has stopped.
func startPprof(ctx context.Context, addr string, log *slog.Logger) (net.Addr, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s (--debug-pprof): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("pprof server stopped", "addr", ln.Addr(), "err", err)
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
			srv.Close()
		case <-done:
		}
	}()
	log.Warn("serving pprof: for debugging only, do not expose it", "addr", ln.Addr())
	return ln.Addr(), func() { <-done }, nil
}
