package registry

import (
	"bytes"
	"context"
	"io"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/opencontainers/go-digest"
)

// ReadLister is the read side of a registry.
type ReadLister interface {
	Reader
	Lister
}

// ReadOnly serves r's content and refuses every write and delete with
// DENIED, naming why (a mirrored repository, say).
func ReadOnly(r ReadLister, why string) Interface { return readOnly{r, why} }

type readOnly struct {
	ReadLister
	why string
}

func (ro readOnly) deny() error { return oci.Errorf(oci.CodeDenied, "%s", ro.why) }

func (ro readOnly) PushBlob(context.Context, string, Descriptor, io.Reader) (Descriptor, error) {
	return Descriptor{}, ro.deny()
}
func (ro readOnly) StartUpload(context.Context, string) (Upload, error) { return Upload{}, ro.deny() }
func (ro readOnly) UploadStatus(context.Context, string, string) (Upload, error) {
	return Upload{}, ro.deny()
}
func (ro readOnly) AppendUpload(context.Context, string, string, int64, io.Reader) (Upload, error) {
	return Upload{}, ro.deny()
}
func (ro readOnly) CommitUpload(context.Context, string, string, digest.Digest, io.Reader) (Descriptor, error) {
	return Descriptor{}, ro.deny()
}
func (ro readOnly) CancelUpload(context.Context, string, string) error { return ro.deny() }
func (ro readOnly) MountBlob(context.Context, string, string, digest.Digest) (Descriptor, error) {
	return Descriptor{}, ro.deny()
}
func (ro readOnly) PushManifest(context.Context, string, string, *Manifest) (Descriptor, error) {
	return Descriptor{}, ro.deny()
}
func (ro readOnly) DeleteBlob(context.Context, string, digest.Digest) error     { return ro.deny() }
func (ro readOnly) DeleteManifest(context.Context, string, digest.Digest) error { return ro.deny() }
func (ro readOnly) DeleteTag(context.Context, string, string) error             { return ro.deny() }

// NewBytesReader is a BlobReader over content held in memory.
func NewBytesReader(desc Descriptor, b []byte) BlobReader {
	return &bytesReader{Reader: bytes.NewReader(b), desc: desc, b: b}
}

type bytesReader struct {
	*bytes.Reader
	desc Descriptor
	b    []byte
}

func (r *bytesReader) Descriptor() Descriptor { return r.desc }
func (r *bytesReader) Bytes() []byte          { return r.b }
func (r *bytesReader) Close() error           { return nil }

// RequestInfo carries, for one request, what the HTTP layer knows beyond the
// repository name, and what a wrapper reports back for the request's log.
type RequestInfo struct {
	// Host is the registry host the client named with ?ns= (containerd's
	// mirror convention); "" if none.
	Host string
	// Route is set by the router: "local" or the upstream's name.
	Route string
	// Cache is how a mirror answered: hit, miss, joined (a download in
	// flight), stale (cached, upstream failing), revalidated, negative;
	// "" where no cache was involved.
	Cache string
	// User is the authenticated client, "" for anonymous.
	User string
	// RequestID names the request in logs (and to the client, as
	// X-Request-Id): a backend that logs during a request adds it.
	RequestID string
	// Peer marks a request from another replica of the cluster, which asks
	// this one as the owner of a blob's download: a mirror then downloads
	// it itself rather than ask the cluster again.
	Peer bool
}

type infoKey struct{}

// WithInfo returns ctx carrying info.
func WithInfo(ctx context.Context, info *RequestInfo) context.Context {
	return context.WithValue(ctx, infoKey{}, info)
}

// InfoFrom returns the request's info, or an empty one that nobody reads.
func InfoFrom(ctx context.Context) *RequestInfo {
	if i, ok := ctx.Value(infoKey{}).(*RequestInfo); ok {
		return i
	}
	return &RequestInfo{}
}
