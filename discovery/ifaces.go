package discovery

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/lancache/lancache/discovery/internal/mdns"
)

// maxIfaceAddrs bounds the addresses announced per interface.
const maxIfaceAddrs = 16

// selectInterfaces returns the interfaces to run mDNS on: those named in
// names (loopback allowed when named), or else every interface that is up,
// multicast-capable, not loopback and has an address. Named interfaces that are missing or
// unsuitable are reported in skipped, not as an error: they may appear
// later (a daemon started before the network).
func selectInterfaces(names []string) (ifs []mdns.Interface, skipped []string, err error) {
	all, err := net.Interfaces()
	if err != nil {
		return nil, nil, fmt.Errorf("list network interfaces: %w", err)
	}
	for _, name := range names {
		if !slices.ContainsFunc(all, func(ni net.Interface) bool { return ni.Name == name }) {
			skipped = append(skipped, name+": no such interface")
		}
	}
	for _, ni := range all {
		named := slices.Contains(names, ni.Name)
		if len(names) > 0 && !named {
			continue
		}
		var why string
		switch {
		case ni.Flags&net.FlagUp == 0:
			why = "down"
		case ni.Flags&net.FlagMulticast == 0:
			why = "not multicast-capable"
		case ni.Flags&net.FlagLoopback != 0 && !named:
			why = "loopback"
		}
		if why != "" {
			if named {
				skipped = append(skipped, ni.Name+": "+why)
			}
			continue
		}
		addrs, err := ni.Addrs()
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%s: addresses: %v", ni.Name, err))
			continue
		}
		as := ifaceAddrs(addrs)
		if len(as) == 0 {
			// Nothing to announce and no source to send from; bridge ports
			// are like this (their bridge carries the address).
			if named {
				skipped = append(skipped, ni.Name+": no address")
			}
			continue
		}
		ifs = append(ifs, mdns.Interface{Index: ni.Index, Name: ni.Name, Addrs: as})
	}
	return ifs, skipped, nil
}

// ifaceAddrs returns the addresses worth announcing, IPv4 first.
func ifaceAddrs(addrs []net.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsUnspecified() || ip.IsMulticast() {
			continue
		}
		out = append(out, ip)
	}
	slices.SortStableFunc(out, func(a, b netip.Addr) int { return a.BitLen() - b.BitLen() })
	if len(out) > maxIfaceAddrs {
		out = out[:maxIfaceAddrs]
	}
	return out
}
