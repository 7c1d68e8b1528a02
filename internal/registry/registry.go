// Package registry is the seam between the OCI Distribution API over HTTP
// (package proxy serves any Interface) and where content comes from: local
// storage (cache.Local), an upstream mirror (internal/mirror), and the
// wrappers that compose them (Router in internal/route, ReadOnly and
// Maintenance here).
//
// Every method returns errors from one vocabulary: *oci.Error values (or
// errors wrapping them) that carry their OCI code; the sentinels in
// internal/oci (oci.ErrBlobUnknown, oci.ErrManifestUnknown, ...) match them
// with errors.Is. Any other error is internal: the HTTP layer answers it
// with UNKNOWN and logs it.
package registry

import (
	"context"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Descriptor describes a blob or manifest: media type, digest and size (and,
// in referrer lists, the artifact type and annotations).
type Descriptor = ocispec.Descriptor

// Interface is a registry: everything berth serves.
type Interface interface {
	Reader
	Writer
	Deleter
	Lister
}

// Reader reads content. A repository name is the one the implementation
// knows (the router strips a host prefix before it calls a mirror).
//
// The Get methods return BLOB_UNKNOWN or MANIFEST_UNKNOWN (NAME_UNKNOWN when
// the repository itself is unknown, where the implementation can tell).
type Reader interface {
	// GetBlob returns a blob's content. A reader that also implements
	// io.Seeker serves Range requests (the HTTP layer seeks, then reads only
	// the range). A reader that cannot deliver every byte it promised (an
	// upstream fill that fails verification) returns a non-EOF error: the
	// HTTP layer then cuts the connection, so no client sees a clean end of
	// bad data.
	GetBlob(ctx context.Context, repo string, d digest.Digest) (BlobReader, error)
	// ResolveBlob returns the descriptor of a blob without its content.
	ResolveBlob(ctx context.Context, repo string, d digest.Digest) (Descriptor, error)
	// GetManifest returns a manifest by digest.
	GetManifest(ctx context.Context, repo string, d digest.Digest) (BlobReader, error)
	// GetTag returns the manifest a tag points at.
	GetTag(ctx context.Context, repo, tag string) (BlobReader, error)
	// ResolveManifest and ResolveTag return a manifest's descriptor only.
	ResolveManifest(ctx context.Context, repo string, d digest.Digest) (Descriptor, error)
	ResolveTag(ctx context.Context, repo, tag string) (Descriptor, error)
}

// Writer stores content. Uploads are identified by an id the
// implementation chooses; their state survives restarts where the
// implementation can make it.
type Writer interface {
	// PushBlob stores a whole blob read from r. desc.Size < 0 means the
	// length is unknown (the digest alone is checked).
	PushBlob(ctx context.Context, repo string, desc Descriptor, r io.Reader) (Descriptor, error)
	// StartUpload opens a chunked upload.
	StartUpload(ctx context.Context, repo string) (Upload, error)
	// UploadStatus reports how far an upload is; BLOB_UPLOAD_UNKNOWN if none.
	UploadStatus(ctx context.Context, repo, id string) (Upload, error)
	// AppendUpload appends r at offset start (start < 0: at the current
	// offset). A start that does not continue the upload is an error
	// matching ErrUploadOffset; the returned Upload then has the offset.
	AppendUpload(ctx context.Context, repo, id string, start int64, r io.Reader) (Upload, error)
	// CommitUpload appends r (if not nil), verifies the whole content
	// against d and stores it as a blob of repo.
	CommitUpload(ctx context.Context, repo, id string, d digest.Digest, r io.Reader) (Descriptor, error)
	// CancelUpload abandons an upload.
	CancelUpload(ctx context.Context, repo, id string) error
	// MountBlob makes blob d of repository from readable in repo; from ""
	// means any repository the implementation considers mountable. It
	// returns BLOB_UNKNOWN when it cannot (the client then uploads).
	MountBlob(ctx context.Context, from, repo string, d digest.Digest) (Descriptor, error)
	// PushManifest stores a parsed manifest (see ParseManifest), checking
	// that everything it references is present, and points tag at it when
	// tag is not empty.
	PushManifest(ctx context.Context, repo, tag string, m *Manifest) (Descriptor, error)
}

// Deleter removes content.
type Deleter interface {
	DeleteBlob(ctx context.Context, repo string, d digest.Digest) error
	DeleteManifest(ctx context.Context, repo string, d digest.Digest) error
	DeleteTag(ctx context.Context, repo, tag string) error
}

// Lister lists names. Pages: n < 0 means no limit asked for; last is the
// client's marker; next is the marker of the following page ("" if none).
type Lister interface {
	Repositories(ctx context.Context, n int, last string) (names []string, next string, err error)
	Tags(ctx context.Context, repo string, n int, last string) (tags []string, next string, err error)
	// Referrers lists the manifests whose subject is d. filtered reports
	// that artifactType (if not empty) was applied.
	Referrers(ctx context.Context, repo string, d digest.Digest, artifactType string) (descs []Descriptor, filtered bool, err error)
}

// BlobReader is the content of a blob or manifest, with its descriptor.
type BlobReader interface {
	io.ReadCloser
	Descriptor() Descriptor
}

// Bytes is implemented by a BlobReader whose whole content is in memory
// (manifests, small blobs): the HTTP layer writes it in one call.
type Bytes interface {
	Bytes() []byte
}

// Upload is the state of a chunked upload.
type Upload struct {
	ID     string
	Offset int64 // bytes received so far
}

// Streaming is implemented by a BlobReader whose bytes arrive while it is
// read (an upstream fill): the HTTP layer flushes each write, so a client
// has every byte as soon as berth does.
type Streaming interface {
	Streaming() bool
}
