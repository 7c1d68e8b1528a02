package cache

import (
	"bytes"
	"errors"
	"testing"

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
