package cache

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// The hot cache remembers absence, and a write makes the key present at once.
func TestHotCacheAbsenceIsInvalidatedByWrites(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	if _, err := st.Repository("team/app"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Repository of a new name: %v", err)
	}
	if _, err := st.Repository("team/app"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Repository of a new name, from the hot cache: %v", err)
	}
	if err := st.EnsureRepository("team/app", ""); err != nil {
		t.Fatal(err)
	}
	if rec, err := st.Repository("team/app"); err != nil || rec.Origin != "" {
		t.Fatalf("Repository after it was created: %+v, %v", rec, err)
	}

	content := []byte("linked later")
	d := digest.FromBytes(content)
	if ok, err := st.Linked("team/other", d); ok || err != nil {
		t.Fatalf("Linked before any push = %v, %v", ok, err)
	}
	if err := st.PutBlob("team/other", "", d, int64(len(content)), bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.Linked("team/other", d); !ok || err != nil {
		t.Fatalf("Linked after the push = %v, %v; the cached absence was not evicted", ok, err)
	}
	if err := st.Unlink("team/other", d); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.Linked("team/other", d); ok || err != nil {
		t.Fatalf("Linked after Unlink = %v, %v", ok, err)
	}
}

// A manifest's annotations live in its referrer record only: the manifest
// record stays small enough for the hot cache whatever they weigh.
func TestManifestRecordWithoutAnnotations(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	body := []byte(`{"schemaVersion":2}`)
	subject := digest.FromString("subject")
	m := ManifestRecord{Digest: digest.FromBytes(body), MediaType: "application/vnd.oci.image.manifest.v1+json",
		Size: int64(len(body)), Subject: subject, ArtifactType: "application/example",
		Annotations: map[string]string{"pad": strings.Repeat("a", 8<<10)}}
	if err := st.PutManifest("team/app", "", m, body, "v1", time.Now()); err != nil {
		t.Fatal(err)
	}
	for range 2 { // from Badger, then from the hot cache
		got, err := st.Manifest("team/app", m.Digest)
		if err != nil || got.Annotations != nil || got.MediaType != m.MediaType || got.Size != m.Size {
			t.Fatalf("Manifest = %+v, %v; want the record without annotations", got, err)
		}
	}
	refs, err := st.Referrers("team/app", subject, "")
	if err != nil || len(refs) != 1 || refs[0].Annotations["pad"] != m.Annotations["pad"] {
		t.Fatalf("Referrers lost the annotations: %v, %v", len(refs), err)
	}
}
