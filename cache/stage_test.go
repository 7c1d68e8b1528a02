package cache

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// A staged blob is invisible until committed; a bad one is never staged.
func TestStage(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	b := []byte("staged content")
	d := digest.FromBytes(b)
	if _, err := st.Stage(d, int64(len(b)), bytes.NewReader(append(bytes.Clone(b), '!'))); !errors.Is(err, ErrSizeMismatch) {
		t.Errorf("too long: %v", err)
	}
	if _, err := st.Stage(d, int64(len(b)), bytes.NewReader(bytes.ToUpper(b))); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("other content: %v", err)
	}
	s, err := st.Stage(d, int64(len(b)), bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CleanIngest(); err != nil {
		t.Fatal(err)
	}
	if got, err := s.ReadAll(); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("staged content after CleanIngest: %q %v", got, err)
	}
	if _, err := st.StatBlob(d); !errors.Is(err, ErrNotFound) {
		t.Errorf("staged blob visible: %v", err)
	}
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	if n, err := st.StatBlob(d); err != nil || n != int64(len(b)) {
		t.Errorf("committed blob: %d %v", n, err)
	}
	s.Discard() // harmless after Commit
	assertNoStaging(t, st)
	other, _ := st.Stage(digest.FromString("x"), 1, bytes.NewReader([]byte("x")))
	other.Discard()
	assertNoStaging(t, st)
}

// Manifests lists every manifest of a repository, tagged or not.
func TestManifests(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	for i, tag := range []string{"1", ""} {
		body := []byte(`{"schemaVersion":2,"n":` + string(rune('0'+i)) + `}`)
		m := ManifestRecord{Digest: digest.FromBytes(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Size: int64(len(body))}
		if err := st.PutManifest("team/app", "", m, body, tag, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := st.Manifests("team/app")
	if err != nil || len(ms) != 2 {
		t.Errorf("manifests: %v %v", ms, err)
	}
	if ms, _ := st.Manifests("team"); len(ms) != 0 {
		t.Errorf("a prefix of the name lists %d manifests", len(ms))
	}
}
