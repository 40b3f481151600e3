package cache

import (
	"context"
	"errors"
	"io"
)

// ErrNotFound means "nobody here has it": the HTTP face turns it into a fast
// 404 so that Nix moves on to its next substituter.
var ErrNotFound = errors.New("not found")

// Source is anything that can answer for store paths: the local Nix store,
// the on-disk NAR cache, the peers, an upstream. The HTTP face asks its
// sources in order.
//
// NarInfo must answer a miss with ErrNotFound quickly (from memory where it
// can): Nix asks for every path of a closure and a slow miss stalls it.
//
// WriteNAR writes the file that info describes (info.URL, compressed as
// info.Compression: FileSize bytes, or NarSize bytes when uncompressed) to w,
// starting at byte offset and writing length bytes (length < 0: to the end).
// A source that relays untrusted bytes must check them against the signed
// NarHash (see Verifier) and return an error, after which the caller aborts
// the response, if they do not match. A source never writes more than the
// requested range, and returns ErrNotFound if it no longer holds the file.
type Source interface {
	NarInfo(ctx context.Context, h Hash) (*NarInfo, error)
	WriteNAR(ctx context.Context, w io.Writer, info *NarInfo, offset, length int64) error
}
