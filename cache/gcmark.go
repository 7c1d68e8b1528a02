package cache

import (
	"time"

	"github.com/berth-dev/berth/internal/registry"
	"github.com/opencontainers/go-digest"
)

// MarkInput is what the mark phase reads of local repositories kept by
// another storage driver (the bucket of a cluster): every repository in it
// is local.
type MarkInput struct {
	Tags      map[string]map[string]TagRecord
	Manifests map[string]map[digest.Digest]ManifestRecord
	// Pulls are the last pulls of tags, for not_pulled_for.
	Pulls map[string]map[string]time.Time
	// Written is when each blob (manifest bodies included) was last written,
	// for untagged_after where a manifest record has no Pushed time.
	Written map[digest.Digest]time.Time
}

// Marked is the outcome of Mark.
type Marked struct {
	DeadTags      []GCTag
	DeadManifests []GCManifest
	// Kept are the digests some kept manifest needs (bodies, configs,
	// layers); KeptIn the same, per repository.
	Kept   map[digest.Digest]bool
	KeptIn map[string]map[digest.Digest]bool
}

// Mark is the collector's mark phase over in, with the same rules as the
// store's own collection; body returns a manifest parsed.
func Mark(in MarkInput, rules []RetentionRule, now time.Time, body func(d digest.Digest, mediaType string) (*registry.Manifest, error)) (*Marked, error) {
	ix := &gcIndex{origin: map[string]string{}, tags: in.Tags, manifests: in.Manifests, pulls: in.Pulls,
		blobs: map[digest.Digest]blobRecord{}, links: map[digest.Digest][]string{}}
	for d, t := range in.Written {
		ix.blobs[d] = blobRecord{Created: t}
	}
	m, err := mark(ix, rules, now, body)
	if err != nil {
		return nil, err
	}
	return &Marked{DeadTags: m.deadTags, DeadManifests: m.deadManifests, Kept: m.keptBlobs, KeptIn: m.keptIn}, nil
}
