package cache

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// StoreDir is the only store directory lancache serves. Paths of other store
// directories are not interchangeable (their hashes differ).
const StoreDir = "/nix/store"

// HashLen is the length of a store-path hash in nixbase32 characters.
const HashLen = 32

// Hash is the 20-byte digest part of a store path (/nix/store/<hash>-name).
// It is the lookup key everywhere: in the HTTP API, in inventories and on the
// peer protocol.
type Hash [20]byte

// ErrBadHash is returned for strings that are not a store-path hash.
var ErrBadHash = errors.New("not a store path hash")

// ParseHash parses the 32 nixbase32 characters of a store-path hash.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != HashLen {
		return h, fmt.Errorf("%w: %q has length %d, want %d", ErrBadHash, clip(s), len(s), HashLen)
	}
	for i := 0; i < len(s); i++ {
		if !nixbase32.Is(s[i]) {
			return h, fmt.Errorf("%w: %q has invalid character %q", ErrBadHash, s, s[i])
		}
	}
	b, err := nixbase32.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("%w: %q: %v", ErrBadHash, s, err)
	}
	copy(h[:], b)
	return h, nil
}

// String returns the nixbase32 form used in store paths.
func (h Hash) String() string { return nixbase32.EncodeToString(h[:]) }

// SplitStorePath splits "/nix/store/<hash>-<name>" (or its base name) into
// hash and name, validating both.
func SplitStorePath(p string) (Hash, string, error) {
	base := strings.TrimPrefix(p, StoreDir+"/")
	if strings.Contains(base, "/") {
		return Hash{}, "", fmt.Errorf("%w: %q is not a store path", ErrBadHash, clip(p))
	}
	if len(base) < HashLen+2 || base[HashLen] != '-' {
		return Hash{}, "", fmt.Errorf("%w: %q is not a store path", ErrBadHash, clip(p))
	}
	h, err := ParseHash(base[:HashLen])
	if err != nil {
		return Hash{}, "", err
	}
	name := base[HashLen+1:]
	if !validName(name) {
		return Hash{}, "", fmt.Errorf("%w: %q has an invalid name", ErrBadHash, clip(p))
	}
	return h, name, nil
}

// validName reports whether s is a valid store path name (Nix's rules:
// 1..211 characters of [a-zA-Z0-9+-._?=], not starting with a dot).
func validName(s string) bool {
	if len(s) == 0 || len(s) > 211 || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("+-._?=", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// clip shortens untrusted strings before they go into errors and logs.
func clip(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
