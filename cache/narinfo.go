package cache

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// Bounds on narinfo text from peers and upstreams. A real narinfo is a few
// hundred bytes; the largest in nixpkgs have a few thousand references.
const (
	MaxNarInfoSize   = 1 << 20
	maxNarInfoRefs   = 50_000
	maxNarInfoSigs   = 64
	maxNarInfoLineSz = 64 << 10
)

// ErrBadNarInfo is returned for narinfo text that cannot be trusted to mean
// anything: malformed, oversized, or missing required fields.
var ErrBadNarInfo = errors.New("bad narinfo")

// NarInfo is the metadata of one store path as a Nix binary cache serves it.
// StorePath, NarHash, NarSize and References are covered by the signatures;
// URL, Compression, FileHash and FileSize describe one copy of the bytes and
// may be rewritten by whoever serves them.
type NarInfo struct {
	StorePath   string   // /nix/store/<hash>-<name>
	URL         string   // relative to the cache root, e.g. nar/<...>.nar
	Compression string   // none, xz, zstd, bzip2, br
	FileHash    string   // sha256:<nixbase32> of the file at URL (optional)
	FileSize    uint64   // size of the file at URL (optional: 0 when absent; see FileSize)
	NarHash     NarHash  // sha256 of the uncompressed NAR
	NarSize     uint64   // size of the uncompressed NAR
	References  []string // base names (<hash>-<name>), sorted
	Deriver     string   // base name of the .drv, optional
	System      string   // optional
	Sigs        []string // "<keyname>:<base64>"
	CA          string   // content address, optional
}

// NarHash is the sha256 digest of a NAR.
type NarHash [32]byte

// ParseNarHash accepts the forms Nix writes: "sha256:<nixbase32>",
// "sha256:<hex>", "sha256-<base64>" (SRI).
func ParseNarHash(s string) (NarHash, error) {
	var nh NarHash
	algo := nixhash.SHA256
	h, err := nixhash.ParseAny(s, &algo)
	if err != nil {
		return nh, fmt.Errorf("nar hash %q: %w", clip(s), err)
	}
	if h.Algo() != nixhash.SHA256 || len(h.Digest()) != len(nh) {
		return nh, fmt.Errorf("nar hash %q: not sha256", clip(s))
	}
	copy(nh[:], h.Digest())
	return nh, nil
}

// String renders the hash as Nix does in narinfo files and fingerprints.
func (h NarHash) String() string { return "sha256:" + nixbase32.EncodeToString(h[:]) }

// Base32 is the bare nixbase32 digest, used in NAR URLs.
func (h NarHash) Base32() string { return nixbase32.EncodeToString(h[:]) }

// Hash returns the store-path hash of StorePath.
func (n *NarInfo) Hash() (Hash, error) {
	h, _, err := SplitStorePath(n.StorePath)
	return h, err
}

// Name returns the name part of StorePath ("hello-2.12").
func (n *NarInfo) Name() string {
	_, name, err := SplitStorePath(n.StorePath)
	if err != nil {
		return ""
	}
	return name
}

// Fingerprint is the string the signatures sign:
// 1;<storepath>;<narhash>;<narsize>;<comma-joined full reference paths>.
func (n *NarInfo) Fingerprint() string {
	var b strings.Builder
	b.WriteString("1;")
	b.WriteString(n.StorePath)
	b.WriteByte(';')
	b.WriteString(n.NarHash.String())
	b.WriteByte(';')
	b.WriteString(strconv.FormatUint(n.NarSize, 10))
	b.WriteByte(';')
	for i, r := range n.References {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(StoreDir)
		b.WriteByte('/')
		b.WriteString(r)
	}
	return b.String()
}

// SignedBy reports whether at least one signature verifies against one of
// keys. Unparseable signatures are ignored, as Nix ignores them.
func (n *NarInfo) SignedBy(keys []signature.PublicKey) bool {
	if len(keys) == 0 || len(n.Sigs) == 0 {
		return false
	}
	fp := n.Fingerprint()
	for _, s := range n.Sigs {
		sig, err := signature.ParseSignature(s)
		if err != nil {
			continue
		}
		for _, k := range keys {
			if k.Name == sig.Name && k.Verify(fp, sig) {
				return true
			}
		}
	}
	return false
}

// FileFields returns the FileHash and FileSize that describe the file at URL.
// For an uncompressed NAR the file is the NAR, so they are NarHash and
// NarSize whatever the fields say (a narinfo rewritten to Compression none
// may still carry the compressed file's); otherwise the fields as they are,
// empty when unknown.
func (n *NarInfo) FileFields() (fileHash string, fileSize uint64) {
	if isUncompressed(n.Compression) {
		return n.NarHash.String(), n.NarSize
	}
	return n.FileHash, n.FileSize
}

// MarshalText renders the narinfo in the format Nix reads. FileHash and
// FileSize are always there for an uncompressed NAR (see FileFields), as in
// every binary cache Nix writes: tools that read narinfos rely on them.
func (n *NarInfo) MarshalText() ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "StorePath: %s\n", n.StorePath)
	fmt.Fprintf(&b, "URL: %s\n", n.URL)
	comp := n.Compression
	if comp == "" {
		comp = "none"
	}
	fmt.Fprintf(&b, "Compression: %s\n", comp)
	fileHash, fileSize := n.FileFields()
	if fileHash != "" {
		fmt.Fprintf(&b, "FileHash: %s\n", fileHash)
	}
	if fileSize != 0 {
		fmt.Fprintf(&b, "FileSize: %d\n", fileSize)
	}
	fmt.Fprintf(&b, "NarHash: %s\n", n.NarHash)
	fmt.Fprintf(&b, "NarSize: %d\n", n.NarSize)
	fmt.Fprintf(&b, "References: %s\n", strings.Join(n.References, " "))
	if n.Deriver != "" {
		fmt.Fprintf(&b, "Deriver: %s\n", n.Deriver)
	}
	if n.System != "" {
		fmt.Fprintf(&b, "System: %s\n", n.System)
	}
	for _, s := range n.Sigs {
		fmt.Fprintf(&b, "Sig: %s\n", s)
	}
	if n.CA != "" {
		fmt.Fprintf(&b, "CA: %s\n", n.CA)
	}
	return b.Bytes(), nil
}

// ParseNarInfo parses narinfo text from an untrusted source. Unknown keys are
// ignored (as Nix does); the size, the number of references and signatures
// are bounded; every value that later reaches a path, a URL or a fingerprint
// is validated.
func ParseNarInfo(r io.Reader) (*NarInfo, error) {
	lr := &io.LimitedReader{R: r, N: MaxNarInfoSize + 1}
	sc := bufio.NewScanner(lr)
	sc.Buffer(make([]byte, 4096), maxNarInfoLineSz)
	n := &NarInfo{}
	var haveNarHash, haveNarSize, haveRefs bool
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		key, val, ok := strings.Cut(line, ": ")
		if !ok {
			return nil, fmt.Errorf("%w: line %q has no key", ErrBadNarInfo, clip(line))
		}
		var err error
		switch key {
		case "StorePath":
			if _, _, err = SplitStorePath(val); err == nil && !strings.HasPrefix(val, StoreDir+"/") {
				err = fmt.Errorf("store path %q is not in %s", clip(val), StoreDir)
			}
			n.StorePath = val
		case "URL":
			err = checkNarURL(val)
			n.URL = val
		case "Compression":
			n.Compression = val
			err = checkToken(val)
		case "FileHash":
			n.FileHash = val
			_, err = ParseNarHash(val)
		case "FileSize":
			n.FileSize, err = strconv.ParseUint(val, 10, 64)
		case "NarHash":
			n.NarHash, err = ParseNarHash(val)
			haveNarHash = true
		case "NarSize":
			n.NarSize, err = strconv.ParseUint(val, 10, 64)
			haveNarSize = true
		case "References":
			haveRefs = true
			if val == "" {
				break
			}
			refs := strings.Split(val, " ")
			if len(refs) > maxNarInfoRefs {
				err = fmt.Errorf("%d references", len(refs))
				break
			}
			for _, ref := range refs {
				if _, _, err = SplitStorePath(ref); err != nil || strings.Contains(ref, "/") {
					err = fmt.Errorf("reference %q: not a store path base name", clip(ref))
					break
				}
			}
			n.References = refs
		case "Deriver":
			if val != "unknown-deriver" {
				if _, _, err = SplitStorePath(val); err != nil || strings.Contains(val, "/") {
					err = fmt.Errorf("deriver %q: not a store path base name", clip(val))
				}
				n.Deriver = val
			}
		case "System":
			n.System = val
			err = checkToken(val)
		case "Sig":
			if len(n.Sigs) >= maxNarInfoSigs {
				err = fmt.Errorf("more than %d signatures", maxNarInfoSigs)
				break
			}
			n.Sigs = append(n.Sigs, val)
		case "CA":
			n.CA = val
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrBadNarInfo, key, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadNarInfo, err)
	}
	if lr.N <= 0 {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadNarInfo, MaxNarInfoSize)
	}
	switch {
	case n.StorePath == "":
		return nil, fmt.Errorf("%w: no StorePath", ErrBadNarInfo)
	case !haveNarHash:
		return nil, fmt.Errorf("%w: no NarHash", ErrBadNarInfo)
	case !haveNarSize || n.NarSize == 0:
		return nil, fmt.Errorf("%w: no NarSize", ErrBadNarInfo)
	case n.URL == "":
		return nil, fmt.Errorf("%w: no URL", ErrBadNarInfo)
	case !haveRefs:
		// Nix accepts a missing References line as "no references".
	}
	return n, nil
}

// checkNarURL accepts relative URLs below the cache root only: no scheme, no
// absolute path, no "..", no query tricks beyond plain characters.
func checkNarURL(u string) error {
	if u == "" || len(u) > 1024 || strings.HasPrefix(u, "/") || strings.Contains(u, "..") || strings.Contains(u, "://") {
		return fmt.Errorf("URL %q is not a relative path below the cache", clip(u))
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if c <= ' ' || c >= 0x7f || c == '\\' || c == '#' {
			return fmt.Errorf("URL %q has a forbidden character", clip(u))
		}
	}
	return nil
}

// checkToken accepts short values of printable, space-free ASCII.
func checkToken(s string) error {
	if len(s) > 64 {
		return fmt.Errorf("value %q too long", clip(s))
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return fmt.Errorf("value %q has a forbidden character", clip(s))
		}
	}
	return nil
}
