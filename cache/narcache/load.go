package narcache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/lancache/lancache/cache"
)

// load rebuilds the index from the directory. An entry is kept only if its
// narinfo parses, names the path its file name says, and points at a NAR in
// nar/ of exactly the size it states. Everything lancache may have left half
// done is removed: partial and temporary files, NARs no narinfo points at,
// narinfos whose NAR is missing or short. Files that are not lancache's
// business (other top-level files, subdirectories) are left alone.
func (c *Cache) load(ctx context.Context) error {
	if err := c.writeCacheInfo(); err != nil {
		return err
	}

	// Files in nar/: name -> size.
	narFiles := make(map[string]int64)
	des, err := os.ReadDir(c.narDir)
	if err != nil {
		return fmt.Errorf("read %s: %w", c.narDir, err)
	}
	var removedPartial, removedOrphans, removedNarinfos int
	for _, de := range des {
		name := de.Name()
		if strings.HasPrefix(name, partialPrefix) || strings.HasPrefix(name, evictedPrefix) {
			c.removeStale(filepath.Join(c.narDir, name))
			removedPartial++
			continue
		}
		if !de.Type().IsRegular() {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue // gone meanwhile
		}
		narFiles[name] = fi.Size()
	}

	des, err = os.ReadDir(c.dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", c.dir, err)
	}
	type loaded struct {
		e     *entry
		mtime time.Time
	}
	var found []loaded
	claimed := make(map[string]bool)
	for _, de := range des {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := de.Name()
		if strings.HasPrefix(name, tmpPrefix) {
			c.removeStale(filepath.Join(c.dir, name))
			removedPartial++
			continue
		}
		if !strings.HasSuffix(name, narinfoSuffix) || !de.Type().IsRegular() {
			continue
		}
		h, err := cache.ParseHash(strings.TrimSuffix(name, narinfoSuffix))
		if err != nil {
			continue // not one of ours
		}
		path := filepath.Join(c.dir, name)
		e, narName, mtime, err := c.loadEntry(h, path, narFiles)
		if err == nil && claimed[narName] {
			err = errors.New("its NAR file belongs to another narinfo")
		}
		if err != nil {
			c.log.Info("dropping incomplete cache entry", "narinfo", path, "reason", err)
			c.removeStale(path)
			removedNarinfos++
			continue
		}
		claimed[narName] = true
		found = append(found, loaded{e, mtime})
	}
	for name := range narFiles {
		if !claimed[name] {
			c.removeStale(filepath.Join(c.narDir, name))
			removedOrphans++
		}
	}

	// Oldest first, each pushed to the front: the most recent ends in front.
	sort.Slice(found, func(i, j int) bool { return found[i].mtime.Before(found[j].mtime) })
	hs := make([]cache.Hash, 0, len(found))
	c.mu.Lock()
	for _, l := range found {
		l.e.touched = l.mtime
		c.indexLocked(l.e)
		hs = append(hs, l.e.hash)
	}
	c.mu.Unlock()
	if c.inv != nil && len(hs) > 0 {
		c.inv.Add(hs...)
	}
	c.mu.Lock()
	victims := c.evictLocked()
	c.mu.Unlock()
	c.dispose(victims)
	c.log.Info("NAR cache opened", "dir", c.dir, "entries", len(c.entries), "bytes", c.used, "max", c.max,
		"evicted", len(victims), "removed_partial", removedPartial, "removed_orphans", removedOrphans,
		"removed_narinfos", removedNarinfos)
	return nil
}

// loadEntry reads and checks one narinfo. It returns the entry, the name of
// its NAR file in nar/ and the narinfo's mtime (the entry's recency).
func (c *Cache) loadEntry(h cache.Hash, path string, narFiles map[string]int64) (*entry, string, time.Time, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", time.Time{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, "", time.Time{}, err
	}
	if fi.Size() > cache.MaxNarInfoSize {
		return nil, "", time.Time{}, fmt.Errorf("%d bytes is too large for a narinfo", fi.Size())
	}
	info, err := cache.ParseNarInfo(f)
	if err != nil {
		return nil, "", time.Time{}, err
	}
	ih, err := info.Hash()
	if err != nil {
		return nil, "", time.Time{}, err
	}
	if ih != h {
		return nil, "", time.Time{}, fmt.Errorf("store path %s does not match the file name", info.StorePath)
	}
	if !strings.HasPrefix(info.StorePath, cache.StoreDir+"/") {
		return nil, "", time.Time{}, fmt.Errorf("store path %s is not in %s", info.StorePath, cache.StoreDir)
	}
	if _, err := cache.CompressionExt(info.Compression); err != nil {
		return nil, "", time.Time{}, err
	}
	narName, ok := strings.CutPrefix(info.URL, narDirName+"/")
	if !ok || narName == "" || strings.ContainsAny(narName, "/?") || strings.HasPrefix(narName, ".") {
		return nil, "", time.Time{}, fmt.Errorf("URL %q is not a file in %s/", info.URL, narDirName)
	}
	want := cache.FileSize(info)
	if want <= 0 {
		return nil, "", time.Time{}, errors.New("no FileSize for a compressed NAR")
	}
	size, ok := narFiles[narName]
	if !ok {
		return nil, "", time.Time{}, fmt.Errorf("NAR %s is missing", info.URL)
	}
	if size != want {
		return nil, "", time.Time{}, fmt.Errorf("NAR %s has %d bytes, narinfo says %d", info.URL, size, want)
	}
	info.Compression = cache.NormCompression(info.Compression)
	if info.FileSize == 0 {
		info.FileSize = uint64(want)
	}
	e := &entry{
		hash:    h,
		info:    info,
		nar:     filepath.Join(c.narDir, narName),
		narinfo: path,
		size:    size,
		cost:    cost(size, fi.Size()),
	}
	e.file, e.hasFile = fileHashOf(info)
	return e, narName, fi.ModTime(), nil
}

// writeCacheInfo creates nix-cache-info if it is missing, and refuses a
// directory that is a cache of another store directory.
func (c *Cache) writeCacheInfo() error {
	data, err := os.ReadFile(filepath.Join(c.dir, cacheInfoName))
	if errors.Is(err, fs.ErrNotExist) {
		return writeFileAtomic(c.dir, cacheInfoName, []byte(cacheInfo))
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", cacheInfoName, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "StoreDir: "); ok && strings.TrimSpace(v) != cache.StoreDir {
			return fmt.Errorf("%s says StoreDir %q; lancache serves only %s", cacheInfoName, v, cache.StoreDir)
		}
	}
	return nil
}

func (c *Cache) removeStale(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.log.Warn("remove stale file", "file", path, "err", err)
	}
}
