package discovery

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// TXT record of a lancache instance: DNS-SD key=value strings (RFC 6763
// §6), in this order:
//
//	v=1            protocol version, decimal (ProtocolVersion)
//	id=<node id>   1 to 64 bytes of [A-Za-z0-9_-] (transfer.NodeID)
//	fleet=<tag>    only with a fleet key: 1 to 128 bytes of printable
//	               ASCII, derived from the key by the caller; compared
//	               byte for byte, never interpreted
//
// Keys are case-insensitive; the first occurrence of a key wins and
// unknown keys are ignored (§6.4), so later versions can add keys. At most
// maxTXTStrings strings are examined.
const (
	txtVersion = "v"
	txtID      = "id"
	txtFleet   = "fleet"

	maxTXTStrings = 32
	maxIDLen      = 64
	maxFleetLen   = 128
)

var (
	errTXTNoVersion = errors.New("TXT: no valid v=")
	errTXTNoID      = errors.New("TXT: no valid id=")
	errTXTFleet     = errors.New("TXT: invalid fleet=")
)

// txtInfo is what a TXT record says about a node.
type txtInfo struct {
	Version int
	ID      string
	Fleet   string // "" without a fleet key
}

// encodeTXT returns the TXT strings for info.
func encodeTXT(info txtInfo) []string {
	txt := []string{
		txtVersion + "=" + strconv.Itoa(info.Version),
		txtID + "=" + info.ID,
	}
	if info.Fleet != "" {
		txt = append(txt, txtFleet+"="+info.Fleet)
	}
	return txt
}

// parseTXT reads the TXT strings of a peer. It checks the form of every
// known key; whether the version and fleet are ours is the caller's test.
func parseTXT(txt []string) (txtInfo, error) {
	var info txtInfo
	var haveV, haveID, haveFleet bool
	for i, s := range txt {
		if i >= maxTXTStrings {
			break
		}
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			continue // a boolean attribute (§6.4): none is defined
		}
		switch {
		case strings.EqualFold(k, txtVersion) && !haveV:
			haveV = true
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 9999 || len(v) > 4 {
				return txtInfo{}, fmt.Errorf("%w: %q", errTXTNoVersion, truncate(v))
			}
			info.Version = n
		case strings.EqualFold(k, txtID) && !haveID:
			haveID = true
			if !validID(v) {
				return txtInfo{}, fmt.Errorf("%w: %q", errTXTNoID, truncate(v))
			}
			info.ID = v
		case strings.EqualFold(k, txtFleet) && !haveFleet:
			haveFleet = true
			if !validFleet(v) {
				return txtInfo{}, fmt.Errorf("%w: %q", errTXTFleet, truncate(v))
			}
			info.Fleet = v
		}
	}
	if !haveV {
		return txtInfo{}, errTXTNoVersion
	}
	if !haveID {
		return txtInfo{}, errTXTNoID
	}
	return info, nil
}

// validID reports whether id has the form of a node id.
func validID(id string) bool {
	if id == "" || len(id) > maxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// validFleet reports whether tag has the form of a fleet tag.
func validFleet(tag string) bool {
	if tag == "" || len(tag) > maxFleetLen {
		return false
	}
	for i := 0; i < len(tag); i++ {
		if tag[i] < 0x21 || tag[i] > 0x7e {
			return false
		}
	}
	return true
}

// truncate shortens untrusted text for an error message.
func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}
