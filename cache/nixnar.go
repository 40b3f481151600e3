package cache

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// FileFinder is implemented by a Source that can find a file it holds by the
// file's sha256 (its FileHash), such as the on-disk NAR cache, which keeps
// upstream's files as they are. The HTTP face uses it to answer NAR URLs it
// did not issue: Nix's own layout, nar/<filehash>.nar[.ext], which a Nix
// client asks for with a narinfo it got from another cache at the same
// address and kept (narinfo-cache-positive-ttl: 30 days by default).
type FileFinder interface {
	// NarInfoByFile returns the narinfo of the committed file whose sha256
	// is fileHash, or an error wrapping ErrNotFound.
	NarInfoByFile(ctx context.Context, fileHash NarHash) (*NarInfo, error)
}

// isOwnNarName reports whether name has the shape of the NAR URLs the handler
// issues, "<hash>-<narhash>.nar[.ext]" (see narURL).
func isOwnNarName(name string) bool {
	base, _, ok := strings.Cut(name, ".nar")
	return ok && len(base) == HashLen+1+52 && base[HashLen] == '-'
}

// parseFileNarName parses Nix's own NAR file name, "<filehash>.nar[.ext]"
// with the 52 nixbase32 characters of the file's sha256.
func parseFileNarName(name string) (fileHash NarHash, ext string, ok bool) {
	base, rest, found := strings.Cut(name, ".nar")
	if !found || len(base) != nixbase32.EncodedLen(len(fileHash)) {
		return fileHash, "", false
	}
	for i := 0; i < len(base); i++ {
		if !nixbase32.Is(base[i]) {
			return fileHash, "", false
		}
	}
	fh, err := ParseNarHash("sha256:" + base)
	if err != nil {
		return fileHash, "", false
	}
	return fh, rest, true
}

// serveOtherNAR answers a NAR URL the handler did not issue. A file in Nix's
// layout that a source holds (see FileFinder), or a NAR in harmonia's, is
// served as the handler serves its own URLs; any other well-formed name is a 404, which Nix reads as "the
// substitute is gone" and falls back. Only a name no binary cache would use
// (odd characters, overlong) is a 400, which Nix takes as a hard error.
func (hd *Handler) serveOtherNAR(w http.ResponseWriter, r *http.Request, name string) {
	// NAR file names use the characters of store path names, and are
	// shorter.
	if name != "" && !validName(name) {
		hd.bad(w, "malformed NAR name")
		return
	}
	fh, ext, ok := parseFileNarName(name)
	if !ok {
		http.NotFound(w, r)
		return
	}
	ctx := r.Context()
	for _, src := range hd.sources {
		ff, ok := src.(FileFinder)
		if !ok {
			continue
		}
		info, err := ff.NarInfoByFile(ctx, fh)
		if err != nil {
			if !errors.Is(err, ErrNotFound) && ctx.Err() == nil {
				hd.log.Warn("NAR file lookup failed", "file_hash", fh, "err", err)
			}
			continue
		}
		h, err := info.Hash()
		if err != nil {
			continue
		}
		if e, err := CompressionExt(info.Compression); err != nil || e != ext {
			continue
		}
		// The handler's own name for this NAR in this compression: the
		// sources are asked as for any NAR URL, and every byte is the one
		// the signed NarHash promises.
		own, _ := narURL(h, info)
		hd.serveNAR(w, r, strings.TrimPrefix(own, "nar/"))
		return
	}
	// harmonia's layout, nar/<narhash>.nar?hash=<hash>, names the same as
	// the handler's own URLs do: the path and its NarHash.
	if h, err := ParseHash(r.URL.Query().Get("hash")); err == nil && ext == "" {
		hd.serveNAR(w, r, h.String()+"-"+fh.Base32()+".nar")
		return
	}
	http.NotFound(w, r)
}
