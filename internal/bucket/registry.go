package bucket

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/internal/ttl"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// Origin is the origin recorded in the local store for content cached from
// the bucket: like mirrored content it may be evicted, since the bucket
// keeps it.
const Origin = "bucket"

// maxRecord bounds the small JSON objects (records, tags) read back.
const maxRecord = 1 << 20

// Registry is the local repositories of a cluster, kept in the bucket, with
// the replica's store as a read cache: a warm blob or manifest is served
// from local disk; tags are read from the bucket on every request, so a
// push acknowledged by one replica is seen by every other at once.
type Registry struct {
	b           *Bucket
	s           *cache.Store
	cached      *cache.Local // the store's view of what it cached from here
	maxManifest int64
	known       *ttl.Cache[string, struct{}] // repositories seen in the catalog
}

var _ registry.Interface = (*Registry)(nil)

// NewRegistry returns the local repositories kept in b, cached in s.
func NewRegistry(b *Bucket, s *cache.Store, maxManifest int64) *Registry {
	return &Registry{b: b, s: s, cached: cache.NewLocalOrigin(s, Origin), maxManifest: maxManifest,
		known: ttl.New[string, struct{}](4096, time.Minute)}
}

// Bucket is the bucket this registry keeps its repositories in.
func (r *Registry) Bucket() *Bucket { return r.b }

// Known reports whether repo is a local repository this replica has seen
// (route.Remote): no request to the bucket.
func (r *Registry) Known(repo string) bool {
	_, ok := r.known.Get(repo)
	return ok
}

// Pushed reports whether repo is a local repository (it was pushed to some
// replica). Only a positive answer is remembered, so a repository pushed
// through another replica is seen at its first request here.
func (r *Registry) Pushed(ctx context.Context, repo string) (bool, error) {
	if _, ok := r.known.Get(repo); ok {
		return true, nil
	}
	_, err := r.b.Stat(ctx, catalogKey(repo))
	switch {
	case err == nil:
		r.known.Add(repo, struct{}{})
		return true, nil
	case errors.Is(err, ErrNotFound):
		return false, nil
	}
	return false, err
}

func blobUnknown(d digest.Digest) error {
	return oci.Errorf(oci.CodeBlobUnknown, "blob %s unknown to this repository", d)
}

func manifestUnknown(ref string) error {
	return oci.Errorf(oci.CodeManifestUnknown, "manifest %s unknown", oci.Clip(ref))
}

func uploadUnknown() error { return oci.Errorf(oci.CodeBlobUploadUnknown, "upload unknown") }

// notFound turns the bucket's ErrNotFound into want, and leaves other
// errors (the bucket failing) alone.
func notFound(err error, want func() error) error {
	if errors.Is(err, ErrNotFound) {
		return want()
	}
	return err
}

// contentErr maps the store's verification errors for content a client sent.
func contentErr(err error) error {
	switch {
	case errors.Is(err, cache.ErrDigestMismatch):
		return &oci.Error{Code: oci.CodeDigestInvalid, Message: "content does not match digest", Cause: err}
	case errors.Is(err, cache.ErrSizeMismatch):
		return &oci.Error{Code: oci.CodeSizeInvalid, Message: "content length does not match", Cause: err}
	}
	return err
}

func (r *Registry) getJSON(ctx context.Context, k string, v any) error {
	b, err := r.b.GetBytes(ctx, k, maxRecord)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("bucket object %s: %w", k, err)
	}
	return nil
}

func (r *Registry) putJSON(ctx context.Context, k string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return r.b.PutBytes(ctx, k, b)
}

// --- blobs ---------------------------------------------------------------------

// linkedSize returns the size of blob d if repo may read it.
func (r *Registry) linkedSize(ctx context.Context, repo string, d digest.Digest) (int64, error) {
	if size, err := r.s.StatRepoBlob(repo, d); err == nil {
		return size, nil
	}
	b, err := r.b.GetBytes(ctx, linkKey(repo, d), 64)
	if err != nil {
		return 0, notFound(err, func() error { return blobUnknown(d) })
	}
	size, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bucket link %s: %w", linkKey(repo, d), err)
	}
	return size, nil
}

// ResolveBlob implements registry.Reader.
func (r *Registry) ResolveBlob(ctx context.Context, repo string, d digest.Digest) (registry.Descriptor, error) {
	size, err := r.linkedSize(ctx, repo, d)
	if err != nil {
		return registry.Descriptor{}, err
	}
	return registry.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: size}, nil
}

// GetBlob implements registry.Reader: from local disk when cached, else
// read from the bucket into the cache once, however many ask at once.
func (r *Registry) GetBlob(ctx context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	if rd, err := r.cached.GetBlob(ctx, repo, d); err == nil {
		return rd, nil
	}
	size, err := r.linkedSize(ctx, repo, d)
	if err != nil {
		return nil, err
	}
	return r.fill(ctx, repo, d, size)
}

// fill streams blob d of the bucket through the local store: one bucket
// read for all concurrent readers; the blob is then cached, linked to repo.
func (r *Registry) fill(ctx context.Context, repo string, d digest.Digest, size int64) (registry.BlobReader, error) {
	for range 3 {
		f, _, err := r.s.Fill(d, size, repo, Origin, r.Opener(d), nil)
		if err != nil {
			return nil, err
		}
		rd, err := f.NewReader(ctx, 0)
		if err == nil {
			return &fillBlob{ReadSeekCloser: rd, desc: registry.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: size}}, nil
		}
		// The fill ended between lookup and open: stored, or failed.
		if f.Wait(ctx) == nil {
			if rd, err := r.s.OpenBlob(d); err == nil {
				rd.Close()
				if err := r.s.Link(repo, Origin, d); err == nil {
					return r.cached.GetBlob(ctx, repo, d)
				}
			}
		}
	}
	return nil, oci.Errorf(oci.CodeUnavailable, "reading blob %s from the bucket failed; retry", d)
}

// Opener is a cache.FetchFunc reading blob d from the bucket, resuming
// where a cut stream ended.
func (r *Registry) Opener(d digest.Digest) cache.FetchFunc {
	return func(ctx context.Context) (io.ReadCloser, error) {
		return Resume(ctx, 3, func(ctx context.Context, off int64) (io.ReadCloser, error) {
			return r.b.Get(ctx, blobKey(d), off)
		})
	}
}

// StatBlob returns the size of blob d in the bucket, or ErrNotFound.
func (r *Registry) StatBlob(ctx context.Context, d digest.Digest) (int64, error) {
	return r.b.Stat(ctx, blobKey(d))
}

// PublishFile writes the verified blob file f (d, size bytes) to the
// bucket, unless it is there already; origin names the upstream of a
// mirrored blob ("" for pushed content).
func (r *Registry) PublishFile(ctx context.Context, d digest.Digest, f *os.File, size int64, origin string) error {
	if n, err := r.b.Stat(ctx, blobKey(d)); err == nil && n == size {
		return nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	err := r.b.PutFrom(ctx, blobKey(d), f, size, origin)
	if errors.Is(err, ErrExists) { // another replica wrote the same bytes
		return nil
	}
	return err
}

type fillBlob struct {
	io.ReadSeekCloser
	desc registry.Descriptor
}

func (b *fillBlob) Descriptor() registry.Descriptor { return b.desc }
func (b *fillBlob) Streaming() bool                 { return true }

// publish writes a staged, verified blob to the bucket, links it to repo
// there, then commits it to the local cache.
func (r *Registry) publish(ctx context.Context, repo string, st *cache.Staged) error {
	f, err := st.Open()
	if err != nil {
		return err
	}
	err = r.PublishFile(ctx, st.Digest, f, st.Size, "")
	f.Close()
	if err != nil {
		return err
	}
	if err := r.link(ctx, repo, st.Digest, st.Size); err != nil {
		return err
	}
	if err := st.Commit(); err == nil {
		_ = r.s.Link(repo, Origin, st.Digest)
	}
	return nil
}

// link lets repo read blob d (size bytes), creating the repository.
func (r *Registry) link(ctx context.Context, repo string, d digest.Digest, size int64) error {
	if err := r.b.PutBytes(ctx, linkKey(repo, d), []byte(strconv.FormatInt(size, 10))); err != nil {
		return err
	}
	return r.ensureRepo(ctx, repo)
}

func (r *Registry) ensureRepo(ctx context.Context, repo string) error {
	if _, ok := r.known.Get(repo); ok {
		return nil
	}
	if err := r.b.PutBytes(ctx, catalogKey(repo), nil); err != nil {
		return err
	}
	r.known.Add(repo, struct{}{})
	return nil
}

// PushBlob implements registry.Writer.
func (r *Registry) PushBlob(ctx context.Context, repo string, desc registry.Descriptor, rd io.Reader) (registry.Descriptor, error) {
	st, err := r.s.Stage(desc.Digest, desc.Size, rd)
	if err != nil {
		return registry.Descriptor{}, contentErr(err)
	}
	defer st.Discard()
	if err := r.publish(ctx, repo, st); err != nil {
		return registry.Descriptor{}, err
	}
	return registry.Descriptor{MediaType: "application/octet-stream", Digest: desc.Digest, Size: st.Size}, nil
}

// --- uploads: chunks in the bucket, so any replica continues any upload --------

type uploadInfo struct {
	Repo    string    `json:"repo"`
	Started time.Time `json:"started"`
}

func validID(id string) bool {
	if len(id) != 32 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}

// StartUpload implements registry.Writer.
func (r *Registry) StartUpload(ctx context.Context, repo string) (registry.Upload, error) {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	if err := r.putJSON(ctx, uploadInfoKey(id), uploadInfo{Repo: repo, Started: time.Now()}); err != nil {
		return registry.Upload{}, err
	}
	return registry.Upload{ID: id}, nil
}

// chunks returns an upload's chunks in order and the offset after them.
func (r *Registry) chunks(ctx context.Context, repo, id string) ([]Object, int64, error) {
	if !validID(id) {
		return nil, 0, uploadUnknown()
	}
	var info uploadInfo
	if err := r.getJSON(ctx, uploadInfoKey(id), &info); err != nil {
		return nil, 0, notFound(err, uploadUnknown)
	}
	if info.Repo != repo {
		return nil, 0, uploadUnknown()
	}
	objs, _, err := r.b.List(ctx, uploadKey(id), "", -1)
	if err != nil {
		return nil, 0, err
	}
	var chunks []Object
	var offset int64
	for _, o := range objs {
		name := strings.TrimPrefix(o.Key, uploadKey(id))
		if name == "info" {
			continue
		}
		at, err := strconv.ParseInt(name, 10, 64)
		if err != nil || at != offset {
			// Keys sort by offset; a gap or overlap is not ours to mend.
			return nil, 0, fmt.Errorf("upload %s: chunk %s does not continue at %d", id, name, offset)
		}
		chunks = append(chunks, o)
		offset += o.Size
	}
	return chunks, offset, nil
}

// UploadStatus implements registry.Writer.
func (r *Registry) UploadStatus(ctx context.Context, repo, id string) (registry.Upload, error) {
	_, offset, err := r.chunks(ctx, repo, id)
	return registry.Upload{ID: id, Offset: offset}, err
}

// AppendUpload implements registry.Writer: the chunk is staged on local
// disk (its length is then known), then written to the bucket under its
// offset, only if no other request wrote that offset first.
func (r *Registry) AppendUpload(ctx context.Context, repo, id string, start int64, rd io.Reader) (registry.Upload, error) {
	_, offset, err := r.chunks(ctx, repo, id)
	if err != nil {
		return registry.Upload{}, err
	}
	if start >= 0 && start != offset {
		return registry.Upload{ID: id, Offset: offset}, offsetErr(start, offset)
	}
	f, done, err := r.s.TempFile()
	if err != nil {
		return registry.Upload{}, err
	}
	defer done()
	n, err := io.CopyBuffer(f, rd, make([]byte, 256<<10))
	if err != nil {
		return registry.Upload{}, err
	}
	if n == 0 {
		return registry.Upload{ID: id, Offset: offset}, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return registry.Upload{}, err
	}
	if err := r.b.PutIfAbsent(ctx, chunkKey(id, offset), f, n); err != nil {
		if errors.Is(err, ErrExists) {
			return registry.Upload{ID: id, Offset: offset}, offsetErr(offset, offset+n)
		}
		return registry.Upload{}, err
	}
	return registry.Upload{ID: id, Offset: offset + n}, nil
}

func offsetErr(start, offset int64) error {
	return &oci.Error{Code: oci.CodeBlobUploadInvalid, HTTPStatus: oci.ErrUploadOffset.HTTPStatus,
		Message: fmt.Sprintf("chunk starts at %d, upload is at %d", start, offset)}
}

// CommitUpload implements registry.Writer: the chunks are read back in
// order through the digest check into a staging file, which is then
// published like a monolithic push.
func (r *Registry) CommitUpload(ctx context.Context, repo, id string, d digest.Digest, rd io.Reader) (registry.Descriptor, error) {
	if rd != nil {
		if _, err := r.AppendUpload(ctx, repo, id, -1, rd); err != nil {
			return registry.Descriptor{}, err
		}
	}
	chunks, size, err := r.chunks(ctx, repo, id)
	if err != nil {
		return registry.Descriptor{}, err
	}
	st, err := r.s.Stage(d, size, &chunkReader{ctx: ctx, b: r.b, chunks: chunks})
	if err != nil {
		return registry.Descriptor{}, contentErr(err)
	}
	defer st.Discard()
	if err := r.publish(ctx, repo, st); err != nil {
		return registry.Descriptor{}, err
	}
	if err := r.b.DeletePrefix(ctx, uploadKey(id)); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("upload", id).Msg("removing a committed upload's chunks from the bucket")
	}
	return registry.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: size}, nil
}

// chunkReader reads an upload's chunks one after another.
type chunkReader struct {
	ctx    context.Context
	b      *Bucket
	chunks []Object
	cur    io.ReadCloser
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for {
		if c.cur == nil {
			if len(c.chunks) == 0 {
				return 0, io.EOF
			}
			rc, err := c.b.Get(c.ctx, c.chunks[0].Key, 0)
			if err != nil {
				return 0, err
			}
			c.cur, c.chunks = rc, c.chunks[1:]
		}
		n, err := c.cur.Read(p)
		if err == io.EOF {
			c.cur.Close()
			c.cur = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

// CancelUpload implements registry.Writer.
func (r *Registry) CancelUpload(ctx context.Context, repo, id string) error {
	if _, _, err := r.chunks(ctx, repo, id); err != nil {
		return err
	}
	return r.b.DeletePrefix(ctx, uploadKey(id))
}

// MountBlob implements registry.Writer: from a repository that has the
// blob, or (from "") from any, the local namespace being one trust domain.
func (r *Registry) MountBlob(ctx context.Context, from, repo string, d digest.Digest) (registry.Descriptor, error) {
	var size int64
	var err error
	if from != "" {
		size, err = r.linkedSize(ctx, from, d)
	} else {
		size, err = r.b.Stat(ctx, blobKey(d))
		err = notFound(err, func() error { return blobUnknown(d) })
	}
	if err != nil {
		return registry.Descriptor{}, err
	}
	if err := r.link(ctx, repo, d, size); err != nil {
		return registry.Descriptor{}, err
	}
	_ = r.s.Link(repo, Origin, d) // if cached here
	return registry.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: size}, nil
}

// --- manifests -------------------------------------------------------------------

// manifestRecord reads the record of manifest d in repo.
func (r *Registry) manifestRecord(ctx context.Context, repo string, d digest.Digest) (cache.ManifestRecord, error) {
	var rec cache.ManifestRecord
	err := r.getJSON(ctx, manifestKey(repo, d), &rec)
	return rec, notFound(err, func() error { return manifestUnknown(d.String()) })
}

func recordDesc(rec cache.ManifestRecord) registry.Descriptor {
	return registry.Descriptor{MediaType: rec.MediaType, Digest: rec.Digest, Size: rec.Size}
}

// ResolveManifest implements registry.Reader.
func (r *Registry) ResolveManifest(ctx context.Context, repo string, d digest.Digest) (registry.Descriptor, error) {
	rec, err := r.manifestRecord(ctx, repo, d)
	if err != nil {
		return registry.Descriptor{}, err
	}
	return recordDesc(rec), nil
}

// GetManifest implements registry.Reader: the record from the bucket (it
// may have been deleted through another replica), the body from the local
// cache if there, else from the bucket, verified, and cached.
func (r *Registry) GetManifest(ctx context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	rec, err := r.manifestRecord(ctx, repo, d)
	if err != nil {
		return nil, err
	}
	desc := recordDesc(rec)
	if body, err := r.s.ManifestBody(d); err == nil {
		return registry.NewBytesReader(desc, body), nil
	}
	body, err := r.b.GetBytes(ctx, blobKey(d), max(rec.Size, 0))
	if err != nil {
		return nil, notFound(err, func() error { return manifestUnknown(d.String()) })
	}
	if digest.FromBytes(body) != d && d.Algorithm().FromBytes(body) != d {
		return nil, fmt.Errorf("bucket: manifest %s does not match its digest", d)
	}
	if err := r.s.PutManifest(repo, Origin, rec, body, "", time.Now()); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("digest", d.String()).Msg("caching a manifest read from the bucket")
	}
	return registry.NewBytesReader(desc, body), nil
}

func (r *Registry) tagged(ctx context.Context, repo, tag string) (digest.Digest, error) {
	var rec cache.TagRecord
	if err := r.getJSON(ctx, tagKey(repo, tag), &rec); err != nil {
		return "", notFound(err, func() error { return manifestUnknown(tag) })
	}
	return rec.Digest, nil
}

// ResolveTag implements registry.Reader.
func (r *Registry) ResolveTag(ctx context.Context, repo, tag string) (registry.Descriptor, error) {
	d, err := r.tagged(ctx, repo, tag)
	if err != nil {
		return registry.Descriptor{}, err
	}
	return r.ResolveManifest(ctx, repo, d)
}

// GetTag implements registry.Reader.
func (r *Registry) GetTag(ctx context.Context, repo, tag string) (registry.BlobReader, error) {
	d, err := r.tagged(ctx, repo, tag)
	if err != nil {
		return nil, err
	}
	return r.GetManifest(ctx, repo, d)
}

// PushManifest implements registry.Writer. The order makes a torn push
// invisible: the body, the record and the referrer first, the tag last.
// Two replicas writing one tag at once each replace it whole: one wins.
func (r *Registry) PushManifest(ctx context.Context, repo, tag string, m *registry.Manifest) (registry.Descriptor, error) {
	if err := r.checkReferences(ctx, repo, m); err != nil {
		return registry.Descriptor{}, err
	}
	d := m.Desc.Digest
	full, err := r.putManifest(ctx, repo, m)
	if err != nil {
		return registry.Descriptor{}, err
	}
	if err := r.ensureRepo(ctx, repo); err != nil {
		return registry.Descriptor{}, err
	}
	if tag != "" {
		if err := r.putJSON(ctx, tagKey(repo, tag), cache.TagRecord{Digest: d, FetchedAt: time.Now()}); err != nil {
			return registry.Descriptor{}, err
		}
	}
	if err := r.s.PutManifest(repo, Origin, full, m.Body, "", time.Now()); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("digest", d.String()).Msg("caching a pushed manifest")
	}
	return m.Desc, nil
}

// putManifest writes m's body (unless the bucket has it), its record in
// repo and its referrer entry; it returns the record with annotations.
func (r *Registry) putManifest(ctx context.Context, repo string, m *registry.Manifest) (cache.ManifestRecord, error) {
	d := m.Desc.Digest
	rec := cache.RecordOf(m)
	if _, err := r.b.Stat(ctx, blobKey(d)); errors.Is(err, ErrNotFound) {
		if err := r.b.PutBytes(ctx, blobKey(d), m.Body); err != nil {
			return rec, err
		}
	} else if err != nil {
		return rec, err
	}
	small := rec
	small.Annotations = nil // the record is read on every pull; referrers carry them
	if err := r.putJSON(ctx, manifestKey(repo, d), small); err != nil {
		return rec, err
	}
	if m.Subject != nil {
		if err := r.putJSON(ctx, referrerKey(repo, m.Subject.Digest, d), rec); err != nil {
			return rec, err
		}
	}
	return rec, nil
}

// checkReferences checks that repo has every blob and child m needs. A
// blob is referenced by writing its link again first (a collection then
// sees it as fresh), then checked against a collection in progress (its
// tombstone) and for its content: a push that races the removal of a blob
// fails with MANIFEST_BLOB_UNKNOWN, and the client pushes the blob again.
func (r *Registry) checkReferences(ctx context.Context, repo string, m *registry.Manifest) error {
	unknown := func(d digest.Digest) error {
		return &oci.Error{Code: oci.CodeManifestBlobUnknown, Message: "manifest references a blob that is not in this repository", Detail: map[string]string{"digest": d.String()}}
	}
	for _, ref := range m.Blobs {
		size, err := r.linkedSize(ctx, repo, ref.Digest)
		if errors.Is(err, oci.ErrBlobUnknown) {
			return unknown(ref.Digest)
		}
		if err != nil {
			return err
		}
		if size != ref.Size {
			return oci.Errorf(oci.CodeManifestInvalid, "blob %s has size %d, manifest says %d", ref.Digest, size, ref.Size)
		}
		if err := r.b.PutBytes(ctx, linkKey(repo, ref.Digest), []byte(strconv.FormatInt(size, 10))); err != nil {
			return err
		}
		if _, err := r.b.Stat(ctx, tombstoneKey(ref.Digest)); err == nil {
			return unknown(ref.Digest)
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		if _, err := r.b.Stat(ctx, blobKey(ref.Digest)); errors.Is(err, ErrNotFound) {
			_ = r.b.Delete(ctx, linkKey(repo, ref.Digest))
			_ = r.s.Unlink(repo, ref.Digest)
			return unknown(ref.Digest)
		} else if err != nil {
			return err
		}
	}
	for _, child := range m.Children {
		if _, err := r.b.Stat(ctx, manifestKey(repo, child.Digest)); errors.Is(err, ErrNotFound) {
			return &oci.Error{Code: oci.CodeManifestBlobUnknown, Message: "index references a manifest that is not in this repository", Detail: map[string]string{"digest": child.Digest.String()}}
		} else if err != nil {
			return err
		}
	}
	return nil
}

// Inventory lists a local repository's tags and manifest records, for an
// export of everything (berth export --all).
func (r *Registry) Inventory(ctx context.Context, repo string) ([]string, []cache.ManifestRecord, error) {
	tags, _, err := r.listNames(ctx, repoKey(repo, "tags"), -1, "")
	if err != nil {
		return nil, nil, err
	}
	objs, _, err := r.b.List(ctx, repoKey(repo, "manifests"), "", -1)
	if err != nil {
		return nil, nil, err
	}
	ms := make([]cache.ManifestRecord, 0, len(objs))
	for _, o := range objs {
		var rec cache.ManifestRecord
		if err := r.getJSON(ctx, o.Key, &rec); err != nil {
			if errors.Is(err, ErrNotFound) {
				continue // deleted meanwhile
			}
			return nil, nil, err
		}
		ms = append(ms, rec)
	}
	return tags, ms, nil
}

// ImportImage publishes an image that the local store holds whole (from
// an air-gap bundle, verified) into repo: its blobs, then its manifests
// (children before their index), then tag (pointing at top), unless the bucket's tag was set
// after created (a newer push wins over an older bundle). Manifests are
// not checked for references: a bundle may keep only some platforms of an
// index.
func (r *Registry) ImportImage(ctx context.Context, repo, tag string, top digest.Digest, blobs []registry.Descriptor, manifests []*registry.Manifest, created time.Time) error {
	for _, b := range blobs {
		f, err := r.s.OpenBlob(b.Digest)
		if err != nil {
			return fmt.Errorf("blob %s: %w", b.Digest, err)
		}
		err = r.PublishFile(ctx, b.Digest, f, b.Size, "")
		f.Close()
		if err != nil {
			return err
		}
		if err := r.link(ctx, repo, b.Digest, b.Size); err != nil {
			return err
		}
	}
	for _, m := range manifests {
		if _, err := r.putManifest(ctx, repo, m); err != nil {
			return err
		}
	}
	if err := r.ensureRepo(ctx, repo); err != nil {
		return err
	}
	if tag == "" || len(manifests) == 0 {
		return nil
	}
	var cur cache.TagRecord
	if err := r.getJSON(ctx, tagKey(repo, tag), &cur); err == nil && cur.FetchedAt.After(created) {
		return nil
	} else if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	return r.putJSON(ctx, tagKey(repo, tag), cache.TagRecord{Digest: top, FetchedAt: created})
}

// --- deletes -----------------------------------------------------------------------

// DeleteBlob implements registry.Deleter: the repository loses access.
func (r *Registry) DeleteBlob(ctx context.Context, repo string, d digest.Digest) error {
	if _, err := r.b.Stat(ctx, linkKey(repo, d)); err != nil {
		return notFound(err, func() error { return blobUnknown(d) })
	}
	if err := r.b.Delete(ctx, linkKey(repo, d)); err != nil {
		return err
	}
	_ = r.s.Unlink(repo, d)
	return nil
}

// DeleteManifest implements registry.Deleter, with the tags that point at
// it and its referrer entry.
func (r *Registry) DeleteManifest(ctx context.Context, repo string, d digest.Digest) error {
	rec, err := r.manifestRecord(ctx, repo, d)
	if err != nil {
		return err
	}
	tags, _, err := r.b.List(ctx, repoKey(repo, "tags"), "", -1)
	if err != nil {
		return err
	}
	for _, t := range tags {
		var tr cache.TagRecord
		if r.getJSON(ctx, t.Key, &tr) == nil && tr.Digest == d {
			if err := r.b.Delete(ctx, t.Key); err != nil {
				return err
			}
		}
	}
	if rec.Subject != "" {
		if err := r.b.Delete(ctx, referrerKey(repo, rec.Subject, d)); err != nil {
			return err
		}
	}
	if err := r.b.Delete(ctx, manifestKey(repo, d)); err != nil {
		return err
	}
	_ = r.s.DeleteManifest(repo, d)
	return nil
}

// DeleteTag implements registry.Deleter.
func (r *Registry) DeleteTag(ctx context.Context, repo, tag string) error {
	if _, err := r.b.Stat(ctx, tagKey(repo, tag)); err != nil {
		return notFound(err, func() error { return manifestUnknown(tag) })
	}
	return r.b.Delete(ctx, tagKey(repo, tag))
}

// --- lists -------------------------------------------------------------------------

// listNames lists the names under p after last, n at most (n < 0: all).
func (r *Registry) listNames(ctx context.Context, p string, n int, last string) ([]string, string, error) {
	if n == 0 {
		return []string{}, "", nil
	}
	after := ""
	if last != "" {
		after = p + last
	}
	objs, more, err := r.b.List(ctx, p, after, n)
	if err != nil {
		return nil, "", err
	}
	names := make([]string, 0, len(objs))
	for _, o := range objs {
		names = append(names, strings.TrimPrefix(o.Key, p))
	}
	next := ""
	if more && len(names) > 0 {
		next = names[len(names)-1]
	}
	return names, next, nil
}

// Repositories implements registry.Lister: the bucket's local repositories
// and this replica's mirrored ones (each replica caches its own), merged in
// order.
func (r *Registry) Repositories(ctx context.Context, n int, last string) ([]string, string, error) {
	if n == 0 {
		return []string{}, "", nil
	}
	pushed, _, err := r.listNames(ctx, "catalog/", n, last)
	if err != nil {
		return nil, "", err
	}
	var mirrored []string
	for after := last; ; {
		names, more, err := r.s.Repositories(max(n, 0), after)
		if err != nil {
			return nil, "", err
		}
		for _, name := range names {
			if rec, err := r.s.Repository(name); err == nil && rec.Origin != "" && rec.Origin != Origin {
				mirrored = append(mirrored, name)
			}
		}
		if !more || len(names) == 0 || (n > 0 && len(mirrored) >= n) {
			break
		}
		after = names[len(names)-1]
	}
	all := append(pushed, mirrored...)
	slices.Sort(all)
	all = slices.Compact(all)
	if n > 0 && len(all) > n {
		return all[:n], all[n-1], nil
	}
	// One of the two sources may have had more beyond what was asked.
	if n > 0 && len(all) == n {
		return all, all[n-1], nil
	}
	return all, "", nil
}

// Tags implements registry.Lister.
func (r *Registry) Tags(ctx context.Context, repo string, n int, last string) ([]string, string, error) {
	tags, next, err := r.listNames(ctx, repoKey(repo, "tags"), n, last)
	if err != nil {
		return nil, "", err
	}
	if len(tags) == 0 && last == "" {
		if ok, err := r.Pushed(ctx, repo); err != nil {
			return nil, "", err
		} else if !ok {
			return nil, "", oci.Errorf(oci.CodeNameUnknown, "repository %s unknown", repo)
		}
	}
	return tags, next, nil
}

// Referrers implements registry.Lister.
func (r *Registry) Referrers(ctx context.Context, repo string, d digest.Digest, artifactType string) ([]registry.Descriptor, bool, error) {
	objs, _, err := r.b.List(ctx, referrersKey(repo, d), "", -1)
	if err != nil {
		return nil, false, err
	}
	descs := []registry.Descriptor{}
	for _, o := range objs {
		var rec cache.ManifestRecord
		if err := r.getJSON(ctx, o.Key, &rec); err != nil {
			if errors.Is(err, ErrNotFound) { // deleted meanwhile
				continue
			}
			return nil, false, err
		}
		if artifactType != "" && rec.ArtifactType != artifactType {
			continue
		}
		descs = append(descs, registry.Descriptor{MediaType: rec.MediaType, Digest: rec.Digest, Size: rec.Size,
			ArtifactType: rec.ArtifactType, Annotations: rec.Annotations})
	}
	return descs, artifactType != "", nil
}
