package cache

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/berth-dev/berth/internal/iox"

	"github.com/opencontainers/go-digest"
)

// Staged is a blob verified into a staging file but not yet visible: an
// import stages every blob of a bundle first and commits them only once
// the whole bundle has been checked, so a bad bundle leaves nothing behind.
// A Staged is used by one goroutine.
type Staged struct {
	Digest digest.Digest
	Size   int64
	s      *Store
	path   string // closed between Stage and Commit: a bundle may stage thousands
}

// Stage copies r into a staging file, verifying it against d and size
// (size < 0: any length). The
// file stays out of the store (and safe from CleanIngest) until Commit or
// Discard.
func (s *Store) Stage(d digest.Digest, size int64, r io.Reader) (*Staged, error) {
	f, err := s.createStaging()
	if err != nil {
		return nil, err
	}
	// Hashed on a goroutine of its own while the next chunk is read and
	// written: a large blob is staged at the speed of the slower of the
	// two, not of both in turn (an import is otherwise one core's work).
	v := d.Verifier()
	h := iox.NewAsyncHash(v)
	n, err := io.CopyBuffer(io.MultiWriter(s.space.writer(f, 0), h), r, make([]byte, 1<<20))
	h.Close()
	switch {
	case err != nil:
	case size >= 0 && n != size:
		err = fmt.Errorf("%w: blob %s: got %d bytes, want %d", ErrSizeMismatch, d, n, size)
	case !v.Verified():
		err = fmt.Errorf("%w: blob %s", ErrDigestMismatch, d)
	}
	if err != nil {
		s.cleanupStaging(f)
		return nil, err
	}
	if err := f.Close(); err != nil {
		s.cleanupStaging(f)
		return nil, err
	}
	return &Staged{Digest: d, Size: n, s: s, path: f.Name()}, nil
}

// Open opens the staged file for reading.
func (st *Staged) Open() (*os.File, error) { return os.Open(st.path) }

// TempFile creates a scratch file in the staging directory (CleanIngest
// leaves it alone while it lives); done closes and removes it.
func (s *Store) TempFile() (f *os.File, done func(), err error) {
	f, err = s.createStaging()
	if err != nil {
		return nil, nil, err
	}
	return f, func() { s.cleanupStaging(f) }, nil
}

// ReadAll returns the staged content (for a manifest, which is small).
func (st *Staged) ReadAll() ([]byte, error) {
	return os.ReadFile(st.path)
}

// Commit makes the staged blob a stored one (fsync, rename, index). It
// links it to no repository: the caller links what it imports.
func (st *Staged) Commit() error {
	f, err := os.OpenFile(st.path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("staged blob %s: %w", st.Digest, err)
	}
	defer st.s.cleanupStaging(f)
	return st.s.commitFile(f, st.Digest, st.Size)
}

// Discard removes the staging file. It is harmless after Commit.
func (st *Staged) Discard() {
	os.Remove(st.path)
	st.s.staging.Delete(filepath.Base(st.path))
}
