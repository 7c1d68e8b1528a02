package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
	// ErrUploadBusy: another request is writing the same upload (a second
	// PATCH or PUT while one is still being received). It wraps ErrOffset,
	// since to the client it is a chunk that does not follow the upload.
	ErrUploadBusy = fmt.Errorf("%w: another request is writing this upload", ErrOffset)
	// ErrCloseTimeout: Close gave up waiting after Options.CloseTimeout; the
	// index may not have been closed cleanly.
	ErrCloseTimeout = errors.New("store did not close in time")
	// ErrInUse: Open found the index locked by another process (a running
	// berth holds its data directory).
	ErrInUse = errors.New("data directory in use by another process")
)

// Options tune a Store.
type Options struct {
	Logger zerolog.Logger
	// UploadTTL is how long an idle upload is kept; zero means 24 hours.
	UploadTTL time.Duration
	// MaxUploads and MaxUploadBytes cap the upload sessions open at once
	// and the bytes they hold: a new session past either is refused with
	// ErrUploadLimit. Zero: no cap.
	MaxUploads     int
	MaxUploadBytes int64
	// ManifestCacheEntries bounds the in-memory manifest body cache.
	ManifestCacheEntries int
	// MaxBytes bounds the bytes of mirrored content on disk; least recently
	// used mirrored blobs are evicted past it (see evict.go). Zero: unbounded.
	MaxBytes int64
	// Clock returns the time used for access times and index stamps; nil is
	// time.Now. Tests set it to order accesses without sleeping.
	Clock func() time.Time
	// CloseTimeout bounds how long Close waits for background work to stop
	// and the index to close; zero means 10 seconds.
	CloseTimeout time.Duration
	// DiskReserve is the free space kept on the data directory's
	// filesystem: content writes that would go below it are refused with
	// ErrNoSpace (see space.go). Zero means DefaultDiskReserve; negative
	// turns the check off.
	DiskReserve int64
	// ProbeInterval is how often the storage probe runs; zero means
	// DefaultProbeInterval.
	ProbeInterval time.Duration
	// Statfs reports the free bytes of the filesystem holding path; nil is
	// statfs(2). Tests give a disk of any size with it.
	Statfs func(path string) (free int64, err error)

	afterEvict  func([]Evicted, error) // tests: called after each background pass
	manualEvict bool                   // tests: no background passes, only Evict
	closeIndex  func(*badger.DB) error // tests: closes the index in place of db.Close
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

	// readable remembers, per repository and blob, that the blob is linked
	// and its size (StatRepoBlob), for as long as nothing is deleted from
	// the index: every deletion moves deletions on, and an entry from
	// before it is not trusted.
	readable  *lru.Cache[repoBlob, readableBlob]
	deletions atomic.Uint64

	// hot caches index values (repositories, tags, manifests, links) by
	// key, so a warm request does not reach Badger. hotMu orders cache
	// fills against writes: a write holds it exclusively while it commits
	// and evicts the keys it touched, so a reader can never put back a
	// value older than the last write.
	hot   *lru.Cache[string, hotValue]
	hotMu sync.RWMutex

	uploadMu    sync.Mutex          // guards uploading only, never held across I/O
	uploading   map[string]struct{} // uploads a request is writing; see claimUpload
	commitLocks [64]sync.Mutex      // striped by digest; see lockCommit
	staging     sync.Map            // names of staging files being written outside uploads

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

	space *space  // free-space reserve and storage health (space.go)
	gc    gcState // garbage collection and pull times (gc.go)
}

// Open opens (creating if needed) the store under root.
func Open(root string, opts Options) (*Store, error) {
	if opts.UploadTTL == 0 {
		opts.UploadTTL = 24 * time.Hour
	}
	if opts.ManifestCacheEntries == 0 {
		opts.ManifestCacheEntries = 1024
	}
	if opts.CloseTimeout == 0 {
		opts.CloseTimeout = 10 * time.Second
	}
	if opts.DiskReserve == 0 {
		opts.DiskReserve = DefaultDiskReserve
	}
	if opts.ProbeInterval == 0 {
		opts.ProbeInterval = DefaultProbeInterval
	}
	if opts.Statfs == nil {
		opts.Statfs = statfsFree
	}
	if opts.closeIndex == nil {
		opts.closeIndex = (*badger.DB).Close
	}
	for _, d := range []string{"blobs", "ingest", "meta"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, fmt.Errorf("create data directory: %w", err)
		}
	}
	if err := checkStartSpace(root, opts.DiskReserve, opts.Statfs); err != nil {
		return nil, err
	}
	clock := opts.Clock
	if clock == nil {
		clock = time.Now
	}
	sp, err := newSpace(root, opts.DiskReserve, clock, opts.Statfs)
	if err != nil {
		return nil, err
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
	// Badger formats the flock error with %+v instead of wrapping it, so
	// its message is all there is to recognise a held lock by.
	if err != nil && strings.Contains(err.Error(), "Cannot acquire directory lock") {
		return nil, fmt.Errorf("open index %s: %w", bopts.Dir, ErrInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("open index %s: %w", bopts.Dir, err)
	}
	sizes, _ := lru.New[digest.Digest, int64](65536)
	mans, _ := lru.New[digest.Digest, []byte](opts.ManifestCacheEntries)
	hot, _ := lru.New[string, hotValue](65536)
	small, _ := lru.New[digest.Digest, []byte](smallBlobEntries)
	readable, _ := lru.New[repoBlob, readableBlob](readableEntries)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{root: root, db: db, log: opts.Logger, opts: opts, sizes: sizes, manifests: mans, hot: hot, small: small, readable: readable,
		uploading: map[string]struct{}{}, fills: map[digest.Digest]*Fill{}, ctx: ctx, cancel: cancel, evictCh: make(chan struct{}, 1), space: sp}
	if err := s.CleanIngest(); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.countUsage(); err != nil {
		db.Close()
		return nil, err
	}
	s.wg.Add(2)
	go s.janitor()
	go s.prober()
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
			// Each round rewrites one value-log file; stop between
			// rounds once the store is closing, so Close need not wait,
			// or once the disk is down to the index's half reserve (the
			// rewrite goes through mmap: see space.go).
			for s.ctx.Err() == nil && s.space.admitIndex() == nil && s.db.RunValueLogGC(0.5) == nil {
			}
		}
	}
}

// Close stops in-flight fills and the store's background work, saves access
// times and closes the index. It returns within Options.CloseTimeout even if
// that work does not end: a fill stuck in an upstream read, or Badger
// retrying forever to flush its memtable into a data directory that was
// removed or made read-only. Then it returns an error wrapping
// ErrCloseTimeout and leaves the closing to finish, or not, on its own;
// writes already committed are in Badger's write-ahead log, which the next
// Open replays.
func (s *Store) Close() error {
	s.fillMu.Lock() // no Fill may Add to the WaitGroup once Wait has begun
	s.cancel()
	s.fillMu.Unlock()
	stopped := make(chan struct{})
	closed := make(chan error, 1)
	// The one goroutine the store does not wait for: on a timeout it is
	// abandoned, since nothing can interrupt a blocked Badger Close.
	go func() {
		s.wg.Wait()
		close(stopped)
		// Last, so that LRU order survives the restart.
		if err := s.flushAccess(); err != nil {
			s.log.Warn().Err(err).Msg("saving blob access times")
		}
		if err := s.FlushPulls(); err != nil {
			s.log.Warn().Err(err).Msg("saving tag pull times")
		}
		closed <- s.opts.closeIndex(s.db)
	}()
	t := time.NewTimer(s.opts.CloseTimeout)
	defer t.Stop()
	select {
	case err := <-closed:
		return err
	case <-t.C:
	}
	select {
	case <-stopped:
		return fmt.Errorf("%w: the index %s did not close cleanly within %s (is the data directory still there and writable?)",
			ErrCloseTimeout, filepath.Join(s.root, "meta"), s.opts.CloseTimeout)
	default:
		return fmt.Errorf("%w: fills or background work did not stop within %s; the index %s is closed only once they do",
			ErrCloseTimeout, s.opts.CloseTimeout, filepath.Join(s.root, "meta"))
	}
}

// Root is the data directory.
func (s *Store) Root() string { return s.root }
