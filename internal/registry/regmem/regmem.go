// Package regmem is an in-memory registry.Interface: a fake for tests of
// the HTTP layer and of wrappers, and the proof that a new backend is one
// type. It answers with the same OCI errors as cache.Local.
package regmem

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/opencontainers/go-digest"
)

// Registry is an in-memory registry, safe for concurrent use. Blob bytes
// are shared between repositories and kept until the Registry is dropped; a
// repository sees only what was pushed or mounted into it. Request bodies
// are read without the lock, so a slow client holds up nobody.
type Registry struct {
	mu      sync.Mutex
	blobs   map[digest.Digest][]byte // blobs and manifest bodies
	repos   map[string]*repo
	uploads map[string]*upload
}

type repo struct {
	blobs     map[digest.Digest]bool
	manifests map[digest.Digest]manifest
	tags      map[string]digest.Digest
}

type manifest struct {
	desc    registry.Descriptor
	subject digest.Digest // "" if none
}

type upload struct {
	repo string
	data []byte
}

var _ registry.Interface = (*Registry)(nil)

// New returns an empty registry.
func New() *Registry {
	return &Registry{blobs: map[digest.Digest][]byte{}, repos: map[string]*repo{}, uploads: map[string]*upload{}}
}

// lock takes the registry's one mutex: defer r.lock()().
func (r *Registry) lock() func() { r.mu.Lock(); return r.mu.Unlock }

// offsetErr is a chunk that does not continue its upload (oci.ErrUploadOffset).
func offsetErr(start, at int64) error {
	return &oci.Error{Code: oci.CodeBlobUploadInvalid, HTTPStatus: oci.ErrUploadOffset.HTTPStatus,
		Message: fmt.Sprintf("chunk starts at %d, upload is at %d", start, at)}
}

func blobUnknown(d digest.Digest) error {
	return oci.Errorf(oci.CodeBlobUnknown, "blob %s unknown to this repository", d)
}

func manifestUnknown(ref string) error {
	return oci.Errorf(oci.CodeManifestUnknown, "manifest %s unknown", oci.Clip(ref))
}

func referenceUnknown(what string, d digest.Digest) error {
	return &oci.Error{Code: oci.CodeManifestBlobUnknown, Detail: map[string]string{"digest": d.String()},
		Message: "manifest references a " + what + " that is not in this repository"}
}

// verify checks b against d, and against size when size >= 0.
func verify(d digest.Digest, size int64, b []byte) error {
	if size >= 0 && int64(len(b)) != size {
		return oci.Errorf(oci.CodeSizeInvalid, "got %d bytes, want %d", len(b), size)
	}
	if d.Validate() != nil || d.Algorithm().FromBytes(b) != d {
		return oci.Errorf(oci.CodeDigestInvalid, "content does not match digest %s", oci.Clip(d.String()))
	}
	return nil
}

// The lower-case helpers are called with mu held.

// repo returns repository name, or an empty one that is not recorded.
func (r *Registry) repo(name string) *repo {
	if rp := r.repos[name]; rp != nil {
		return rp
	}
	return &repo{}
}

// create returns repository name, recording it if it is new.
func (r *Registry) create(name string) *repo {
	if r.repos[name] == nil {
		r.repos[name] = &repo{blobs: map[digest.Digest]bool{}, manifests: map[digest.Digest]manifest{}, tags: map[string]digest.Digest{}}
	}
	return r.repos[name]
}

func (r *Registry) blob(name string, d digest.Digest) (registry.Descriptor, error) {
	if !r.repo(name).blobs[d] {
		return registry.Descriptor{}, blobUnknown(d)
	}
	return registry.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: int64(len(r.blobs[d]))}, nil
}

func (r *Registry) manifest(name string, d digest.Digest) (registry.Descriptor, error) {
	if m, ok := r.repo(name).manifests[d]; ok {
		return m.desc, nil
	}
	return registry.Descriptor{}, manifestUnknown(d.String())
}

func (r *Registry) tag(name, tag string) (registry.Descriptor, error) {
	if d, ok := r.repo(name).tags[tag]; ok {
		return r.manifest(name, d)
	}
	return registry.Descriptor{}, manifestUnknown(tag)
}

// reader serves desc's bytes: a registry.Bytes that seeks.
func (r *Registry) reader(desc registry.Descriptor, err error) (registry.BlobReader, error) {
	if err != nil {
		return nil, err
	}
	return registry.NewBytesReader(desc, r.blobs[desc.Digest]), nil
}

// store keeps b as blob d (the first copy wins) and links it to repo.
func (r *Registry) store(repo string, d digest.Digest, b []byte) registry.Descriptor {
	if _, ok := r.blobs[d]; !ok {
		r.blobs[d] = b
	}
	r.create(repo).blobs[d] = true
	desc, _ := r.blob(repo, d)
	return desc
}

// status returns upload id of repo, or BLOB_UPLOAD_UNKNOWN.
func (r *Registry) status(repo, id string) (registry.Upload, error) {
	if u, ok := r.uploads[id]; ok && u.repo == repo {
		return registry.Upload{ID: id, Offset: int64(len(u.data))}, nil
	}
	return registry.Upload{}, oci.Errorf(oci.CodeBlobUploadUnknown, "upload unknown")
}

// ResolveBlob implements registry.Reader.
func (r *Registry) ResolveBlob(_ context.Context, repo string, d digest.Digest) (registry.Descriptor, error) {
	defer r.lock()()
	return r.blob(repo, d)
}

// GetBlob implements registry.Reader.
func (r *Registry) GetBlob(_ context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	defer r.lock()()
	return r.reader(r.blob(repo, d))
}

// ResolveManifest implements registry.Reader.
func (r *Registry) ResolveManifest(_ context.Context, repo string, d digest.Digest) (registry.Descriptor, error) {
	defer r.lock()()
	return r.manifest(repo, d)
}

// GetManifest implements registry.Reader.
func (r *Registry) GetManifest(_ context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	defer r.lock()()
	return r.reader(r.manifest(repo, d))
}

// ResolveTag implements registry.Reader.
func (r *Registry) ResolveTag(_ context.Context, repo, tag string) (registry.Descriptor, error) {
	defer r.lock()()
	return r.tag(repo, tag)
}

// GetTag implements registry.Reader.
func (r *Registry) GetTag(_ context.Context, repo, tag string) (registry.BlobReader, error) {
	defer r.lock()()
	return r.reader(r.tag(repo, tag))
}

// PushBlob implements registry.Writer: SIZE_INVALID or DIGEST_INVALID when
// the content does not match desc.
func (r *Registry) PushBlob(_ context.Context, repo string, desc registry.Descriptor, body io.Reader) (registry.Descriptor, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return registry.Descriptor{}, err
	}
	if err := verify(desc.Digest, desc.Size, b); err != nil {
		return registry.Descriptor{}, err
	}
	defer r.lock()()
	return r.store(repo, desc.Digest, b), nil
}

// StartUpload implements registry.Writer.
func (r *Registry) StartUpload(_ context.Context, repo string) (registry.Upload, error) {
	defer r.lock()()
	id := rand.Text()
	r.uploads[id] = &upload{repo: repo}
	return registry.Upload{ID: id}, nil
}

// UploadStatus implements registry.Writer.
func (r *Registry) UploadStatus(_ context.Context, repo, id string) (registry.Upload, error) {
	defer r.lock()()
	return r.status(repo, id)
}

// AppendUpload implements registry.Writer. If another request appended
// while the body was read, this chunk no longer continues the upload and
// is dropped whole.
func (r *Registry) AppendUpload(_ context.Context, repo, id string, start int64, body io.Reader) (registry.Upload, error) {
	unlock := r.lock()
	at, err := r.status(repo, id)
	unlock()
	if err == nil && start >= 0 && start != at.Offset {
		err = offsetErr(start, at.Offset)
	}
	if err != nil {
		return at, err
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return at, err
	}
	defer r.lock()()
	if now, err := r.status(repo, id); err != nil {
		return now, err
	} else if now.Offset != at.Offset {
		return now, offsetErr(at.Offset, now.Offset)
	}
	u := r.uploads[id]
	u.data = append(u.data, b...)
	return registry.Upload{ID: id, Offset: int64(len(u.data))}, nil
}

// CommitUpload implements registry.Writer. On DIGEST_INVALID the upload
// stays open, so the client may retry or cancel.
func (r *Registry) CommitUpload(ctx context.Context, repo, id string, d digest.Digest, body io.Reader) (registry.Descriptor, error) {
	if body != nil {
		if _, err := r.AppendUpload(ctx, repo, id, -1, body); err != nil {
			return registry.Descriptor{}, err
		}
	}
	defer r.lock()()
	if _, err := r.status(repo, id); err != nil {
		return registry.Descriptor{}, err
	}
	data := r.uploads[id].data
	if err := verify(d, -1, data); err != nil {
		return registry.Descriptor{}, err
	}
	delete(r.uploads, id)
	return r.store(repo, d, data), nil
}

// CancelUpload implements registry.Writer.
func (r *Registry) CancelUpload(_ context.Context, repo, id string) error {
	defer r.lock()()
	_, err := r.status(repo, id)
	if err == nil {
		delete(r.uploads, id)
	}
	return err
}

// MountBlob implements registry.Writer: from a repository that holds the
// blob, or (from "") from anywhere in the registry.
func (r *Registry) MountBlob(_ context.Context, from, repo string, d digest.Digest) (registry.Descriptor, error) {
	defer r.lock()()
	if _, stored := r.blobs[d]; !stored || (from != "" && !r.repo(from).blobs[d]) {
		return registry.Descriptor{}, blobUnknown(d)
	}
	return r.store(repo, d, nil), nil
}

// PushManifest implements registry.Writer: every blob (with its size) and
// child manifest must be in the repository already; the subject need not be.
func (r *Registry) PushManifest(_ context.Context, repo, tag string, m *registry.Manifest) (registry.Descriptor, error) {
	defer r.lock()()
	for _, ref := range m.Blobs {
		desc, err := r.blob(repo, ref.Digest)
		if err != nil {
			return registry.Descriptor{}, referenceUnknown("blob", ref.Digest)
		}
		if desc.Size != ref.Size {
			return registry.Descriptor{}, oci.Errorf(oci.CodeManifestInvalid, "blob %s has size %d, manifest says %d", ref.Digest, desc.Size, ref.Size)
		}
	}
	for _, c := range m.Children {
		if _, err := r.manifest(repo, c.Digest); err != nil {
			return registry.Descriptor{}, referenceUnknown("manifest", c.Digest)
		}
	}
	rp, d := r.create(repo), m.Desc.Digest
	if _, ok := r.blobs[d]; !ok {
		r.blobs[d] = bytes.Clone(m.Body)
	}
	mf := manifest{desc: m.Desc}
	if m.Subject != nil {
		mf.subject = m.Subject.Digest
	}
	rp.manifests[d] = mf
	if tag != "" {
		rp.tags[tag] = d
	}
	return m.Desc, nil
}

// DeleteBlob implements registry.Deleter: the repository loses access.
func (r *Registry) DeleteBlob(_ context.Context, repo string, d digest.Digest) error {
	defer r.lock()()
	_, err := r.blob(repo, d)
	if err == nil {
		delete(r.repos[repo].blobs, d)
	}
	return err
}

// DeleteManifest implements registry.Deleter: the tags pointing at it go too.
func (r *Registry) DeleteManifest(_ context.Context, repo string, d digest.Digest) error {
	defer r.lock()()
	_, err := r.manifest(repo, d)
	if err == nil {
		rp := r.repos[repo]
		delete(rp.manifests, d)
		maps.DeleteFunc(rp.tags, func(_ string, t digest.Digest) bool { return t == d })
	}
	return err
}

// DeleteTag implements registry.Deleter.
func (r *Registry) DeleteTag(_ context.Context, repo, tag string) error {
	defer r.lock()()
	_, err := r.tag(repo, tag)
	if err == nil {
		delete(r.repos[repo].tags, tag)
	}
	return err
}

// page returns the sorted names after last, at most n of them (n < 0: all),
// and the marker of the next page ("" if none follows).
func page[V any](m map[string]V, n int, last string) ([]string, string) {
	names := slices.Sorted(maps.Keys(m))
	i, found := slices.BinarySearch(names, last)
	if found {
		i++
	}
	names = names[i:]
	switch {
	case n == 0:
		return []string{}, ""
	case n < 0 || len(names) <= n:
		return names, ""
	}
	return names[:n], names[n-1]
}

// Repositories implements registry.Lister.
func (r *Registry) Repositories(_ context.Context, n int, last string) ([]string, string, error) {
	defer r.lock()()
	names, next := page(r.repos, n, last)
	return names, next, nil
}

// Tags implements registry.Lister: NAME_UNKNOWN for an unknown repository.
func (r *Registry) Tags(_ context.Context, repo string, n int, last string) ([]string, string, error) {
	defer r.lock()()
	if r.repos[repo] == nil {
		return nil, "", oci.Errorf(oci.CodeNameUnknown, "repository %s unknown", repo)
	}
	tags, next := page(r.repos[repo].tags, n, last)
	return tags, next, nil
}

// Referrers implements registry.Lister, in digest order.
func (r *Registry) Referrers(_ context.Context, repo string, d digest.Digest, artifactType string) ([]registry.Descriptor, bool, error) {
	defer r.lock()()
	descs := []registry.Descriptor{}
	for _, m := range r.repo(repo).manifests {
		if m.subject == d && (artifactType == "" || m.desc.ArtifactType == artifactType) {
			descs = append(descs, m.desc)
		}
	}
	slices.SortFunc(descs, func(a, b registry.Descriptor) int { return cmp.Compare(a.Digest, b.Digest) })
	return descs, artifactType != "", nil
}
