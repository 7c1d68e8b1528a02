package cache

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/testutil"
	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

func openStore(t *testing.T) *Store {
	t.Helper()
	return openStoreAt(t, t.TempDir())
}

func openStoreAt(t *testing.T, dir string) *Store {
	t.Helper()
	st, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// files lists the regular files under root/sub, relative to root/sub.
func files(t *testing.T, root, sub string) []string {
	t.Helper()
	var out []string
	dir := filepath.Join(root, sub)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return out
}

func assertNoStaging(t *testing.T, st *Store) {
	t.Helper()
	if f := files(t, st.Root(), "ingest"); len(f) != 0 {
		t.Errorf("ingest/ holds %v, want nothing", f)
	}
}

func assertNoBlob(t *testing.T, st *Store, repo string, d digest.Digest) {
	t.Helper()
	if f := files(t, st.Root(), "blobs"); len(f) != 0 {
		t.Errorf("blobs/ holds %v, want nothing", f)
	}
	if _, err := st.StatBlob(d); !errors.Is(err, ErrNotFound) {
		t.Errorf("StatBlob = %v, want ErrNotFound", err)
	}
	if ok, err := st.Linked(repo, d); ok || err != nil {
		t.Errorf("Linked = %v, %v; want false, nil", ok, err)
	}
	if _, err := st.Repository(repo); !errors.Is(err, ErrNotFound) {
		t.Errorf("Repository(%q) = %v, want ErrNotFound", repo, err)
	}
}

func assertBlob(t *testing.T, st *Store, repo string, d digest.Digest, content []byte) {
	t.Helper()
	if n, err := st.StatRepoBlob(repo, d); err != nil || n != int64(len(content)) {
		t.Errorf("StatRepoBlob = %d, %v; want %d", n, err, len(content))
	}
	f, err := st.OpenBlob(d)
	if err != nil {
		t.Fatalf("OpenBlob: %v", err)
	}
	defer f.Close()
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, content) {
		t.Errorf("blob content = %q, %v; want %q", got, err, content)
	}
	if f.Name() != blobPath(st.Root(), d) {
		t.Errorf("blob file = %s, want %s", f.Name(), blobPath(st.Root(), d))
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

var errBoom = errors.New("boom")

func TestPutBlob(t *testing.T) {
	t.Parallel()
	content := []byte("hello, berth")
	d := digest.FromBytes(content)
	d512 := digest.SHA512.FromBytes(content)
	tests := []struct {
		name    string
		d       digest.Digest
		size    int64
		r       io.Reader
		wantErr error
	}{
		{"ok", d, int64(len(content)), bytes.NewReader(content), nil},
		{"unknown size", d, -1, bytes.NewReader(content), nil},
		{"sha512", d512, int64(len(content)), bytes.NewReader(content), nil},
		{"empty blob", digest.FromBytes(nil), 0, bytes.NewReader(nil), nil},
		{"digest mismatch", digest.FromString("other"), int64(len(content)), bytes.NewReader(content), ErrDigestMismatch},
		{"digest mismatch unknown size", digest.FromString("other"), -1, bytes.NewReader(content), ErrDigestMismatch},
		{"size too large", d, int64(len(content)) + 1, bytes.NewReader(content), ErrSizeMismatch},
		{"size too small", d, int64(len(content)) - 1, bytes.NewReader(content), ErrSizeMismatch},
		{"reader fails", d, int64(len(content)), io.MultiReader(bytes.NewReader(content[:3]), errReader{errBoom}), errBoom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := openStore(t)
			err := st.PutBlob("a/b", "", tt.d, tt.size, tt.r)
			defer assertNoStaging(t, st)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("PutBlob = %v, want %v", err, tt.wantErr)
				}
				assertNoBlob(t, st, "a/b", tt.d)
				return
			}
			if err != nil {
				t.Fatalf("PutBlob: %v", err)
			}
			want := content
			if tt.d == digest.FromBytes(nil) {
				want = []byte{}
			}
			assertBlob(t, st, "a/b", tt.d, want)
			if rec, err := st.Repository("a/b"); err != nil || rec.Origin != "" {
				t.Errorf("Repository = %+v, %v", rec, err)
			}
		})
	}
}

func TestPutBlobExistingLinksOnly(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	content := []byte("layer")
	d := digest.FromBytes(content)
	if err := st.PutBlob("a", "", d, int64(len(content)), bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	// A second put of a stored blob links it (with its origin) and drains
	// the body.
	r := bytes.NewReader(content)
	if err := st.PutBlob("b", "docker.io", d, int64(len(content)), r); err != nil {
		t.Fatal(err)
	}
	if r.Len() != 0 {
		t.Errorf("body not drained: %d bytes left", r.Len())
	}
	assertBlob(t, st, "b", d, content)
	if rec, err := st.Repository("b"); err != nil || rec.Origin != "docker.io" {
		t.Errorf("Repository(b) = %+v, %v; want origin docker.io", rec, err)
	}
	if f := files(t, st.Root(), "blobs"); len(f) != 1 {
		t.Errorf("blobs/ = %v, want one file", f)
	}
	assertNoStaging(t, st)
}

func TestLinkIsolation(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	content := []byte("secret layer")
	d := digest.FromBytes(content)
	if err := st.PutBlob("a", "", d, -1, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"b", "a/b", "ab", "b/a", ""} {
		if _, err := st.StatRepoBlob(repo, d); !errors.Is(err, ErrNotFound) {
			t.Errorf("StatRepoBlob(%q) = %v, want ErrNotFound", repo, err)
		}
		if ok, err := st.Linked(repo, d); ok || err != nil {
			t.Errorf("Linked(%q) = %v, %v", repo, ok, err)
		}
	}
	if n, err := st.StatRepoBlob("a", d); err != nil || n != int64(len(content)) {
		t.Fatalf("StatRepoBlob(a) = %d, %v", n, err)
	}
	// Link, then unlink, in b.
	if err := st.Link("b", "", d); err != nil {
		t.Fatal(err)
	}
	if _, err := st.StatRepoBlob("b", d); err != nil {
		t.Errorf("StatRepoBlob(b) after Link = %v", err)
	}
	if err := st.Unlink("b", d); err != nil {
		t.Fatal(err)
	}
	if _, err := st.StatRepoBlob("b", d); !errors.Is(err, ErrNotFound) {
		t.Errorf("StatRepoBlob(b) after Unlink = %v", err)
	}
	if err := st.Unlink("b", d); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Unlink = %v, want ErrNotFound", err)
	}
	if _, err := st.StatRepoBlob("a", d); err != nil {
		t.Errorf("unlinking b affected a: %v", err)
	}
	missing := digest.FromString("missing")
	if err := st.Link("b", "", missing); !errors.Is(err, ErrNotFound) {
		t.Errorf("Link of a missing blob = %v, want ErrNotFound", err)
	}
	if _, err := st.OpenBlob(missing); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenBlob(missing) = %v, want ErrNotFound", err)
	}
}

func TestRepositoriesPagination(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	for _, r := range []string{"c/d", "a0", "a/b", "b", "a"} {
		if err := st.EnsureRepository(r, ""); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		n    int
		last string
		want []string
		more bool
	}{
		{0, "", []string{"a", "a/b", "a0", "b", "c/d"}, false},
		{-1, "", []string{"a", "a/b", "a0", "b", "c/d"}, false},
		{5, "", []string{"a", "a/b", "a0", "b", "c/d"}, false},
		{6, "", []string{"a", "a/b", "a0", "b", "c/d"}, false},
		{2, "", []string{"a", "a/b"}, true},
		{2, "a", []string{"a/b", "a0"}, true},
		{2, "a/b", []string{"a0", "b"}, true},
		{2, "a0", []string{"b", "c/d"}, false},
		{2, "a1", []string{"b", "c/d"}, false},
		{2, "c/d", []string{}, false},
		{0, "b", []string{"c/d"}, false},
		{1, "", []string{"a"}, true},
	}
	for _, tt := range tests {
		got, more, err := st.Repositories(tt.n, tt.last)
		if err != nil || !slices.Equal(got, tt.want) || more != tt.more || got == nil {
			t.Errorf("Repositories(%d, %q) = %q, %v, %v; want %q, %v", tt.n, tt.last, got, more, err, tt.want, tt.more)
		}
	}
}

func TestEnsureRepositoryKeepsOrigin(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	if err := st.EnsureRepository("docker.io/library/alpine", "docker.io"); err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureRepository("docker.io/library/alpine", ""); err != nil {
		t.Fatal(err)
	}
	if rec, err := st.Repository("docker.io/library/alpine"); err != nil || rec.Origin != "docker.io" {
		t.Errorf("Repository = %+v, %v; want origin docker.io", rec, err)
	}
}

func TestTagsPagination(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	now := time.Now()
	set := map[string][]string{
		"r":   {"v2", "latest", "v1"},
		"r/x": {"other"},
		"r0":  {"zzz"},
		"q":   {"aaa"},
	}
	for repo, tags := range set {
		for _, tag := range tags {
			if err := st.SetTag(repo, tag, dg, now); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		repo string
		n    int
		last string
		want []string
		more bool
	}{
		{"r", 0, "", []string{"latest", "v1", "v2"}, false},
		{"r", 2, "", []string{"latest", "v1"}, true},
		{"r", 2, "v1", []string{"v2"}, false},
		{"r", 1, "latest", []string{"v1"}, true},
		{"r", 1, "v2", []string{}, false},
		{"r", 0, "m", []string{"v1", "v2"}, false},
		{"r/x", 0, "", []string{"other"}, false},
		{"nope", 0, "", []string{}, false},
	}
	for _, tt := range tests {
		got, more, err := st.Tags(tt.repo, tt.n, tt.last)
		if err != nil || !slices.Equal(got, tt.want) || more != tt.more || got == nil {
			t.Errorf("Tags(%q, %d, %q) = %q, %v, %v; want %q, %v", tt.repo, tt.n, tt.last, got, more, err, tt.want, tt.more)
		}
	}
	if tr, err := st.Tag("r", "v1"); err != nil || tr.Digest != dg || !tr.FetchedAt.Equal(now) {
		t.Errorf("Tag = %+v, %v", tr, err)
	}
	if err := st.DeleteTag("r", "v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Tag("r", "v1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Tag after DeleteTag = %v", err)
	}
	if err := st.DeleteTag("r", "v1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteTag = %v, want ErrNotFound", err)
	}
}

// putManifest stores a small manifest body and returns its record.
func putManifest(t *testing.T, st *Store, repo, body string, subject digest.Digest, artifactType, tag string) ManifestRecord {
	t.Helper()
	m := ManifestRecord{Digest: digest.FromString(body), MediaType: "application/vnd.oci.image.manifest.v1+json",
		Size: int64(len(body)), Subject: subject, ArtifactType: artifactType, Annotations: map[string]string{"body": body}}
	if err := st.PutManifest(repo, "", m, []byte(body), tag, time.Now()); err != nil {
		t.Fatalf("PutManifest: %v", err)
	}
	return m
}

func TestPutManifest(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	m := putManifest(t, st, "a", `{"schemaVersion":2}`, "", "", "latest")
	got, err := st.Manifest("a", m.Digest)
	if err != nil || got.Digest != m.Digest || got.MediaType != m.MediaType || got.Size != m.Size {
		t.Errorf("Manifest = %+v, %v; want %+v", got, err, m)
	}
	if body, err := st.ManifestBody(m.Digest); err != nil || string(body) != `{"schemaVersion":2}` {
		t.Errorf("ManifestBody = %q, %v", body, err)
	}
	assertBlob(t, st, "a", m.Digest, []byte(`{"schemaVersion":2}`))
	if tr, err := st.Tag("a", "latest"); err != nil || tr.Digest != m.Digest {
		t.Errorf("Tag = %+v, %v", tr, err)
	}
	if _, err := st.Manifest("b", m.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("Manifest in another repo = %v, want ErrNotFound", err)
	}
	if _, err := st.ManifestBody(digest.FromString("nope")); !errors.Is(err, ErrNotFound) {
		t.Errorf("ManifestBody(unknown) = %v, want ErrNotFound", err)
	}
	assertNoStaging(t, st)
}

func TestDeleteManifest(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	subject := digest.FromString("subject")
	m1 := putManifest(t, st, "a", "m1", subject, "application/x.sig", "one")
	if err := st.SetTag("a", "two", m1.Digest, time.Now()); err != nil {
		t.Fatal(err)
	}
	m2 := putManifest(t, st, "a", "m2", subject, "application/x.sig", "three")
	putManifest(t, st, "b", "m1", subject, "application/x.sig", "one")

	// Warm every read path first, so the delete must also reach any cache.
	for _, tag := range []string{"one", "two", "three"} {
		if _, err := st.Tag("a", tag); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Manifest("a", m1.Digest); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.Linked("a", m1.Digest); !ok || err != nil {
		t.Fatalf("Linked before delete = %v, %v", ok, err)
	}
	if err := st.DeleteManifest("a", m1.Digest); err != nil {
		t.Fatalf("DeleteManifest: %v", err)
	}
	for _, tag := range []string{"one", "two"} {
		if _, err := st.Tag("a", tag); !errors.Is(err, ErrNotFound) {
			t.Errorf("tag %s survived: %v", tag, err)
		}
	}
	if tr, err := st.Tag("a", "three"); err != nil || tr.Digest != m2.Digest {
		t.Errorf("tag three = %+v, %v", tr, err)
	}
	if _, err := st.Manifest("a", m1.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("Manifest after delete = %v", err)
	}
	if ok, _ := st.Linked("a", m1.Digest); ok {
		t.Error("manifest blob still linked")
	}
	refs, err := st.Referrers("a", subject, "")
	if err != nil || len(refs) != 1 || refs[0].Digest != m2.Digest {
		t.Errorf("Referrers after delete = %+v, %v; want only m2", refs, err)
	}
	// Repository b is untouched.
	if tags, _, _ := st.Tags("b", 0, ""); !slices.Equal(tags, []string{"one"}) {
		t.Errorf("b tags = %q", tags)
	}
	if refs, _ := st.Referrers("b", subject, ""); len(refs) != 1 {
		t.Errorf("b referrers = %+v", refs)
	}
	if err := st.DeleteManifest("a", m1.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteManifest = %v, want ErrNotFound", err)
	}
}

func TestReferrers(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	subject := digest.FromString("subject")
	sig1 := putManifest(t, st, "a", "sig1", subject, "application/x.sig", "")
	sbom := putManifest(t, st, "a", "sbom", subject, "application/x.sbom", "")
	sig2 := putManifest(t, st, "a", "sig2", subject, "application/x.sig", "")
	putManifest(t, st, "a", "unrelated", digest.FromString("other"), "application/x.sig", "")
	putManifest(t, st, "a", "no subject", "", "application/x.sig", "")
	putManifest(t, st, "a/b", "elsewhere", subject, "application/x.sig", "")

	sorted := func(ms ...ManifestRecord) []digest.Digest {
		var out []digest.Digest
		for _, m := range ms {
			out = append(out, m.Digest)
		}
		slices.Sort(out)
		return out
	}
	tests := []struct {
		name    string
		repo    string
		subject digest.Digest
		at      string
		want    []digest.Digest
	}{
		{"all", "a", subject, "", sorted(sig1, sbom, sig2)},
		{"sig", "a", subject, "application/x.sig", sorted(sig1, sig2)},
		{"sbom", "a", subject, "application/x.sbom", sorted(sbom)},
		{"no match", "a", subject, "application/x.none", nil},
		{"unknown subject", "a", digest.FromString("nope"), "", nil},
		{"other repo", "b", subject, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			descs, err := st.Referrers(tt.repo, tt.subject, tt.at)
			if err != nil {
				t.Fatal(err)
			}
			if descs == nil {
				t.Error("Referrers returned nil, want an empty slice")
			}
			var got []digest.Digest
			for _, d := range descs {
				got = append(got, d.Digest)
				if d.MediaType != "application/vnd.oci.image.manifest.v1+json" || d.Size <= 0 || d.ArtifactType == "" || d.Annotations["body"] == "" {
					t.Errorf("descriptor %+v lacks fields", d)
				}
				if tt.at != "" && d.ArtifactType != tt.at {
					t.Errorf("descriptor %s has artifactType %q, want %q", d.Digest, d.ArtifactType, tt.at)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Referrers = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBlobPathLayoutOnDisk(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	content := []byte("on disk")
	d := digest.FromBytes(content)
	if err := st.PutBlob("a", "", d, -1, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	want := filepath.Join("sha256", d.Encoded()[:2], d.Encoded())
	if got := files(t, st.Root(), "blobs"); !slices.Equal(got, []string{want}) {
		t.Errorf("blobs/ = %v, want [%s]", got, want)
	}
	if got, err := os.ReadFile(filepath.Join(st.Root(), "blobs", want)); err != nil || !bytes.Equal(got, content) {
		t.Errorf("blob file = %q, %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(st.Root(), "meta")); err != nil {
		t.Errorf("meta/: %v", err)
	}
}

// Small blobs are served from memory, exactly; larger ones are not kept.
func TestSmallBlob(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	small := bytes.Repeat([]byte("s"), MaxSmallBlob)
	large := bytes.Repeat([]byte("l"), MaxSmallBlob+1)
	for _, b := range [][]byte{small, large} {
		if err := st.PutBlob("r", "", digest.FromBytes(b), int64(len(b)), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ { // from disk, then from memory
		got, ok := st.SmallBlob(digest.FromBytes(small), int64(len(small)))
		if !ok || !bytes.Equal(got, small) {
			t.Fatalf("SmallBlob(small) = %d bytes, %v", len(got), ok)
		}
	}
	if _, ok := st.SmallBlob(digest.FromBytes(large), int64(len(large))); ok {
		t.Error("a blob over MaxSmallBlob was served from memory")
	}
	if _, ok := st.SmallBlob(digest.FromString("absent"), 6); ok {
		t.Error("an absent blob was served")
	}
}

// Close returns, with ErrCloseTimeout, when the index does not close (as
// when Badger retries forever to flush into a removed data directory); the
// closing goes on without it.
func TestCloseGivesUpOnAStuckIndex(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	closed := make(chan error, 1)
	st, err := Open(t.TempDir(), Options{CloseTimeout: time.Millisecond, closeIndex: func(db *badger.DB) error {
		<-release // stuck until the test has seen Close give up
		err := db.Close()
		closed <- err
		return err
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutBlob("a", "", digest.FromString("x"), 1, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	err = st.Close()
	close(release)
	if !errors.Is(err, ErrCloseTimeout) {
		t.Errorf("Close of a stuck index = %v, want ErrCloseTimeout", err)
	}
	// The abandoned close still finishes once the index lets it.
	if err := testutil.Recv(t, closed, "Close to return"); err != nil {
		t.Errorf("index close after the timeout: %v", err)
	}
}
