package regmem_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/internal/registry/regmem"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// codeOf is the OCI code err carries, "" for nil, UNKNOWN for an internal error.
func codeOf(err error) oci.Code {
	var e *oci.Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Code
	}
	return oci.CodeUnknown
}

func check(t *testing.T, what string, err error, want oci.Code) {
	t.Helper()
	if got := codeOf(err); got != want {
		t.Fatalf("%s: error %v (code %q), want code %q", what, err, got, want)
	}
}

func pushBlob(t *testing.T, r *regmem.Registry, repo, content string) registry.Descriptor {
	t.Helper()
	b := []byte(content)
	desc, err := r.PushBlob(t.Context(), repo, registry.Descriptor{Digest: digest.FromBytes(b), Size: int64(len(b))}, bytes.NewReader(b))
	check(t, "PushBlob", err, "")
	return desc
}

func parse(t *testing.T, v any) *registry.Manifest {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	m, err := registry.ParseManifest("", b, digest.FromBytes(b))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func image(config ocispec.Descriptor, subject *ocispec.Descriptor, artifactType string, layers ...ocispec.Descriptor) ocispec.Manifest {
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: config, Layers: layers, Subject: subject, ArtifactType: artifactType}
	m.SchemaVersion = 2
	return m
}

// reading returns a function that reads what a Get method returns.
func reading(t *testing.T) func(registry.BlobReader, error) []byte {
	return func(rd registry.BlobReader, err error) []byte {
		t.Helper()
		check(t, "Get", err, "")
		defer rd.Close()
		b, err := io.ReadAll(rd)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}

func TestBlobs(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	r := regmem.New()
	desc := pushBlob(t, r, "a", "hello, world")
	if desc.Size != 12 || desc.Digest != digest.FromString("hello, world") {
		t.Fatalf("PushBlob = %+v", desc)
	}

	rd, err := r.GetBlob(ctx, "a", desc.Digest)
	check(t, "GetBlob", err, "")
	if _, ok := rd.(io.Seeker); !ok {
		t.Error("blob reader does not seek")
	}
	if b, ok := rd.(registry.Bytes); !ok || string(b.Bytes()) != "hello, world" {
		t.Error("blob reader is not registry.Bytes of the content")
	}
	if got := reading(t)(rd, err); string(got) != "hello, world" {
		t.Errorf("GetBlob read %q", got)
	}

	other := digest.FromString("other")
	for _, tc := range []struct {
		name string
		err  func() error
		want oci.Code
	}{
		{"resolve", func() error { _, err := r.ResolveBlob(ctx, "a", desc.Digest); return err }, ""},
		{"unknown digest", func() error { _, err := r.GetBlob(ctx, "a", other); return err }, oci.CodeBlobUnknown},
		{"other repository", func() error { _, err := r.ResolveBlob(ctx, "b", desc.Digest); return err }, oci.CodeBlobUnknown},
		{"unknown size", func() error {
			_, err := r.PushBlob(ctx, "a", registry.Descriptor{Digest: other, Size: -1}, strings.NewReader("other"))
			return err
		}, ""},
		{"size mismatch", func() error {
			_, err := r.PushBlob(ctx, "a", registry.Descriptor{Digest: other, Size: 4}, strings.NewReader("other"))
			return err
		}, oci.CodeSizeInvalid},
		{"digest mismatch", func() error {
			_, err := r.PushBlob(ctx, "a", registry.Descriptor{Digest: other, Size: -1}, strings.NewReader("tampered"))
			return err
		}, oci.CodeDigestInvalid},
		{"broken body", func() error {
			_, err := r.PushBlob(ctx, "a", registry.Descriptor{Digest: other, Size: -1}, io.MultiReader(strings.NewReader("ot"), errReader{}))
			return err
		}, oci.CodeUnknown},
		{"delete in other repository", func() error { return r.DeleteBlob(ctx, "b", desc.Digest) }, oci.CodeBlobUnknown},
	} {
		check(t, tc.name, tc.err(), tc.want)
	}

	check(t, "DeleteBlob", r.DeleteBlob(ctx, "a", desc.Digest), "")
	_, err = r.GetBlob(ctx, "a", desc.Digest)
	check(t, "GetBlob after delete", err, oci.CodeBlobUnknown)
	check(t, "DeleteBlob again", r.DeleteBlob(ctx, "a", desc.Digest), oci.CodeBlobUnknown)
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func TestUploads(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	r := regmem.New()
	content := "0123456789abcdef"
	d := digest.FromString(content)

	u, err := r.StartUpload(ctx, "a")
	check(t, "StartUpload", err, "")
	id := u.ID
	steps := []struct {
		name   string
		do     func() (registry.Upload, error)
		want   oci.Code
		offset int64
	}{
		{"status of a new upload", func() (registry.Upload, error) { return r.UploadStatus(ctx, "a", id) }, "", 0},
		{"status in another repository", func() (registry.Upload, error) { return r.UploadStatus(ctx, "b", id) }, oci.CodeBlobUploadUnknown, 0},
		{"status of an unknown id", func() (registry.Upload, error) { return r.UploadStatus(ctx, "a", "nope") }, oci.CodeBlobUploadUnknown, 0},
		{"first chunk at 0", func() (registry.Upload, error) {
			return r.AppendUpload(ctx, "a", id, 0, strings.NewReader(content[:4]))
		}, "", 4},
		{"chunk that overlaps", func() (registry.Upload, error) { return r.AppendUpload(ctx, "a", id, 2, strings.NewReader("xx")) }, oci.CodeBlobUploadInvalid, 4},
		{"chunk that leaves a gap", func() (registry.Upload, error) { return r.AppendUpload(ctx, "a", id, 9, strings.NewReader("xx")) }, oci.CodeBlobUploadInvalid, 4},
		{"chunk at its offset", func() (registry.Upload, error) {
			return r.AppendUpload(ctx, "a", id, 4, strings.NewReader(content[4:8]))
		}, "", 8},
		{"broken chunk keeps nothing", func() (registry.Upload, error) {
			return r.AppendUpload(ctx, "a", id, -1, io.MultiReader(strings.NewReader("zz"), errReader{}))
		}, oci.CodeUnknown, 8},
		{"chunk with no offset", func() (registry.Upload, error) {
			return r.AppendUpload(ctx, "a", id, -1, strings.NewReader(content[8:12]))
		}, "", 12},
		{"chunk in another repository", func() (registry.Upload, error) { return r.AppendUpload(ctx, "b", id, -1, strings.NewReader("x")) }, oci.CodeBlobUploadUnknown, 0},
		{"status after chunks", func() (registry.Upload, error) { return r.UploadStatus(ctx, "a", id) }, "", 12},
	}
	for _, s := range steps {
		got, err := s.do()
		check(t, s.name, err, s.want)
		if got.Offset != s.offset {
			t.Errorf("%s: offset %d, want %d", s.name, got.Offset, s.offset)
		}
		if s.want == oci.CodeBlobUploadInvalid && !errors.Is(err, oci.ErrUploadOffset) {
			t.Errorf("%s: %v does not match oci.ErrUploadOffset", s.name, err)
		}
	}

	_, err = r.CommitUpload(ctx, "a", id, digest.FromString("wrong"), strings.NewReader(content[12:]))
	check(t, "CommitUpload with a wrong digest", err, oci.CodeDigestInvalid)
	u, err = r.UploadStatus(ctx, "a", id)
	check(t, "status after a failed commit", err, "")
	if u.Offset != int64(len(content)) {
		t.Errorf("offset after a failed commit = %d, want %d", u.Offset, len(content))
	}
	desc, err := r.CommitUpload(ctx, "a", id, d, nil)
	check(t, "CommitUpload", err, "")
	if desc.Digest != d || desc.Size != int64(len(content)) {
		t.Errorf("CommitUpload = %+v", desc)
	}
	if got := reading(t)(r.GetBlob(ctx, "a", d)); string(got) != content {
		t.Errorf("committed blob = %q", got)
	}
	_, err = r.UploadStatus(ctx, "a", id)
	check(t, "status after commit", err, oci.CodeBlobUploadUnknown)

	u, _ = r.StartUpload(ctx, "a")
	check(t, "CancelUpload in another repository", r.CancelUpload(ctx, "b", u.ID), oci.CodeBlobUploadUnknown)
	check(t, "CancelUpload", r.CancelUpload(ctx, "a", u.ID), "")
	check(t, "CancelUpload again", r.CancelUpload(ctx, "a", u.ID), oci.CodeBlobUploadUnknown)
	_, err = r.CommitUpload(ctx, "a", u.ID, d, nil)
	check(t, "CommitUpload after cancel", err, oci.CodeBlobUploadUnknown)
}

// gatedReader delivers its content once released, telling started when
// the first read begins.
type gatedReader struct {
	started chan<- struct{}
	release <-chan struct{}
	r       io.Reader
	once    sync.Once
}

func (g *gatedReader) Read(p []byte) (int, error) {
	g.once.Do(func() { close(g.started); <-g.release })
	return g.r.Read(p)
}

// A chunk whose body was being read while another request appended no
// longer continues the upload: it is refused whole, with the new offset.
func TestConcurrentAppend(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	r := regmem.New()
	u, _ := r.StartUpload(ctx, "a")
	started, release := make(chan struct{}), make(chan struct{})
	type result struct {
		u   registry.Upload
		err error
	}
	done := make(chan result, 1)
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock() // a failed wait below must not leave the goroutine blocked
	go func() {
		u, err := r.AppendUpload(ctx, "a", u.ID, 0, &gatedReader{started: started, release: release, r: strings.NewReader("slow")})
		done <- result{u, err}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("slow chunk never read")
	}
	// The slow body holds no lock: other requests go on meanwhile.
	pushBlob(t, r, "a", "meanwhile")
	if _, err := r.AppendUpload(ctx, "a", u.ID, 0, strings.NewReader("fast!")); err != nil {
		t.Fatal(err)
	}
	unblock()
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("slow chunk never finished")
	}
	if !errors.Is(res.err, oci.ErrUploadOffset) || res.u.Offset != 5 {
		t.Fatalf("slow chunk: %+v, %v; want ErrUploadOffset at 5", res.u, res.err)
	}
	if got := reading(t)(r.GetBlob(ctx, "a", mustCommit(t, r, "a", u.ID, "fast!"))); string(got) != "fast!" {
		t.Errorf("blob = %q", got)
	}
}

func mustCommit(t *testing.T, r *regmem.Registry, repo, id, content string) digest.Digest {
	t.Helper()
	d := digest.FromString(content)
	_, err := r.CommitUpload(t.Context(), repo, id, d, nil)
	check(t, "CommitUpload", err, "")
	return d
}

func TestMountBlob(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	r := regmem.New()
	desc := pushBlob(t, r, "src", "layer")
	pushBlob(t, r, "other", "x")
	for _, tc := range []struct {
		name, from, to string
		d              digest.Digest
		want           oci.Code
	}{
		{"from a repository that has it", "src", "dst1", desc.Digest, ""},
		{"from a repository that lacks it", "other", "dst2", desc.Digest, oci.CodeBlobUnknown},
		{"from an unknown repository", "nope", "dst3", desc.Digest, oci.CodeBlobUnknown},
		{"from anywhere", "", "dst4", desc.Digest, ""},
		{"a blob stored nowhere", "", "dst5", digest.FromString("nowhere"), oci.CodeBlobUnknown},
	} {
		got, err := r.MountBlob(ctx, tc.from, tc.to, tc.d)
		check(t, tc.name, err, tc.want)
		_, rerr := r.ResolveBlob(ctx, tc.to, tc.d)
		if tc.want != "" {
			check(t, tc.name+": resolve in target", rerr, oci.CodeBlobUnknown)
			continue
		}
		check(t, tc.name+": resolve in target", rerr, "")
		if got.Digest != desc.Digest || got.Size != desc.Size {
			t.Errorf("%s: MountBlob = %+v, want %+v", tc.name, got, desc)
		}
	}
}

func TestManifests(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	r := regmem.New()
	config := pushBlob(t, r, "a", "{}")
	layer := pushBlob(t, r, "a", "layer")
	img := parse(t, image(config, nil, "", layer))
	missing := layer
	missing.Digest = digest.FromString("missing")
	wrongSize := layer
	wrongSize.Size++
	dangling := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{img.Desc}}
	dangling.SchemaVersion = 2

	for _, tc := range []struct {
		name string
		repo string
		m    *registry.Manifest
		want oci.Code
	}{
		{"missing layer", "a", parse(t, image(config, nil, "", missing)), oci.CodeManifestBlobUnknown},
		{"layer of another repository", "b", img, oci.CodeManifestBlobUnknown},
		{"layer size mismatch", "a", parse(t, image(config, nil, "", wrongSize)), oci.CodeManifestInvalid},
		{"index of an absent manifest", "a", parse(t, dangling), oci.CodeManifestBlobUnknown},
	} {
		_, err := r.PushManifest(ctx, tc.repo, "latest", tc.m)
		check(t, tc.name, err, tc.want)
	}
	if _, _, err := r.Tags(ctx, "b", -1, ""); codeOf(err) != oci.CodeNameUnknown {
		t.Errorf("a refused push created repository b: Tags error %v", err)
	}

	desc, err := r.PushManifest(ctx, "a", "v1", img)
	check(t, "PushManifest", err, "")
	if desc.Digest != img.Desc.Digest || desc.MediaType != ocispec.MediaTypeImageManifest || desc.Size != int64(len(img.Body)) {
		t.Errorf("PushManifest = %+v", desc)
	}
	_, err = r.PushManifest(ctx, "a", "", parse(t, dangling))
	check(t, "index of a present manifest", err, "")
	_, err = r.PushManifest(ctx, "a", "v2", img)
	check(t, "second tag", err, "")

	for _, tc := range []struct {
		name string
		get  func() (registry.BlobReader, error)
		want oci.Code
	}{
		{"by digest", func() (registry.BlobReader, error) { return r.GetManifest(ctx, "a", img.Desc.Digest) }, ""},
		{"by tag", func() (registry.BlobReader, error) { return r.GetTag(ctx, "a", "v1") }, ""},
		{"unknown tag", func() (registry.BlobReader, error) { return r.GetTag(ctx, "a", "nope") }, oci.CodeManifestUnknown},
		{"unknown digest", func() (registry.BlobReader, error) { return r.GetManifest(ctx, "a", layer.Digest) }, oci.CodeManifestUnknown},
		{"other repository", func() (registry.BlobReader, error) { return r.GetTag(ctx, "b", "v1") }, oci.CodeManifestUnknown},
	} {
		rd, err := tc.get()
		check(t, tc.name, err, tc.want)
		if err != nil {
			continue
		}
		if rd.Descriptor().Digest != img.Desc.Digest || rd.Descriptor().MediaType != ocispec.MediaTypeImageManifest {
			t.Errorf("%s: descriptor %+v", tc.name, rd.Descriptor())
		}
		if got := reading(t)(rd, nil); !bytes.Equal(got, img.Body) {
			t.Errorf("%s: body %s", tc.name, got)
		}
	}
	for _, tc := range []struct {
		name    string
		resolve func() (registry.Descriptor, error)
		want    oci.Code
	}{
		{"resolve by digest", func() (registry.Descriptor, error) { return r.ResolveManifest(ctx, "a", img.Desc.Digest) }, ""},
		{"resolve by tag", func() (registry.Descriptor, error) { return r.ResolveTag(ctx, "a", "v2") }, ""},
		{"resolve unknown tag", func() (registry.Descriptor, error) { return r.ResolveTag(ctx, "a", "nope") }, oci.CodeManifestUnknown},
		{"resolve unknown digest", func() (registry.Descriptor, error) { return r.ResolveManifest(ctx, "b", img.Desc.Digest) }, oci.CodeManifestUnknown},
	} {
		desc, err := tc.resolve()
		check(t, tc.name, err, tc.want)
		if err == nil && (desc.Digest != img.Desc.Digest || desc.Size != int64(len(img.Body))) {
			t.Errorf("%s: %+v", tc.name, desc)
		}
	}

	check(t, "DeleteTag", r.DeleteTag(ctx, "a", "v1"), "")
	check(t, "DeleteTag again", r.DeleteTag(ctx, "a", "v1"), oci.CodeManifestUnknown)
	check(t, "DeleteTag in an unknown repository", r.DeleteTag(ctx, "b", "v2"), oci.CodeManifestUnknown)
	if _, err := r.ResolveManifest(ctx, "a", img.Desc.Digest); err != nil {
		t.Errorf("manifest gone with its tag: %v", err)
	}
	check(t, "DeleteManifest", r.DeleteManifest(ctx, "a", img.Desc.Digest), "")
	check(t, "DeleteManifest again", r.DeleteManifest(ctx, "a", img.Desc.Digest), oci.CodeManifestUnknown)
	_, err = r.ResolveTag(ctx, "a", "v2")
	check(t, "tag of a deleted manifest", err, oci.CodeManifestUnknown)
	tags, _, err := r.Tags(ctx, "a", -1, "")
	check(t, "Tags", err, "")
	if len(tags) != 0 {
		t.Errorf("tags after deleting their manifest: %q", tags)
	}
}

func TestReferrers(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	r := regmem.New()
	config := pushBlob(t, r, "a", "{}")
	subject := parse(t, image(config, nil, ""))
	if _, err := r.PushManifest(ctx, "a", "", subject); err != nil {
		t.Fatal(err)
	}
	sbom := parse(t, image(config, &subject.Desc, "application/spdx+json"))
	sig := parse(t, image(config, &subject.Desc, "application/vnd.dev.cosign"))
	// A referrer may be pushed before its subject.
	orphan := parse(t, image(config, &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("later"), Size: 5}, "application/spdx+json"))
	for _, m := range []*registry.Manifest{sbom, sig, orphan} {
		if _, err := r.PushManifest(ctx, "a", "", m); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct {
		name         string
		repo         string
		subject      digest.Digest
		artifactType string
		want         []*registry.Manifest
	}{
		{"all", "a", subject.Desc.Digest, "", []*registry.Manifest{sbom, sig}},
		{"filtered", "a", subject.Desc.Digest, "application/spdx+json", []*registry.Manifest{sbom}},
		{"filtered to nothing", "a", subject.Desc.Digest, "text/plain", nil},
		{"absent subject", "a", digest.FromString("later"), "", []*registry.Manifest{orphan}},
		{"no referrers", "a", sbom.Desc.Digest, "", nil},
		{"unknown repository", "b", subject.Desc.Digest, "", nil},
	} {
		descs, filtered, err := r.Referrers(ctx, tc.repo, tc.subject, tc.artifactType)
		check(t, tc.name, err, "")
		if filtered != (tc.artifactType != "") {
			t.Errorf("%s: filtered = %v", tc.name, filtered)
		}
		if descs == nil {
			t.Errorf("%s: nil list", tc.name)
		}
		want := []registry.Descriptor{}
		for _, m := range tc.want {
			want = append(want, m.Desc)
		}
		slices.SortFunc(want, func(a, b registry.Descriptor) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
		if fmt.Sprint(descs) != fmt.Sprint(want) {
			t.Errorf("%s: referrers\n%v\nwant\n%v", tc.name, descs, want)
		}
		for _, d := range descs {
			if d.ArtifactType == "" || d.MediaType != ocispec.MediaTypeImageManifest {
				t.Errorf("%s: descriptor without artifact or media type: %+v", tc.name, d)
			}
		}
	}
	check(t, "DeleteManifest", r.DeleteManifest(ctx, "a", sig.Desc.Digest), "")
	descs, _, _ := r.Referrers(ctx, "a", subject.Desc.Digest, "")
	if len(descs) != 1 || descs[0].Digest != sbom.Desc.Digest {
		t.Errorf("referrers after deleting one: %v", descs)
	}
}

func TestPagination(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	r := regmem.New()
	config := pushBlob(t, r, "repo", "{}")
	img := parse(t, image(config, nil, ""))
	for _, tag := range []string{"d", "a", "c", "b", "e"} {
		if _, err := r.PushManifest(ctx, "repo", tag, img); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"z", "m/x", "b"} {
		pushBlob(t, r, name, "x")
	}
	_, _, err := r.Tags(ctx, "unknown", -1, "")
	check(t, "Tags of an unknown repository", err, oci.CodeNameUnknown)
	pushBlob(t, r, "empty", "x")
	if tags, next, err := r.Tags(ctx, "empty", 10, ""); err != nil || len(tags) != 0 || next != "" {
		t.Errorf("Tags of a repository without tags = %q, %q, %v", tags, next, err)
	}

	for _, tc := range []struct {
		name     string
		list     func(n int, last string) ([]string, string, error)
		n        int
		last     string
		want     []string
		wantNext string
	}{
		{"tags, no limit", tags(ctx, r), -1, "", []string{"a", "b", "c", "d", "e"}, ""},
		{"tags, n=0", tags(ctx, r), 0, "", []string{}, ""},
		{"tags, first page", tags(ctx, r), 2, "", []string{"a", "b"}, "b"},
		{"tags, middle page", tags(ctx, r), 2, "b", []string{"c", "d"}, "d"},
		{"tags, last page exactly", tags(ctx, r), 1, "d", []string{"e"}, ""},
		{"tags, last page short", tags(ctx, r), 2, "d", []string{"e"}, ""},
		{"tags, after a marker that is not a tag", tags(ctx, r), -1, "bb", []string{"c", "d", "e"}, ""},
		{"tags, after the end", tags(ctx, r), 3, "e", nil, ""},
		{"tags, n equals the rest", tags(ctx, r), 5, "", []string{"a", "b", "c", "d", "e"}, ""},
		{"catalog, no limit", catalog(ctx, r), -1, "", []string{"b", "empty", "m/x", "repo", "z"}, ""},
		{"catalog, n=0", catalog(ctx, r), 0, "", []string{}, ""},
		{"catalog, pages", catalog(ctx, r), 3, "", []string{"b", "empty", "m/x"}, "m/x"},
		{"catalog, next page", catalog(ctx, r), 3, "m/x", []string{"repo", "z"}, ""},
	} {
		got, next, err := tc.list(tc.n, tc.last)
		check(t, tc.name, err, "")
		if !slices.Equal(got, tc.want) || next != tc.wantNext {
			t.Errorf("%s: %q, next %q; want %q, next %q", tc.name, got, next, tc.want, tc.wantNext)
		}
		if tc.n == 0 && got == nil {
			t.Errorf("%s: nil list for n=0", tc.name)
		}
	}
}

func tags(ctx context.Context, r *regmem.Registry) func(int, string) ([]string, string, error) {
	return func(n int, last string) ([]string, string, error) { return r.Tags(ctx, "repo", n, last) }
}

func catalog(ctx context.Context, r *regmem.Registry) func(int, string) ([]string, string, error) {
	return func(n int, last string) ([]string, string, error) { return r.Repositories(ctx, n, last) }
}

// Many clients at once: pushes, reads and lists of the same registry (the
// race detector checks the locking).
func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	r := regmem.New()
	config := pushBlob(t, r, "shared", "{}")
	img := parse(t, image(config, nil, ""))
	const workers = 8
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			errs <- func() error {
				content := fmt.Sprintf("blob %d", i)
				d := digest.FromString(content)
				u, err := r.StartUpload(ctx, "shared")
				if err != nil {
					return err
				}
				if _, err := r.AppendUpload(ctx, "shared", u.ID, 0, strings.NewReader(content)); err != nil {
					return err
				}
				if _, err := r.CommitUpload(ctx, "shared", u.ID, d, nil); err != nil {
					return err
				}
				if _, err := r.PushManifest(ctx, "shared", fmt.Sprintf("t%d", i), img); err != nil {
					return err
				}
				rd, err := r.GetBlob(ctx, "shared", d)
				if err != nil {
					return err
				}
				if b, _ := io.ReadAll(rd); string(b) != content {
					return fmt.Errorf("read %q, want %q", b, content)
				}
				_, _, err = r.Tags(ctx, "shared", 2, "")
				return err
			}()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if tags, _, _ := r.Tags(ctx, "shared", -1, ""); len(tags) != workers {
		t.Errorf("tags = %q, want %d", tags, workers)
	}
}
