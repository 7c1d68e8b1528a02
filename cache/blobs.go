package cache

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

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
	err := s.cachedGet(keyString(kindLink, repo, d.String()), nil)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// StatRepoBlob is StatBlob for a blob that repo may read; ErrNotFound otherwise.
// A warm answer costs one lookup in memory (see readable).
func (s *Store) StatRepoBlob(repo string, d digest.Digest) (int64, error) {
	k := repoBlob{repo, d}
	// Read before the index: an entry filled from a state older than a
	// deletion carries an older count and is not used again.
	n := s.deletions.Load()
	if e, ok := s.readable.Get(k); ok && e.deletions == n {
		s.Touch(d)
		return e.size, nil
	}
	size, err := s.statRepoBlob(repo, d)
	if err == nil {
		s.readable.Add(k, readableBlob{size: size, deletions: n})
	}
	return size, err
}

// readableEntries bounds Store.readable (about 100 bytes an entry).
const readableEntries = 16384

type repoBlob struct {
	repo string
	d    digest.Digest
}

type readableBlob struct {
	size      int64
	deletions uint64 // Store.deletions when it was filled
}

func (s *Store) statRepoBlob(repo string, d digest.Digest) (int64, error) {
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
		// An eviction or a collection may have removed the blob since
		// StatBlob: never link what is not stored.
		if err := s.stampLinked(txn, d); err != nil {
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
	return s.commitLinked(f, d, size, "", "")
}

// commitLinked is commitFile that also links repo (when not empty) to the
// blob in the same index update, so that no collection can find the blob
// stored but not yet linked (see gc.go).
func (s *Store) commitLinked(f *os.File, d digest.Digest, size int64, repo, origin string) error {
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
	return s.indexBlob(d, size, repo, origin)
}

func (s *Store) indexBlob(d digest.Digest, size int64, repo, origin string) error {
	var added bool
	if err := s.update(func(txn *wtxn) error {
		_, err := txn.Get(key(kindBlob, d.String()))
		if added = errors.Is(err, badger.ErrKeyNotFound); err != nil && !added {
			return err
		}
		s.Touch(d)
		if err := setJSON(txn, key(kindBlob, d.String()), blobRecord{Size: size, Created: s.now()}); err != nil || repo == "" {
			return err
		}
		if err := ensureRepo(txn, repo, origin); err != nil {
			return err
		}
		return txn.Set(key(kindLink, repo, d.String()), nil)
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

// lockCommit serialises committing and evicting one digest. The locks are
// striped by a hash of the digest: bounded memory, and both sides hold one
// only for a rename or an index update, never across a client's I/O.
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
	return s.putBlob(repo, origin, d, size, r, s.space.reserve)
}

// putBlob is PutBlob keeping keep bytes free (a mirrored manifest takes
// the index's half of the reserve: see space.go).
func (s *Store) putBlob(repo, origin string, d digest.Digest, size int64, r io.Reader, keep int64) error {
	if _, err := s.StatBlob(d); err == nil {
		err := s.Link(repo, origin, d)
		if err == nil {
			_, err = io.Copy(io.Discard, r)
			return err
		}
		if !errors.Is(err, ErrNotFound) {
			return err
		}
		// Collected or evicted since StatBlob: store it from r after all.
	}
	f, err := s.createStaging()
	if err != nil {
		return err
	}
	defer s.cleanupStaging(f)
	v := d.Verifier()
	w := s.space.writer(f, 0)
	w.keep = keep
	n, err := io.Copy(io.MultiWriter(w, v), r)
	if err != nil {
		return err
	}
	if size >= 0 && n != size {
		return fmt.Errorf("%w: got %d bytes, want %d", ErrSizeMismatch, n, size)
	}
	if !v.Verified() {
		return ErrDigestMismatch
	}
	return s.commitLinked(f, d, n, repo, origin)
}

// createStaging creates a staging file, registered as live until
// cleanupStaging so that CleanIngest leaves it alone.
func (s *Store) createStaging() (*os.File, error) {
	if err := s.space.admitSmall(0); err != nil { // what is written to it is checked as it comes
		return nil, err
	}
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
