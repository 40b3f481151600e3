package integration

import (
	"bytes"
	"crypto/sha256"
	"net/url"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestNixCopyClosure serves a signed closure and has the real Nix client
// copy it into a second chroot store, trusting only the test key: every
// path must verify there with the same NarHash and signatures, and every
// narinfo and NAR the daemon serves must match the source store byte for
// byte.
func TestNixCopyClosure(t *testing.T) {
	fx := newStoreFixture(t)
	d := startDaemon(t, serveOpts{StoreRoot: fx.Root, Keys: []string{fx.Key}})

	t.Run("nix-cache-info", func(t *testing.T) {
		body := d.wantStatus(t, "GET", "/nix-cache-info", 200)
		for _, want := range []string{"StoreDir: /nix/store", "WantMassQuery: 1", "Priority: 30"} {
			if !slices.Contains(lines(body), want) {
				t.Errorf("/nix-cache-info lacks %q:\n%s", want, body)
			}
		}
		d.wantStatus(t, "HEAD", "/nix-cache-info", 200)
	})

	t.Run("narinfo-and-nar", func(t *testing.T) {
		for _, p := range fx.Closure {
			t.Run(path.Base(p), func(t *testing.T) { checkServed(t, d, fx, p) })
		}
	})

	t.Run("nix-copy", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "dst")
		mustRun(t, fx.Env, "nix", "copy", "--from", d.URL, "--to", dst, fx.Top)
		checkCopied(t, fx, dst, fx.Closure, true)
	})

	t.Run("substitute", func(t *testing.T) {
		// nix-store -r with the daemon as the only substituter: the path
		// Nix takes when lancache is configured in nix.conf.
		dst := filepath.Join(t.TempDir(), "dst")
		mustRun(t, fx.Env, "nix-store", "--store", dst, "-r", fx.Top,
			"--option", "substituters", d.URL, "--option", "trusted-substituters", d.URL)
		checkCopied(t, fx, dst, fx.Closure, true)
	})

	d.Stop(syscall.SIGTERM)
}

// checkServed checks the narinfo and NAR that d serves for p against the
// fixture's source store.
func checkServed(t *testing.T, d *daemon, fx *storeFixture, p string) {
	want := fx.Info[p]
	body := d.wantStatus(t, "GET", "/"+hashPart(p)+".narinfo", 200)
	if t.Failed() {
		return
	}
	ni, err := parseNarinfo(body)
	if err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	if got := one(ni, "StorePath"); got != p {
		t.Errorf("StorePath %q, want %q", got, p)
	}
	gotHash, err := decodeHash(one(ni, "NarHash"))
	if err != nil {
		t.Errorf("NarHash: %v", err)
	}
	wantHash, err := decodeHash(want.NarHash)
	if err != nil {
		t.Fatalf("source narHash: %v", err)
	}
	if !bytes.Equal(gotHash, wantHash) {
		t.Errorf("NarHash %s, want %s", one(ni, "NarHash"), want.NarHash)
	}
	if got := one(ni, "NarSize"); got != strconv.FormatInt(want.NarSize, 10) {
		t.Errorf("NarSize %s, want %d", got, want.NarSize)
	}
	var wantRefs []string
	for _, r := range want.References {
		wantRefs = append(wantRefs, path.Base(r))
	}
	gotRefs := strings.Fields(one(ni, "References"))
	slices.Sort(wantRefs)
	slices.Sort(gotRefs)
	if !slices.Equal(gotRefs, wantRefs) {
		t.Errorf("References %q, want %q", gotRefs, wantRefs)
	}
	if want.Deriver != "" && one(ni, "Deriver") != path.Base(want.Deriver) {
		t.Errorf("Deriver %q, want %q", one(ni, "Deriver"), path.Base(want.Deriver))
	}
	if want.CA != "" && one(ni, "CA") != want.CA {
		t.Errorf("CA %q, want %q", one(ni, "CA"), want.CA)
	}
	for _, s := range want.Signatures {
		if !slices.Contains(ni["Sig"], s) {
			t.Errorf("narinfo lacks signature %q; has %q", s, ni["Sig"])
		}
	}
	if c := one(ni, "Compression"); c != "" && c != "none" {
		t.Errorf("Compression %q, want none", c)
	}
	if fs := one(ni, "FileSize"); fs != "" && fs != strconv.FormatInt(want.NarSize, 10) {
		t.Errorf("FileSize %s of an uncompressed NAR, want NarSize %d", fs, want.NarSize)
	}
	if fh := one(ni, "FileHash"); fh != "" {
		if h, err := decodeHash(fh); err != nil || !bytes.Equal(h, wantHash) {
			t.Errorf("FileHash %s of an uncompressed NAR, want NarHash %s (%v)", fh, want.NarHash, err)
		}
	}

	head := d.wantStatus(t, "HEAD", "/"+hashPart(p)+".narinfo", 200)
	if len(head) != 0 {
		t.Errorf("HEAD narinfo has a body of %d bytes", len(head))
	}

	narURL, err := url.Parse(one(ni, "URL"))
	if err != nil || one(ni, "URL") == "" {
		t.Fatalf("URL %q: %v", one(ni, "URL"), err)
	}
	base, _ := url.Parse(d.URL + "/")
	narPath := base.ResolveReference(narURL).RequestURI()
	resp, nar := d.get(t, "GET", narPath)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", narPath, resp.Status)
	}
	if resp.ContentLength != want.NarSize {
		t.Errorf("GET %s: Content-Length %d, want %d", narPath, resp.ContentLength, want.NarSize)
	}
	if sum := sha256.Sum256(nar); !bytes.Equal(sum[:], wantHash) {
		t.Errorf("GET %s: sha256 of %d bytes differs from NarHash", narPath, len(nar))
	}
	dump := mustRun(t, fx.Env, "nix-store", "--dump", fx.physical(p))
	if !bytes.Equal(nar, dump) {
		i := 0
		for i < len(nar) && i < len(dump) && nar[i] == dump[i] {
			i++
		}
		t.Errorf("GET %s: %d bytes differ from nix-store --dump (%d bytes) at offset %d", narPath, len(nar), len(dump), i)
	}
	hresp, hbody := d.get(t, "HEAD", narPath)
	if hresp.StatusCode != 200 || len(hbody) != 0 {
		t.Errorf("HEAD %s: %s with %d body bytes", narPath, hresp.Status, len(hbody))
	}
	if hresp.ContentLength != want.NarSize {
		t.Errorf("HEAD %s: Content-Length %d, want %d", narPath, hresp.ContentLength, want.NarSize)
	}
}

// checkCopied checks that every path of paths is valid in the chroot store
// dst with the fixture's NarHash, and, if signed, its signatures.
func checkCopied(t *testing.T, fx *storeFixture, dst string, paths []string, signed bool) {
	t.Helper()
	got := pathInfos(t, fx.Env, dst, paths...)
	for _, p := range paths {
		if r := run(fx.Env, "nix-store", "--store", dst, "--verify-path", p); r.Err != nil {
			t.Errorf("verify %s in the copy: %v", p, r.Err)
		}
		g, ok := got[p]
		if !ok {
			t.Errorf("%s missing from the copy", p)
			continue
		}
		w := fx.Info[p]
		gh, err1 := decodeHash(g.NarHash)
		wh, err2 := decodeHash(w.NarHash)
		if err1 != nil || err2 != nil || !bytes.Equal(gh, wh) {
			t.Errorf("%s: narHash in the copy %s, source %s", p, g.NarHash, w.NarHash)
		}
		if g.NarSize != w.NarSize {
			t.Errorf("%s: narSize in the copy %d, source %d", p, g.NarSize, w.NarSize)
		}
		if signed {
			for _, s := range w.Signatures {
				if !slices.Contains(g.Signatures, s) {
					t.Errorf("%s: the copy lacks signature %s", p, s)
				}
			}
		}
	}
}

// TestSharePolicy checks what each --share mode offers: signed serves only
// paths with a signature from a trusted key, all serves everything, none
// serves nothing.
func TestSharePolicy(t *testing.T) {
	fx := newStoreFixture(t)
	narinfo := func(p string) string { return "/" + hashPart(p) + ".narinfo" }

	t.Run("signed", func(t *testing.T) {
		d := startDaemon(t, serveOpts{StoreRoot: fx.Root, Share: "signed", Keys: []string{fx.Key}})
		d.wantStatus(t, "GET", narinfo(fx.Top), 200)
		for _, p := range []string{fx.Private, fx.Foreign} {
			d.wantStatus(t, "GET", narinfo(p), 404)
			d.wantStatus(t, "HEAD", narinfo(p), 404)
		}
		dst := filepath.Join(t.TempDir(), "dst")
		if r := run(fx.Env, "nix", "copy", "--from", d.URL, "--to", dst, fx.Private); r.Err == nil {
			t.Errorf("nix copy of the unsigned path %s succeeded with --share signed", fx.Private)
		}
		if r := run(fx.Env, "nix", "copy", "--no-check-sigs", "--from", d.URL, "--to", dst, fx.Private); r.Err == nil {
			t.Errorf("nix copy --no-check-sigs of the unsigned path %s succeeded with --share signed", fx.Private)
		}
		if r := run(fx.Env, "nix", "path-info", "--store", dst, fx.Private); r.Err == nil {
			t.Errorf("the unsigned path %s reached the copy", fx.Private)
		}
		d.Stop(syscall.SIGTERM)
	})

	t.Run("signed-other-key", func(t *testing.T) {
		// Only other-1 trusted: the closure signed by test-1 is private now.
		d := startDaemon(t, serveOpts{StoreRoot: fx.Root, Share: "signed", Keys: []string{fx.OtherKey}})
		d.wantStatus(t, "GET", narinfo(fx.Foreign), 200)
		for _, p := range append([]string{fx.Private}, fx.Closure...) {
			d.wantStatus(t, "GET", narinfo(p), 404)
		}
		d.Stop(syscall.SIGTERM)
	})

	t.Run("signed-two-keys", func(t *testing.T) {
		d := startDaemon(t, serveOpts{StoreRoot: fx.Root, Share: "signed", Keys: []string{fx.OtherKey, fx.Key}})
		for _, p := range append([]string{fx.Foreign}, fx.Closure...) {
			d.wantStatus(t, "GET", narinfo(p), 200)
		}
		d.wantStatus(t, "GET", narinfo(fx.Private), 404)
		d.Stop(syscall.SIGTERM)
	})

	t.Run("all", func(t *testing.T) {
		d := startDaemon(t, serveOpts{StoreRoot: fx.Root, Share: "all", Keys: []string{fx.Key}})
		for _, p := range []string{fx.Private, fx.Foreign, fx.Top} {
			d.wantStatus(t, "GET", narinfo(p), 200)
		}
		checkServed(t, d, fx, fx.Private)
		dst := filepath.Join(t.TempDir(), "dst")
		mustRun(t, fx.Env, "nix", "copy", "--no-check-sigs", "--from", d.URL, "--to", dst, fx.Private)
		leaf := fx.Info[fx.Private].References
		checkCopied(t, fx, dst, append([]string{fx.Private}, leaf...), false)
		d.Stop(syscall.SIGTERM)
	})

	t.Run("none", func(t *testing.T) {
		d := startDaemon(t, serveOpts{StoreRoot: fx.Root, Share: "none", Keys: []string{fx.Key}})
		for _, p := range append([]string{fx.Private, fx.Foreign}, fx.Closure...) {
			d.wantStatus(t, "GET", narinfo(p), 404)
		}
		d.wantStatus(t, "GET", "/nix-cache-info", 200)
		d.Stop(syscall.SIGTERM)
	})
}
