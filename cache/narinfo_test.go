package cache

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// A narinfo as cache.nixos.org serves it.
const realNarInfo = `StorePath: /nix/store/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-hello-2.12.1
URL: nar/1bd3ksmmz8n1k8d2xjsqx2vbhi3v4qxh0lsqazc4hzy3wdmw4h1w.nar.xz
Compression: xz
FileHash: sha256:1bd3ksmmz8n1k8d2xjsqx2vbhi3v4qxh0lsqazc4hzy3wdmw4h1w
FileSize: 50264
NarHash: sha256:1jnhcscsw6xapfmf4sjjsyvflmgaqxh2n6qsqk4sgqpjpqj0b5lz
NarSize: 226552
References: 0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-hello-2.12.1 yaz7pyf0ah88g2v505l38n0f3wg2vzdj-glibc-2.37-8
Deriver: xbaxi0pg1x1gsqvsn1gwcqv7ri8kmbrc-hello-2.12.1.drv
Sig: cache.nixos.org-1:8ijECciSFzWHwwGVOIVYdp2fOIOJAfmzGHPQVwpktfTQJF6kMPPDre7UtFw3o+VqenC5P8RikKOAAfN7CvPEAg==
`

func TestParseNarInfoReal(t *testing.T) {
	n, err := ParseNarInfo(strings.NewReader(realNarInfo))
	if err != nil {
		t.Fatal(err)
	}
	if n.StorePath != "/nix/store/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-hello-2.12.1" || n.NarSize != 226552 ||
		n.Compression != "xz" || len(n.References) != 2 || len(n.Sigs) != 1 || n.FileSize != 50264 {
		t.Fatalf("parsed %+v", n)
	}
	if n.Name() != "hello-2.12.1" {
		t.Fatalf("Name() = %q", n.Name())
	}
	want := "1;/nix/store/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-hello-2.12.1;sha256:1jnhcscsw6xapfmf4sjjsyvflmgaqxh2n6qsqk4sgqpjpqj0b5lz;226552;/nix/store/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-hello-2.12.1,/nix/store/yaz7pyf0ah88g2v505l38n0f3wg2vzdj-glibc-2.37-8"
	if fp := n.Fingerprint(); fp != want {
		t.Fatalf("fingerprint\n got %s\nwant %s", fp, want)
	}
	// Round trip through MarshalText.
	text, _ := n.MarshalText()
	n2, err := ParseNarInfo(bytes.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if n2.Fingerprint() != n.Fingerprint() || n2.URL != n.URL || n2.FileHash != n.FileHash {
		t.Fatalf("round trip changed the narinfo:\n%s", text)
	}
}

func TestParseNarInfoRejects(t *testing.T) {
	base := realNarInfo
	cases := map[string]string{
		"no store path":     strings.Replace(base, "StorePath: /nix/store/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-hello-2.12.1\n", "", 1),
		"other store dir":   strings.Replace(base, "StorePath: /nix/store/", "StorePath: /gnu/store/", 1),
		"traversal name":    strings.Replace(base, "-hello-2.12.1\nURL", "-../../etc\nURL", 1),
		"absolute URL":      strings.Replace(base, "URL: nar/", "URL: /etc/", 1),
		"scheme URL":        strings.Replace(base, "URL: nar/", "URL: http://evil/", 1),
		"dotdot URL":        strings.Replace(base, "URL: nar/", "URL: nar/../../", 1),
		"bad nar hash":      strings.Replace(base, "NarHash: sha256:1j", "NarHash: sha256:!!", 1),
		"md5 nar hash":      strings.Replace(base, "NarHash: sha256:1jnhcscsw6xapfmf4sjjsyvflmgaqxh2n6qsqk4sgqpjpqj0b5lz", "NarHash: md5:00000000000000000000000000000000", 1),
		"no nar size":       strings.Replace(base, "NarSize: 226552\n", "", 1),
		"negative size":     strings.Replace(base, "NarSize: 226552", "NarSize: -1", 1),
		"bad reference":     strings.Replace(base, "References: 0rr10g", "References: /nix/store/0rr10g", 1),
		"bad deriver":       strings.Replace(base, "Deriver: x", "Deriver: ../x", 1),
		"line without key":  base + "garbage\n",
		"huge":              base + strings.Repeat("X-Pad: "+strings.Repeat("a", 1000)+"\n", 1100),
		"overlong line":     base + "X: " + strings.Repeat("a", 70000) + "\n",
		"compression space": strings.Replace(base, "Compression: xz", "Compression: x z", 1),
	}
	for name, text := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseNarInfo(strings.NewReader(text)); !errors.Is(err, ErrBadNarInfo) {
				t.Fatalf("got %v, want ErrBadNarInfo", err)
			}
		})
	}
	// Unknown keys are ignored, as Nix ignores them.
	if _, err := ParseNarInfo(strings.NewReader(base + "X-Future: a: b\n")); err != nil {
		t.Fatalf("unknown key: %v", err)
	}
}

func TestSignedBy(t *testing.T) {
	sk, pk, err := signature.GenerateKeypair("test-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, other, _ := signature.GenerateKeypair("test-1", rand.Reader)
	n, err := ParseNarInfo(strings.NewReader(realNarInfo))
	if err != nil {
		t.Fatal(err)
	}
	n.Sigs = nil
	if n.SignedBy([]signature.PublicKey{pk}) {
		t.Fatal("unsigned narinfo verified")
	}
	sig, err := sk.Sign(nil, n.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	n.Sigs = []string{"garbage", sig.String()}
	if !n.SignedBy([]signature.PublicKey{pk}) {
		t.Fatal("signed narinfo did not verify")
	}
	if n.SignedBy([]signature.PublicKey{other}) {
		t.Fatal("verified against the wrong key")
	}
	// The signature covers NarSize, NarHash and References, not URL.
	n.URL = "nar/other.nar"
	if !n.SignedBy([]signature.PublicKey{pk}) {
		t.Fatal("URL rewrite broke the signature")
	}
	n.NarSize++
	if n.SignedBy([]signature.PublicKey{pk}) {
		t.Fatal("changed NarSize still verified")
	}
}

func FuzzNarInfo(f *testing.F) {
	f.Add([]byte(realNarInfo))
	f.Add([]byte("StorePath: /nix/store/00000000000000000000000000000000-x\nURL: nar/x.nar\nNarHash: sha256:1jnhcscsw6xapfmf4sjjsyvflmgaqxh2n6qsqk4sgqpjpqj0b5lz\nNarSize: 1\n"))
	f.Add([]byte("References: \nSig: a:b\nCA: fixed:r:sha256:abc\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := ParseNarInfo(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrBadNarInfo) {
				t.Fatalf("error does not wrap ErrBadNarInfo: %v", err)
			}
			return
		}
		// Whatever parses must render and parse back to the same signed
		// content, and must name a valid store path and a safe URL.
		if _, err := n.Hash(); err != nil {
			t.Fatalf("accepted a bad store path %q", n.StorePath)
		}
		if checkNarURL(n.URL) != nil {
			t.Fatalf("accepted unsafe URL %q", n.URL)
		}
		text, _ := n.MarshalText()
		n2, err := ParseNarInfo(bytes.NewReader(text))
		if err != nil {
			t.Fatalf("re-parse of rendered narinfo: %v\n%s", err, text)
		}
		if n2.Fingerprint() != n.Fingerprint() {
			t.Fatalf("fingerprint changed on round trip")
		}
		_ = n.SignedBy(nil)
	})
}

func TestParseHash(t *testing.T) {
	good := "0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p"
	h, err := ParseHash(good)
	if err != nil || h.String() != good {
		t.Fatalf("ParseHash(%q) = %v, %v", good, h, err)
	}
	for _, bad := range []string{"", "0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8", "0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8pp", "0RR10G8FQ2FBB6YD4MH3GR4FQY6VRQ8P", "0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8e", "../../../../../../../../../etc/pa"} {
		if _, err := ParseHash(bad); !errors.Is(err, ErrBadHash) {
			t.Errorf("ParseHash(%q) = %v, want ErrBadHash", bad, err)
		}
	}
	for _, bad := range []string{"/nix/store/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p", "/nix/store/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-", "/nix/store/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-a/b", "/nix/store/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-.hidden", "/nix/store/0rr10g8fq2fbb6yd4mh3gr4fqy6vrq8p-a b"} {
		if _, _, err := SplitStorePath(bad); err == nil {
			t.Errorf("SplitStorePath(%q) accepted", bad)
		}
	}
}

// Every binary cache Nix writes has FileHash and FileSize, equal to NarHash
// and NarSize for an uncompressed NAR; a narinfo rewritten to Compression
// none must not keep the compressed file's.
func TestMarshalTextFileFields(t *testing.T) {
	n, err := ParseNarInfo(strings.NewReader(realNarInfo))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		compression, fileHash string
		fileSize              uint64
		wantHash              string
		wantSize              uint64
	}{
		{"none", "", 0, n.NarHash.String(), n.NarSize},
		{"", "", 0, n.NarHash.String(), n.NarSize},
		{"none", n.FileHash, n.FileSize, n.NarHash.String(), n.NarSize}, // stale compressed fields
		{"xz", n.FileHash, n.FileSize, n.FileHash, n.FileSize},
	} {
		c := *n
		c.Compression, c.FileHash, c.FileSize = tc.compression, tc.fileHash, tc.fileSize
		text, _ := c.MarshalText()
		got, err := ParseNarInfo(bytes.NewReader(text))
		if err != nil {
			t.Fatalf("%q: %v\n%s", tc.compression, err, text)
		}
		if got.FileHash != tc.wantHash || got.FileSize != tc.wantSize {
			t.Errorf("Compression %q, FileHash %q, FileSize %d: rendered FileHash %q, FileSize %d; want %q, %d\n%s",
				tc.compression, tc.fileHash, tc.fileSize, got.FileHash, got.FileSize, tc.wantHash, tc.wantSize, text)
		}
	}
}
