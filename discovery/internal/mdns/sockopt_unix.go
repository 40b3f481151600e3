//go:build unix

package mdns

import "syscall"

// reuseAddr lets several processes (another lancache, avahi, a browser)
// bind port 5353 at once, as Go's own ListenMulticastUDP does. Multicast
// packets reach every such socket.
func reuseAddr(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
