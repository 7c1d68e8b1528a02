package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// Sentinel errors returned by Store methods; match them with errors.Is.
var (
	ErrNotFound       = errors.New("not found")
	ErrUploadUnknown  = errors.New("upload unknown")
	ErrDigestMismatch = errors.New("digest mismatch")
	ErrSizeMismatch   = errors.New("size mismatch")
	ErrOffset         = errors.New("upload offset mismatch")
)

// Options tune a Store.
type Options struct {
	Logger zerolog.Logger
	// UploadTTL is how long an idle upload is kept; zero means 24 hours.
	UploadTTL time.Duration
	// ManifestCacheEntries bounds the in-memory manifest body cache.
	ManifestCacheEntries int
	// MaxBytes bounds the bytes of mirrored content on disk; least recently
	// used mirrored blobs are evicted past it (see evict.go). Zero: unbounded.
	MaxBytes int64
	// Clock returns the time used for access times and index stamps; nil is
	// time.Now. Tests set it to order accesses without sleeping.
	Clock func() time.Time

	afterEvict  func([]Evicted, error) // tests: called after each background pass
	manualEvict bool                   // tests: no background passes, only Evict
}

// Store is the content-addressed blob store and its Badger index.
// It is safe for concurrent use.
type Store struct {
	root string
	db   *badger.DB
	log  zerolog.Logger
	opts Options

	sizes     *lru.Cache[digest.Digest, int64]  // hot blob sizes
	manifests *lru.Cache[digest.Digest, []byte] // hot manifest bodies
	small     *lru.Cache[digest.Digest, []byte] // hot small blobs; see SmallBlob

	// hot caches index values (repositories, tags, manifests, links) by
	// key, so a warm request does not reach Badger. hotMu orders cache
	// fills against writes: a write holds it exclusively while it commits
	// and evicts the keys it touched, so a reader can never put back a
	// value older than the last write.
	hot   *lru.Cache[string, []byte]
	hotMu sync.RWMutex

	uploadLocks [64]sync.Mutex // striped by upload id; see lockUpload
	commitLocks [64]sync.Mutex // striped by digest; see lockCommit
	staging     sync.Map       // names of staging files being written outside uploads

	fillMu sync.Mutex
	fills  map[digest.Digest]*Fill
	ctx    context.Context // parent of every fill: detached from clients, ended by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// Eviction state (evict.go).
	access      sync.Map      // digest.Digest -> *accessEntry, not yet evicted
	accessSeq   atomic.Uint64 // counts accesses; see Touch
	usedBytes   atomic.Int64  // bytes of every indexed blob
	usedBlobs   atomic.Int64
	pinnedBytes atomic.Int64 // of usedBytes, pinned at the last eviction pass
	evicted     atomic.Int64 // blobs evicted since Open
	evictedB    atomic.Int64 // bytes evicted since Open
	evictMu     sync.Mutex   // one eviction pass at a time
	evictCh     chan struct{}
}

// Open opens (creating if needed) the store under root.
func Open(root string, opts Options) (*Store, error) {
	if opts.UploadTTL == 0 {
		opts.UploadTTL = 24 * time.Hour
	}
	if opts.ManifestCacheEntries == 0 {
		opts.ManifestCacheEntries = 1024
	}
	for _, d := range []string{"blobs", "ingest", "meta"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, fmt.Errorf("create data directory: %w", err)
		}
	}
	bopts := badger.DefaultOptions(filepath.Join(root, "meta")).
		WithLogger(badgerLogger{opts.Logger}).
		WithNumVersionsToKeep(1).
		WithValueLogFileSize(64 << 20).
		WithMemTableSize(16 << 20).
		WithNumMemtables(2).
		WithBlockCacheSize(16 << 20).
		WithIndexCacheSize(8 << 20).
		WithCompactL0OnClose(true)
	db, err := badger.Open(bopts)
	if err != nil {
		return nil, fmt.Errorf("open index %s: %w", bopts.Dir, err)
	}
	sizes, _ := lru.New[digest.Digest, int64](65536)
	mans, _ := lru.New[digest.Digest, []byte](opts.ManifestCacheEntries)
	hot, _ := lru.New[string, []byte](65536)
	small, _ := lru.New[digest.Digest, []byte](smallBlobEntries)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{root: root, db: db, log: opts.Logger, opts: opts, sizes: sizes, manifests: mans, hot: hot, small: small,
		fills: map[digest.Digest]*Fill{}, ctx: ctx, cancel: cancel, evictCh: make(chan struct{}, 1)}
	if err := s.CleanIngest(); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.countUsage(); err != nil {
		db.Close()
		return nil, err
	}
	s.wg.Add(1)
	go s.janitor()
	if opts.MaxBytes > 0 && !opts.manualEvict {
		s.wg.Add(1)
		go s.evictor()
		s.maybeEvict() // a limit lowered since the last run applies at once
	}
	return s, nil
}

// CleanIngest removes staging files that no live upload owns: fills cut
// short by a crash or a stop, and uploads whose record expired. A fill in
// progress in this process is kept.
func (s *Store) CleanIngest() error {
	entries, err := os.ReadDir(filepath.Join(s.root, "ingest"))
	if err != nil {
		return fmt.Errorf("read staging directory: %w", err)
	}
	live := map[string]bool{}
	s.fillMu.Lock()
	for _, f := range s.fills {
		live[filepath.Base(f.file.Name())] = true
	}
	s.fillMu.Unlock()
	removed := 0
	for _, e := range entries {
		id := e.Name()
		if _, writing := s.staging.Load(id); live[id] || writing {
			continue
		}
		err := s.db.View(func(txn *badger.Txn) error {
			_, err := txn.Get(key(kindUpload, id))
			return err
		})
		if errors.Is(err, badger.ErrKeyNotFound) {
			if os.Remove(filepath.Join(s.root, "ingest", id)) == nil {
				removed++
			}
		}
	}
	if removed > 0 {
		s.log.Info().Int("files", removed).Msg("removed abandoned staging files")
	}
	return nil
}

// janitor periodically drops expired staging files and lets Badger
// reclaim value-log space, until the store closes.
func (s *Store) janitor() {
	defer s.wg.Done()
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			if err := s.CleanIngest(); err != nil {
				s.log.Warn().Err(err).Msg("cleaning staging files")
			}
			for s.db.RunValueLogGC(0.5) == nil {
			}
		}
	}
}

// Close stops in-flight fills and closes the index cleanly.
func (s *Store) Close() error {
	s.fillMu.Lock() // no Fill may Add to the WaitGroup once Wait has begun
	s.cancel()
	s.fillMu.Unlock()
	s.wg.Wait()
	// Last, so that LRU order survives the restart.
	if err := s.flushAccess(); err != nil {
		s.log.Warn().Err(err).Msg("saving blob access times")
	}
	return s.db.Close()
}

// Root is the data directory.
func (s *Store) Root() string { return s.root }

// --- records -----------------------------------------------------------------

type blobRecord struct {
	Size int64 `json:"size"`
	// Created is when the blob was indexed: its age for eviction until it is
	// read. Zero in records written before eviction existed.
	Created time.Time `json:"created,omitzero"`
}

// ManifestRecord describes a manifest stored in a repository.
type ManifestRecord struct {
	Digest       digest.Digest     `json:"digest"`
	MediaType    string            `json:"mediaType"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Subject      digest.Digest     `json:"subject,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

// TagRecord is what a tag points at and when that was last confirmed.
type TagRecord struct {
	Digest    digest.Digest `json:"digest"`
	FetchedAt time.Time     `json:"fetchedAt"`
}

type uploadRecord struct {
	Repo    string    `json:"repo"`
	Offset  int64     `json:"offset"`
	Started time.Time `json:"started"`
}

// RepoRecord marks a repository as existing; Origin is "" for a local
// (pushed) repository or the name of the upstream it mirrors.
type RepoRecord struct {
	Origin string `json:"origin,omitempty"`
}

// getter is a read-only or read-write transaction.
type getter interface {
	Get(key []byte) (*badger.Item, error)
}

func getJSON(txn getter, k []byte, v any) error {
	item, err := txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	return item.Value(func(b []byte) error { return json.Unmarshal(b, v) })
}

func setJSON(txn *wtxn, k []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return txn.Set(k, b)
}

// wtxn is a read-write transaction that remembers the keys it writes, so
// that update can evict them from the hot cache.
type wtxn struct {
	*badger.Txn
	touched []string
}

func (t *wtxn) Set(k, v []byte) error {
	t.touched = append(t.touched, string(k))
	return t.Txn.Set(k, v)
}

func (t *wtxn) SetEntry(e *badger.Entry) error {
	t.touched = append(t.touched, string(e.Key))
	return t.Txn.SetEntry(e)
}

func (t *wtxn) Delete(k []byte) error {
	t.touched = append(t.touched, string(k))
	return t.Txn.Delete(k)
}

// update runs fn in a read-write transaction, retrying on conflicts, and
// evicts every key it wrote from the hot cache.
func (s *Store) update(fn func(txn *wtxn) error) error {
	s.hotMu.Lock()
	defer s.hotMu.Unlock()
	for {
		var touched []string
		err := s.db.Update(func(txn *badger.Txn) error {
			w := &wtxn{Txn: txn}
			err := fn(w)
			touched = w.touched
			return err
		})
		for _, k := range touched {
			s.hot.Remove(k)
		}
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
	}
}

// maxCachedValue bounds what the hot cache keeps of one index value (a
// manifest record with huge annotations is read from Badger each time).
const maxCachedValue = 4 << 10

// cachedGet reads the JSON value of k (nil v: existence only) through the
// hot cache; ErrNotFound if there is none. Absent keys are not cached.
func (s *Store) cachedGet(k []byte, v any) error {
	b, ok := s.hot.Get(string(k))
	if !ok {
		s.hotMu.RLock()
		err := s.db.View(func(txn *badger.Txn) error {
			item, err := txn.Get(k)
			if errors.Is(err, badger.ErrKeyNotFound) {
				return ErrNotFound
			}
			if err != nil {
				return err
			}
			b, err = item.ValueCopy(nil)
			return err
		})
		if err == nil && len(b) <= maxCachedValue {
			s.hot.Add(string(k), b)
		}
		s.hotMu.RUnlock()
		if err != nil {
			return err
		}
	}
	if v == nil {
		return nil
	}
	return json.Unmarshal(b, v)
}

// --- repositories ------------------------------------------------------------

// Repository reports whether repo exists and where it came from.
func (s *Store) Repository(repo string) (RepoRecord, error) {
	var r RepoRecord
	err := s.cachedGet(key(kindRepo, repo), &r)
	return r, err
}

// EnsureRepository records repo as existing with the given origin, if it
// is not known yet.
func (s *Store) EnsureRepository(repo, origin string) error {
	return s.update(func(txn *wtxn) error { return ensureRepo(txn, repo, origin) })
}

func ensureRepo(txn *wtxn, repo, origin string) error {
	if _, err := txn.Get(key(kindRepo, repo)); err == nil {
		return nil
	}
	return setJSON(txn, key(kindRepo, repo), RepoRecord{Origin: origin})
}

// Repositories lists repository names in lexical order after last, at most
// n of them (n <= 0: all). more reports whether there are others after them.
func (s *Store) Repositories(n int, last string) (names []string, more bool, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		names, more = listKeys(txn, []byte(kindRepo), last, n)
		return nil
	})
	return names, more, err
}

// listKeys lists the suffixes after p of keys greater than p+last, up to n.
func listKeys(txn *badger.Txn, p []byte, last string, n int) ([]string, bool) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
	defer it.Close()
	start := p
	if last != "" {
		start = append(append([]byte{}, p...), last...)
		start = append(start, 0) // strictly after last
	}
	out := []string{}
	for it.Seek(start); it.ValidForPrefix(p); it.Next() {
		if n > 0 && len(out) == n {
			return out, true
		}
		out = append(out, string(it.Item().Key()[len(p):]))
	}
	return out, false
}

// --- blobs -------------------------------------------------------------------

// StatBlob returns the size of a stored blob, or ErrNotFound. It counts as
// an access for eviction.
func (s *Store) StatBlob(d digest.Digest) (int64, error) {
	if n, ok := s.sizes.Get(d); ok {
		s.Touch(d)
		return n, nil
	}
	var r blobRecord
	// Filled under hotMu shared, as cachedGet does: eviction drops the size
	// while holding it exclusively, so a size read before an eviction can
	// never be put back after it.
	s.hotMu.RLock()
	err := s.db.View(func(txn *badger.Txn) error { return getJSON(txn, key(kindBlob, d.String()), &r) })
	if err == nil {
		s.sizes.Add(d, r.Size)
	}
	s.hotMu.RUnlock()
	if err != nil {
		return 0, err
	}
	s.Touch(d)
	return r.Size, nil
}

// Linked reports whether repo may read blob d (and d is stored).
func (s *Store) Linked(repo string, d digest.Digest) (bool, error) {
	err := s.cachedGet(key(kindLink, repo, d.String()), nil)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// StatRepoBlob is StatBlob for a blob that repo may read; ErrNotFound otherwise.
func (s *Store) StatRepoBlob(repo string, d digest.Digest) (int64, error) {
	ok, err := s.Linked(repo, d)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, ErrNotFound
	}
	return s.StatBlob(d)
}

// Small blobs (configs, tiny layers, signatures) are kept in memory: for
// them open, stat and close cost more than the bytes. At most
// smallBlobEntries x MaxSmallBlob = 16 MiB.
const (
	MaxSmallBlob     = 64 << 10
	smallBlobEntries = 256
)

// SmallBlob returns the content of a stored blob of at most MaxSmallBlob
// bytes from memory, reading it from disk the first time; ok is false for
// larger or missing blobs. The caller has checked the repository's link.
func (s *Store) SmallBlob(d digest.Digest, size int64) (b []byte, ok bool) {
	if size > MaxSmallBlob {
		return nil, false
	}
	if b, ok := s.small.Get(d); ok {
		s.Touch(d)
		return b, true
	}
	b, err := os.ReadFile(blobPath(s.root, d))
	if err != nil || int64(len(b)) != size {
		return nil, false
	}
	s.small.Add(d, b)
	s.Touch(d)
	return b, true
}

// OpenBlob opens a stored blob for reading. It counts as an access for
// eviction; an open file stays readable to its end if the blob is evicted.
func (s *Store) OpenBlob(d digest.Digest) (*os.File, error) {
	f, err := os.Open(blobPath(s.root, d))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err == nil {
		s.Touch(d)
	}
	return f, err
}

// Link lets repo read the stored blob d, creating the repository record with
// origin if needed. It fails with ErrNotFound if the blob is not stored.
func (s *Store) Link(repo, origin string, d digest.Digest) error {
	if _, err := s.StatBlob(d); err != nil {
		return err
	}
	return s.update(func(txn *wtxn) error {
		// An eviction may have removed the blob since StatBlob: never link
		// what is not stored.
		if err := s.stillStored(txn, d); err != nil {
			return err
		}
		if err := ensureRepo(txn, repo, origin); err != nil {
			return err
		}
		return txn.Set(key(kindLink, repo, d.String()), nil)
	})
}

// Unlink removes repo's access to blob d; ErrNotFound if it had none.
func (s *Store) Unlink(repo string, d digest.Digest) error {
	return s.update(func(txn *wtxn) error {
		k := key(kindLink, repo, d.String())
		if _, err := txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
			return ErrNotFound
		} else if err != nil {
			return err
		}
		return txn.Delete(k)
	})
}

// commitFile moves a verified staging file into the blob store and indexes it.
// The caller has verified size and digest; commitFile fsyncs and renames.
func (s *Store) commitFile(f *os.File, d digest.Digest, size int64) error {
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync staging file: %w", err)
	}
	dst := blobPath(s.root, d)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	// From the rename to the index record, an eviction of the same digest
	// must not run in between: its unlink would remove the new file.
	unlock := s.lockCommit(d)
	defer unlock()
	if err := os.Rename(f.Name(), dst); err != nil {
		return fmt.Errorf("commit blob: %w", err)
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return err
	}
	return s.indexBlob(d, size)
}

func (s *Store) indexBlob(d digest.Digest, size int64) error {
	var added bool
	if err := s.update(func(txn *wtxn) error {
		_, err := txn.Get(key(kindBlob, d.String()))
		if added = errors.Is(err, badger.ErrKeyNotFound); err != nil && !added {
			return err
		}
		s.Touch(d)
		return setJSON(txn, key(kindBlob, d.String()), blobRecord{Size: size, Created: s.now()})
	}); err != nil {
		return err
	}
	s.sizes.Add(d, size)
	// Only a new record adds bytes: a second commit of the same digest
	// (two pushes at once, a fill of a pushed blob) replaced the file.
	if added {
		s.usedBytes.Add(size)
		s.usedBlobs.Add(1)
		s.maybeEvict()
	}
	return nil
}

// lockCommit serialises committing and evicting one digest, striped by
// digest like lockUpload.
func (s *Store) lockCommit(d digest.Digest) func() {
	h := fnv.New32a()
	h.Write([]byte(d))
	mu := &s.commitLocks[h.Sum32()%uint32(len(s.commitLocks))]
	mu.Lock()
	return mu.Unlock
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// PutBlob stores content read from r, verifying it against d (and size, if
// size >= 0), and links it to repo. It streams through a staging file.
func (s *Store) PutBlob(repo, origin string, d digest.Digest, size int64, r io.Reader) error {
	if _, err := s.StatBlob(d); err == nil {
		if _, err := io.Copy(io.Discard, r); err != nil {
			return err
		}
		return s.Link(repo, origin, d)
	}
	f, err := s.createStaging()
	if err != nil {
		return err
	}
	defer s.cleanupStaging(f)
	v := d.Verifier()
	n, err := io.Copy(io.MultiWriter(f, v), r)
	if err != nil {
		return err
	}
	if size >= 0 && n != size {
		return fmt.Errorf("%w: got %d bytes, want %d", ErrSizeMismatch, n, size)
	}
	if !v.Verified() {
		return ErrDigestMismatch
	}
	if err := s.commitFile(f, d, n); err != nil {
		return err
	}
	return s.Link(repo, origin, d)
}

// createStaging creates a staging file, registered as live until
// cleanupStaging so that CleanIngest leaves it alone.
func (s *Store) createStaging() (*os.File, error) {
	id := newID()
	s.staging.Store(id, struct{}{})
	f, err := os.OpenFile(ingestPath(s.root, id), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		s.staging.Delete(id)
	}
	return f, err
}

// cleanupStaging closes f and removes it if it was not committed.
func (s *Store) cleanupStaging(f *os.File) {
	f.Close()
	os.Remove(f.Name()) // after a commit the name no longer exists: harmless
	s.staging.Delete(filepath.Base(f.Name()))
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// badgerLogger routes Badger's logs to zerolog, keeping only warnings and errors.
type badgerLogger struct{ l zerolog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error().Str("component", "badger").Msgf(f, a...)
}
func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn().Str("component", "badger").Msgf(f, a...)
}
func (b badgerLogger) Infof(string, ...any)  {}
func (b badgerLogger) Debugf(string, ...any) {}
