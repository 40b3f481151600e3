package transfer

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// ALPN is the TLS application protocol of the peer protocol. A change of
// framing that old nodes cannot read gets a new ALPN.
const ALPN = "lancache/1"

// NodeKeyFile is the name of the node key in the state directory: a PEM
// "PRIVATE KEY" (PKCS #8) holding an ed25519 key, mode 0600.
const NodeKeyFile = "node.key"

// NodeID returns the id of the node whose key is pub: the nixbase32 form of
// the first 20 bytes of sha256(pub), 32 characters, like a store-path hash.
// It names a node in logs, status and peer pinning; the TLS handshake proves
// that the peer holds the key.
func NodeID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return nixbase32.EncodeToString(sum[:20])
}

// identity is this node's key, id and TLS certificate.
type identity struct {
	key  ed25519.PrivateKey
	id   string
	cert tls.Certificate
}

// loadIdentity reads the node key from dir, creating dir (0700) and the key
// (0600) on first start.
func loadIdentity(dir string) (*identity, error) {
	if dir == "" {
		return nil, errors.New("node identity: no state directory configured")
	}
	path := filepath.Join(dir, NodeKeyFile)
	key, err := readNodeKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		key, err = createNodeKey(dir, path)
	}
	if err != nil {
		return nil, err
	}
	return newIdentity(key)
}

func readNodeKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("node key %s: not a PEM private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("node key %s: %w", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("node key %s: %T is not an ed25519 key", path, k)
	}
	return ek, nil
}

func createNodeKey(dir, path string) (ed25519.PrivateKey, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate node key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode node key: %w", err)
	}
	if err := writeSecretFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Another process created it first; use theirs.
			return readNodeKey(path)
		}
		return nil, fmt.Errorf("write node key: %w", err)
	}
	return key, nil
}

// writeSecretFile creates path with mode 0600, failing if it exists, and
// syncs it so that a crash cannot leave a half-written key.
func writeSecretFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

func newIdentity(key ed25519.PrivateKey) (*identity, error) {
	pub := key.Public().(ed25519.PublicKey)
	id := NodeID(pub)
	// The certificate only carries the key: peers authenticate by key, not
	// by chain or validity period, so it is made afresh at every start.
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "lancache " + id},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(100 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	return &identity{
		key:  key,
		id:   id,
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
	}, nil
}

// peerID returns the node id of the key in a peer's certificate chain. The
// TLS 1.3 handshake has already proved that the peer holds that key.
func peerID(rawCerts [][]byte) (string, error) {
	if len(rawCerts) == 0 {
		return "", errors.New("peer sent no certificate")
	}
	c, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return "", fmt.Errorf("peer certificate: %w", err)
	}
	pub, ok := c.PublicKey.(ed25519.PublicKey)
	if !ok {
		return "", fmt.Errorf("peer certificate key is %T, not ed25519", c.PublicKey)
	}
	return NodeID(pub), nil
}

// errWrongPeer is returned by the dialer's TLS check when the peer's key is
// not the one expected.
var errWrongPeer = errors.New("peer is not the node expected")

// serverTLS is the listener's TLS configuration: any ed25519 client
// certificate is accepted here; fleet membership is checked in the hello.
func (id *identity) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		NextProtos:   []string{ALPN},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := peerID(raw)
			return err
		},
	}
}

// clientTLS is the dialer's TLS configuration. The peer's certificate must
// carry an ed25519 key, and the key of expectID when that is not empty.
func (id *identity) clientTLS(expectID string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		NextProtos:   []string{ALPN},
		ServerName:   "lancache",
		// The chain is not checked against CAs: the peer's identity is its
		// key, checked below.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			got, err := peerID(raw)
			if err != nil {
				return err
			}
			if expectID != "" && got != expectID {
				return fmt.Errorf("%w: want %s, got %s", errWrongPeer, expectID, got)
			}
			return nil
		},
	}
}
