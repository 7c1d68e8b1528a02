package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// fakeClock orders accesses without sleeping.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// pastGrace moves the clock beyond evictGrace, so that every blob read so
// far may be evicted.
func (c *fakeClock) pastGrace() { c.Advance(evictGrace + time.Second) }

const (
	mirrorRepo = "docker.io/library/app"
	mirrorName = "docker.io"
	localRepo  = "team/app"
)

// openBounded opens a store with a limit whose passes run only when the
// test calls Evict.
func openBounded(t *testing.T, dir string, maxBytes int64, clock *fakeClock) *Store {
	t.Helper()
	st, err := Open(dir, Options{Logger: zerolog.Nop(), MaxBytes: maxBytes, Clock: clock.Now, manualEvict: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// blobOf makes distinct content of n bytes.
func blobOf(i, n int) ([]byte, digest.Digest) {
	b := bytes.Repeat([]byte{byte('a' + i)}, n)
	copy(b, fmt.Sprintf("blob %d ", i))
	return b, digest.FromBytes(b)
}

func put(t testing.TB, st *Store, repo, origin string, content []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(content)
	if err := st.PutBlob(repo, origin, d, int64(len(content)), bytes.NewReader(content)); err != nil {
		t.Fatalf("PutBlob: %v", err)
	}
	return d
}

func evict(t *testing.T, st *Store) []digest.Digest {
	t.Helper()
	ev, err := st.Evict()
	if err != nil {
		t.Fatalf("Evict: %v", err)
	}
	var out []digest.Digest
	for _, e := range ev {
		out = append(out, e.Digest)
	}
	return out
}

func assertStored(t *testing.T, st *Store, repo string, d digest.Digest) {
	t.Helper()
	if _, err := st.StatRepoBlob(repo, d); err != nil {
		t.Errorf("StatRepoBlob(%s, %.19s) = %v, want stored", repo, d, err)
	}
	f, err := st.OpenBlob(d)
	if err != nil {
		t.Errorf("OpenBlob(%.19s) = %v", d, err)
		return
	}
	f.Close()
}

func assertEvicted(t *testing.T, st *Store, repo string, d digest.Digest) {
	t.Helper()
	if _, err := st.StatBlob(d); !errors.Is(err, ErrNotFound) {
		t.Errorf("StatBlob(%.19s) = %v, want ErrNotFound", d, err)
	}
	if ok, err := st.Linked(repo, d); ok || err != nil {
		t.Errorf("Linked(%s, %.19s) = %v, %v; want false", repo, d, ok, err)
	}
	if _, err := st.StatRepoBlob(repo, d); !errors.Is(err, ErrNotFound) {
		t.Errorf("StatRepoBlob(%s, %.19s) = %v, want ErrNotFound", repo, d, err)
	}
	if _, err := st.OpenBlob(d); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenBlob(%.19s) = %v, want ErrNotFound", d, err)
	}
	err := st.db.View(func(txn *badger.Txn) error {
		for _, k := range [][]byte{key(kindBlob, d.String()), key(kindAccess, d.String()), key(kindLink, repo, d.String())} {
			if _, err := txn.Get(k); !errors.Is(err, badger.ErrKeyNotFound) {
				t.Errorf("index still holds %q (%v)", k, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func assertUsage(t *testing.T, st *Store, bytes, blobs int64) {
	t.Helper()
	if u := st.Usage(); u.Bytes != bytes || u.Blobs != blobs {
		t.Errorf("Usage = %d bytes in %d blobs, want %d in %d", u.Bytes, u.Blobs, bytes, blobs)
	}
}

// The least recently read blobs go first, until mirrored content is under
// the low-water mark; blobs read within evictGrace stay.
func TestEvictLRUOrder(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openBounded(t, t.TempDir(), 300, clock)
	var ds []digest.Digest
	for i := range 4 {
		b, _ := blobOf(i, 100)
		ds = append(ds, put(t, st, mirrorRepo, mirrorName, b))
	}
	assertUsage(t, st, 400, 4)
	if got := evict(t, st); len(got) != 0 {
		t.Fatalf("evicted %v within the grace period", got)
	}
	// Read in the order 3, 1, 0, 2 through each way a read reaches the store.
	clock.Advance(time.Second)
	if _, err := st.StatRepoBlob(mirrorRepo, ds[3]); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	f, err := st.OpenBlob(ds[1])
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	clock.Advance(time.Second)
	st.Touch(ds[0])
	clock.Advance(time.Second)
	if _, err := st.StatBlob(ds[2]); err != nil {
		t.Fatal(err)
	}
	clock.pastGrace()
	// 400 > 300: evict down to 270, i.e. two blobs, the least recently read.
	if got, want := evict(t, st), []digest.Digest{ds[3], ds[1]}; !slices.Equal(got, want) {
		t.Errorf("evicted %v, want %v", got, want)
	}
	assertEvicted(t, st, mirrorRepo, ds[3])
	assertEvicted(t, st, mirrorRepo, ds[1])
	assertStored(t, st, mirrorRepo, ds[0])
	assertStored(t, st, mirrorRepo, ds[2])
	assertUsage(t, st, 200, 2)
	if u := st.Usage(); u.EvictedBlobs != 2 || u.EvictedBytes != 200 || u.Limit != 300 {
		t.Errorf("Usage = %+v", u)
	}
	if got := evict(t, st); len(got) != 0 {
		t.Errorf("under the limit, evicted %v", got)
	}
}

// Pushed content (linked to a local repository, even if mirrored too) is
// never evicted and does not count against the limit.
func TestEvictNeverTouchesPushedContent(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openBounded(t, t.TempDir(), 50, clock)
	pushed, _ := blobOf(0, 1000)
	dPushed := put(t, st, localRepo, "", pushed)
	shared, _ := blobOf(1, 100)
	dShared := put(t, st, mirrorRepo, mirrorName, shared)
	if err := st.Link(localRepo, "", dShared); err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	m := ManifestRecord{Digest: digest.FromBytes(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Size: int64(len(body))}
	if err := st.PutManifest(localRepo, "", m, body, "v1", clock.Now()); err != nil {
		t.Fatal(err)
	}
	mirrored, _ := blobOf(2, 100)
	dMirrored := put(t, st, mirrorRepo, mirrorName, mirrored)
	clock.pastGrace()

	if got := evict(t, st); !slices.Equal(got, []digest.Digest{dMirrored}) {
		t.Errorf("evicted %v, want only the mirrored-only blob", got)
	}
	assertStored(t, st, localRepo, dPushed)
	assertStored(t, st, localRepo, dShared)
	assertStored(t, st, mirrorRepo, dShared) // pinned for every repository
	if _, err := st.Manifest(localRepo, m.Digest); err != nil {
		t.Errorf("pushed manifest: %v", err)
	}
	if _, err := st.ManifestBody(m.Digest); err != nil {
		t.Errorf("pushed manifest body: %v", err)
	}
	pinned := int64(len(pushed) + len(shared) + len(body))
	if u := st.Usage(); u.Bytes != pinned || u.PinnedBytes != pinned {
		t.Errorf("Usage = %+v, want %d bytes, all pinned", u, pinned)
	}
	if got := evict(t, st); len(got) != 0 {
		t.Errorf("with only pushed content left, evicted %v", got)
	}
}

// A blob whose fill is in flight is kept, and is evictable once it is done.
func TestEvictSkipsInFlightFill(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openBounded(t, t.TempDir(), 50, clock)
	content, _ := blobOf(0, 100)
	d := put(t, st, mirrorRepo, mirrorName, content)
	pr, pw := io.Pipe()
	f, _, err := st.Fill(d, int64(len(content)), "docker.io/library/other", mirrorName,
		func(context.Context) (io.ReadCloser, error) { return pr, nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	clock.pastGrace()
	if got := evict(t, st); len(got) != 0 {
		t.Fatalf("evicted %v while its fill runs", got)
	}
	assertStored(t, st, mirrorRepo, d)
	if _, err := pw.Write(content); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := f.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	assertUsage(t, st, 100, 1) // the fill committed the same digest again: no new bytes
	clock.pastGrace()
	if got := evict(t, st); !slices.Equal(got, []digest.Digest{d}) {
		t.Errorf("after the fill, evicted %v, want %v", got, d)
	}
	assertEvicted(t, st, mirrorRepo, d)
	assertEvicted(t, st, "docker.io/library/other", d)
}

// An evicted mirrored image is gone from the index, the hot caches and the
// disk, tags and referrers included; it can be stored again.
func TestEvictedBlobIsGoneEverywhere(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openBounded(t, t.TempDir(), 1, clock)
	layer, _ := blobOf(0, 100)
	dLayer := put(t, st, mirrorRepo, mirrorName, layer)
	body := []byte(`{"schemaVersion":2,"layers":[]}`)
	m := ManifestRecord{Digest: digest.FromBytes(body), MediaType: "application/vnd.oci.image.manifest.v1+json",
		Size: int64(len(body)), Subject: dLayer}
	if err := st.PutManifest(mirrorRepo, mirrorName, m, body, "latest", clock.Now()); err != nil {
		t.Fatal(err)
	}
	// Warm every in-memory cache.
	for range 2 {
		assertStored(t, st, mirrorRepo, dLayer)
		if _, err := st.Manifest(mirrorRepo, m.Digest); err != nil {
			t.Fatal(err)
		}
		if _, err := st.ManifestBody(m.Digest); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Tag(mirrorRepo, "latest"); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Repository(mirrorRepo); err != nil {
			t.Fatal(err)
		}
	}
	clock.pastGrace()
	if got := evict(t, st); len(got) != 2 {
		t.Fatalf("evicted %v, want the layer and the manifest", got)
	}
	for _, d := range []digest.Digest{dLayer, m.Digest} {
		assertEvicted(t, st, mirrorRepo, d)
	}
	if _, err := st.Manifest(mirrorRepo, m.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("Manifest = %v, want ErrNotFound", err)
	}
	if _, err := st.ManifestBody(m.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("ManifestBody = %v, want ErrNotFound", err)
	}
	if _, err := st.Tag(mirrorRepo, "latest"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Tag = %v, want ErrNotFound: the next pull must ask the upstream", err)
	}
	if refs, err := st.Referrers(mirrorRepo, dLayer, ""); err != nil || len(refs) != 0 {
		t.Errorf("Referrers = %v, %v; want none", refs, err)
	}
	if _, err := st.Repository(mirrorRepo); err != nil {
		t.Errorf("the repository record goes nowhere: %v", err)
	}
	if f := files(t, st.Root(), "blobs"); len(f) != 0 {
		t.Errorf("blobs/ holds %v", f)
	}
	assertUsage(t, st, 0, 0)
	// A later pull stores it again.
	put(t, st, mirrorRepo, mirrorName, layer)
	assertStored(t, st, mirrorRepo, dLayer)
	assertUsage(t, st, 100, 1)
}

// A client already reading an evicted blob reads it to the end.
func TestEvictedBlobOpenReaderReadsToEnd(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openBounded(t, t.TempDir(), 1, clock)
	content, _ := blobOf(0, 1<<20)
	d := put(t, st, mirrorRepo, mirrorName, content)
	f, err := st.OpenBlob(d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 10)
	if _, err := io.ReadFull(f, head); err != nil {
		t.Fatal(err)
	}
	clock.pastGrace()
	if got := evict(t, st); len(got) != 1 {
		t.Fatalf("evicted %v", got)
	}
	assertEvicted(t, st, mirrorRepo, d)
	rest, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(append(head, rest...), content) {
		t.Errorf("read %d bytes (%v) of an evicted blob, want all %d", len(head)+len(rest), err, len(content))
	}
}

// Access times are saved at Close and decide the order after a restart.
func TestEvictAccessTimesSurviveRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	clock := newClock()
	st, err := Open(dir, Options{Logger: zerolog.Nop(), MaxBytes: 150, Clock: clock.Now, manualEvict: true})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := blobOf(0, 100)
	older := put(t, st, mirrorRepo, mirrorName, b)
	clock.Advance(time.Second)
	b, _ = blobOf(1, 100)
	newer := put(t, st, mirrorRepo, mirrorName, b)
	clock.Advance(time.Second)
	st.Touch(older) // read last: by index time alone it would go first
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	clock.pastGrace()
	st = openBounded(t, dir, 150, clock)
	assertUsage(t, st, 200, 2)
	if got := evict(t, st); !slices.Equal(got, []digest.Digest{newer}) {
		t.Errorf("after a restart evicted %v, want %v (the least recently read)", got, newer)
	}
	assertStored(t, st, mirrorRepo, older)
}

// A blob linked to a local repository while a pass is between planning and
// removing is kept: the link touches it.
func TestEvictKeepsBlobLinkedDuringPass(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openBounded(t, t.TempDir(), 1, clock)
	b, _ := blobOf(0, 100)
	d := put(t, st, mirrorRepo, mirrorName, b)
	clock.pastGrace()
	st.evictMu.Lock()
	cands, _, startSeq, err := st.planEviction()
	if err != nil || len(cands) != 1 {
		t.Fatalf("plan = %v, %v", cands, err)
	}
	if err := st.Link(localRepo, "", d); err != nil { // a cross-repository mount into a pushed repository
		t.Fatal(err)
	}
	ok, err := st.evictBlob(cands[0], startSeq)
	st.evictMu.Unlock()
	if ok || err != nil {
		t.Fatalf("evictBlob = %v, %v; want kept", ok, err)
	}
	assertStored(t, st, localRepo, d)
	assertStored(t, st, mirrorRepo, d)
	clock.pastGrace()
	if got := evict(t, st); len(got) != 0 {
		t.Errorf("evicted pushed content %v", got)
	}
}

// Linking a blob after it was evicted fails instead of pointing at nothing.
func TestLinkAfterEvictionFails(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openBounded(t, t.TempDir(), 1, clock)
	b, _ := blobOf(0, 100)
	d := put(t, st, mirrorRepo, mirrorName, b)
	clock.pastGrace()
	if got := evict(t, st); len(got) != 1 {
		t.Fatalf("evicted %v", got)
	}
	err := st.update(func(txn *wtxn) error { return st.stillStored(txn, d) })
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("stillStored = %v, want ErrNotFound", err)
	}
	if err := st.Link(localRepo, "", d); !errors.Is(err, ErrNotFound) {
		t.Errorf("Link = %v, want ErrNotFound", err)
	}
	// A late access (a reader of a body cached before the eviction) leaves
	// no access record behind and is forgotten at the next flush.
	st.Touch(d)
	if err := st.flushAccess(); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.access.Load(d); ok {
		t.Error("access time of an evicted blob kept after a flush")
	}
	assertEvicted(t, st, mirrorRepo, d)
}

// Usage is counted from the index at Open and kept exact by commits,
// re-commits of the same digest and evictions; without a limit nothing is
// evicted and no access is recorded.
func TestUsageAccounting(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	st, err := Open(dir, Options{Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	var want int64
	for i := range 3 {
		b, _ := blobOf(i, 100+i)
		put(t, st, mirrorRepo, mirrorName, b)
		want += int64(len(b))
	}
	b, _ := blobOf(0, 100)
	put(t, st, localRepo, "", b) // stored already: linked, not stored again
	id, err := st.NewUpload(localRepo)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CommitUpload(localRepo, id.ID, digest.FromBytes(b), bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	assertUsage(t, st, want, 3)
	if ev, err := st.Evict(); ev != nil || err != nil {
		t.Errorf("unbounded Evict = %v, %v", ev, err)
	}
	n := 0
	st.access.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Errorf("unbounded store recorded %d access times", n)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Now()} // the first store stamped records with the real clock
	st = openBounded(t, dir, 1, clock)
	assertUsage(t, st, want, 3)
	clock.pastGrace()
	ev, err := st.Evict()
	if err != nil || len(ev) != 2 { // the blob linked to team/app stays
		t.Fatalf("Evict = %v, %v", ev, err)
	}
	for _, e := range ev {
		want -= e.Size
	}
	assertUsage(t, st, want, 1)
	if u := st.Usage(); u.PinnedBytes != want {
		t.Errorf("PinnedBytes = %d, want %d", u.PinnedBytes, want)
	}
}

// The store evicts by itself once a commit takes it over the limit.
func TestEvictorRunsAfterCommit(t *testing.T) {
	t.Parallel()
	clock := newClock()
	passes := make(chan []Evicted, 10)
	st, err := Open(t.TempDir(), Options{Logger: zerolog.Nop(), MaxBytes: 150, Clock: clock.Now,
		afterEvict: func(ev []Evicted, err error) {
			if err != nil {
				t.Errorf("background pass: %v", err)
			}
			passes <- ev
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b, _ := blobOf(0, 100)
	old := put(t, st, mirrorRepo, mirrorName, b)
	clock.pastGrace()
	b, _ = blobOf(1, 100)
	put(t, st, mirrorRepo, mirrorName, b) // 200 > 150: a pass
	select {
	case ev := <-passes:
		if len(ev) != 1 || ev[0].Digest != old {
			t.Errorf("background pass evicted %v, want %v", ev, old)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no eviction pass after going over the limit")
	}
	assertEvicted(t, st, mirrorRepo, old)
}
