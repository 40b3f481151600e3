//go:build !unix

package mdns

import "syscall"

// reuseAddr is a no-op where SO_REUSEADDR has other semantics: only one
// mDNS responder per host can then bind port 5353.
func reuseAddr(network, address string, c syscall.RawConn) error { return nil }
