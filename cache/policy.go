package cache

import (
	"fmt"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// ShareMode says which local store paths a node offers to others.
type ShareMode string

// Share modes. Signed is the default: only paths carrying a signature from a
// trusted key (public content anyone could download) leave the machine.
const (
	ShareSigned ShareMode = "signed"
	ShareAll    ShareMode = "all"
	ShareNone   ShareMode = "none"
)

// ParseShareMode validates a --share value.
func ParseShareMode(s string) (ShareMode, error) {
	switch m := ShareMode(s); m {
	case ShareSigned, ShareAll, ShareNone:
		return m, nil
	}
	return "", fmt.Errorf("share mode %q: want signed, all or none", s)
}

// ParsePublicKeys parses a space-separated list of "name:base64" keys, as in
// nix.conf's trusted-public-keys.
func ParsePublicKeys(s string) ([]signature.PublicKey, error) {
	var keys []signature.PublicKey
	for _, f := range strings.Fields(s) {
		k, err := signature.ParsePublicKey(f)
		if err != nil {
			return nil, fmt.Errorf("public key %q: %w", clip(f), err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// Policy decides which store paths are shared.
type Policy struct {
	Mode ShareMode
	Keys []signature.PublicKey
}

// Shares reports whether info may be offered to others.
func (p Policy) Shares(info *NarInfo) bool {
	switch p.Mode {
	case ShareAll:
		return true
	case ShareSigned, "":
		return info.SignedBy(p.Keys)
	}
	return false
}

// namesKey reports whether sigs (a ValidPaths sigs column: space-separated
// name:base64) holds a signature named by one of the trusted keys: the only
// kind that can make a path shared under ShareSigned.
func (p Policy) namesKey(sigs string) bool {
	for _, sig := range strings.Fields(sigs) {
		name, _, ok := strings.Cut(sig, ":")
		if !ok {
			continue
		}
		for _, k := range p.Keys {
			if k.Name == name {
				return true
			}
		}
	}
	return false
}
