// Package lancache wires one LAN cache node: the local store reader and the
// Nix-facing HTTP binary cache (package cache), peers over QUIC (package
// transfer) and their discovery (package discovery). Several Nodes can run
// in one process, which is how the tests and `lancache demo` use it.
package lancache
