package registry_test

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/proxy"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// dirBlobs serves the blobs of an OCI image layout directory
// (blobs/<alg>/<hex>) under any repository name: a backend is one type.
type dirBlobs struct{ root string }

func (b dirBlobs) path(d digest.Digest) string {
	return filepath.Join(b.root, "blobs", d.Algorithm().String(), d.Encoded())
}

func (b dirBlobs) ResolveBlob(_ context.Context, _ string, d digest.Digest) (registry.Descriptor, error) {
	fi, err := os.Stat(b.path(d))
	if err != nil {
		return registry.Descriptor{}, oci.Errorf(oci.CodeBlobUnknown, "blob %s unknown", d)
	}
	return registry.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: fi.Size()}, nil
}

func (b dirBlobs) GetBlob(ctx context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	desc, err := b.ResolveBlob(ctx, repo, d)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(b.path(d))
	return blobFile{f, desc}, err // *os.File seeks: Range works
}

type blobFile struct {
	*os.File
	desc registry.Descriptor
}

func (f blobFile) Descriptor() registry.Descriptor { return f.desc }

// What this backend does not hold, it says so with the OCI error.
var none = oci.Errorf(oci.CodeManifestUnknown, "no manifests here")

func (dirBlobs) GetManifest(context.Context, string, digest.Digest) (registry.BlobReader, error) {
	return nil, none
}
func (dirBlobs) GetTag(context.Context, string, string) (registry.BlobReader, error) {
	return nil, none
}
func (dirBlobs) ResolveManifest(context.Context, string, digest.Digest) (registry.Descriptor, error) {
	return registry.Descriptor{}, none
}
func (dirBlobs) ResolveTag(context.Context, string, string) (registry.Descriptor, error) {
	return registry.Descriptor{}, none
}
func (dirBlobs) Repositories(context.Context, int, string) ([]string, string, error) {
	return []string{}, "", nil
}
func (dirBlobs) Tags(context.Context, string, int, string) ([]string, string, error) {
	return nil, "", oci.Errorf(oci.CodeNameUnknown, "no tags here")
}
func (dirBlobs) Referrers(context.Context, string, digest.Digest, string) ([]registry.Descriptor, bool, error) {
	return []registry.Descriptor{}, false, nil
}

// Serving a new backend over the OCI Distribution API: one type, wrapped
// read-only, handed to the HTTP layer.
func Example() {
	api := proxy.New(proxy.Options{Registry: registry.ReadOnly(dirBlobs{root: "/srv/layout"}, "read-only layout"), Logger: zerolog.Nop()})
	srv := httptest.NewServer(api)
	defer srv.Close()
}
