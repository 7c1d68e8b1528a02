package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"
)

type blob struct {
	desc ocispec.Descriptor
	body []byte
}

func newBlob(mt string, b []byte) blob {
	return blob{ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}, b}
}

// testImage is an image manifest with a config and one layer of layer.
type testImage struct {
	config, layer, manifest blob
}

func newImage(layer string) testImage {
	cfg := newBlob(ocispec.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux","n":"`+layer+`"}`))
	l := newBlob(ocispec.MediaTypeImageLayer, []byte(strings.Repeat(layer, 1000)))
	body, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: cfg.desc, Layers: []ocispec.Descriptor{l.desc}})
	return testImage{cfg, l, newBlob(ocispec.MediaTypeImageManifest, body)}
}

func named(d ocispec.Descriptor, name string) ocispec.Descriptor {
	d.Annotations = map[string]string{AnnotationRefName: name}
	return d
}

// write writes imgs as a bundle, each named by its key.
func write(t *testing.T, opts Options, imgs map[string]testImage) ([]byte, *Writer) {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, opts)
	if err != nil {
		t.Fatal(err)
	}
	for name, img := range imgs {
		for _, b := range []blob{img.config, img.layer, img.manifest} {
			if err := w.AddBlob(b.desc, bytes.NewReader(b.body)); err != nil {
				t.Fatal(err)
			}
		}
		w.AddEntry(named(img.manifest.desc, name))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), w
}

// memSource is a Source over the blobs Read gave.
type memSource map[digest.Digest][]byte

func (m memSource) Has(d digest.Digest) bool                 { _, ok := m[d]; return ok }
func (m memSource) Manifest(d digest.Digest) ([]byte, error) { return m[d], nil }

func readAll(b []byte) (*Index, memSource, error) {
	src := memSource{}
	idx, err := Read(bytes.NewReader(b), func(d digest.Digest, size int64, r io.Reader) error {
		body, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		src[d] = body
		return nil
	})
	return idx, src, err
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	img := newImage("a")
	created := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	b, w := write(t, Options{Created: created}, map[string]testImage{"docker.io/library/busybox:latest": img})
	if len(w.Carried()) != 3 {
		t.Errorf("carried %d blobs", len(w.Carried()))
	}
	// The layout: oci-layout first, index.json last.
	var order []string
	tarNames(t, b, func(n string) { order = append(order, n) })
	if order[0] != "oci-layout" || order[len(order)-1] != "index.json" || len(order) != 5 {
		t.Errorf("entries %v", order)
	}
	idx, src, err := readAll(b)
	if err != nil {
		t.Fatal(err)
	}
	if !idx.Created.Equal(created) {
		t.Errorf("created %v", idx.Created)
	}
	imgs, err := Check(idx, src)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || imgs[0].Name != "docker.io/library/busybox:latest" || len(imgs[0].Blobs) != 2 || len(imgs[0].Manifests) != 1 {
		t.Errorf("images %+v", imgs)
	}
	if !bytes.Equal(src[img.layer.desc.Digest], img.layer.body) {
		t.Error("layer changed")
	}
}

// One flipped byte in a blob: refused, naming the blob.
func TestTamper(t *testing.T) {
	t.Parallel()
	img := newImage("b")
	b, _ := write(t, Options{}, map[string]testImage{"x/y:1": img})
	i := bytes.Index(b, img.layer.body)
	b[i+10] ^= 1
	_, _, err := readAll(b)
	var de *DigestError
	if !errors.As(err, &de) || de.Digest != img.layer.desc.Digest || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("tampered bundle: %v", err)
	}
	if !strings.Contains(err.Error(), img.layer.desc.Digest.String()) {
		t.Errorf("error does not name the digest: %v", err)
	}
	// Also when the reader of the blob does not read it at all.
	_, err = Read(bytes.NewReader(b), nil)
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("unread tampered blob: %v", err)
	}
}

func TestTruncated(t *testing.T) {
	t.Parallel()
	img := newImage("c")
	b, _ := write(t, Options{}, map[string]testImage{"x/y:1": img})
	for _, n := range []int{len(b) - 1100, bytes.Index(b, img.layer.body) + 100, 600} {
		_, _, err := readAll(b[:n])
		if !errors.Is(err, ErrTruncated) {
			t.Errorf("cut at %d of %d: %v", n, len(b), err)
		}
	}
	if _, _, err := readAll([]byte("hello, world")); err == nil {
		t.Error("not a tar: accepted")
	}
}

func TestMissingReference(t *testing.T) {
	t.Parallel()
	img := newImage("d")
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, Options{SinceName: "week1.tar", Since: map[digest.Digest]bool{img.layer.desc.Digest: true}})
	for _, b := range []blob{img.config, img.layer, img.manifest} {
		if err := w.AddBlob(b.desc, bytes.NewReader(b.body)); err != nil {
			t.Fatal(err)
		}
	}
	w.AddEntry(named(img.manifest.desc, "x/y:1"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	idx, src, err := readAll(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if src.Has(img.layer.desc.Digest) {
		t.Fatal("a blob of the since set was written")
	}
	_, err = Check(idx, src)
	if !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), img.layer.desc.Digest.String()) ||
		!strings.Contains(err.Error(), "week1.tar") {
		t.Fatalf("missing layer: %v", err)
	}
	src[img.layer.desc.Digest] = img.layer.body // the base was imported
	if _, err := Check(idx, src); err != nil {
		t.Fatal(err)
	}
}

func TestSinceFromBundleOrSidecar(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a, b := newImage("e"), newImage("f")
	first, w1 := write(t, Options{}, map[string]testImage{"x/a:1": a})
	p := filepath.Join(dir, "week1.tar")
	if err := os.WriteFile(p, first, 0o644); err != nil {
		t.Fatal(err)
	}
	fromTar, err := ReadDigests(p)
	if err != nil || len(fromTar) != 3 {
		t.Fatalf("from the tar: %v %v", fromTar, err)
	}
	var side bytes.Buffer
	if err := WriteDigests(&side, "week1.tar", w1.Digests()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p+SidecarSuffix, side.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	fromSide, err := ReadDigests(p + SidecarSuffix)
	if err != nil || len(fromSide) != 3 {
		t.Fatalf("from the sidecar: %v %v", fromSide, err)
	}
	// The second bundle carries only b's blobs, and its sidecar lists both.
	second, w2 := write(t, Options{Since: fromSide, SinceName: "week1.tar"}, map[string]testImage{"x/a:1": a, "x/b:1": b})
	if len(w2.Carried()) != 3 || len(w2.Digests()) != 6 {
		t.Errorf("carried %d, lists %d", len(w2.Carried()), len(w2.Digests()))
	}
	if bytes.Contains(second, a.layer.body) {
		t.Error("a's layer carried again")
	}
	idx, src, err := readAll(second)
	if err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 2 || idx.Since != "week1.tar" {
		t.Errorf("index %+v", idx)
	}
	if _, err := Check(idx, src); !errors.Is(err, ErrMissing) {
		t.Errorf("without its base: %v", err)
	}
}

func TestSplitRef(t *testing.T) {
	t.Parallel()
	d := digest.FromString("x")
	for _, tc := range []struct{ in, name, tag string }{
		{"docker.io/library/busybox:latest", "docker.io/library/busybox", "latest"},
		{"team/app:1", "team/app", "1"},
		{"localhost:5000/team/app", "localhost:5000/team/app", ""},
		{"ghcr.io/o/a@" + d.String(), "ghcr.io/o/a", ""},
	} {
		name, tag, _, err := SplitRef(tc.in)
		if err != nil || name != tc.name || tag != tc.tag {
			t.Errorf("SplitRef(%q) = %q %q %v", tc.in, name, tag, err)
		}
	}
}

// tarNames calls fn with each entry's name, in order.
func tarNames(t *testing.T, b []byte, fn func(string)) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		fn(h.Name)
	}
}

// --- Import into a store ----------------------------------------------------

func openStore(t *testing.T, dir string) *cache.Store {
	t.Helper()
	st, err := cache.Open(dir, cache.Options{Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func upstreams(host string) (string, bool) {
	switch host {
	case "docker.io", "index.docker.io":
		return "docker.io", true
	}
	return "", false
}

func TestImport(t *testing.T) {
	t.Parallel()
	st := openStore(t, t.TempDir())
	a := newImage("g")
	b, _ := write(t, Options{Created: time.Now().Add(-time.Hour)}, map[string]testImage{"docker.io/library/busybox:latest": a, "team/app:1": a})
	sum, err := Import(context.Background(), st, bytes.NewReader(b), ImportOptions{Upstream: upstreams})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Images != 2 || sum.Blobs != 3 || sum.Tags != 2 {
		t.Errorf("summary %+v", sum)
	}
	if r, err := st.Repository("docker.io/library/busybox"); err != nil || r.Origin != "docker.io" {
		t.Errorf("mirrored repository: %+v %v", r, err)
	}
	if r, err := st.Repository("team/app"); err != nil || r.Origin != "" {
		t.Errorf("local repository: %+v %v", r, err)
	}
	if tr, err := st.Tag("team/app", "1"); err != nil || tr.Digest != a.manifest.desc.Digest {
		t.Errorf("tag: %+v %v", tr, err)
	}
	if ok, _ := st.Linked("docker.io/library/busybox", a.layer.desc.Digest); !ok {
		t.Error("layer not linked")
	}
	// Twice: nothing changes.
	sum, err = Import(context.Background(), st, bytes.NewReader(b), ImportOptions{Upstream: upstreams})
	if err != nil || sum.Blobs != 0 || sum.Skipped != 3 || sum.Tags != 0 || sum.TagsKept != 0 {
		t.Errorf("second import: %+v %v", sum, err)
	}
	// An older bundle with another image under the same tag leaves the tag;
	// a newer one moves it.
	c := newImage("h")
	old, _ := write(t, Options{Created: time.Now().Add(-2 * time.Hour)}, map[string]testImage{"team/app:1": c})
	if sum, err := Import(context.Background(), st, bytes.NewReader(old), ImportOptions{}); err != nil || sum.TagsKept != 1 {
		t.Errorf("older bundle: %+v %v", sum, err)
	}
	if tr, _ := st.Tag("team/app", "1"); tr.Digest != a.manifest.desc.Digest {
		t.Error("an older bundle moved the tag")
	}
	newer, _ := write(t, Options{Created: time.Now()}, map[string]testImage{"team/app:1": c})
	if sum, err := Import(context.Background(), st, bytes.NewReader(newer), ImportOptions{}); err != nil || sum.Tags != 1 {
		t.Errorf("newer bundle: %+v %v", sum, err)
	}
	if tr, _ := st.Tag("team/app", "1"); tr.Digest != c.manifest.desc.Digest {
		t.Error("a newer bundle did not move the tag")
	}
}

// A tampered or incomplete bundle leaves nothing: no repository, no blob,
// no staging file.
func TestImportAllOrNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	st := openStore(t, dir)
	a, c := newImage("i"), newImage("j")
	good, _ := write(t, Options{}, map[string]testImage{"team/a:1": a, "team/c:1": c})
	bad := bytes.Clone(good)
	bad[bytes.Index(bad, c.layer.body)+5] ^= 1
	_, err := Import(context.Background(), st, bytes.NewReader(bad), ImportOptions{})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), c.layer.desc.Digest.String()) {
		t.Fatalf("tampered: %v", err)
	}
	_, err = Import(context.Background(), st, bytes.NewReader(good[:len(good)-2000]), ImportOptions{})
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("truncated: %v", err)
	}
	var inc bytes.Buffer
	w, _ := NewWriter(&inc, Options{SinceName: "base.tar", Since: map[digest.Digest]bool{a.config.desc.Digest: true}})
	for _, b := range []blob{a.layer, a.manifest} {
		w.AddBlob(b.desc, bytes.NewReader(b.body))
	}
	w.AddEntry(named(a.manifest.desc, "team/a:1"))
	w.Close()
	_, err = Import(context.Background(), st, &inc, ImportOptions{})
	if !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "base.tar") || !strings.Contains(err.Error(), a.config.desc.Digest.String()) {
		t.Fatalf("incremental without base: %v", err)
	}
	if names, _, _ := st.Repositories(0, ""); len(names) != 0 {
		t.Errorf("repositories after refused imports: %v", names)
	}
	if u := st.Usage(); u.Blobs != 0 {
		t.Errorf("blobs after refused imports: %+v", u)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "ingest")); len(ents) != 0 {
		t.Errorf("staging files left: %d", len(ents))
	}
}
