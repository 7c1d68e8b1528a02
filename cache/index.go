package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// --- records -----------------------------------------------------------------

type blobRecord struct {
	Size int64 `json:"size"`
	// Created is when the blob was indexed: its age for eviction until it is
	// read. Zero in records written before eviction existed.
	Created time.Time `json:"created,omitzero"`
	// Linked is when a repository was last linked to the blob or a pushed
	// manifest last referenced it: the collector's grace period runs from
	// the later of Created and Linked (see gc.go).
	Linked time.Time `json:"linked,omitzero"`
}

// ManifestRecord describes a manifest stored in a repository.
type ManifestRecord struct {
	Digest       digest.Digest     `json:"digest"`
	MediaType    string            `json:"mediaType"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Subject      digest.Digest     `json:"subject,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	// Pushed is when the manifest was last stored or referenced by an index
	// pushed after it (zero in records written before it existed).
	Pushed time.Time `json:"pushed,omitzero"`
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
	deleted bool
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
	t.deleted = true
	return t.Txn.Delete(k)
}

// update runs fn in a read-write transaction, retrying on conflicts, and
// evicts every key it wrote from the hot cache.
func (s *Store) update(fn func(txn *wtxn) error) error {
	if err := s.space.admitIndex(); err != nil {
		return err
	}
	s.hotMu.Lock()
	defer s.hotMu.Unlock()
	for {
		var touched []string
		var deleted bool
		err := s.db.Update(func(txn *badger.Txn) error {
			w := &wtxn{Txn: txn}
			err := fn(w)
			touched, deleted = w.touched, w.deleted
			return err
		})
		for _, k := range touched {
			s.hot.Remove(k)
		}
		if deleted {
			// After the commit and the hot cache: a reader that sees the
			// new count sees the deletion (StatRepoBlob).
			s.deletions.Add(1)
		}
		if err == nil {
			// The directory removed or replaced while it committed: Badger's
			// mmap'd write succeeded into files nobody will read again, so
			// it must not be acknowledged.
			err = s.space.checkIdent()
		}
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
	}
}

// maxCachedValue bounds what the hot cache keeps of one index value.
// Manifest records are kept whatever their stored size: their annotations,
// the only part that can be large, are dropped when they are read.
const maxCachedValue = 4 << 10

func isManifestRecord(v any) bool { _, ok := v.(*ManifestRecord); return ok }

// hotValue is an index value in the hot cache: decoded once, so a warm
// request pays no JSON decoding. Records handed out share their maps
// (annotations): callers read them, never change them.
type hotValue struct {
	absent bool // the key is known not to be in the index
	val    any  // TagRecord, ManifestRecord, RepoRecord, blobRecord; nil for existence-only keys
}

// cachedGet reads the value of k into v (nil v: existence only) through the
// hot cache; ErrNotFound if there is none. Absence is cached too (a mirrored
// name is looked up as a local repository on every request): a write of k
// evicts it like any other value, under the same lock.
func (s *Store) cachedGet(k string, v any) error {
	hv, ok := s.hot.Get(k)
	if !ok {
		var b []byte
		s.hotMu.RLock()
		err := s.db.View(func(txn *badger.Txn) error {
			item, err := txn.Get([]byte(k))
			if errors.Is(err, badger.ErrKeyNotFound) {
				return ErrNotFound
			}
			if err != nil {
				return err
			}
			b, err = item.ValueCopy(nil)
			return err
		})
		switch {
		case err == nil && v != nil:
			err = json.Unmarshal(b, v)
			if mr, ok := v.(*ManifestRecord); ok {
				mr.Annotations = nil // in records written before they were left out
			}
			if err == nil && (len(b) <= maxCachedValue || isManifestRecord(v)) {
				s.hot.Add(k, hotValue{val: record(v)})
			}
		case err == nil:
			s.hot.Add(k, hotValue{})
		case errors.Is(err, ErrNotFound):
			s.hot.Add(k, hotValue{absent: true})
		}
		s.hotMu.RUnlock()
		return err
	}
	if hv.absent {
		return ErrNotFound
	}
	if v != nil && !setRecord(v, hv.val) {
		return fmt.Errorf("hot cache: %T under %q cannot fill %T", hv.val, k, v)
	}
	return nil
}

// record is the value v points at, for the hot cache.
func record(v any) any {
	switch p := v.(type) {
	case *TagRecord:
		return *p
	case *ManifestRecord:
		return *p
	case *RepoRecord:
		return *p
	case *blobRecord:
		return *p
	}
	return nil
}

// setRecord copies a cached record into v; false if the types differ.
func setRecord(v, val any) bool {
	var ok bool
	switch p := v.(type) {
	case *TagRecord:
		*p, ok = val.(TagRecord)
	case *ManifestRecord:
		*p, ok = val.(ManifestRecord)
	case *RepoRecord:
		*p, ok = val.(RepoRecord)
	case *blobRecord:
		*p, ok = val.(blobRecord)
	}
	return ok
}

// --- repositories ------------------------------------------------------------

// Repository reports whether repo exists and where it came from.
func (s *Store) Repository(repo string) (RepoRecord, error) {
	var r RepoRecord
	err := s.cachedGet(keyString(kindRepo, repo), &r)
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
