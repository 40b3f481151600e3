package cache

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// ErrHashMismatch means bytes did not match the NarHash or NarSize of their
// signed narinfo. Whoever sent them is not to be trusted with this path.
var ErrHashMismatch = errors.New("NAR does not match its NarHash")

// ErrUnsupportedCompression is returned for compressions lancache cannot
// verify.
var ErrUnsupportedCompression = errors.New("unsupported compression")

// FileSize is the number of bytes of the file described by info: NarSize
// when it is not compressed, FileSize when it is, and -1 (unknown) for a
// compressed file whose narinfo does not say: FileSize is optional.
func FileSize(info *NarInfo) int64 {
	if isUncompressed(info.Compression) {
		return int64(info.NarSize)
	}
	if info.FileSize == 0 {
		return -1
	}
	return int64(info.FileSize)
}

// maxFileSize bounds the compressed file of a NAR of narSize bytes when its
// narinfo has no FileSize. xz, zstd and bzip2 grow incompressible data by
// well under an eighth, plus headers.
func maxFileSize(narSize uint64) int64 {
	n := min(narSize, 1<<60)
	return int64(n + n/8 + 1<<20)
}

func isUncompressed(c string) bool { return c == "" || c == "none" }

// CompressionExt is the file extension Nix caches use for a compression.
func CompressionExt(c string) (string, error) {
	switch c {
	case "", "none":
		return "", nil
	case "xz":
		return ".xz", nil
	case "zstd":
		return ".zst", nil
	case "bzip2":
		return ".bz2", nil
	}
	return "", fmt.Errorf("%w: %q", ErrUnsupportedCompression, clip(c))
}

// Decompressors makes the readers that decompress NAR files. It looks for
// xz(1) on PATH once, at the first xz file large enough to use it. It is safe
// for concurrent use; the zero value is ready to use.
type Decompressors struct {
	lookPath func(file string) (string, error) // test hook; nil means exec.LookPath

	once   sync.Once
	xzPath string // "" when xz(1) is not on PATH
}

// Reader returns a reader of the uncompressed NAR from r, compressed as c
// says. narSize is the NAR's size from its narinfo; it picks the xz decoder.
func (d *Decompressors) Reader(c string, r io.Reader, narSize uint64) (io.ReadCloser, error) {
	switch c {
	case "", "none":
		return io.NopCloser(r), nil
	case "zstd":
		zd, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<27))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zd.IOReadCloser(), nil
	case "xz":
		return d.xzReader(r, narSize)
	case "bzip2":
		return io.NopCloser(bzip2.NewReader(r)), nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnsupportedCompression, clip(c))
}

// Verifier checks a stream of file bytes (compressed as the narinfo says)
// against the narinfo's NarHash and NarSize while they are written through
// it. Write the whole file, from byte 0, then call Close: it returns nil only
// if the bytes are exactly the signed NAR. Writes after a mismatch is known
// (too many bytes) fail at once.
type Verifier struct {
	dec     *Decompressors
	info    *NarInfo
	written int64
	limit   int64 // file bytes accepted at most

	// uncompressed: hash inline.
	h       hash.Hash
	narSize uint64

	// compressed: a decompressing goroutine fed through a pipe.
	pw   *io.PipeWriter
	done chan error
}

// NewVerifier returns a Verifier for the file described by info. It uses
// Decompressors of its own; a long-lived caller keeps one Decompressors and
// calls its NewVerifier instead, so that xz(1) is looked up once.
func NewVerifier(info *NarInfo) (*Verifier, error) {
	return new(Decompressors).NewVerifier(info)
}

// NewVerifier returns a Verifier for the file described by info that
// decompresses with d.
func (d *Decompressors) NewVerifier(info *NarInfo) (*Verifier, error) {
	v := &Verifier{dec: d, info: info, h: sha256.New(), limit: FileSize(info)}
	if v.limit < 0 {
		v.limit = maxFileSize(info.NarSize)
	}
	if isUncompressed(info.Compression) {
		return v, nil
	}
	if _, err := CompressionExt(info.Compression); err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	v.pw = pw
	v.done = make(chan error, 1)
	go func() {
		err := v.decompress(pr)
		pr.CloseWithError(err) // unblocks writers if we stopped early
		v.done <- err
	}()
	return v, nil
}

func (v *Verifier) decompress(r io.Reader) error {
	// Decoders read in small pieces; a pipe read per piece is slow.
	d, err := v.dec.Reader(v.info.Compression, bufio.NewReaderSize(r, 256<<10), v.info.NarSize)
	if err != nil {
		return err
	}
	defer d.Close()
	// Read at most one byte past NarSize: a longer stream is a mismatch, and
	// a decompression bomb stops there.
	n, err := io.Copy(v.h, io.LimitReader(d, int64(v.info.NarSize)+1))
	v.narSize = uint64(n)
	if err != nil {
		return fmt.Errorf("decompress %s: %w", v.info.Compression, err)
	}
	if v.narSize != v.info.NarSize {
		return fmt.Errorf("%w: decompressed size is not NarSize %d", ErrHashMismatch, v.info.NarSize)
	}
	// Drain the rest of the compressed input so the writer side completes.
	_, err = io.Copy(io.Discard, r)
	return err
}

// Write feeds file bytes through the check.
func (v *Verifier) Write(p []byte) (int, error) {
	if v.written+int64(len(p)) > v.limit {
		return 0, fmt.Errorf("%w: more than %d bytes", ErrHashMismatch, v.limit)
	}
	v.written += int64(len(p))
	if v.pw == nil {
		v.narSize += uint64(len(p))
		return v.h.Write(p)
	}
	n, err := v.pw.Write(p)
	if err != nil && !errors.Is(err, ErrHashMismatch) {
		// The decompressor stopped: the stream is not the signed NAR.
		err = fmt.Errorf("%w: %w", ErrHashMismatch, err)
	}
	return n, err
}

// Written is the number of file bytes written so far: the offset to resume
// from when a source fails.
func (v *Verifier) Written() int64 { return v.written }

// Close finishes the check. It returns nil only if the whole file was written
// and it decompresses to exactly the NAR the narinfo signs.
func (v *Verifier) Close() error {
	if v.pw != nil {
		v.pw.Close()
		if err := <-v.done; err != nil {
			if errors.Is(err, ErrHashMismatch) {
				return err
			}
			return fmt.Errorf("%w: %w", ErrHashMismatch, err)
		}
	}
	if v.info.FileSize != 0 && !isUncompressed(v.info.Compression) && v.written != int64(v.info.FileSize) {
		return fmt.Errorf("%w: got %d file bytes, narinfo says %d", ErrHashMismatch, v.written, v.info.FileSize)
	}
	if v.narSize != v.info.NarSize {
		return fmt.Errorf("%w: got %d NAR bytes, narinfo says %d", ErrHashMismatch, v.narSize, v.info.NarSize)
	}
	if !bytes.Equal(v.h.Sum(nil), v.info.NarHash[:]) {
		return fmt.Errorf("%w: %s", ErrHashMismatch, v.info.StorePath)
	}
	return nil
}

// Abort releases the Verifier without a verdict (the transfer was given up).
func (v *Verifier) Abort() {
	if v.pw != nil {
		v.pw.CloseWithError(errors.New("aborted"))
		<-v.done
	}
}
