package narcache

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/lancache/lancache/cache"
)

// File names inside the cache directory. Names starting with a dot are
// lancache's own and never part of the binary-cache layout.
const (
	narDirName    = "nar"
	partialPrefix = ".partial-" // NAR being written (nar/)
	evictedPrefix = ".evicted-" // evicted NAR still being read (nar/)
	tmpPrefix     = ".tmp-"     // narinfo or nix-cache-info being written
	lockName      = ".lock"
	cacheInfoName = "nix-cache-info"
	narinfoSuffix = ".narinfo"

	// blockSize rounds every file up in the usage accounting, so that Usage
	// is close to what du reports for many small files.
	blockSize = 4096

	// touchInterval bounds how often an entry's recency is written to disk
	// (as its narinfo's mtime): often enough to order entries after a
	// restart, rare enough to cost nothing on hot paths.
	touchInterval = time.Minute
)

// cacheInfo is the nix-cache-info the directory gets. Priority 30 is what
// Nix's own local binary caches use: below cache.nixos.org's 40.
const cacheInfo = "StoreDir: " + cache.StoreDir + "\nWantMassQuery: 1\nPriority: 30\n"

// Errors of Begin and Writer.
var (
	// ErrExists means the path is already committed.
	ErrExists = errors.New("already in the NAR cache")
	// ErrBusy means the path is being written by another Writer; read it
	// with WriteNAR, which follows the write.
	ErrBusy = errors.New("already being written to the NAR cache")
	// ErrTooLarge means the file cannot fit in the cache at all.
	ErrTooLarge = errors.New("larger than the NAR cache")
	// ErrClosed means the Cache was closed.
	ErrClosed = errors.New("NAR cache closed")
	// ErrAborted is what readers of an entry get when its write was given up
	// without a more specific reason.
	ErrAborted = errors.New("NAR cache write aborted")
)

// Config configures a Cache.
type Config struct {
	// Dir is the cache directory (--cache-dir). It is created if missing.
	Dir string
	// MaxSize bounds the bytes the cache keeps (--cache-max-size; see
	// ParseSize). Zero means DefaultMaxSize.
	MaxSize int64
	// Logger receives start-up and eviction events; nil discards them.
	Logger *slog.Logger
	// Inventory, if set, is told of every entry committed (Add) and every
	// entry removed (Remove), so that peers see the cache's contents.
	Inventory *cache.Inventory
}

// Cache is an on-disk NAR cache. It implements cache.Source for what it has
// committed, and lets WriteNAR follow entries still being written. It is safe
// for concurrent use.
type Cache struct {
	dir    string
	narDir string
	max    int64
	log    *slog.Logger
	inv    *cache.Inventory
	dec    *cache.Decompressors // for the verifiers of writes
	unlock func() error

	// Test hooks.
	now        func() time.Time
	writeFault func() error
	fsHook     func(op, path string) // called before each file-system operation

	// mu guards the index. It is never held across file I/O, so that
	// lookups, answered from memory, do not wait for a slow disk.
	mu       sync.Mutex
	closed   bool
	entries  map[cache.Hash]*entry    // committed
	byFile   map[cache.NarHash]*entry // committed, by the sha256 of their file
	pending  map[cache.Hash]*entry    // being written
	lru      list.List                // committed entries, most recently used first
	used     int64                    // accounted bytes of committed entries
	reserved int64                    // bytes reserved by pending writes
	// leaving holds the paths of entries taken out of the index whose files
	// are still being removed. Their names (the narinfo's, the NAR's) are
	// not free until then: Begin refuses these paths with ErrBusy.
	leaving map[cache.Hash]bool
}

// entry is one path of the cache, committed or pending. Fields are guarded by
// Cache.mu, except as noted.
type entry struct {
	hash    cache.Hash
	info    *cache.NarInfo // as on disk once committed; as given to Begin while pending
	narinfo string         // path of the narinfo file
	size    int64          // file bytes, once committed
	cost    int64          // bytes accounted in Cache.used
	elem    *list.Element  // in Cache.lru, once committed
	w       *Writer        // non-nil while pending
	refs    int            // readers holding the NAR file open
	touched time.Time      // recency last written to disk
	file    cache.NarHash  // sha256 of the file, once committed
	hasFile bool           // file is known: always, but for a compressed entry whose narinfo on disk had no FileHash

	// fmu serializes what changes or uses the name of the NAR file: opening,
	// renaming, removing. It is taken before Cache.mu, never under it.
	fmu sync.Mutex
	// nar is the current path of the NAR file (partial, final or evicted
	// name). Changed under fmu and Cache.mu; read under either.
	nar string
	// trash is the NAR file of an entry evicted while it was read, moved
	// aside to a name of its own: the last reader deletes it. A reader
	// deletes no other file, since any other name may be a newer entry's.
	trash string
}

// Open opens or creates the cache in cfg.Dir, rebuilds the index from disk
// and removes partial files, orphaned NARs and narinfos without a complete
// NAR. It does not re-hash NARs: sizes are checked against narinfos, whose
// contents were verified before they were written. Close releases it.
func Open(ctx context.Context, cfg Config) (*Cache, error) {
	if cfg.Dir == "" {
		return nil, errors.New("open NAR cache: no directory")
	}
	if cfg.MaxSize < 0 {
		return nil, fmt.Errorf("open NAR cache: negative max size %d", cfg.MaxSize)
	}
	if cfg.MaxSize == 0 {
		cfg.MaxSize = DefaultMaxSize
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("open NAR cache: %w", err)
	}
	c := &Cache{
		dir:     dir,
		narDir:  filepath.Join(dir, narDirName),
		max:     cfg.MaxSize,
		log:     log.With("component", "narcache"),
		inv:     cfg.Inventory,
		dec:     new(cache.Decompressors),
		now:     time.Now,
		entries: make(map[cache.Hash]*entry),
		byFile:  make(map[cache.NarHash]*entry),
		pending: make(map[cache.Hash]*entry),
		leaving: make(map[cache.Hash]bool),
	}
	if err := os.MkdirAll(c.narDir, 0o755); err != nil {
		return nil, fmt.Errorf("open NAR cache: %w", err)
	}
	c.unlock, err = lockDir(filepath.Join(dir, lockName))
	if err != nil {
		return nil, fmt.Errorf("open NAR cache: %w", err)
	}
	if err := c.load(ctx); err != nil {
		c.unlock()
		return nil, fmt.Errorf("open NAR cache %s: %w", dir, err)
	}
	return c, nil
}

// Close releases the directory lock. Writers not yet committed fail to
// commit; readers already streaming finish.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	return c.unlock()
}

// Dir is the cache directory.
func (c *Cache) Dir() string { return c.dir }

// MaxSize is the size bound in bytes.
func (c *Cache) MaxSize() int64 { return c.max }

// Usage is the number of bytes the committed entries take, each file rounded
// up to 4 KiB. Files of entries being written, or evicted while still being
// read, come on top until they are committed or deleted.
func (c *Cache) Usage() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}

// Len is the number of committed entries.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// Has reports whether h is committed. It does not count as a use.
func (c *Cache) Has(h cache.Hash) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.entries[h] != nil
}

// Hashes returns the hashes of all committed entries.
func (c *Cache) Hashes() []cache.Hash {
	c.mu.Lock()
	defer c.mu.Unlock()
	hs := make([]cache.Hash, 0, len(c.entries))
	for h := range c.entries {
		hs = append(hs, h)
	}
	return hs
}

// NarInfo returns the narinfo of a committed entry, as in the directory: URL
// "nar/<file>", the upstream's Compression, FileHash and FileSize of the file
// on disk, and the signed fields unchanged. It answers from memory and counts
// as a use. The result is the caller's to change (References and Sigs are
// shared and must not be modified in place).
func (c *Cache) NarInfo(ctx context.Context, h cache.Hash) (*cache.NarInfo, error) {
	c.mu.Lock()
	e := c.entries[h]
	if e == nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("narinfo %s: %w", h, cache.ErrNotFound)
	}
	info := *e.info
	persist := c.touchLocked(e)
	c.mu.Unlock()
	c.persistTouch(persist)
	return &info, nil
}

// The handler finds files in Nix's URL layout through it.
var _ cache.FileFinder = (*Cache)(nil)

// NarInfoByFile returns the narinfo of the committed entry whose file has the
// sha256 fileHash, as NarInfo does, so that a NAR URL in Nix's layout
// (nar/<filehash>.nar[.ext], as in upstream's narinfos) can be answered; it
// implements cache.FileFinder. It does not count as a use: serving the file
// does.
func (c *Cache) NarInfoByFile(ctx context.Context, fileHash cache.NarHash) (*cache.NarInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.byFile[fileHash]
	if e == nil {
		return nil, fmt.Errorf("NAR file %s: %w", fileHash, cache.ErrNotFound)
	}
	info := *e.info
	return &info, nil
}

// indexLocked enters a committed entry into the index (entries, byFile, the
// LRU list and the usage) as the most recently used.
func (c *Cache) indexLocked(e *entry) {
	e.elem = c.lru.PushFront(e)
	c.entries[e.hash] = e
	c.used += e.cost
	if e.hasFile {
		// Two paths with the same contents share a file hash, and their
		// files are the same bytes: either serves.
		c.byFile[e.file] = e
	}
}

// fileHashOf is the sha256 of the file info describes, if info says.
func fileHashOf(info *cache.NarInfo) (cache.NarHash, bool) {
	fh, _ := info.FileFields()
	h, err := cache.ParseNarHash(fh)
	return h, err == nil
}

// WriteNAR writes bytes [offset, offset+length) of the file of info's path
// (length < 0: to the end) to w. The entry must hold the same NAR in the same
// compression as info (the URL may differ); otherwise, and when the path is
// not here, it returns cache.ErrNotFound before writing anything.
//
// An entry still being written is followed: WriteNAR writes what is there
// and waits for more until the write commits (nil), fails (its error, which
// wraps cache.ErrHashMismatch when the bytes were bad) or ctx ends. The
// file's last byte is written only once the write committed, so a follower
// of a write that fails never gets the whole file. Bytes served from a
// committed entry were verified before they were committed.
//
// When w is an *os.File's peer such as a TCP connection or an
// http.ResponseWriter, the copy goes through sendfile.
func (c *Cache) WriteNAR(ctx context.Context, w io.Writer, info *cache.NarInfo, offset, length int64) error {
	h, err := info.Hash()
	if err != nil {
		return fmt.Errorf("NAR of %q: %w: %w", info.StorePath, cache.ErrNotFound, err)
	}
	if offset < 0 {
		return fmt.Errorf("NAR %s: negative offset %d", h, offset)
	}
	c.mu.Lock()
	e := c.entries[h]
	if e == nil {
		e = c.pending[h]
	}
	if e == nil || !sameFile(e.info, info) {
		c.mu.Unlock()
		return fmt.Errorf("NAR %s: %w", h, cache.ErrNotFound)
	}
	// The reference keeps the file from being deleted (an eviction moves it
	// aside instead) until release.
	e.refs++
	wr, size := e.w, e.size
	persist := c.touchLocked(e)
	c.mu.Unlock()
	c.persistTouch(persist)

	e.fmu.Lock()
	c.fsOp("open", e.nar)
	f, err := os.Open(e.nar)
	e.fmu.Unlock()
	if err != nil {
		c.release(e)
		if wr == nil && errors.Is(err, fs.ErrNotExist) {
			// Someone removed the file behind our back: forget the entry.
			c.mu.Lock()
			var victims []*entry
			if c.entries[h] == e {
				c.unindexLocked(e)
				victims = []*entry{e}
			}
			c.mu.Unlock()
			c.dispose(victims)
			c.log.Warn("NAR file missing; entry dropped", "hash", h, "err", err)
		}
		// A pending entry's file is missing when its write was given up.
		return fmt.Errorf("NAR %s: %w: %w", h, cache.ErrNotFound, err)
	}
	defer c.release(e)
	defer f.Close()

	if wr == nil {
		// Committed: the size is known; refuse a bad range before writing.
		if offset > size || (length >= 0 && offset+length > size) {
			return fmt.Errorf("NAR %s: range %d+%d beyond the file's %d bytes", h, offset, length, size)
		}
	}
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			return fmt.Errorf("NAR %s: %w", h, err)
		}
	}
	end := int64(-1)
	if length >= 0 {
		end = offset + length
	}
	pos := offset
	for {
		avail, done, werr, wake := size, true, error(nil), (<-chan struct{})(nil)
		if wr != nil {
			avail, done, werr, wake = wr.progress()
		}
		if werr != nil {
			return fmt.Errorf("NAR %s: %w", h, werr)
		}
		if !done && avail > 0 {
			// The last byte written waits for the NarHash verdict: a
			// follower must never receive the whole file of a write that
			// then fails, or its client would see a complete response of
			// bad bytes.
			avail--
		}
		if end >= 0 && avail > end {
			avail = end
		}
		if pos < avail {
			n, err := io.CopyN(w, f, avail-pos)
			pos += n
			if err != nil {
				return fmt.Errorf("NAR %s at byte %d: %w", h, pos, err)
			}
			continue
		}
		if pos == end {
			return nil
		}
		if done {
			if end >= 0 && pos < end {
				return fmt.Errorf("NAR %s: range ends at %d, beyond the file's %d bytes", h, end, pos)
			}
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("NAR %s: %w", h, ctx.Err())
		}
	}
}

// sameFile reports whether a and b describe the same file: the same NAR in
// the same compression.
func sameFile(a, b *cache.NarInfo) bool {
	return a.NarHash == b.NarHash && a.NarSize == b.NarSize && cache.NormCompression(a.Compression) == cache.NormCompression(b.Compression)
}

// release drops a reader's reference. The last reader of an entry evicted
// while it was read deletes the file moved aside for it.
func (c *Cache) release(e *entry) {
	c.mu.Lock()
	e.refs--
	var trash string
	if e.refs == 0 {
		trash, e.trash = e.trash, ""
	}
	c.mu.Unlock()
	if trash != "" {
		c.removeFile(trash, "delete evicted NAR")
	}
}

// touchLocked marks e most recently used and reports the narinfo whose mtime
// should be updated, if it is time to persist.
func (c *Cache) touchLocked(e *entry) string {
	if e.elem == nil {
		return "" // pending
	}
	c.lru.MoveToFront(e.elem)
	now := c.now()
	if now.Sub(e.touched) < touchInterval {
		return ""
	}
	e.touched = now
	return e.narinfo
}

// persistTouch records recency on disk: the narinfo's mtime, which Open
// orders entries by. No fsync: losing the last minutes of recency in a crash
// costs nothing but a slightly different eviction order.
func (c *Cache) persistTouch(narinfo string) {
	if narinfo == "" {
		return
	}
	now := c.now()
	c.fsOp("chtimes", narinfo)
	if err := os.Chtimes(narinfo, now, now); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.log.Debug("persist recency", "file", narinfo, "err", err)
	}
}

// evictLocked takes least recently used entries out of the index until the
// committed bytes plus the reservations of pending writes fit in MaxSize. It
// returns them for dispose, to be called once the lock is released.
func (c *Cache) evictLocked() []*entry {
	var victims []*entry
	for c.used+c.reserved > c.max {
		back := c.lru.Back()
		if back == nil {
			break
		}
		e := back.Value.(*entry)
		c.log.Debug("evict", "hash", e.hash, "bytes", e.size)
		c.unindexLocked(e)
		victims = append(victims, e)
	}
	return victims
}

// unindexLocked takes a committed entry out of the index and the inventory.
// Its files stay until dispose removes them; until then its path is leaving.
func (c *Cache) unindexLocked(e *entry) {
	c.lru.Remove(e.elem)
	e.elem = nil
	delete(c.entries, e.hash)
	if e.hasFile && c.byFile[e.file] == e {
		delete(c.byFile, e.file)
	}
	c.used -= e.cost
	c.leaving[e.hash] = true
	if c.inv != nil {
		c.inv.Remove(e.hash)
	}
}

// dispose removes the files of entries unindexLocked took out of the index,
// without holding the lock. The narinfo goes first, so that the entry stops
// existing on disk even if the process dies now. The NAR is deleted, or, if
// readers hold it, moved aside to a name of its own for the last of them to
// delete: its name is free for a new commit of the same path at once. Only
// then is the path no longer leaving.
func (c *Cache) dispose(victims []*entry) {
	for _, e := range victims {
		c.removeFile(e.narinfo, "remove narinfo")
		e.fmu.Lock()
		c.mu.Lock()
		read := e.refs > 0
		c.mu.Unlock()
		del := e.nar
		if read {
			aside, err := c.moveAside(e)
			c.mu.Lock()
			if err == nil {
				e.nar = aside
				if e.refs > 0 {
					e.trash, del = aside, ""
				} else {
					del = aside // the readers left meanwhile
				}
			}
			c.mu.Unlock()
			if err != nil {
				// Deleted now, while the name is still this entry's: its
				// readers have it open and keep reading.
				c.log.Warn("move evicted NAR aside", "file", e.nar, "err", err)
			}
		}
		if del != "" {
			c.removeFile(del, "delete evicted NAR")
		}
		e.fmu.Unlock()
		c.mu.Lock()
		delete(c.leaving, e.hash)
		c.mu.Unlock()
	}
}

// moveAside renames e's NAR to a new name of its own. Called under e.fmu.
func (c *Cache) moveAside(e *entry) (string, error) {
	c.fsOp("create", c.narDir)
	trash, err := os.CreateTemp(c.narDir, evictedPrefix+e.hash.String()+"-*")
	if err != nil {
		return "", err
	}
	trash.Close()
	c.fsOp("rename", e.nar)
	if err := os.Rename(e.nar, trash.Name()); err != nil {
		os.Remove(trash.Name())
		return "", err
	}
	return trash.Name(), nil
}

// removeFile deletes path; what says what for the log if that fails.
func (c *Cache) removeFile(path, what string) {
	c.fsOp("remove", path)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.log.Warn(what, "file", path, "err", err)
	}
}

// fsOp calls the test hook before a file-system operation.
func (c *Cache) fsOp(op, path string) {
	if c.fsHook != nil {
		c.fsHook(op, path)
	}
}

// cost is what a committed entry counts against MaxSize.
func cost(narSize, narinfoSize int64) int64 {
	return roundUp(narSize) + roundUp(narinfoSize)
}

func roundUp(n int64) int64 { return (n + blockSize - 1) / blockSize * blockSize }
