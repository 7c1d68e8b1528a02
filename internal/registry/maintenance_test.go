package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/internal/registry/regmem"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var (
	content = []byte("layer")
	blobD   = digest.FromBytes(content)
)

// writes are every Writer and Deleter method.
var writes = []struct {
	name string
	call func(context.Context, registry.Interface) error
}{
	{"PushBlob", func(ctx context.Context, r registry.Interface) error {
		_, err := r.PushBlob(ctx, "team/app", registry.Descriptor{Digest: blobD, Size: int64(len(content))}, bytes.NewReader(content))
		return err
	}},
	{"StartUpload", func(ctx context.Context, r registry.Interface) error {
		_, err := r.StartUpload(ctx, "team/app")
		return err
	}},
	{"UploadStatus", func(ctx context.Context, r registry.Interface) error {
		_, err := r.UploadStatus(ctx, "team/app", "u1")
		return err
	}},
	{"AppendUpload", func(ctx context.Context, r registry.Interface) error {
		_, err := r.AppendUpload(ctx, "team/app", "u1", 0, bytes.NewReader(content))
		return err
	}},
	{"CommitUpload", func(ctx context.Context, r registry.Interface) error {
		_, err := r.CommitUpload(ctx, "team/app", "u1", blobD, nil)
		return err
	}},
	{"CancelUpload", func(ctx context.Context, r registry.Interface) error { return r.CancelUpload(ctx, "team/app", "u1") }},
	{"MountBlob", func(ctx context.Context, r registry.Interface) error {
		_, err := r.MountBlob(ctx, "team/base", "team/app", blobD)
		return err
	}},
	{"PushManifest", func(ctx context.Context, r registry.Interface) error {
		_, err := r.PushManifest(ctx, "team/app", "v1", imageManifest())
		return err
	}},
	{"DeleteBlob", func(ctx context.Context, r registry.Interface) error { return r.DeleteBlob(ctx, "team/app", blobD) }},
	{"DeleteManifest", func(ctx context.Context, r registry.Interface) error {
		return r.DeleteManifest(ctx, "team/app", imageManifest().Desc.Digest)
	}},
	{"DeleteTag", func(ctx context.Context, r registry.Interface) error { return r.DeleteTag(ctx, "team/app", "v1") }},
}

// imageManifest is an image of the one blob (as config and layer).
func imageManifest() *registry.Manifest {
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: blobD, Size: int64(len(content))}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: desc, Layers: []ocispec.Descriptor{desc}}
	m.SchemaVersion = 2
	b, _ := json.Marshal(m)
	mf, err := registry.ParseManifest("", b, digest.FromBytes(b))
	if err != nil {
		panic(err)
	}
	return mf
}

// untouchable panics on every method: what Maintenance refuses must never
// reach the registry it wraps.
type untouchable struct{ registry.Interface }

func TestMaintenanceRefusesWrites(t *testing.T) {
	t.Parallel()
	var on atomic.Bool
	on.Store(true)
	r := registry.Maintenance(untouchable{}, &on)
	for _, w := range writes {
		t.Run(w.name, func(t *testing.T) {
			t.Parallel()
			err := w.call(t.Context(), r)
			var e *oci.Error
			if !errors.As(err, &e) || e.Code != oci.CodeUnsupported || e.Status() != http.StatusMethodNotAllowed {
				t.Fatalf("error %v, want UNSUPPORTED (405)", err)
			}
			if !strings.Contains(e.Message, "read-only maintenance mode") {
				t.Errorf("message %q does not say why", e.Message)
			}
		})
	}
}

func TestMaintenancePassesThroughWhenOff(t *testing.T) {
	t.Parallel()
	var on atomic.Bool
	for _, w := range writes {
		t.Run(w.name, func(t *testing.T) {
			t.Parallel()
			mem := regmem.New()
			err := w.call(t.Context(), registry.Maintenance(mem, &on))
			if errors.Is(err, &oci.Error{Code: oci.CodeUnsupported}) {
				t.Fatalf("refused while off: %v", err)
			}
		})
	}
}

// Reads go on while writes are refused, and the switch takes effect at the
// next call.
func TestMaintenanceSwitch(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	var on atomic.Bool
	mem := regmem.New()
	r := registry.Maintenance(mem, &on)
	if err := writes[0].call(ctx, r); err != nil {
		t.Fatal(err)
	}
	mf := imageManifest()
	if _, err := r.PushManifest(ctx, "team/app", "v1", mf); err != nil {
		t.Fatal(err)
	}
	on.Store(true)
	if err := writes[0].call(ctx, r); !errors.Is(err, &oci.Error{Code: oci.CodeUnsupported}) {
		t.Fatalf("push while on: %v", err)
	}
	reads := []struct {
		name string
		call func() error
	}{
		{"GetBlob", func() error {
			b, err := r.GetBlob(ctx, "team/app", blobD)
			if err == nil {
				b.Close()
			}
			return err
		}},
		{"ResolveBlob", func() error { _, err := r.ResolveBlob(ctx, "team/app", blobD); return err }},
		{"GetManifest", func() error {
			b, err := r.GetManifest(ctx, "team/app", mf.Desc.Digest)
			if err == nil {
				b.Close()
			}
			return err
		}},
		{"GetTag", func() error {
			b, err := r.GetTag(ctx, "team/app", "v1")
			if err == nil {
				b.Close()
			}
			return err
		}},
		{"ResolveManifest", func() error { _, err := r.ResolveManifest(ctx, "team/app", mf.Desc.Digest); return err }},
		{"ResolveTag", func() error { _, err := r.ResolveTag(ctx, "team/app", "v1"); return err }},
		{"Repositories", func() error { _, _, err := r.Repositories(ctx, -1, ""); return err }},
		{"Tags", func() error { _, _, err := r.Tags(ctx, "team/app", -1, ""); return err }},
		{"Referrers", func() error { _, _, err := r.Referrers(ctx, "team/app", mf.Desc.Digest, ""); return err }},
	}
	for _, rd := range reads {
		if err := rd.call(); err != nil {
			t.Errorf("%s while on: %v", rd.name, err)
		}
	}
	on.Store(false)
	if err := r.DeleteTag(ctx, "team/app", "v1"); err != nil {
		t.Fatalf("delete after the switch went off: %v", err)
	}
}
