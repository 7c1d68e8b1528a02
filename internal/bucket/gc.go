package bucket

// Garbage collection of the local repositories kept in the bucket: the
// store's mark phase (cache.Mark, the same rules and retention) over what
// the bucket lists, then a sweep of tags, manifests, links, blobs, empty
// repositories and abandoned uploads.
//
// A blob is removed only when nothing keeps it: no kept manifest of any
// repository references it, no repository's link to it was written within
// the grace period, it was itself written before the grace period, and it
// is not mirrored content (published by a cluster's owner with its
// upstream as metadata: eviction bounds that, on each replica). The removal
// races pushes safely through a tombstone, gc/<digest>:
//
//	collector                             push of a manifest referencing d
//	1. write gc/<d>                       a. write repo's link to d again
//	2. check no repository links d        b. check gc/<d> is absent
//	3. delete blobs/<d>, then gc/<d>      c. check blobs/<d> is present
//
// S3 is read-after-write consistent, so either (a) comes before (2) and the
// collector sees the link and keeps the blob, or (1) comes before (b) and
// the push fails with MANIFEST_BLOB_UNKNOWN (or, after (3), at (c)): the
// client pushes the blob again. A push never ends with a manifest whose
// blob is gone.

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/opencontainers/go-digest"
)

// GCOptions tune a collection of the bucket.
type GCOptions struct {
	cache.GCOptions
	// UploadTTL: a chunked upload untouched this long is removed.
	UploadTTL time.Duration
	// Pulls returns this replica's record of the last pulls of repo's tags
	// (for not_pulled_for; each replica records its own).
	Pulls func(repo string) map[string]time.Time
}

// digestOf reads a digest back from the end of a key ".../<alg>/<hex>".
func digestOf(k string) (digest.Digest, bool) {
	i := strings.LastIndexByte(k, '/')
	if i <= 0 {
		return "", false
	}
	j := strings.LastIndexByte(k[:i], '/')
	d, err := digest.Parse(k[j+1:i] + ":" + k[i+1:])
	return d, err == nil
}

// repoState is one repository as the collection found it.
type repoState struct {
	tags      map[string]cache.TagRecord
	manifests map[digest.Digest]cache.ManifestRecord
	links     map[digest.Digest]Object
}

// Collect runs one collection (or, with DryRun, plans it).
func (r *Registry) Collect(ctx context.Context, opts GCOptions) (*cache.GCReport, error) {
	began := time.Now()
	rep := &cache.GCReport{DryRun: opts.DryRun, Tags: []cache.GCTag{}, Manifests: []cache.GCManifest{}, Blobs: []cache.GCBlob{},
		Repos: []string{}, Uploads: []cache.GCBlob{}}
	defer func() { rep.Seconds = time.Since(began).Seconds() }()
	cutoff := began.Add(-max(opts.Grace, 0))

	repos, _, err := r.listNames(ctx, "catalog/", -1, "")
	if err != nil {
		return rep, err
	}
	state := map[string]*repoState{}
	in := cache.MarkInput{Tags: map[string]map[string]cache.TagRecord{}, Manifests: map[string]map[digest.Digest]cache.ManifestRecord{},
		Pulls: map[string]map[string]time.Time{}, Written: map[digest.Digest]time.Time{}}
	blobs, _, err := r.b.List(ctx, "blobs/", "", -1)
	if err != nil {
		return rep, err
	}
	for _, o := range blobs {
		if d, ok := digestOf(o.Key); ok {
			in.Written[d] = o.Modified
		}
	}
	for _, repo := range repos {
		st := &repoState{tags: map[string]cache.TagRecord{}, manifests: map[digest.Digest]cache.ManifestRecord{}, links: map[digest.Digest]Object{}}
		state[repo] = st
		tags, _, err := r.b.List(ctx, repoKey(repo, "tags"), "", -1)
		if err != nil {
			return rep, err
		}
		for _, o := range tags {
			var t cache.TagRecord
			if err := r.getJSON(ctx, o.Key, &t); err != nil {
				if errors.Is(err, ErrNotFound) {
					continue
				}
				return rep, err
			}
			st.tags[strings.TrimPrefix(o.Key, repoKey(repo, "tags"))] = t
		}
		mans, _, err := r.b.List(ctx, repoKey(repo, "manifests"), "", -1)
		if err != nil {
			return rep, err
		}
		for _, o := range mans {
			d, ok := digestOf(o.Key)
			if !ok {
				continue
			}
			var m cache.ManifestRecord
			if err := r.getJSON(ctx, o.Key, &m); err != nil {
				if errors.Is(err, ErrNotFound) {
					continue
				}
				return rep, err
			}
			m.Digest = d
			if m.Pushed.IsZero() {
				m.Pushed = o.Modified
			}
			st.manifests[d] = m
		}
		links, _, err := r.b.List(ctx, repoKey(repo, "links"), "", -1)
		if err != nil {
			return rep, err
		}
		for _, o := range links {
			if d, ok := digestOf(o.Key); ok {
				st.links[d] = o
			}
		}
		in.Tags[repo], in.Manifests[repo] = st.tags, st.manifests
		if opts.Pulls != nil {
			in.Pulls[repo] = opts.Pulls(repo)
		}
	}
	body := func(d digest.Digest, mediaType string) (*registry.Manifest, error) {
		b, err := r.s.ManifestBody(d)
		if err != nil {
			if b, err = r.b.GetBytes(ctx, blobKey(d), r.maxManifest); err != nil {
				return nil, err
			}
		}
		return registry.ParseManifest(mediaType, b, d)
	}
	marked, err := cache.Mark(in, opts.Retention, began, body)
	if err != nil {
		return rep, err
	}

	// Tags the retention rules expire, if they still point where they did.
	for _, t := range marked.DeadTags {
		rep.Tags = append(rep.Tags, t)
		delete(state[t.Repo].tags, t.Tag)
		if opts.DryRun {
			continue
		}
		var cur cache.TagRecord
		if err := r.getJSON(ctx, tagKey(t.Repo, t.Tag), &cur); err == nil && cur.Digest == t.Digest {
			if err := r.b.Delete(ctx, tagKey(t.Repo, t.Tag)); err != nil {
				return rep, err
			}
		}
	}
	// Manifests no kept tag reaches that a rule expires.
	for _, m := range marked.DeadManifests {
		if tagged(state[m.Repo].tags, m.Digest) {
			continue
		}
		rep.Manifests = append(rep.Manifests, m)
		rec := state[m.Repo].manifests[m.Digest]
		delete(state[m.Repo].manifests, m.Digest)
		if opts.DryRun {
			continue
		}
		if rec.Subject != "" {
			if err := r.b.Delete(ctx, referrerKey(m.Repo, rec.Subject, m.Digest)); err != nil {
				return rep, err
			}
		}
		if err := r.b.Delete(ctx, manifestKey(m.Repo, m.Digest)); err != nil {
			return rep, err
		}
		_ = r.s.DeleteManifest(m.Repo, m.Digest)
	}
	// Links no kept manifest of the repository needs, once past the grace
	// period (checked again: a push may have just written one).
	linked := map[digest.Digest]bool{}
	for _, repo := range repos {
		st := state[repo]
		for d, o := range st.links {
			if marked.KeptIn[repo][d] || !o.Modified.Before(cutoff) {
				linked[d] = true
				continue
			}
			if opts.DryRun {
				rep.Unlinked++
				delete(st.links, d)
				continue
			}
			if cur, err := r.b.StatObject(ctx, linkKey(repo, d)); err == nil && !cur.Modified.Before(cutoff) {
				linked[d] = true
				continue
			} else if err != nil && !errors.Is(err, ErrNotFound) {
				return rep, err
			}
			if err := r.b.Delete(ctx, linkKey(repo, d)); err != nil {
				return rep, err
			}
			_ = r.s.Unlink(repo, d)
			rep.Unlinked++
			delete(st.links, d)
		}
	}
	// Blobs nothing keeps.
	for _, o := range blobs {
		d, ok := digestOf(o.Key)
		if !ok || marked.Kept[d] || linked[d] || !o.Modified.Before(cutoff) {
			continue
		}
		info, err := r.b.StatObject(ctx, o.Key)
		if errors.Is(err, ErrNotFound) {
			continue
		} else if err != nil {
			return rep, err
		}
		if info.Origin != "" || !info.Modified.Before(cutoff) {
			continue // mirrored content, or written again meanwhile
		}
		if !opts.DryRun {
			removed, err := r.removeBlob(ctx, d)
			if err != nil {
				return rep, err
			}
			if !removed {
				continue
			}
		}
		rep.Blobs = append(rep.Blobs, cache.GCBlob{Digest: d, Size: o.Size})
		rep.Bytes += o.Size
	}
	// Repositories with nothing left.
	for _, repo := range repos {
		st := state[repo]
		if len(st.tags) > 0 || len(st.manifests) > 0 || len(st.links) > 0 {
			continue
		}
		if !opts.DryRun {
			if n, _, err := r.b.List(ctx, "repos/"+repo+"/_", "", 1); err != nil {
				return rep, err
			} else if len(n) > 0 {
				continue // written meanwhile
			}
			if err := r.b.Delete(ctx, catalogKey(repo)); err != nil {
				return rep, err
			}
			r.known.Remove(repo)
		}
		rep.Repos = append(rep.Repos, repo)
	}
	// Chunked uploads nobody has touched for UploadTTL.
	if opts.UploadTTL > 0 {
		ups, _, err := r.b.List(ctx, "uploads/", "", -1)
		if err != nil {
			return rep, err
		}
		type upload struct {
			last  time.Time
			bytes int64
		}
		byID := map[string]*upload{}
		for _, o := range ups {
			id, _, _ := strings.Cut(strings.TrimPrefix(o.Key, "uploads/"), "/")
			u := byID[id]
			if u == nil {
				u = &upload{}
				byID[id] = u
			}
			if o.Modified.After(u.last) {
				u.last = o.Modified
			}
			u.bytes += o.Size
		}
		for id, u := range byID {
			if began.Sub(u.last) < opts.UploadTTL {
				continue
			}
			if !opts.DryRun {
				if err := r.b.DeletePrefix(ctx, uploadKey(id)); err != nil {
					return rep, err
				}
			}
			rep.Uploads = append(rep.Uploads, cache.GCBlob{Upload: id, Size: u.bytes})
			rep.Bytes += u.bytes
		}
	}
	return rep, nil
}

func tagged(tags map[string]cache.TagRecord, d digest.Digest) bool {
	for _, t := range tags {
		if t.Digest == d {
			return true
		}
	}
	return false
}

// removeBlob removes blob d unless a repository links it, under its
// tombstone (see the top of this file). It reports whether it removed it.
func (r *Registry) removeBlob(ctx context.Context, d digest.Digest) (bool, error) {
	if err := r.b.PutBytes(ctx, tombstoneKey(d), nil); err != nil {
		return false, err
	}
	// The catalog as it is now, after the tombstone: a repository created
	// since the collection began is asked too.
	repos, _, err := r.listNames(ctx, "catalog/", -1, "")
	if err != nil {
		return false, err
	}
	defer func() {
		// Written again by a later collection if needed; a leftover one
		// only makes a push of d fail once more (it pushes the blob again).
		_ = r.b.Delete(context.WithoutCancel(ctx), tombstoneKey(d))
	}()
	for _, repo := range repos {
		if _, err := r.b.Stat(ctx, linkKey(repo, d)); err == nil {
			return false, nil
		} else if !errors.Is(err, ErrNotFound) {
			return false, err
		}
	}
	if err := r.b.Delete(ctx, blobKey(d)); err != nil {
		return false, err
	}
	return true, nil
}
