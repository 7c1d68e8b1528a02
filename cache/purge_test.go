package cache

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// mirrorImage stores an image as a fill would: blobs linked to a mirrored
// repository, the manifest indexed under tag.
func mirrorImage(t *testing.T, st *Store, repo, tag string, layers ...[]byte) digest.Digest {
	t.Helper()
	cfg := []byte(`{"mirrored":"` + tag + `"}`)
	put(t, st, repo, mirrorName, cfg)
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: descOf(ocispec.MediaTypeImageConfig, cfg)}
	m.SchemaVersion = 2
	for _, l := range layers {
		put(t, st, repo, mirrorName, l)
		m.Layers = append(m.Layers, descOf(ocispec.MediaTypeImageLayer, l))
	}
	body, _ := json.Marshal(m)
	d := digest.FromBytes(body)
	if err := st.PutManifest(repo, mirrorName, ManifestRecord{Digest: d, MediaType: m.MediaType, Size: int64(len(body))}, body, tag, time.Now()); err != nil {
		t.Fatal(err)
	}
	return d
}

// Purging a mirrored image removes it, its tags and the blobs nothing else
// holds; a layer another image of the repository (or a local one) uses stays.
func TestPurgeMirroredImage(t *testing.T) {
	t.Parallel()
	st := openGC(t, newClock(), Options{})
	base, _ := blobOf(1, 300)
	bad, _ := blobOf(2, 700)
	good := mirrorImage(t, st, mirrorRepo, "good", base)
	d := mirrorImage(t, st, mirrorRepo, "bad", base, bad)
	image(t, st, localRepo, "v1", nil, bad) // a local image shares the bad layer
	before := st.Usage().Bytes
	rep, err := st.PurgeManifest(mirrorRepo, d)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Tags, []string{"bad"}) || !slices.Equal(rep.Manifests, []digest.Digest{d}) {
		t.Errorf("purged %v %v", rep.Tags, rep.Manifests)
	}
	if isStored(st, d) {
		t.Error("manifest body still stored")
	}
	if !isStored(st, digest.FromBytes(bad)) || !isStored(st, digest.FromBytes(base)) {
		t.Error("a layer still used elsewhere was removed")
	}
	if ok, _ := st.Linked(mirrorRepo, digest.FromBytes(bad)); ok {
		t.Error("mirrored repository still links the purged layer")
	}
	if ok, _ := st.Linked(mirrorRepo, digest.FromBytes(base)); !ok {
		t.Error("layer of the remaining image unlinked")
	}
	if _, err := st.Tag(mirrorRepo, "bad"); !errors.Is(err, ErrNotFound) {
		t.Error("tag survived")
	}
	if _, err := st.Manifest(mirrorRepo, good); err != nil {
		t.Error("other image purged")
	}
	if st.Usage().Bytes != before-rep.Bytes {
		t.Errorf("usage %d, want %d", st.Usage().Bytes, before-rep.Bytes)
	}
	// Purging the other one frees its layer and config too.
	rep, err = st.PurgeManifest(mirrorRepo, good)
	if err != nil {
		t.Fatal(err)
	}
	if isStored(st, digest.FromBytes(base)) || len(rep.Blobs) != 3 {
		t.Errorf("removed %v", rep.Blobs)
	}
	if _, err := st.PurgeManifest(mirrorRepo, good); !errors.Is(err, ErrNotFound) {
		t.Errorf("second purge: %v", err)
	}
}

func TestRevalidateAndInventory(t *testing.T) {
	t.Parallel()
	st := openGC(t, newClock(), Options{})
	l, _ := blobOf(1, 1000)
	mirrorImage(t, st, mirrorRepo, "v1", l)
	image(t, st, localRepo, "v1", nil, l)
	if err := st.Revalidate(mirrorRepo, "v1"); err != nil {
		t.Fatal(err)
	}
	if rec, _ := st.Tag(mirrorRepo, "v1"); !rec.FetchedAt.IsZero() {
		t.Error("tag not stale")
	}
	if err := st.Revalidate(mirrorRepo, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Revalidate unknown: %v", err)
	}
	du, err := st.DiskUsage()
	if err != nil {
		t.Fatal(err)
	}
	if du.Total != st.Usage().Bytes || du.Local+du.Upstreams[mirrorName]+du.Unreferenced != du.Total || du.Local < 1000 {
		t.Errorf("du = %+v, usage %d", du, st.Usage().Bytes)
	}
	repos, err := st.Repos()
	if err != nil || len(repos) != 2 || repos[0].Name != mirrorRepo || repos[0].Origin != mirrorName || repos[1].Origin != "local" {
		t.Fatalf("repos = %+v, %v", repos, err)
	}
	tags, err := st.TagInfos(localRepo)
	if err != nil || len(tags) != 1 || tags[0].Bytes < 1000 {
		t.Errorf("tags = %+v, %v", tags, err)
	}
}

// Purging a blob drops the repository's link, and the file only when no
// other repository links it.
func TestPurgeBlob(t *testing.T) {
	t.Parallel()
	st := openGC(t, newClock(), Options{})
	only := put(t, st, mirrorRepo, mirrorName, []byte("only here"))
	shared := put(t, st, mirrorRepo, mirrorName, []byte("shared"))
	put(t, st, "docker.io/library/other", mirrorName, []byte("shared"))
	rep, err := st.PurgeBlob(mirrorRepo, only)
	if err != nil || len(rep.Blobs) != 1 || isStored(st, only) {
		t.Errorf("purge of an unshared blob: %+v %v", rep, err)
	}
	rep, err = st.PurgeBlob(mirrorRepo, shared)
	if err != nil || len(rep.Blobs) != 0 || rep.Unlinked != 1 || !isStored(st, shared) {
		t.Errorf("purge of a shared blob: %+v %v", rep, err)
	}
	if ok, _ := st.Linked(mirrorRepo, shared); ok {
		t.Error("link kept")
	}
	if _, err := st.PurgeBlob(mirrorRepo, shared); !errors.Is(err, ErrNotFound) {
		t.Errorf("second purge: %v", err)
	}
}
