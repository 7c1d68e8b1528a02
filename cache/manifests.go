package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func jsonBytes(v any) ([]byte, error) { return json.Marshal(v) }

// PutManifest stores a manifest body (already validated by the caller) in
// repo, records its referrer entry when it has a subject, and points tag at
// it when tag is not empty. fetchedAt stamps the tag's freshness.
func (s *Store) PutManifest(repo, origin string, m ManifestRecord, body []byte, tag string, fetchedAt time.Time) error {
	// A push is refused at the reserve (Local.PushManifest); a mirrored
	// manifest, small and needed to serve a pull at all, may take the index's
	// half of it.
	if err := s.space.admitSmall(int64(len(body))); err != nil {
		return err
	}
	return s.PutManifestRefs(repo, origin, m, body, tag, fetchedAt, nil, nil)
}

// PutManifestRefs is PutManifest for a pushed manifest whose blobs and
// child manifests the caller found in repo. The same transaction checks
// them again and stamps them as referenced now, so a collection that
// races the push either sees the stamp and keeps them, or removed them
// first and the push fails with ErrRefGone (see gc.go).
func (s *Store) PutManifestRefs(repo, origin string, m ManifestRecord, body []byte, tag string, fetchedAt time.Time, blobs, children []digest.Digest) error {
	for attempt := 0; ; attempt++ {
		err := s.putManifest(repo, origin, m, body, tag, fetchedAt, blobs, children)
		// ErrNotFound: the body was evicted between storing and indexing
		// it (a race with an eviction pass); store it again.
		if !errors.Is(err, ErrNotFound) || attempt == 2 {
			return err
		}
	}
}

func (s *Store) putManifest(repo, origin string, m ManifestRecord, body []byte, tag string, fetchedAt time.Time, blobs, children []digest.Digest) error {
	if _, err := s.StatBlob(m.Digest); err != nil {
		if err := s.putBlob(repo, origin, m.Digest, int64(len(body)), bytes.NewReader(body), s.space.reserve/2); err != nil {
			return err
		}
	}
	s.cacheManifestBody(m.Digest, body)
	return s.update(func(txn *wtxn) error {
		if err := s.stampLinked(txn, m.Digest); err != nil {
			return err
		}
		if err := s.stampRefs(txn, repo, blobs, children); err != nil {
			return err
		}
		if err := ensureRepo(txn, repo, origin); err != nil {
			return err
		}
		if err := txn.Set(key(kindLink, repo, m.Digest.String()), nil); err != nil {
			return err
		}
		// Annotations travel in the referrer record only: the manifest
		// record is read on every pull and stays small.
		rec := m
		rec.Annotations = nil
		rec.Pushed = s.now()
		if err := setJSON(txn, key(kindManifest, repo, m.Digest.String()), rec); err != nil {
			return err
		}
		if m.Subject != "" {
			if err := setJSON(txn, key(kindReferrer, repo, m.Subject.String(), m.Digest.String()), m); err != nil {
				return err
			}
		}
		if tag != "" {
			return setJSON(txn, key(kindTag, repo, tag), TagRecord{Digest: m.Digest, FetchedAt: fetchedAt})
		}
		return nil
	})
}

// Manifest returns the record of manifest d in repo, or ErrNotFound. It
// has no annotations (Referrers lists them).
func (s *Store) Manifest(repo string, d digest.Digest) (ManifestRecord, error) {
	var m ManifestRecord
	err := s.cachedGet(keyString(kindManifest, repo, d.String()), &m)
	return m, err
}

// ManifestBody returns the bytes of a stored manifest. It counts as an
// access for eviction.
func (s *Store) ManifestBody(d digest.Digest) ([]byte, error) {
	if b, ok := s.manifests.Get(d); ok {
		s.Touch(d)
		return b, nil
	}
	b, err := os.ReadFile(blobPath(s.root, d))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	s.Touch(d)
	s.cacheManifestBody(d, b)
	return b, nil
}

// maxCachedManifest keeps the in-memory manifest cache small whatever is
// pushed: a larger manifest is read from disk each time (still fast, and rare).
const maxCachedManifest = 64 << 10

func (s *Store) cacheManifestBody(d digest.Digest, b []byte) {
	if len(b) <= maxCachedManifest {
		s.manifests.Add(d, b)
	}
}

// Tag returns what tag points at in repo, or ErrNotFound.
func (s *Store) Tag(repo, tag string) (TagRecord, error) {
	var t TagRecord
	err := s.cachedGet(keyString(kindTag, repo, tag), &t)
	return t, err
}

// SetTag points tag in repo at d, stamped with fetchedAt.
func (s *Store) SetTag(repo, tag string, d digest.Digest, fetchedAt time.Time) error {
	return s.update(func(txn *wtxn) error {
		return setJSON(txn, key(kindTag, repo, tag), TagRecord{Digest: d, FetchedAt: fetchedAt})
	})
}

// DeleteTag removes a tag; ErrNotFound if there was none.
func (s *Store) DeleteTag(repo, tag string) error {
	return s.update(func(txn *wtxn) error {
		k := key(kindTag, repo, tag)
		if _, err := txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
			return ErrNotFound
		}
		return txn.Delete(k)
	})
}

// Tags lists repo's tags in lexical order after last, at most n (n <= 0: all).
func (s *Store) Tags(repo string, n int, last string) (tags []string, more bool, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		tags, more = listKeys(txn, prefix(kindTag, repo), last, n)
		return nil
	})
	return tags, more, err
}

// Manifests lists the records of every manifest repo holds, tagged or not
// (without annotations), in digest order.
func (s *Store) Manifests(repo string) ([]ManifestRecord, error) {
	out := []ManifestRecord{}
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix(kindManifest, repo), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var m ManifestRecord
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &m) }); err != nil {
				return err
			}
			m.Annotations = nil
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// DeleteManifest removes manifest d from repo with every tag pointing at it
// and its referrer entry; ErrNotFound if repo did not hold it.
func (s *Store) DeleteManifest(repo string, d digest.Digest) error {
	return s.update(func(txn *wtxn) error { return deleteManifest(txn, repo, d) })
}

// deleteManifest is DeleteManifest inside a transaction; eviction uses it
// too, so an evicted mirrored manifest leaves no tag or referrer behind.
func deleteManifest(txn *wtxn, repo string, d digest.Digest) error {
	var m ManifestRecord
	if err := getJSON(txn, key(kindManifest, repo, d.String()), &m); err != nil {
		return err
	}
	var dead [][]byte
	p := prefix(kindTag, repo)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true})
	for it.Rewind(); it.Valid(); it.Next() {
		var t TagRecord
		if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &t) }); err == nil && t.Digest == d {
			dead = append(dead, it.Item().KeyCopy(nil))
		}
	}
	it.Close()
	dead = append(dead, key(kindManifest, repo, d.String()), key(kindLink, repo, d.String()))
	if m.Subject != "" {
		dead = append(dead, key(kindReferrer, repo, m.Subject.String(), d.String()))
	}
	for _, k := range dead {
		if err := txn.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Referrers lists the manifests in repo whose subject is d, filtered by
// artifactType when it is not empty.
func (s *Store) Referrers(repo string, d digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	out := []ocispec.Descriptor{}
	err := s.db.View(func(txn *badger.Txn) error {
		p := prefix(kindReferrer, repo, d.String())
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var m ManifestRecord
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &m) }); err != nil {
				return err
			}
			if artifactType != "" && m.ArtifactType != artifactType {
				continue
			}
			out = append(out, ocispec.Descriptor{MediaType: m.MediaType, Digest: m.Digest, Size: m.Size,
				ArtifactType: m.ArtifactType, Annotations: m.Annotations})
		}
		return nil
	})
	return out, err
}
