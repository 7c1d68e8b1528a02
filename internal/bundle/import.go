package bundle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/opencontainers/go-digest"
)

// ImportOptions tune Import.
type ImportOptions struct {
	// Upstream maps the first element of a name to the configured upstream
	// it names (by name or alias); ok false means the name is local.
	Upstream func(host string) (name string, ok bool)
	// Progress, if set, is called with the number of bytes of the bundle
	// read, as they are read.
	Progress func(n int)
	// Publish, if set, is given each image of a local repository once the
	// store holds it (with storage.driver s3 the bucket is the truth of
	// local repositories: it publishes the image there). tag is "" for a
	// referrer; created is when the bundle was made.
	Publish func(ctx context.Context, repo, tag string, img Image, created time.Time) error
	// Allow, if set, is asked for every repository the bundle writes
	// (origin is the upstream for mirrored content, "" for a local
	// repository) before anything is committed; an error refuses the
	// whole bundle with that error.
	Allow func(repo, origin string) error
}

// Summary is what an import did.
type Summary struct {
	Images   int    `json:"images"`   // entries of index.json (referrers included)
	Blobs    int    `json:"blobs"`    // blobs added to the store
	Bytes    int64  `json:"bytes"`    // their size
	Skipped  int    `json:"skipped"`  // blobs of the bundle already held
	Tags     int    `json:"tags"`     // tags created or moved
	TagsKept int    `json:"tagsKept"` // tags left where they were: the bundle is not newer
	Created  string `json:"created"`  // the bundle's time stamp
}

// Import reads a bundle from r once and adds it to st, all or nothing:
// every blob is verified into a staging file, then every entry is checked
// (its references in the bundle or already in st), and only then are
// blobs committed, manifests indexed and tags set. On any error nothing of
// the bundle is visible.
//
// A name whose first element is an upstream (opts.Upstream) lands as that
// upstream's cached content ("<upstream>/<repository>"); any other is a
// local repository. A tag already present is moved only if the bundle was
// made after the tag was last set or confirmed (its fetchedAt); the tag is
// then stamped with the bundle's time. Importing a bundle twice changes
// nothing.
func Import(ctx context.Context, st *cache.Store, r io.Reader, opts ImportOptions) (Summary, error) {
	var sum Summary
	staged := map[digest.Digest]*cache.Staged{}
	held := map[digest.Digest]bool{}
	defer func() {
		for _, s := range staged {
			s.Discard() // after a commit: harmless
		}
	}()
	var in io.Reader = &ctxReader{ctx: ctx, r: r}
	if opts.Progress != nil {
		in = &progressReader{r: in, fn: opts.Progress}
	}
	// Stage verifies what it stores: each blob is hashed once.
	idx, err := ReadInto(in, func(d digest.Digest, size int64, br io.Reader) error {
		if staged[d] != nil || held[d] {
			return nil // Read drains and verifies it
		}
		if _, err := st.StatBlob(d); err == nil {
			held[d] = true
			sum.Skipped++
			return nil
		}
		s, err := st.Stage(d, size, br)
		if err != nil {
			var de *DigestError
			if errors.As(err, &de) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, ErrTruncated) {
				return err
			}
			if errors.Is(err, cache.ErrDigestMismatch) || errors.Is(err, cache.ErrSizeMismatch) {
				return &DigestError{Digest: d, Err: ErrCorrupt, Detail: err.Error()}
			}
			return fmt.Errorf("staging %s: %w", d, err)
		}
		staged[d] = s
		return nil
	})
	if err != nil {
		return sum, err
	}
	sum.Images = len(idx.Manifests)
	if !idx.Created.IsZero() {
		sum.Created = idx.Created.Format(time.RFC3339)
	}
	images, err := Check(idx, storeSource{st: st, staged: staged})
	if err != nil {
		return sum, err
	}
	type target struct {
		repo, origin, tag string
	}
	targets := make([]target, len(images))
	for i, img := range images {
		name, tag, _, err := SplitRef(img.Name)
		if err != nil {
			return sum, fmt.Errorf("%w: %v", ErrNotBundle, err)
		}
		repo, origin := name, ""
		if host, rest, ok := strings.Cut(name, "/"); ok && opts.Upstream != nil {
			if up, ok := opts.Upstream(host); ok {
				if up == "docker.io" && !strings.Contains(rest, "/") {
					rest = "library/" + rest
				}
				repo, origin = up+"/"+rest, up
			}
		}
		if !oci.ValidName(repo) {
			return sum, fmt.Errorf("%w: %q is neither a configured upstream's name nor a valid local repository name", ErrNotBundle, oci.Clip(name))
		}
		if opts.Allow != nil {
			if err := opts.Allow(repo, origin); err != nil {
				return sum, err
			}
		}
		if img.Referrer {
			tag = ""
		}
		targets[i] = target{repo, origin, tag}
	}
	if err := ctx.Err(); err != nil {
		return sum, err
	}
	// Everything is verified: from here on, commit. Blobs first, so that no
	// manifest is indexed before what it references is stored.
	for d, s := range staged {
		if err := s.Commit(); err != nil {
			return sum, fmt.Errorf("commit %s: %w", d, err)
		}
		sum.Blobs++
		sum.Bytes += s.Size
	}
	created := idx.Created
	if created.IsZero() {
		created = time.Unix(0, 0) // never newer than a tag berth holds
	}
	for i, img := range images {
		t := targets[i]
		for _, b := range img.Blobs {
			if err := st.Link(t.repo, t.origin, b.Digest); err != nil {
				return sum, fmt.Errorf("link %s into %s: %w", b.Digest, t.repo, err)
			}
		}
		for _, m := range img.Manifests {
			if _, err := st.Manifest(t.repo, m.Desc.Digest); err == nil {
				continue // indexed already: importing twice changes nothing
			}
			if err := st.PutManifest(t.repo, t.origin, cache.RecordOf(m), m.Body, "", created); err != nil {
				return sum, fmt.Errorf("index manifest %s in %s: %w", m.Desc.Digest, t.repo, err)
			}
		}
		if opts.Publish != nil && t.origin == "" {
			if err := opts.Publish(ctx, t.repo, t.tag, *img, created); err != nil {
				return sum, fmt.Errorf("publish %s: %w", img.Name, err)
			}
		}
		if t.tag == "" {
			continue
		}
		cur, err := st.Tag(t.repo, t.tag)
		switch {
		case err == nil && cur.Digest == img.Desc.Digest:
		case err == nil && !created.After(cur.FetchedAt):
			sum.TagsKept++
		case err == nil || errors.Is(err, cache.ErrNotFound):
			if err := st.SetTag(t.repo, t.tag, img.Desc.Digest, created); err != nil {
				return sum, err
			}
			sum.Tags++
		default:
			return sum, err
		}
	}
	return sum, nil
}

// storeSource is a Source over the staged blobs and the store.
type storeSource struct {
	st     *cache.Store
	staged map[digest.Digest]*cache.Staged
}

func (s storeSource) Has(d digest.Digest) bool {
	if s.staged[d] != nil {
		return true
	}
	_, err := s.st.StatBlob(d)
	return err == nil
}

func (s storeSource) Manifest(d digest.Digest) ([]byte, error) {
	if st := s.staged[d]; st != nil {
		if st.Size > maxManifestSize {
			return nil, fmt.Errorf("a manifest of %d bytes", st.Size)
		}
		return st.ReadAll()
	}
	return s.st.ManifestBody(d)
}

// ctxReader ends a read when ctx does: an import whose client hung up or
// that was interrupted stops and leaves nothing.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

type progressReader struct {
	r  io.Reader
	fn func(int)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.fn(n)
	}
	return n, err
}
