package cache

import (
	"errors"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
)

// PurgeReport is what an operator's purge removed.
type PurgeReport struct {
	Tags      []string        `json:"tags"`
	Manifests []digest.Digest `json:"manifests"`
	// Blobs are removed from the disk: nothing else linked them.
	Blobs []GCBlob `json:"blobs"`
	// Unlinked counts blobs the repository lost that others still hold.
	Unlinked int   `json:"unlinked"`
	Bytes    int64 `json:"bytes"`
}

// PurgeManifest removes manifest d from repo at once (no grace period: an
// operator asked), with the children of an index, the referrers of each,
// the tags pointing at any of them, and the repository's links to the
// blobs they referenced that its remaining manifests do not; a blob no
// repository links any longer is removed from the disk. It is meant for
// mirrored content (a bad image cached, an upstream that retagged): the next
// pull fetches it again. ErrNotFound if repo does not hold d.
func (s *Store) PurgeManifest(repo string, d digest.Digest) (*PurgeReport, error) {
	rep := &PurgeReport{Tags: []string{}, Manifests: []digest.Digest{}, Blobs: []GCBlob{}}
	if _, err := s.Manifest(repo, d); err != nil {
		return rep, err
	}
	// The manifests to remove: d, its children, and referrers of either.
	var order []digest.Digest
	seen := map[digest.Digest]bool{}
	refs := map[digest.Digest]bool{}
	var walk func(d digest.Digest) error
	walk = func(d digest.Digest) error {
		if seen[d] {
			return nil
		}
		m, err := s.Manifest(repo, d)
		if errors.Is(err, ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		seen[d] = true
		order = append(order, d)
		refs[d] = true
		if p, err := s.parseStored(d, m.MediaType); err == nil {
			for _, b := range p.Blobs {
				refs[b.Digest] = true
			}
			for _, c := range p.Children {
				if err := walk(c.Digest); err != nil {
					return err
				}
			}
		}
		rs, err := s.Referrers(repo, d, "")
		if err != nil {
			return err
		}
		for _, r := range rs {
			if err := walk(r.Digest); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(d); err != nil {
		return rep, err
	}
	before, _, err := s.Tags(repo, 0, "")
	if err != nil {
		return rep, err
	}
	for _, m := range order {
		if err := s.DeleteManifest(repo, m); err != nil && !errors.Is(err, ErrNotFound) {
			return rep, err
		}
		rep.Manifests = append(rep.Manifests, m)
	}
	after, _, err := s.Tags(repo, 0, "")
	if err != nil {
		return rep, err
	}
	for _, t := range before {
		if !slices.Contains(after, t) {
			rep.Tags = append(rep.Tags, t)
		}
	}
	// What the repository's remaining manifests still reference stays linked.
	rest, err := s.Manifests(repo)
	if err != nil {
		return rep, err
	}
	for _, m := range rest {
		delete(refs, m.Digest)
		if p, err := s.parseStored(m.Digest, m.MediaType); err == nil {
			for _, b := range p.Blobs {
				delete(refs, b.Digest)
			}
		}
	}
	for _, b := range sortedKeys(refs) {
		if err := s.purgeBlob(repo, b, rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// PurgeBlob removes repo's link to blob d, and the blob itself if no other
// repository links it; ErrNotFound if repo did not link it.
func (s *Store) PurgeBlob(repo string, d digest.Digest) (*PurgeReport, error) {
	rep := &PurgeReport{Tags: []string{}, Manifests: []digest.Digest{}, Blobs: []GCBlob{}}
	if ok, err := s.Linked(repo, d); err != nil {
		return rep, err
	} else if !ok {
		return rep, ErrNotFound
	}
	return rep, s.purgeBlob(repo, d, rep)
}

func (s *Store) purgeBlob(repo string, d digest.Digest, rep *PurgeReport) error {
	size, removed, err := s.removeBlob(d, time.Time{}, []string{repo}, true)
	if err != nil {
		return err
	}
	if removed {
		rep.Blobs = append(rep.Blobs, GCBlob{Digest: d, Size: size})
		rep.Bytes += size
		return nil
	}
	if err := s.Unlink(repo, d); err == nil {
		rep.Unlinked++
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	return nil
}

// Revalidate marks tag in repo as stale: the next pull of a mirrored tag
// asks its upstream, whatever its tag_ttl. ErrNotFound if there is no such tag.
func (s *Store) Revalidate(repo, tag string) error {
	return s.update(func(txn *wtxn) error {
		var t TagRecord
		if err := getJSON(txn, key(kindTag, repo, tag), &t); err != nil {
			return err
		}
		t.FetchedAt = time.Time{}
		return setJSON(txn, key(kindTag, repo, tag), t)
	})
}
