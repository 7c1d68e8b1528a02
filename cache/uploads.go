package cache

import (
	"errors"
	"fmt"
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
	if err := s.space.admit(0); err != nil {
		return Upload{}, err
	}
	if err := s.checkUploadLimits(); err != nil {
		return Upload{}, err
	}
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
	return s.update(func(txn *wtxn) error { return setUpload(txn, id, rec, s.opts.UploadTTL) })
}

// setUpload writes the record of upload id, to expire after ttl idle.
func setUpload(txn *wtxn, id string, rec uploadRecord, ttl time.Duration) error {
	b, err := jsonBytes(rec)
	if err != nil {
		return err
	}
	return txn.SetEntry(badger.NewEntry(key(kindUpload, id), b).WithTTL(ttl))
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

// claimUpload marks upload id as being written by the caller until release
// is called, or fails with ErrUploadBusy if another request is writing it.
// uploadMu is held only to change the set, never across I/O: a stalled
// client body holds its own upload and nothing else, and a second request
// on the same upload fails at once instead of queueing behind it. The set
// holds only uploads being written right now, so its memory is bounded by
// the requests in progress whatever ids clients send.
func (s *Store) claimUpload(id string) (release func(), err error) {
	s.uploadMu.Lock()
	defer s.uploadMu.Unlock()
	if _, busy := s.uploading[id]; busy {
		return nil, ErrUploadBusy
	}
	s.uploading[id] = struct{}{}
	return func() {
		s.uploadMu.Lock()
		delete(s.uploading, id)
		s.uploadMu.Unlock()
	}, nil
}

// busy is the answer to a request on an upload that another request is
// writing: its committed state and ErrUploadBusy, or ErrUploadUnknown if it
// is not repo's.
func (s *Store) busy(repo, id string) (Upload, error) {
	u, err := s.GetUpload(repo, id)
	if err != nil {
		return u, err
	}
	return u, ErrUploadBusy
}

// AppendUpload appends r to upload id. If start >= 0 it must equal the
// upload's current offset (ErrOffset otherwise). It returns the new state.
// While another request is writing the upload it fails at once with
// ErrUploadBusy (which wraps ErrOffset) and the upload's committed state.
// If the upload is cancelled while r is read, it fails with ErrUploadUnknown.
func (s *Store) AppendUpload(repo, id string, start int64, r io.Reader) (Upload, error) {
	if !validID(id) {
		return Upload{}, ErrUploadUnknown
	}
	release, err := s.claimUpload(id)
	if err != nil {
		return s.busy(repo, id)
	}
	defer release()
	return s.appendClaimed(repo, id, start, r)
}

// appendClaimed is AppendUpload for an upload the caller has claimed. On an
// error the state it returns is the zero value unless the upload is known
// and unchanged.
//
// The bytes go to the staging file first and the record is updated after,
// so the record always holds an offset whose bytes are on disk; whatever a
// crash left past it is truncated here on the next append.
func (s *Store) appendClaimed(repo, id string, start int64, r io.Reader) (Upload, error) {
	rec, err := s.uploadRecord(repo, id)
	if err != nil {
		return Upload{}, err
	}
	at := Upload{ID: id, Repo: repo, Offset: rec.Offset}
	if start >= 0 && start != rec.Offset {
		return at, fmt.Errorf("%w: chunk starts at %d, upload is at %d", ErrOffset, start, rec.Offset)
	}
	f, err := os.OpenFile(ingestPath(s.root, id), os.O_WRONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return Upload{}, ErrUploadUnknown // cancelled since uploadRecord
	}
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
	n, err := io.Copy(s.space.writer(f, 0), r)
	if errors.Is(err, ErrNoSpace) {
		// A push that ran out of space fails whole: its bytes go now,
		// not when the upload expires (space.go).
		os.Remove(f.Name())
		s.dropUpload(id)
		return Upload{}, err
	}
	if err != nil {
		// Keep nothing of a broken chunk: the client resends it whole.
		_ = f.Truncate(rec.Offset)
		return at, err
	}
	rec.Offset += n
	if err := s.advanceUpload(id, rec); err != nil {
		return Upload{}, err
	}
	return Upload{ID: id, Repo: repo, Offset: rec.Offset}, nil
}

// advanceUpload records the new offset of upload id, unless the upload was
// cancelled (or expired) while its bytes were written: then ErrUploadUnknown.
// The transaction reads the record, so a cancel that commits meanwhile is a
// conflict and the retry sees the record gone.
func (s *Store) advanceUpload(id string, rec uploadRecord) error {
	return s.update(func(txn *wtxn) error {
		if _, err := txn.Get(key(kindUpload, id)); errors.Is(err, badger.ErrKeyNotFound) {
			return ErrUploadUnknown
		} else if err != nil {
			return err
		}
		return setUpload(txn, id, rec, s.opts.UploadTTL)
	})
}

// CommitUpload finishes upload id: appends r (if not nil), verifies the whole
// content against d, stores it and links it to repo. On a digest mismatch the
// upload stays open so the client may retry or cancel. Like AppendUpload, it
// fails at once with ErrUploadBusy while another request is writing the
// upload, and with ErrUploadUnknown if the upload is cancelled before the
// blob is stored.
func (s *Store) CommitUpload(repo, id string, d digest.Digest, r io.Reader) (int64, error) {
	if !validID(id) {
		return 0, ErrUploadUnknown
	}
	release, err := s.claimUpload(id)
	if err != nil {
		_, err := s.busy(repo, id)
		return 0, err
	}
	defer release()
	var size int64
	if r != nil {
		u, err := s.appendClaimed(repo, id, -1, r)
		if err != nil {
			return 0, err
		}
		size = u.Offset
	} else {
		rec, err := s.uploadRecord(repo, id)
		if err != nil {
			return 0, err
		}
		size = rec.Offset
	}
	f, err := os.OpenFile(ingestPath(s.root, id), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, ErrUploadUnknown
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	v := d.Verifier()
	if _, err := io.Copy(v, io.NewSectionReader(f, 0, size)); err != nil {
		return 0, err
	}
	if !v.Verified() {
		return 0, ErrDigestMismatch
	}
	linked := false
	if _, err := s.StatBlob(d); err == nil {
		// Already stored: keep the first copy, unless it was collected or
		// evicted since StatBlob; then this upload's file takes its place.
		if err := s.Link(repo, "", d); err == nil {
			linked = true
			os.Remove(f.Name())
		} else if !errors.Is(err, ErrNotFound) {
			return 0, err
		}
	}
	if !linked {
		if err := f.Truncate(size); err != nil {
			return 0, err
		}
		if err := s.commitLinked(f, d, size, repo, ""); errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("%w: cancelled while it was verified", ErrUploadUnknown)
		} else if err != nil {
			return 0, err
		}
	}
	s.dropUpload(id)
	return size, nil
}

// CancelUpload abandons upload id and removes its staging file. It does not
// wait for a request writing the upload: that request fails with
// ErrUploadUnknown, unless it had already stored the blob.
func (s *Store) CancelUpload(repo, id string) error {
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
