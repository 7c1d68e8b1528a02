package cache

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Upload is the state of a blob upload in progress.
type Upload struct {
	ID     string
	Repo   string
	Offset int64 // bytes received so far
}

// NewUpload starts an upload into repo: a staging file and an index record
// that survives restarts and expires after Options.UploadTTL.
func (s *Store) NewUpload(repo string) (Upload, error) {
	f, err := s.createStaging()
	if err != nil {
		return Upload{}, err
	}
	id := filepath.Base(f.Name())
	defer s.staging.Delete(id) // from here on the upload record keeps it
	f.Close()
	rec := uploadRecord{Repo: repo, Started: time.Now()}
	if err := s.putUpload(id, rec); err != nil {
		os.Remove(f.Name())
		return Upload{}, err
	}
	return Upload{ID: id, Repo: repo}, nil
}

func (s *Store) putUpload(id string, rec uploadRecord) error {
	return s.update(func(txn *wtxn) error {
		b, err := jsonBytes(rec)
		if err != nil {
			return err
		}
		return txn.SetEntry(badger.NewEntry(key(kindUpload, id), b).WithTTL(s.opts.UploadTTL))
	})
}

// GetUpload returns the state of upload id in repo, or ErrUploadUnknown.
func (s *Store) GetUpload(repo, id string) (Upload, error) {
	rec, err := s.uploadRecord(repo, id)
	if err != nil {
		return Upload{}, err
	}
	return Upload{ID: id, Repo: repo, Offset: rec.Offset}, nil
}

func (s *Store) uploadRecord(repo, id string) (uploadRecord, error) {
	var rec uploadRecord
	if !validID(id) {
		return rec, ErrUploadUnknown
	}
	err := s.db.View(func(txn *badger.Txn) error { return getJSON(txn, key(kindUpload, id), &rec) })
	if errors.Is(err, ErrNotFound) || (err == nil && rec.Repo != repo) {
		return rec, ErrUploadUnknown
	}
	if err != nil {
		return rec, err
	}
	// A crash may have lost bytes the record counted; the file is the truth
	// for what can be kept.
	if fi, err := os.Stat(ingestPath(s.root, id)); err != nil {
		return rec, ErrUploadUnknown
	} else if fi.Size() < rec.Offset {
		rec.Offset = fi.Size()
	}
	return rec, nil
}

// validID accepts only ids this store makes (hex), so an id can never name
// a path outside ingest/.
func validID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for _, c := range id {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// lockUpload serialises the writers of one upload. The locks are striped
// by a hash of the id: bounded memory whatever ids clients send.
func (s *Store) lockUpload(id string) func() {
	h := fnv.New32a()
	h.Write([]byte(id))
	mu := &s.uploadLocks[h.Sum32()%uint32(len(s.uploadLocks))]
	mu.Lock()
	return mu.Unlock
}

// AppendUpload appends r to upload id. If start >= 0 it must equal the
// upload's current offset (ErrOffset otherwise). It returns the new state.
func (s *Store) AppendUpload(repo, id string, start int64, r io.Reader) (Upload, error) {
	unlock := s.lockUpload(id)
	defer unlock()
	rec, err := s.uploadRecord(repo, id)
	if err != nil {
		return Upload{}, err
	}
	if start >= 0 && start != rec.Offset {
		return Upload{ID: id, Repo: repo, Offset: rec.Offset}, fmt.Errorf("%w: chunk starts at %d, upload is at %d", ErrOffset, start, rec.Offset)
	}
	f, err := os.OpenFile(ingestPath(s.root, id), os.O_WRONLY, 0)
	if err != nil {
		return Upload{}, err
	}
	defer f.Close()
	// Drop anything past the recorded offset (a write cut short by a crash).
	if err := f.Truncate(rec.Offset); err != nil {
		return Upload{}, err
	}
	if _, err := f.Seek(rec.Offset, io.SeekStart); err != nil {
		return Upload{}, err
	}
	n, copyErr := io.Copy(f, r)
	rec.Offset += n
	if copyErr != nil {
		// Keep nothing of a broken chunk: the client resends it whole.
		rec.Offset -= n
		_ = f.Truncate(rec.Offset)
		return Upload{ID: id, Repo: repo, Offset: rec.Offset}, copyErr
	}
	if err := s.putUpload(id, rec); err != nil {
		return Upload{}, err
	}
	return Upload{ID: id, Repo: repo, Offset: rec.Offset}, nil
}

// CommitUpload finishes upload id: appends r (if not nil), verifies the whole
// content against d, stores it and links it to repo. On a digest mismatch the
// upload stays open so the client may retry or cancel.
func (s *Store) CommitUpload(repo, id string, d digest.Digest, r io.Reader) (int64, error) {
	if r != nil {
		if _, err := s.AppendUpload(repo, id, -1, r); err != nil {
			return 0, err
		}
	}
	unlock := s.lockUpload(id)
	defer unlock()
	rec, err := s.uploadRecord(repo, id)
	if err != nil {
		return 0, err
	}
	f, err := os.OpenFile(ingestPath(s.root, id), os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	v := d.Verifier()
	if _, err := io.Copy(v, io.NewSectionReader(f, 0, rec.Offset)); err != nil {
		return 0, err
	}
	if !v.Verified() {
		return 0, ErrDigestMismatch
	}
	if _, err := s.StatBlob(d); err == nil {
		os.Remove(f.Name()) // already stored: keep the first copy
	} else {
		if err := f.Truncate(rec.Offset); err != nil {
			return 0, err
		}
		if err := s.commitFile(f, d, rec.Offset); err != nil {
			return 0, err
		}
	}
	if err := s.Link(repo, "", d); err != nil {
		return 0, err
	}
	s.dropUpload(id)
	return rec.Offset, nil
}

// CancelUpload abandons upload id and removes its staging file.
func (s *Store) CancelUpload(repo, id string) error {
	unlock := s.lockUpload(id)
	defer unlock()
	if _, err := s.uploadRecord(repo, id); err != nil {
		return err
	}
	os.Remove(ingestPath(s.root, id))
	s.dropUpload(id)
	return nil
}

func (s *Store) dropUpload(id string) {
	_ = s.update(func(txn *wtxn) error { return txn.Delete(key(kindUpload, id)) })
}
