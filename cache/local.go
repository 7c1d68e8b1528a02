package cache

import (
	"context"
	"errors"
	"io"
	"os"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/opencontainers/go-digest"
)

// Local is the store as a registry.Interface: local repositories, served
// and pushed. The mirror reads what it has cached through one too, under
// its "<upstream>/<name>" repositories. It turns the store's sentinel errors
// into OCI errors; nothing else of the store's vocabulary leaves it.
type Local struct {
	s *Store
	// Origin is recorded on repositories this Local creates: "" for pushed
	// content, an upstream's name for mirrored content.
	origin string
}

// NewLocal returns the registry of the store's local repositories.
func NewLocal(s *Store) *Local { return &Local{s: s} }

// NewLocalOrigin is NewLocal for content that came from elsewhere: the
// repositories it creates record origin, so their blobs may be evicted.
func NewLocalOrigin(s *Store, origin string) *Local { return &Local{s: s, origin: origin} }

// Pushed reports whether repo is a local (pushed) repository.
func (l *Local) Pushed(_ context.Context, repo string) (bool, error) {
	rec, err := l.s.Repository(repo)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil && rec.Origin == "", err
}

var _ registry.Interface = (*Local)(nil)

// Store is the store this registry serves.
func (l *Local) Store() *Store { return l.s }

const octetStream = "application/octet-stream"

func blobUnknown(err error, d digest.Digest) error {
	if errors.Is(err, ErrNotFound) {
		return &oci.Error{Code: oci.CodeBlobUnknown, Message: "blob " + d.String() + " unknown to this repository", Cause: err}
	}
	return err
}

func manifestUnknown(err error, ref string) error {
	if errors.Is(err, ErrNotFound) {
		return &oci.Error{Code: oci.CodeManifestUnknown, Message: "manifest " + oci.Clip(ref) + " unknown", Cause: err}
	}
	return err
}

// storeErr maps the store's errors for content a client sent.
func storeErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrUploadUnknown):
		return &oci.Error{Code: oci.CodeBlobUploadUnknown, Message: "upload unknown", Cause: err}
	case errors.Is(err, ErrDigestMismatch):
		return &oci.Error{Code: oci.CodeDigestInvalid, Message: "content does not match digest", Cause: err}
	case errors.Is(err, ErrSizeMismatch):
		return &oci.Error{Code: oci.CodeSizeInvalid, Message: "content length does not match", Cause: err}
	case errors.Is(err, ErrRefGone):
		return &oci.Error{Code: oci.CodeManifestBlobUnknown, Message: "manifest references content collected while it was pushed; push it again", Cause: err}
	case errors.Is(err, ErrUploadLimit):
		return &oci.Error{Code: oci.CodeTooManyRequests, Message: err.Error(), Cause: err}
	case errors.Is(err, ErrOffset):
		return &oci.Error{Code: oci.CodeBlobUploadInvalid, Message: err.Error(), HTTPStatus: oci.ErrUploadOffset.HTTPStatus, Cause: err}
	}
	return err
}

// ResolveBlob implements registry.Reader.
func (l *Local) ResolveBlob(_ context.Context, repo string, d digest.Digest) (registry.Descriptor, error) {
	size, err := l.s.StatRepoBlob(repo, d)
	if err != nil {
		return registry.Descriptor{}, blobUnknown(err, d)
	}
	return registry.Descriptor{MediaType: octetStream, Digest: d, Size: size}, nil
}

// GetBlob implements registry.Reader: small blobs from memory, others from
// their immutable, verified file.
func (l *Local) GetBlob(ctx context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	desc, err := l.ResolveBlob(ctx, repo, d)
	if err != nil {
		return nil, err
	}
	if b, ok := l.s.SmallBlob(d, desc.Size); ok {
		return registry.NewBytesReader(desc, b), nil
	}
	f, err := l.s.OpenBlob(d)
	if err != nil {
		return nil, blobUnknown(err, d)
	}
	return &fileReader{File: f, desc: desc}, nil
}

// fileReader is a blob file; it seeks, for Range. The file is immutable and
// verified, so its size is the indexed size.
type fileReader struct {
	*os.File
	desc registry.Descriptor
}

func (r *fileReader) Descriptor() registry.Descriptor { return r.desc }

func (l *Local) manifestDesc(repo string, d digest.Digest) (registry.Descriptor, error) {
	m, err := l.s.Manifest(repo, d)
	if err != nil {
		return registry.Descriptor{}, manifestUnknown(err, d.String())
	}
	return registry.Descriptor{MediaType: m.MediaType, Digest: d, Size: m.Size}, nil
}

// ResolveManifest implements registry.Reader.
func (l *Local) ResolveManifest(_ context.Context, repo string, d digest.Digest) (registry.Descriptor, error) {
	return l.manifestDesc(repo, d)
}

// GetManifest implements registry.Reader.
func (l *Local) GetManifest(_ context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	desc, err := l.manifestDesc(repo, d)
	if err != nil {
		return nil, err
	}
	body, err := l.s.ManifestBody(d)
	if err != nil {
		return nil, manifestUnknown(err, d.String())
	}
	return registry.NewBytesReader(desc, body), nil
}

func (l *Local) tagged(repo, tag string) (digest.Digest, error) {
	t, err := l.s.Tag(repo, tag)
	if err != nil {
		return "", manifestUnknown(err, tag)
	}
	l.s.RecordPull(repo, tag) // for retention's not_pulled_for; in memory
	return t.Digest, nil
}

// ResolveTag implements registry.Reader.
func (l *Local) ResolveTag(_ context.Context, repo, tag string) (registry.Descriptor, error) {
	d, err := l.tagged(repo, tag)
	if err != nil {
		return registry.Descriptor{}, err
	}
	return l.manifestDesc(repo, d)
}

// GetTag implements registry.Reader.
func (l *Local) GetTag(ctx context.Context, repo, tag string) (registry.BlobReader, error) {
	d, err := l.tagged(repo, tag)
	if err != nil {
		return nil, err
	}
	return l.GetManifest(ctx, repo, d)
}

// PushBlob implements registry.Writer.
func (l *Local) PushBlob(_ context.Context, repo string, desc registry.Descriptor, r io.Reader) (registry.Descriptor, error) {
	size := desc.Size
	if err := l.s.PutBlob(repo, l.origin, desc.Digest, size, r); err != nil {
		return registry.Descriptor{}, storeErr(err)
	}
	return l.ResolveBlob(context.Background(), repo, desc.Digest)
}

// StartUpload implements registry.Writer.
func (l *Local) StartUpload(_ context.Context, repo string) (registry.Upload, error) {
	u, err := l.s.NewUpload(repo)
	return registry.Upload{ID: u.ID, Offset: u.Offset}, storeErr(err)
}

// UploadStatus implements registry.Writer.
func (l *Local) UploadStatus(_ context.Context, repo, id string) (registry.Upload, error) {
	u, err := l.s.GetUpload(repo, id)
	return registry.Upload{ID: u.ID, Offset: u.Offset}, storeErr(err)
}

// AppendUpload implements registry.Writer.
func (l *Local) AppendUpload(_ context.Context, repo, id string, start int64, r io.Reader) (registry.Upload, error) {
	u, err := l.s.AppendUpload(repo, id, start, r)
	return registry.Upload{ID: u.ID, Offset: u.Offset}, storeErr(err)
}

// CommitUpload implements registry.Writer.
func (l *Local) CommitUpload(_ context.Context, repo, id string, d digest.Digest, r io.Reader) (registry.Descriptor, error) {
	n, err := l.s.CommitUpload(repo, id, d, r)
	if err != nil {
		return registry.Descriptor{}, storeErr(err)
	}
	return registry.Descriptor{MediaType: octetStream, Digest: d, Size: n}, nil
}

// CancelUpload implements registry.Writer.
func (l *Local) CancelUpload(_ context.Context, repo, id string) error {
	return storeErr(l.s.CancelUpload(repo, id))
}

// MountBlob implements registry.Writer: from a named repository that holds
// the blob, or (from "") from anywhere in the store, since the local
// namespace is one trust domain.
func (l *Local) MountBlob(ctx context.Context, from, repo string, d digest.Digest) (registry.Descriptor, error) {
	if from != "" {
		if ok, err := l.s.Linked(from, d); err != nil {
			return registry.Descriptor{}, err
		} else if !ok {
			return registry.Descriptor{}, blobUnknown(ErrNotFound, d)
		}
	}
	if err := l.s.Link(repo, l.origin, d); err != nil {
		return registry.Descriptor{}, blobUnknown(err, d)
	}
	return l.ResolveBlob(ctx, repo, d)
}

// PushManifest implements registry.Writer: every blob and child manifest
// must be in the repository already.
func (l *Local) PushManifest(_ context.Context, repo, tag string, m *registry.Manifest) (registry.Descriptor, error) {
	if err := l.checkReferences(repo, m); err != nil {
		return registry.Descriptor{}, err
	}
	if err := l.s.Admit(int64(len(m.Body))); err != nil {
		return registry.Descriptor{}, err
	}
	blobs := make([]digest.Digest, len(m.Blobs))
	for i, b := range m.Blobs {
		blobs[i] = b.Digest
	}
	children := make([]digest.Digest, len(m.Children))
	for i, c := range m.Children {
		children[i] = c.Digest
	}
	if err := l.s.PutManifestRefs(repo, l.origin, RecordOf(m), m.Body, tag, l.s.now(), blobs, children); err != nil {
		return registry.Descriptor{}, storeErr(err)
	}
	return m.Desc, nil
}

// RecordOf is the index record of a parsed manifest.
func RecordOf(m *registry.Manifest) ManifestRecord {
	r := ManifestRecord{Digest: m.Desc.Digest, MediaType: m.Desc.MediaType, Size: m.Desc.Size,
		ArtifactType: m.Desc.ArtifactType, Annotations: m.Desc.Annotations}
	if m.Subject != nil {
		r.Subject = m.Subject.Digest
	}
	return r
}

func (l *Local) checkReferences(repo string, m *registry.Manifest) error {
	for _, ref := range m.Blobs {
		size, err := l.s.StatRepoBlob(repo, ref.Digest)
		if errors.Is(err, ErrNotFound) {
			return &oci.Error{Code: oci.CodeManifestBlobUnknown, Message: "manifest references a blob that is not in this repository", Detail: map[string]string{"digest": ref.Digest.String()}}
		}
		if err != nil {
			return err
		}
		if size != ref.Size {
			return oci.Errorf(oci.CodeManifestInvalid, "blob %s has size %d, manifest says %d", ref.Digest, size, ref.Size)
		}
	}
	for _, child := range m.Children {
		if _, err := l.s.Manifest(repo, child.Digest); errors.Is(err, ErrNotFound) {
			return &oci.Error{Code: oci.CodeManifestBlobUnknown, Message: "index references a manifest that is not in this repository", Detail: map[string]string{"digest": child.Digest.String()}}
		} else if err != nil {
			return err
		}
	}
	return nil
}

// DeleteBlob implements registry.Deleter: the repository loses access.
func (l *Local) DeleteBlob(_ context.Context, repo string, d digest.Digest) error {
	return blobUnknown(l.s.Unlink(repo, d), d)
}

// DeleteManifest implements registry.Deleter.
func (l *Local) DeleteManifest(_ context.Context, repo string, d digest.Digest) error {
	return manifestUnknown(l.s.DeleteManifest(repo, d), d.String())
}

// DeleteTag implements registry.Deleter.
func (l *Local) DeleteTag(_ context.Context, repo, tag string) error {
	return manifestUnknown(l.s.DeleteTag(repo, tag), tag)
}

func page(names []string, more bool) string {
	if !more || len(names) == 0 {
		return ""
	}
	return names[len(names)-1]
}

// Repositories implements registry.Lister: every repository in the store,
// mirrored ones under their "<upstream>/" prefix.
func (l *Local) Repositories(_ context.Context, n int, last string) ([]string, string, error) {
	if n == 0 {
		return []string{}, "", nil
	}
	names, more, err := l.s.Repositories(max(n, 0), last)
	return names, page(names, more), err
}

// Tags implements registry.Lister.
func (l *Local) Tags(_ context.Context, repo string, n int, last string) ([]string, string, error) {
	if _, err := l.s.Repository(repo); err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, "", &oci.Error{Code: oci.CodeNameUnknown, Message: "repository " + repo + " unknown", Cause: err}
		}
		return nil, "", err
	}
	if n == 0 {
		return []string{}, "", nil
	}
	tags, more, err := l.s.Tags(repo, max(n, 0), last)
	return tags, page(tags, more), err
}

// Referrers implements registry.Lister.
func (l *Local) Referrers(_ context.Context, repo string, d digest.Digest, artifactType string) ([]registry.Descriptor, bool, error) {
	descs, err := l.s.Referrers(repo, d, artifactType)
	return descs, artifactType != "", err
}
