package registry

import (
	"context"
	"io"
	"sync/atomic"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/opencontainers/go-digest"
)

// Maintenance serves r, except that while on is true every write and delete
// is refused with UNSUPPORTED (405) and r is not asked: the read-only
// maintenance mode, switched at run time by whoever owns on. Reads and
// listings always pass through.
func Maintenance(r Interface, on *atomic.Bool) Interface { return maintenance{r, on} }

type maintenance struct {
	Interface
	on *atomic.Bool
}

// errMaintenance is what a refused write answers.
func errMaintenance() error {
	return oci.Errorf(oci.CodeUnsupported, "berth is in read-only maintenance mode: pushes and deletes are refused, pulls go on")
}

func (m maintenance) PushBlob(ctx context.Context, repo string, desc Descriptor, r io.Reader) (Descriptor, error) {
	if m.on.Load() {
		return Descriptor{}, errMaintenance()
	}
	return m.Interface.PushBlob(ctx, repo, desc, r)
}

func (m maintenance) StartUpload(ctx context.Context, repo string) (Upload, error) {
	if m.on.Load() {
		return Upload{}, errMaintenance()
	}
	return m.Interface.StartUpload(ctx, repo)
}

func (m maintenance) UploadStatus(ctx context.Context, repo, id string) (Upload, error) {
	if m.on.Load() {
		return Upload{}, errMaintenance()
	}
	return m.Interface.UploadStatus(ctx, repo, id)
}

func (m maintenance) AppendUpload(ctx context.Context, repo, id string, start int64, r io.Reader) (Upload, error) {
	if m.on.Load() {
		return Upload{}, errMaintenance()
	}
	return m.Interface.AppendUpload(ctx, repo, id, start, r)
}

func (m maintenance) CommitUpload(ctx context.Context, repo, id string, d digest.Digest, r io.Reader) (Descriptor, error) {
	if m.on.Load() {
		return Descriptor{}, errMaintenance()
	}
	return m.Interface.CommitUpload(ctx, repo, id, d, r)
}

func (m maintenance) CancelUpload(ctx context.Context, repo, id string) error {
	if m.on.Load() {
		return errMaintenance()
	}
	return m.Interface.CancelUpload(ctx, repo, id)
}

func (m maintenance) MountBlob(ctx context.Context, from, repo string, d digest.Digest) (Descriptor, error) {
	if m.on.Load() {
		return Descriptor{}, errMaintenance()
	}
	return m.Interface.MountBlob(ctx, from, repo, d)
}

func (m maintenance) PushManifest(ctx context.Context, repo, tag string, mf *Manifest) (Descriptor, error) {
	if m.on.Load() {
		return Descriptor{}, errMaintenance()
	}
	return m.Interface.PushManifest(ctx, repo, tag, mf)
}

func (m maintenance) DeleteBlob(ctx context.Context, repo string, d digest.Digest) error {
	if m.on.Load() {
		return errMaintenance()
	}
	return m.Interface.DeleteBlob(ctx, repo, d)
}

func (m maintenance) DeleteManifest(ctx context.Context, repo string, d digest.Digest) error {
	if m.on.Load() {
		return errMaintenance()
	}
	return m.Interface.DeleteManifest(ctx, repo, d)
}

func (m maintenance) DeleteTag(ctx context.Context, repo, tag string) error {
	if m.on.Load() {
		return errMaintenance()
	}
	return m.Interface.DeleteTag(ctx, repo, tag)
}
