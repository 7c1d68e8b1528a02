package cache

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

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
	v := d.Verifier()
	n, err := copyHashing(s.space.writer(f, 0), r, v)
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

// copyHashing copies r to w and also writes every byte to h, hashing on a
// goroutine of its own: while one chunk is hashed the next is read and
// written, so a large blob is staged at the speed of the slower of the two
// rather than of both in turn (an import of a 2 GiB bundle is otherwise a
// single core's work of receiving, hashing and writing). It returns once h
// has every byte written to w.
func copyHashing(w io.Writer, r io.Reader, h io.Writer) (int64, error) {
	const nbuf, bufSize = 3, 1 << 20
	free := make(chan []byte, nbuf)
	for range nbuf {
		free <- make([]byte, bufSize)
	}
	full := make(chan []byte, nbuf)
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		for b := range full {
			_, _ = h.Write(b) // a hash's Write never fails
			free <- b[:cap(b)]
		}
	}()
	var n int64
	var err error
	for err == nil {
		b := <-free
		m := 0
		var rerr error
		for m < len(b) && rerr == nil {
			var k int
			k, rerr = r.Read(b[m:])
			m += k
		}
		if m > 0 {
			if _, werr := w.Write(b[:m]); werr != nil {
				err = werr
				break
			}
			n += int64(m)
			full <- b[:m]
		}
		if rerr == io.EOF {
			break
		}
		err = rerr
	}
	close(full)
	<-hashed
	return n, err
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
