package transfer

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
)

// A fleet key is a shared secret that limits peering to the nodes that know
// it. Its file holds the base64 (standard encoding) of 32 random bytes and a
// newline; it is created with mode 0600.
const fleetKeyLen = 32

// minFleetKeyLen is the shortest key LoadFleetKey accepts from a file made
// by hand.
const minFleetKeyLen = 16

// GenerateFleetKey writes a new random fleet key to path (mode 0600). It
// refuses to overwrite an existing file: replacing a fleet key cuts this
// node off from the fleet.
func GenerateFleetKey(path string) error {
	key := make([]byte, fleetKeyLen)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("generate fleet key: %w", err)
	}
	text := base64.StdEncoding.EncodeToString(key) + "\n"
	if err := writeSecretFile(path, []byte(text)); err != nil {
		return fmt.Errorf("write fleet key: %w", err)
	}
	return nil
}

// LoadFleetKey reads a fleet key written by GenerateFleetKey.
func LoadFleetKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read fleet key: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(b)))
	if err != nil {
		return nil, fmt.Errorf("fleet key %s: not base64 (make one with `lancache keygen --fleet FILE`): %w", path, err)
	}
	if len(key) < minFleetKeyLen {
		return nil, fmt.Errorf("fleet key %s: %d bytes, want at least %d", path, len(key), minFleetKeyLen)
	}
	return key, nil
}

// fleetLabel is the TLS exporter label (RFC 8446 §7.5) of the fleet proof.
const fleetLabel = "EXPORTER-lancache/1 fleet"

// Roles in the fleet proof, so that one side's proof cannot be reflected
// back as the other's.
const (
	roleDialer   = "dialer"
	roleAcceptor = "acceptor"
)

// fleetProof proves knowledge of key bound to this TLS session:
// HMAC-SHA256(key, role || 0x00 || exporter(fleetLabel, 32 bytes)). The
// exported keying material is unique per connection, so a proof cannot be
// replayed on another one. Without a key the proof is empty.
func fleetProof(key []byte, cs *tls.ConnectionState, role string) ([]byte, error) {
	if len(key) == 0 {
		return nil, nil
	}
	ekm, err := cs.ExportKeyingMaterial(fleetLabel, nil, 32)
	if err != nil {
		return nil, fmt.Errorf("export keying material: %w", err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(role))
	m.Write([]byte{0})
	m.Write(ekm)
	return m.Sum(nil), nil
}

// errFleet is the reason a peer is refused for fleet membership.
var errFleet = errors.New("fleet key mismatch")

// checkFleet checks a peer's proof. Peering needs both sides to have the
// same key, or neither to have one.
func checkFleet(key []byte, cs *tls.ConnectionState, peerRole string, proof []byte) error {
	switch {
	case len(key) == 0 && len(proof) == 0:
		return nil
	case len(key) == 0:
		return fmt.Errorf("%w: peer uses a fleet key and this node has none (set --fleet-key)", errFleet)
	case len(proof) == 0:
		return fmt.Errorf("%w: peer has no fleet key and this node requires one", errFleet)
	}
	want, err := fleetProof(key, cs, peerRole)
	if err != nil {
		return err
	}
	if !hmac.Equal(want, proof) {
		return fmt.Errorf("%w: peer belongs to another fleet (different --fleet-key)", errFleet)
	}
	return nil
}
