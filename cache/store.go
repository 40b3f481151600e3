package cache

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"modernc.org/sqlite" // pure-Go SQLite driver "sqlite"
)

// ErrNoStore means the store root has no Nix database: the machine has no Nix
// (an appliance) and the node serves no local store.
var ErrNoStore = errors.New("no Nix store")

// StoreConfig configures a Store.
type StoreConfig struct {
	// Root holds nix/store and nix/var/nix/db ("/" for the system store, a
	// directory for a chroot store as made by `nix --store DIR`).
	Root string
	// Policy decides which paths are offered (HTTP and inventory).
	Policy Policy
	// Inventory receives the hashes of shared paths as they come and go.
	// Optional.
	Inventory *Inventory
	// PollInterval is how often the DB is checked for changes (default 1s).
	PollInterval time.Duration
	Logger       *slog.Logger
}

// Store reads a Nix store: its SQLite database (read-only) for path metadata
// and the store directory for NAR dumps. It keeps an in-memory index of the
// valid paths so that a miss costs no I/O, and follows registrations and
// garbage collection incrementally.
type Store struct {
	cfg      StoreConfig
	dbPath   string
	storeDir string // Root/nix/store
	log      *slog.Logger
	// immutable: the database is read as a snapshot (see openDB) and
	// reopened when it changes, because it has no -wal/-shm files and we
	// may not create them.
	immutable atomic.Bool
	// queries counts the SQL statements run: what a change costs.
	queries atomic.Int64

	// dbMu guards db. Every use of the handle holds it for reading (see
	// useDB), so swap and Close, which hold it for writing, never close a
	// handle under a lookup.
	dbMu sync.RWMutex
	db   *sql.DB // nil once closed

	mu     sync.RWMutex
	byHash map[Hash]storeEntry
	byID   map[int64]Hash
	maxID  int64
	shared int // entries of byHash with shared set
	// rejected: for unshared rows whose signatures name a trusted key but
	// did not pass the policy, a hash of their sigs column. They are looked
	// up again only when it changes.
	rejected map[int64]uint64
}

type storeEntry struct {
	id     int64
	base   string // <hash>-<name>
	shared bool
}

// OpenStore opens the store under cfg.Root and loads its index. It returns
// an error wrapping ErrNoStore when there is no Nix database there, and a
// clear error naming the file when the database cannot be read.
func OpenStore(ctx context.Context, cfg StoreConfig) (*Store, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	s := &Store{
		cfg:      cfg,
		dbPath:   filepath.Join(cfg.Root, "nix", "var", "nix", "db", "db.sqlite"),
		storeDir: filepath.Join(cfg.Root, "nix", "store"),
		log:      cfg.Logger,
		byHash:   make(map[Hash]storeEntry),
		byID:     make(map[int64]Hash),
		rejected: make(map[int64]uint64),
	}
	if _, err := os.Stat(s.dbPath); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w at %s (no %s)", ErrNoStore, cfg.Root, s.dbPath)
		}
		return nil, fmt.Errorf("open Nix database %s: %w", s.dbPath, err)
	}
	db, err := s.openDB(ctx, false)
	if err != nil && isReadOnlyErr(err) && !exists(s.dbPath+"-wal") {
		// A WAL-mode database that no Nix process has open has no -wal and
		// -shm files, and a reader without write access to the directory
		// cannot create them. Everything is in the main file then, so an
		// immutable snapshot is exact until Nix writes again.
		db, err = s.openDB(ctx, true)
		if err == nil {
			s.immutable.Store(true)
			s.log.Info("reading the Nix database as a snapshot until Nix opens it (no -wal file, and no write access to create one)", "db", s.dbPath)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read Nix database %s: %w (lancache needs read access to it and its directory, and to its -wal/-shm files when present)", s.dbPath, err)
	}
	s.db = db
	start := time.Now()
	if err := s.load(ctx, 0); err != nil {
		s.Close()
		return nil, fmt.Errorf("read Nix database %s: %w", s.dbPath, err)
	}
	s.log.Info("local store indexed", "root", cfg.Root, "paths", len(s.byHash),
		"shared", s.sharedCount(), "share", cfg.Policy.Mode, "took", time.Since(start).Round(time.Millisecond))
	return s, nil
}

// openDB opens the database read-only and checks that it can be read.
// With immutable, SQLite takes no locks and ignores any WAL: only exact
// while no -wal file exists.
func (s *Store) openDB(ctx context.Context, immutable bool) (*sql.DB, error) {
	// busy_timeout rides out Nix's short write locks.
	dsn := "file:" + (&url.URL{Path: s.dbPath}).EscapedPath() +
		"?mode=ro&_pragma=busy_timeout(10000)&_pragma=query_only(1)"
	if immutable {
		dsn += "&immutable=1"
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(4)
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM ValidPaths`).Scan(&n); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// isReadOnlyErr reports SQLite's SQLITE_READONLY and SQLITE_CANTOPEN
// families: what opening a WAL database without its -shm file gives.
func isReadOnlyErr(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	code := se.Code() & 0xff
	return code == 8 || code == 14
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// errStoreClosed is what a lookup on a closed Store returns.
var errStoreClosed = errors.New("store closed")

// useDB runs fn with the current database handle, which is neither swapped
// out nor closed until fn returns. fn must not call useDB again.
func (s *Store) useDB(fn func(*sql.DB) error) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if s.db == nil {
		return errStoreClosed
	}
	return fn(s.db)
}

// query and queryRow run one statement on db, counted in s.queries.
func (s *Store) query(ctx context.Context, db *sql.DB, q string, args ...any) (*sql.Rows, error) {
	s.queries.Add(1)
	return db.QueryContext(ctx, q, args...)
}

func (s *Store) queryRow(ctx context.Context, db *sql.DB, q string, args ...any) *sql.Row {
	s.queries.Add(1)
	return db.QueryRowContext(ctx, q, args...)
}

// Close releases the database, after the lookups under way.
func (s *Store) Close() error {
	s.dbMu.Lock()
	db := s.db
	s.db = nil
	s.dbMu.Unlock()
	if db == nil {
		return nil
	}
	return db.Close()
}

// Root is the store root this Store reads.
func (s *Store) Root() string { return s.cfg.Root }

func (s *Store) sharedCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.shared
}

// putLocked indexes e as the entry of h, replacing any older row of the same
// path (deleted and registered again between two polls), and reports how
// the path's visibility to peers changed.
func (s *Store) putLocked(h Hash, e storeEntry) (nowShared, noLongerShared bool) {
	prev, had := s.byHash[h]
	s.byHash[h] = e
	s.byID[e.id] = h
	if had && prev.id != e.id {
		delete(s.byID, prev.id)
		delete(s.rejected, prev.id)
	}
	if e.shared {
		delete(s.rejected, e.id)
	}
	wasShared := had && prev.shared
	switch {
	case e.shared && !wasShared:
		s.shared++
		return true, false
	case !e.shared && wasShared:
		s.shared--
		return false, true
	}
	return false, false
}

// dropLocked removes the row id of h; it reports whether h was shared.
func (s *Store) dropLocked(id int64, h Hash) (wasShared bool) {
	delete(s.byID, id)
	delete(s.rejected, id)
	e, ok := s.byHash[h]
	if !ok || e.id != id {
		return false // h is indexed under a newer row
	}
	delete(s.byHash, h)
	if e.shared {
		s.shared--
	}
	return e.shared
}

// pathRow is one ValidPaths row with its references.
type pathRow struct {
	id      int64
	path    string
	hash    string
	narSize sql.NullInt64
	deriver sql.NullString
	sigs    sql.NullString
	ca      sql.NullString
	refs    []string
}

const pathCols = `id, path, hash, narSize, deriver, sigs, ca`

func scanRow(sc interface{ Scan(...any) error }) (*pathRow, error) {
	r := &pathRow{}
	err := sc.Scan(&r.id, &r.path, &r.hash, &r.narSize, &r.deriver, &r.sigs, &r.ca)
	return r, err
}

// load indexes every valid path with id > after.
func (s *Store) load(ctx context.Context, after int64) error {
	var list []*pathRow
	if err := s.useDB(func(db *sql.DB) (err error) {
		list, err = s.readRows(ctx, db, after)
		return err
	}); err != nil {
		return err
	}
	if len(list) == 0 {
		return nil
	}
	var added, removed []Hash
	s.mu.Lock()
	for _, r := range list {
		h, _, err := SplitStorePath(r.path)
		if err != nil || !strings.HasPrefix(r.path, StoreDir+"/") {
			continue // not a path we can serve under /nix/store
		}
		e := storeEntry{id: r.id, base: strings.TrimPrefix(r.path, StoreDir+"/")}
		if s.cfg.Policy.Mode != ShareNone {
			if info, err := r.narInfo(); err == nil {
				e.shared = s.cfg.Policy.Shares(info)
			}
		}
		switch in, out := s.putLocked(h, e); {
		case in:
			added = append(added, h)
		case out:
			removed = append(removed, h)
		}
		if !e.shared && s.cfg.Policy.Mode != ShareNone && s.cfg.Policy.namesKey(r.sigs.String) {
			s.rejected[r.id] = xxhash.Sum64String(r.sigs.String)
		}
		if r.id > s.maxID {
			s.maxID = r.id
		}
	}
	s.mu.Unlock()
	if s.cfg.Inventory != nil {
		if len(added) > 0 {
			s.cfg.Inventory.Add(added...)
		}
		if len(removed) > 0 {
			s.cfg.Inventory.Remove(removed...)
		}
	}
	return nil
}

// readRows reads the rows with id > after, with their references when the
// policy needs them.
func (s *Store) readRows(ctx context.Context, db *sql.DB, after int64) ([]*pathRow, error) {
	rows, err := s.query(ctx, db, `SELECT `+pathCols+` FROM ValidPaths WHERE id > ? ORDER BY id`, after)
	if err != nil {
		return nil, err
	}
	var list []*pathRow
	byID := make(map[int64]*pathRow)
	for rows.Next() {
		r, err := scanRow(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		list = append(list, r)
		byID[r.id] = r
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, nil
	}
	// References are only needed to check signatures.
	if s.cfg.Policy.Mode == ShareSigned || s.cfg.Policy.Mode == "" {
		refs, err := s.query(ctx, db, `SELECT r.referrer, v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference WHERE r.referrer > ?`, after)
		if err != nil {
			return nil, err
		}
		for refs.Next() {
			var id int64
			var p string
			if err := refs.Scan(&id, &p); err != nil {
				refs.Close()
				return nil, err
			}
			if r := byID[id]; r != nil {
				r.refs = append(r.refs, p)
			}
		}
		refs.Close()
		if err := refs.Err(); err != nil {
			return nil, err
		}
	}
	return list, nil
}

// narInfo converts a DB row to a narinfo (URL and compression left empty).
func (r *pathRow) narInfo() (*NarInfo, error) {
	nh, err := ParseNarHash(r.hash)
	if err != nil {
		return nil, err
	}
	info := &NarInfo{
		StorePath: r.path,
		NarHash:   nh,
		NarSize:   uint64(r.narSize.Int64),
		CA:        r.ca.String,
	}
	for _, p := range r.refs {
		info.References = append(info.References, strings.TrimPrefix(p, StoreDir+"/"))
	}
	sort.Strings(info.References)
	if r.deriver.Valid && r.deriver.String != "" {
		info.Deriver = strings.TrimPrefix(r.deriver.String, StoreDir+"/")
	}
	if r.sigs.Valid {
		info.Sigs = strings.Fields(r.sigs.String)
	}
	return info, nil
}

// Run follows the database until ctx is done: new registrations are added by
// id, garbage-collected paths are found by an id-only scan when the row count
// shows deletions, and signatures added later to unshared paths are
// re-checked.
func (s *Store) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		if s.immutable.Load() {
			s.followSnapshot(ctx)
			continue
		}
		return s.followWAL(ctx)
	}
	return nil
}

// followWAL watches PRAGMA data_version, which changes when another
// connection commits.
func (s *Store) followWAL(ctx context.Context) error {
	// A database followed live is never swapped (see followSnapshot).
	var conn *sql.Conn
	err := s.useDB(func(db *sql.DB) (err error) {
		conn, err = db.Conn(ctx)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("watch %s: %w", s.dbPath, err)
	}
	defer conn.Close()
	version := int64(-1)
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		var v int64
		if err := conn.QueryRowContext(ctx, `PRAGMA data_version`).Scan(&v); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("watching Nix database failed; retrying", "db", s.dbPath, "err", err)
			continue
		}
		if v == version {
			continue
		}
		version = v
		if err := s.refresh(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("refreshing store index failed; retrying", "db", s.dbPath, "err", err)
			version = -1
		}
	}
}

// followSnapshot re-reads a database opened as an immutable snapshot when
// its file changes, and returns once a -wal file appears and the database
// can be followed normally (or ctx is done).
func (s *Store) followSnapshot(ctx context.Context) {
	stamp := func() (int64, time.Time) {
		fi, err := os.Stat(s.dbPath)
		if err != nil {
			return -1, time.Time{}
		}
		return fi.Size(), fi.ModTime()
	}
	size, mtime := stamp()
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if exists(s.dbPath + "-wal") {
			if db, err := s.openDB(ctx, false); err == nil {
				s.swap(db)
				s.immutable.Store(false)
				s.log.Info("Nix opened its database: following it live", "db", s.dbPath)
				if err := s.refresh(ctx); err != nil && ctx.Err() == nil {
					s.log.Warn("refreshing store index failed; retrying", "db", s.dbPath, "err", err)
				}
				return
			}
		}
		if sz, mt := stamp(); sz != size || !mt.Equal(mtime) {
			db, err := s.openDB(ctx, true)
			if err != nil {
				continue // mid-write: try again next tick
			}
			size, mtime = sz, mt
			s.swap(db)
			if err := s.refresh(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("refreshing store index failed; retrying", "db", s.dbPath, "err", err)
			}
		}
	}
}

// swap replaces the database handle once the lookups under way on the old
// one have finished, and closes the old one.
func (s *Store) swap(db *sql.DB) {
	s.dbMu.Lock()
	old := s.db
	if old != nil {
		s.db = db
	}
	s.dbMu.Unlock()
	if old == nil { // closed meanwhile
		db.Close()
		return
	}
	old.Close()
}

// refresh brings the index up to date with the database.
func (s *Store) refresh(ctx context.Context) error {
	s.mu.RLock()
	maxID := s.maxID
	s.mu.RUnlock()
	if err := s.load(ctx, maxID); err != nil {
		return err
	}
	var count int
	if err := s.useDB(func(db *sql.DB) error {
		return s.queryRow(ctx, db, `SELECT count(*) FROM ValidPaths`).Scan(&count)
	}); err != nil {
		return err
	}
	s.mu.RLock()
	known := len(s.byID)
	s.mu.RUnlock()
	if count != known {
		if err := s.sweepDeleted(ctx); err != nil {
			return err
		}
	}
	return s.recheckUnshared(ctx)
}

// sweepDeleted drops paths that are no longer valid (garbage collected).
func (s *Store) sweepDeleted(ctx context.Context) error {
	s.mu.RLock()
	live := make(map[int64]struct{}, len(s.byID))
	s.mu.RUnlock()
	if err := s.useDB(func(db *sql.DB) error {
		rows, err := s.query(ctx, db, `SELECT id FROM ValidPaths`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return err
			}
			live[id] = struct{}{}
		}
		return rows.Err()
	}); err != nil {
		return err
	}
	var removed []Hash
	s.mu.Lock()
	for id, h := range s.byID {
		if _, ok := live[id]; ok {
			continue
		}
		if s.dropLocked(id, h) {
			removed = append(removed, h)
		}
	}
	s.mu.Unlock()
	if len(removed) > 0 {
		s.log.Info("store paths removed", "count", len(removed))
		if s.cfg.Inventory != nil {
			s.cfg.Inventory.Remove(removed...)
		}
	}
	return nil
}

// recheckBatch is how many unshared rows one recheck query covers.
const recheckBatch = 2048

// recheckUnshared shares paths that gained a trusted signature since they
// were indexed: `nix store sign` adds signatures to existing rows. One
// query per recheckBatch unshared paths reads their sigs; only a row whose
// signatures name a trusted key, and changed since it was last checked, is
// read in full and checked. Paths with none (.drv files, local builds) cost
// nothing more, however many there are.
func (s *Store) recheckUnshared(ctx context.Context) error {
	if s.cfg.Policy.Mode != ShareSigned && s.cfg.Policy.Mode != "" || len(s.cfg.Policy.Keys) == 0 {
		return nil // nothing unshared can become shared
	}
	s.mu.RLock()
	ids := make([]int64, 0, len(s.byHash)-s.shared)
	for _, e := range s.byHash {
		if !e.shared {
			ids = append(ids, e.id)
		}
	}
	s.mu.RUnlock()
	var added []Hash
	for len(ids) > 0 {
		batch := ids[:min(len(ids), recheckBatch)]
		ids = ids[len(batch):]
		if err := s.useDB(func(db *sql.DB) error {
			more, err := s.recheck(ctx, db, batch)
			added = append(added, more...)
			return err
		}); err != nil {
			return err
		}
	}
	if len(added) > 0 && s.cfg.Inventory != nil {
		s.cfg.Inventory.Add(added...)
	}
	return nil
}

// recheck re-evaluates the rows ids (unshared when listed) and returns the
// hashes that are shared now.
func (s *Store) recheck(ctx context.Context, db *sql.DB, ids []int64) ([]Hash, error) {
	list, err := json.Marshal(ids)
	if err != nil {
		return nil, err
	}
	rows, err := s.query(ctx, db, `SELECT id, sigs FROM ValidPaths WHERE id IN (SELECT value FROM json_each(?)) AND sigs IS NOT NULL AND sigs != ''`, string(list))
	if err != nil {
		return nil, err
	}
	type candidate struct {
		id  int64
		sum uint64 // of its sigs
	}
	var todo []candidate
	for rows.Next() {
		var id int64
		var sigs string
		if err := rows.Scan(&id, &sigs); err != nil {
			rows.Close()
			return nil, err
		}
		if !s.cfg.Policy.namesKey(sigs) {
			continue
		}
		sum := xxhash.Sum64String(sigs)
		s.mu.RLock()
		seen, ok := s.rejected[id]
		s.mu.RUnlock()
		if !ok || seen != sum {
			todo = append(todo, candidate{id, sum})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var added []Hash
	for _, c := range todo {
		s.mu.RLock()
		h, ok := s.byID[c.id]
		e := s.byHash[h]
		s.mu.RUnlock()
		if !ok || e.id != c.id || e.shared {
			continue
		}
		info, err := s.readRow(ctx, db, e)
		if err != nil {
			continue // gone meanwhile; the sweep drops it
		}
		shares := s.cfg.Policy.Shares(info)
		s.mu.Lock()
		if cur, ok := s.byHash[h]; ok && cur.id == c.id && !cur.shared {
			if shares {
				cur.shared = true
				s.putLocked(h, cur)
				added = append(added, h)
			} else {
				s.rejected[c.id] = c.sum
			}
		}
		s.mu.Unlock()
	}
	return added, nil
}

// lookup reads the current metadata of h from the database.
func (s *Store) lookup(ctx context.Context, h Hash) (*NarInfo, error) {
	s.mu.RLock()
	e, ok := s.byHash[h]
	s.mu.RUnlock()
	if !ok {
		return nil, ErrNotFound
	}
	var info *NarInfo
	err := s.useDB(func(db *sql.DB) (err error) {
		info, err = s.readRow(ctx, db, e)
		return err
	})
	return info, err
}

// readRow reads the row of e and its references.
func (s *Store) readRow(ctx context.Context, db *sql.DB, e storeEntry) (*NarInfo, error) {
	r, err := scanRow(s.queryRow(ctx, db, `SELECT `+pathCols+` FROM ValidPaths WHERE id = ?`, e.id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("query %s in %s: %w", e.base, s.dbPath, err)
	}
	rows, err := s.query(ctx, db, `SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference WHERE r.referrer = ?`, e.id)
	if err != nil {
		return nil, fmt.Errorf("query references of %s in %s: %w", e.base, s.dbPath, err)
	}
	defer rows.Close()
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return nil, err
		}
		r.refs = append(r.refs, p)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return r.narInfo()
}

// Has reports whether h is a valid path here that the policy shares.
func (s *Store) Has(h Hash) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.byHash[h].shared
}

// Len is the number of valid paths and how many of them are shared.
func (s *Store) Len() (valid, shared int) {
	s.mu.RLock()
	valid = len(s.byHash)
	s.mu.RUnlock()
	return valid, s.sharedCount()
}

// NarInfo returns the metadata of a shared path, uncompressed, with
// URL "nar/<hash>.nar"; ErrNotFound for paths not here or not shared. The
// policy is checked against the current database row.
func (s *Store) NarInfo(ctx context.Context, h Hash) (*NarInfo, error) {
	s.mu.RLock()
	e, ok := s.byHash[h]
	s.mu.RUnlock()
	if !ok || !e.shared {
		return nil, ErrNotFound
	}
	info, err := s.lookup(ctx, h)
	if err != nil {
		return nil, err
	}
	if !s.cfg.Policy.Shares(info) {
		return nil, ErrNotFound
	}
	info.URL = "nar/" + h.String() + ".nar"
	info.Compression = "none"
	return info, nil
}

// WriteNAR dumps the store path of info as a NAR (see Source).
func (s *Store) WriteNAR(ctx context.Context, w io.Writer, info *NarInfo, offset, length int64) error {
	h, name, err := SplitStorePath(info.StorePath)
	if err != nil {
		return err
	}
	if !s.Has(h) {
		return ErrNotFound
	}
	p := filepath.Join(s.storeDir, h.String()+"-"+name)
	if _, err := os.Lstat(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s is registered but missing on disk: %w", p, ErrNotFound)
		}
		return fmt.Errorf("stat %s: %w", p, err)
	}
	return DumpNAR(ctx, w, p, offset, length)
}
