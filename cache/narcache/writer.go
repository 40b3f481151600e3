package narcache

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/lancache/lancache/cache"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// Writer streams one file into the cache. Its owner calls Write until the
// file is complete and then Commit, or Abort to give up; these are not safe
// for concurrent use with each other. Meanwhile any number of readers may
// follow the growing file through Cache.WriteNAR.
type Writer struct {
	c    *Cache
	e    *entry
	info cache.NarInfo // as given to Begin
	ext  string
	f    *os.File
	v    *cache.Verifier
	fh   hash.Hash // sha256 of the file bytes, for FileHash and the name
	est  int64     // bytes reserved in Cache.reserved
	n    int64     // bytes written
	fin  bool      // Commit or Abort ran
	vEnd bool      // v's Close ran

	// Progress for followers.
	mu      sync.Mutex
	written int64
	done    bool
	err     error
	wake    chan struct{} // closed at the next progress; nil when nobody waits
}

// Begin starts writing the file of info (compressed as info.Compression) into
// the cache. The file's bytes are checked against info's NarHash and NarSize
// as they are written; the caller is responsible for having checked info's
// signature. FileHash, FileSize and URL of info are not trusted: the cache
// computes its own.
//
// It returns ErrExists if the path is committed, ErrBusy if another Writer
// has it, ErrTooLarge if the file cannot fit, and ErrClosed after Close.
// Space is reserved for the file (FileSize, or NarSize when FileSize is not
// known) by evicting other entries.
func (c *Cache) Begin(info *cache.NarInfo) (*Writer, error) {
	h, err := info.Hash()
	if err != nil {
		return nil, fmt.Errorf("begin NAR cache write: %w", err)
	}
	if !strings.HasPrefix(info.StorePath, cache.StoreDir+"/") {
		return nil, fmt.Errorf("begin NAR cache write: %q is not in %s", info.StorePath, cache.StoreDir)
	}
	if info.NarSize == 0 {
		return nil, fmt.Errorf("begin NAR cache write %s: no NarSize", h)
	}
	ext, err := cache.CompressionExt(info.Compression)
	if err != nil {
		return nil, fmt.Errorf("begin NAR cache write %s: %w", h, err)
	}
	w := &Writer{c: c, info: *info, ext: ext, fh: sha256.New()}
	w.info.Compression = cache.NormCompression(info.Compression)
	w.est = cache.FileSize(info)
	if w.est <= 0 {
		w.est = int64(info.NarSize)
	}
	if w.v, err = c.dec.NewVerifier(&w.info); err != nil {
		return nil, fmt.Errorf("begin NAR cache write %s: %w", h, err)
	}

	c.mu.Lock()
	err = c.canBeginLocked(h, w.est)
	c.mu.Unlock()
	if err == nil {
		// The file exists before the entry does, so that readers who find
		// the entry find its file. Its name is unique, so it is created
		// without the lock.
		w.f, err = c.createPartial(h)
	}
	if err == nil {
		c.mu.Lock()
		if err = c.canBeginLocked(h, w.est); err != nil {
			// Another Begin of the path won meanwhile.
			c.mu.Unlock()
			w.f.Close()
			c.removeFile(w.f.Name(), "remove partial NAR")
		}
	}
	if err != nil {
		w.v.Abort()
		return nil, fmt.Errorf("begin NAR cache write %s: %w", h, err)
	}
	w.e = &entry{
		hash:    h,
		info:    &w.info,
		nar:     w.f.Name(),
		narinfo: filepath.Join(c.dir, h.String()+narinfoSuffix),
		w:       w,
	}
	c.pending[h] = w.e
	c.reserved += w.est
	victims := c.evictLocked()
	c.mu.Unlock()
	c.dispose(victims)
	return w, nil
}

// canBeginLocked says why a write of h of about est bytes cannot begin, if
// it cannot.
func (c *Cache) canBeginLocked(h cache.Hash, est int64) error {
	switch {
	case c.closed:
		return ErrClosed
	case c.entries[h] != nil:
		return ErrExists
	case c.pending[h] != nil, c.leaving[h]:
		return ErrBusy
	case est > c.max:
		return fmt.Errorf("%w: %d bytes, cache holds %d", ErrTooLarge, est, c.max)
	}
	return nil
}

// createPartial creates the partial file of a new write of h.
func (c *Cache) createPartial(h cache.Hash) (*os.File, error) {
	c.fsOp("create", c.narDir)
	f, err := os.CreateTemp(c.narDir, partialPrefix+h.String()+"-*")
	if err != nil {
		return nil, fmt.Errorf("create partial file: %w", err)
	}
	// Readable by others, like any binary cache served by file://.
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		c.removeFile(f.Name(), "remove partial NAR")
		return nil, fmt.Errorf("create partial file: %w", err)
	}
	return f, nil
}

// Write appends file bytes. Bytes that cannot be the signed file, and write
// errors (a full disk), abort the entry and return the error; the partial
// file is removed and readers following it get the error.
func (w *Writer) Write(p []byte) (int, error) {
	if w.fin {
		return 0, fmt.Errorf("NAR cache write %s: %w", w.e.hash, ErrAborted)
	}
	if w.n+int64(len(p)) > w.c.max {
		err := fmt.Errorf("NAR cache write %s: %w: more than %d bytes", w.e.hash, ErrTooLarge, w.c.max)
		w.Abort(err)
		return 0, err
	}
	if _, err := w.v.Write(p); err != nil {
		err = fmt.Errorf("NAR cache write %s: %w", w.e.hash, err)
		w.Abort(err)
		return 0, err
	}
	w.fh.Write(p)
	var err error
	if w.c.writeFault != nil {
		err = w.c.writeFault()
	}
	n := 0
	if err == nil {
		n, err = w.f.Write(p)
	}
	if err != nil {
		err = fmt.Errorf("NAR cache write %s: %w", w.e.hash, err)
		w.Abort(err)
		return n, err
	}
	w.n += int64(n)
	w.publish(w.n, false, nil)
	return n, nil
}

// Written is the number of bytes written so far.
func (w *Writer) Written() int64 { return w.n }

// Commit finishes the entry: it checks the verdict of the NarHash check,
// makes the NAR durable under its final name, then writes the narinfo the same
// way, and enters the path into the index and the inventory. On any failure
// the entry is aborted and the error (wrapping cache.ErrHashMismatch for bad
// bytes) returned; nothing of it stays on disk.
func (w *Writer) Commit() error {
	if w.fin {
		return fmt.Errorf("commit %s: %w", w.e.hash, ErrAborted)
	}
	c, e := w.c, w.e
	fail := func(err error) error {
		err = fmt.Errorf("commit %s: %w", w.info.StorePath, err)
		w.Abort(err)
		return err
	}
	w.vEnd = true
	if err := w.v.Close(); err != nil {
		return fail(err)
	}
	c.fsOp("sync", e.nar)
	if err := w.f.Sync(); err != nil {
		return fail(fmt.Errorf("sync: %w", err))
	}
	if err := w.f.Close(); err != nil {
		return fail(fmt.Errorf("close: %w", err))
	}

	info := w.info
	var sum cache.NarHash
	w.fh.Sum(sum[:0])
	fileHash := nixbase32.EncodeToString(sum[:])
	name := e.hash.String() + "-" + fileHash + ".nar" + w.ext
	info.URL = narDirName + "/" + name
	info.FileHash = "sha256:" + fileHash
	info.FileSize = uint64(w.n)
	text, err := info.MarshalText()
	if err != nil {
		return fail(err)
	}
	final := filepath.Join(c.narDir, name)

	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return fail(ErrClosed)
	}
	// Renamed under e.fmu: readers open e.nar under it. Until Abort or the
	// commit below, the path is pending, so final and the narinfo's name
	// are this entry's alone.
	e.fmu.Lock()
	c.fsOp("rename", e.nar)
	err = os.Rename(e.nar, final)
	if err == nil {
		c.mu.Lock()
		e.nar = final
		c.mu.Unlock()
	}
	e.fmu.Unlock()
	if err != nil {
		return fail(fmt.Errorf("rename NAR: %w", err))
	}
	c.fsOp("sync", c.narDir)
	if err := syncDir(c.narDir); err != nil {
		return fail(err)
	}
	c.fsOp("write", e.narinfo)
	if err := writeFileAtomic(c.dir, filepath.Base(e.narinfo), text); err != nil {
		// The rename may have happened before the failure.
		c.removeFile(e.narinfo, "remove narinfo")
		return fail(err)
	}

	w.fin = true
	c.mu.Lock()
	delete(c.pending, e.hash)
	c.reserved -= w.est
	e.w = nil
	e.info = &info
	e.size = w.n
	e.cost = cost(w.n, int64(len(text)))
	e.touched = c.now()
	e.file, e.hasFile = sum, true
	c.indexLocked(e)
	if c.inv != nil {
		c.inv.Add(e.hash)
	}
	victims := c.evictLocked()
	c.mu.Unlock()
	c.dispose(victims)
	w.publish(w.n, true, nil)
	c.log.Debug("committed", "hash", e.hash, "path", info.StorePath, "bytes", w.n)
	return nil
}

// Abort gives the entry up: the partial file is removed and readers following
// it get err (ErrAborted when nil). It is a no-op after Commit or Abort.
func (w *Writer) Abort(err error) {
	if w.fin {
		return
	}
	w.fin = true
	if err == nil {
		err = ErrAborted
	}
	if !w.vEnd {
		w.v.Abort()
	}
	w.f.Close()
	c, e := w.c, w.e
	// Removed while the path is still pending: after a failed Commit the
	// file may have its final name, which a new write of the path may take
	// as soon as the path is no longer pending. Readers that hold it open
	// keep reading; release deletes nothing of this entry.
	e.fmu.Lock()
	c.removeFile(e.nar, "remove partial NAR")
	e.fmu.Unlock()
	c.mu.Lock()
	delete(c.pending, e.hash)
	c.reserved -= w.est
	c.mu.Unlock()
	w.publish(w.n, true, err)
}

// publish tells followers of new bytes or of the end.
func (w *Writer) publish(n int64, done bool, err error) {
	w.mu.Lock()
	w.written, w.done, w.err = n, done, err
	if w.wake != nil {
		close(w.wake)
		w.wake = nil
	}
	w.mu.Unlock()
}

// progress returns how many bytes are readable, whether the write has ended,
// its error, and a channel closed at the next change.
func (w *Writer) progress() (n int64, done bool, err error, wake <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done && w.wake == nil {
		w.wake = make(chan struct{})
	}
	return w.written, w.done, w.err, w.wake
}

// writeFileAtomic writes dir/name durably: a temporary file in dir, fsync,
// rename, fsync of dir. Readers see the old file or the new one, never part.
func writeFileAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, tmpPrefix+name+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	err = d.Sync()
	d.Close()
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
