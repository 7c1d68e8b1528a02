package cache

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// RepoInfo summarises one repository for an operator (berth ls).
type RepoInfo struct {
	Name string `json:"name"`
	// Origin is "local" for pushed content, else the upstream it mirrors.
	Origin    string `json:"origin"`
	Tags      int    `json:"tags"`
	Manifests int    `json:"manifests"`
	Blobs     int    `json:"blobs"`
	// Bytes of the blobs it links (a blob shared by several counts in each).
	Bytes int64 `json:"bytes"`
	// LastPushed is its newest tag's push (or, mirrored, fetch) time.
	LastPushed time.Time `json:"lastPushed,omitzero"`
	// LastPulled is its latest recorded pull: of a tag for local
	// repositories, of a blob for mirrored ones (recorded with a cache limit).
	LastPulled time.Time `json:"lastPulled,omitzero"`
}

// TagInfo describes one tag for an operator.
type TagInfo struct {
	Tag    string        `json:"tag"`
	Digest digest.Digest `json:"digest"`
	// Bytes of the manifest, its config and layers (an index: its own body
	// and its children's), as far as they are stored.
	Bytes  int64     `json:"bytes"`
	Pushed time.Time `json:"pushed,omitzero"`
	Pulled time.Time `json:"pulled,omitzero"`
}

// DiskUsage is what the stored blobs take, by owner (berth du).
type DiskUsage struct {
	// Local: blobs a local repository links.
	Local int64 `json:"local"`
	// Upstreams: blobs only mirrored repositories link, by upstream.
	Upstreams map[string]int64 `json:"upstreams"`
	// Unreferenced: blobs no repository links (the collector's next work).
	Unreferenced int64 `json:"unreferenced"`
	Total        int64 `json:"total"`
	// Limit is max_cache_bytes (0: unbounded); it bounds Upstreams' sum.
	Limit int64 `json:"limit"`
}

// inventory is one read of what the index holds, for RepoInfos and DiskUsage.
type inventory struct {
	origin   map[string]string
	blobs    map[digest.Digest]int64
	access   map[digest.Digest]time.Time
	links    map[string][]digest.Digest
	byBlob   map[digest.Digest][]string
	tags     map[string]int
	pushed   map[string]time.Time
	pulled   map[string]time.Time
	manifest map[string]int
}

func (s *Store) readInventory() (*inventory, error) {
	inv := &inventory{origin: map[string]string{}, blobs: map[digest.Digest]int64{}, access: map[digest.Digest]time.Time{},
		links: map[string][]digest.Digest{}, byBlob: map[digest.Digest][]string{}, tags: map[string]int{},
		pushed: map[string]time.Time{}, pulled: map[string]time.Time{}, manifest: map[string]int{}}
	err := s.db.View(func(txn *badger.Txn) error {
		steps := []struct {
			kind   string
			values bool
			fn     func(rest string, v []byte) error
		}{
			{kindRepo, true, func(repo string, v []byte) error {
				var r RepoRecord
				_ = json.Unmarshal(v, &r)
				inv.origin[repo] = r.Origin
				return nil
			}},
			{kindBlob, true, func(rest string, v []byte) error {
				var r blobRecord
				_ = json.Unmarshal(v, &r)
				inv.blobs[digest.Digest(rest)] = r.Size
				return nil
			}},
			{kindAccess, true, func(rest string, v []byte) error {
				var r accessRecord
				_ = json.Unmarshal(v, &r)
				inv.access[digest.Digest(rest)] = r.At
				return nil
			}},
			{kindLink, false, func(rest string, _ []byte) error {
				repo, ds, _ := strings.Cut(rest, sep)
				inv.links[repo] = append(inv.links[repo], digest.Digest(ds))
				inv.byBlob[digest.Digest(ds)] = append(inv.byBlob[digest.Digest(ds)], repo)
				return nil
			}},
			{kindTag, true, func(rest string, v []byte) error {
				repo, _, _ := strings.Cut(rest, sep)
				var t TagRecord
				_ = json.Unmarshal(v, &t)
				inv.tags[repo]++
				if t.FetchedAt.After(inv.pushed[repo]) {
					inv.pushed[repo] = t.FetchedAt
				}
				return nil
			}},
			{kindPull, true, func(rest string, v []byte) error {
				repo, _, _ := strings.Cut(rest, sep)
				var r pullRecord
				_ = json.Unmarshal(v, &r)
				if r.At.After(inv.pulled[repo]) {
					inv.pulled[repo] = r.At
				}
				return nil
			}},
			{kindManifest, false, func(rest string, _ []byte) error {
				repo, _, _ := strings.Cut(rest, sep)
				inv.manifest[repo]++
				return nil
			}},
		}
		for _, st := range steps {
			if err := scanKind(txn, st.kind, st.values, st.fn); err != nil {
				return err
			}
		}
		return nil
	})
	s.gc.pulls.Range(func(k, v any) bool {
		repo, _, _ := strings.Cut(k.(string), sep)
		if at := time.Unix(0, v.(*pullEntry).at.Load()); at.After(inv.pulled[repo]) {
			inv.pulled[repo] = at
		}
		return true
	})
	s.access.Range(func(k, v any) bool {
		d := k.(digest.Digest)
		if at := time.Unix(0, v.(*accessEntry).at.Load()); at.After(inv.access[d]) {
			inv.access[d] = at
		}
		return true
	})
	return inv, err
}

// Repos summarises every repository, in name order.
func (s *Store) Repos() ([]RepoInfo, error) {
	inv, err := s.readInventory()
	if err != nil {
		return nil, err
	}
	out := []RepoInfo{}
	for _, repo := range sortedKeys(inv.origin) {
		ri := RepoInfo{Name: repo, Origin: inv.origin[repo], Tags: inv.tags[repo], Manifests: inv.manifest[repo],
			LastPushed: inv.pushed[repo], LastPulled: inv.pulled[repo]}
		if ri.Origin == "" {
			ri.Origin = "local"
		}
		for _, d := range inv.links[repo] {
			if n, ok := inv.blobs[d]; ok {
				ri.Blobs++
				ri.Bytes += n
				if inv.origin[repo] != "" && inv.access[d].After(ri.LastPulled) {
					ri.LastPulled = inv.access[d]
				}
			}
		}
		out = append(out, ri)
	}
	return out, nil
}

// DiskUsage attributes every stored blob to local content, one upstream,
// or nobody.
func (s *Store) DiskUsage() (DiskUsage, error) {
	inv, err := s.readInventory()
	du := DiskUsage{Upstreams: map[string]int64{}, Limit: s.opts.MaxBytes}
	if err != nil {
		return du, err
	}
	for d, n := range inv.blobs {
		du.Total += n
		repos := inv.byBlob[d]
		owner := ""
		for _, r := range repos {
			o, known := inv.origin[r]
			if !known || o == "" {
				owner = "local"
				break
			}
			if owner == "" {
				owner = o
			}
		}
		switch owner {
		case "":
			du.Unreferenced += n
		case "local":
			du.Local += n
		default:
			du.Upstreams[owner] += n
		}
	}
	return du, nil
}

// TagInfos describes repo's tags in name order; ErrNotFound if there is no
// such repository.
func (s *Store) TagInfos(repo string) ([]TagInfo, error) {
	if _, err := s.Repository(repo); err != nil {
		return nil, err
	}
	tags, _, err := s.Tags(repo, 0, "")
	if err != nil {
		return nil, err
	}
	pulls, err := s.Pulls(repo)
	if err != nil {
		return nil, err
	}
	out := []TagInfo{}
	for _, t := range tags {
		rec, err := s.Tag(repo, t)
		if err != nil {
			continue // removed meanwhile
		}
		ti := TagInfo{Tag: t, Digest: rec.Digest, Pushed: rec.FetchedAt, Pulled: pulls[t]}
		ti.Bytes = s.imageBytes(repo, rec.Digest, map[digest.Digest]bool{})
		out = append(out, ti)
	}
	return out, nil
}

// imageBytes sums the stored blobs of manifest d and what it references.
func (s *Store) imageBytes(repo string, d digest.Digest, seen map[digest.Digest]bool) int64 {
	size := func(d digest.Digest) int64 {
		if seen[d] {
			return 0
		}
		seen[d] = true
		n, err := s.StatBlob(d)
		if err != nil {
			return 0
		}
		return n
	}
	m, err := s.Manifest(repo, d)
	if err != nil {
		return 0
	}
	total := size(d)
	p, err := s.parseStored(d, m.MediaType)
	if err != nil {
		return total
	}
	for _, b := range p.Blobs {
		total += size(b.Digest)
	}
	for _, c := range p.Children {
		total += s.imageBytes(repo, c.Digest, seen) // content-addressed: no cycles
	}
	return total
}
