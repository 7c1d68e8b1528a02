package mirror_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/mirror"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/upstream"
	"github.com/berth-dev/berth/upstream/upstreamtest"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// waitTimeout bounds every wait in these tests; reaching it is a failure.
const waitTimeout = 30 * time.Second

func openStore(t *testing.T) *cache.Store {
	t.Helper()
	st, err := cache.Open(t.TempDir(), cache.Options{Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newClient(t *testing.T, cfg upstream.Config) *upstream.Client {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "docker.io"
	}
	c, err := upstream.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newMirror returns a mirror of o.Client over o.Store, closed when the test
// ends (before the store: cleanups run last registered, first).
func newMirror(t *testing.T, o mirror.Options) *mirror.Mirror {
	t.Helper()
	o.Logger = zerolog.Nop()
	m := mirror.New(o)
	t.Cleanup(m.Close)
	return m
}

// wait runs m.Wait, failing the test if it does not return in time.
func wait(t *testing.T, m *mirror.Mirror) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Wait()
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("Mirror.Wait did not return")
	}
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func readAll(t *testing.T, rd registry.BlobReader, err error) []byte {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func blobsOf(img upstreamtest.Image) []digest.Digest {
	return append([]digest.Digest{img.Config}, img.Layers...)
}

// One manifest GET is enough: the prefetch fills the config and every
// layer in the background, each with one upstream GET, and the client's
// own blob requests then cost the upstream nothing.
func TestPrefetchFillsImage(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	// Config and three layers: four blobs, one per prefetch slot.
	img := up.AddImage("library/app", "latest", 3, 96<<10)
	st := openStore(t)
	m := newMirror(t, mirror.Options{Store: st, Client: newClient(t, upstream.Config{URL: up.URL()}), Prefetch: 4})
	ctx := testContext(t)

	rd, err := m.GetTag(ctx, "library/app", "latest")
	if got := readAll(t, rd, err); string(got) != string(img.ManifestBody) {
		t.Fatalf("GetTag served %q, want the image manifest", got)
	}
	wait(t, m)

	blobs := blobsOf(img)
	for _, d := range blobs {
		if _, err := st.StatBlob(d); err != nil {
			t.Errorf("blob %s not stored after the prefetch: %v", d, err)
		}
		if ok, err := st.Linked("docker.io/library/app", d); err != nil || !ok {
			t.Errorf("blob %s not linked to docker.io/library/app: %v, %v", d, ok, err)
		}
	}
	if n := up.CountAuthorized(http.MethodGet, upstreamtest.KindBlob); n != len(blobs) {
		t.Errorf("upstream blob GETs = %d, want %d (one per blob)", n, len(blobs))
	}
	if n := up.CountAuthorized(http.MethodGet, upstreamtest.KindManifest); n != 1 {
		t.Errorf("upstream manifest GETs = %d, want 1", n)
	}

	for _, d := range blobs {
		rd, err := m.GetBlob(ctx, "library/app", d)
		if got := digest.FromBytes(readAll(t, rd, err)); got != d {
			t.Errorf("GetBlob(%s) served content hashing to %s", d, got)
		}
	}
	if n := up.CountAuthorized(http.MethodGet, upstreamtest.KindBlob); n != len(blobs) {
		t.Errorf("upstream blob GETs after the client's blob reads = %d, want still %d", n, len(blobs))
	}
	if n := up.Count(http.MethodHead, upstreamtest.KindBlob); n != 0 {
		t.Errorf("upstream blob HEADs = %d, want 0", n)
	}
}

// Prefetch < 0 disables it: a manifest GET fills no blob.
func TestPrefetchDisabled(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.AddImage("library/app", "latest", 2, 4<<10)
	st := openStore(t)
	m := newMirror(t, mirror.Options{Store: st, Client: newClient(t, upstream.Config{URL: up.URL()}), Prefetch: -1})
	ctx := testContext(t)

	rd, err := m.GetTag(ctx, "library/app", "latest")
	readAll(t, rd, err)
	wait(t, m)
	for _, d := range blobsOf(img) {
		if _, err := st.StatBlob(d); !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("StatBlob(%s) = %v, want ErrNotFound: nothing is prefetched", d, err)
		}
	}
	if n := up.Count(http.MethodGet, upstreamtest.KindBlob); n != 0 {
		t.Errorf("upstream blob GETs = %d, want 0", n)
	}
}

// An offline mirror serves what is cached, even a stale tag, and never
// contacts the upstream, not even for what is not cached.
func TestOfflineServesCache(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	img := up.AddImage("library/app", "latest", 2, 8<<10)
	st := openStore(t)
	client := newClient(t, upstream.Config{URL: up.URL()})
	ctx := testContext(t)

	// Warm the cache online.
	warm := newMirror(t, mirror.Options{Store: st, Client: client, Prefetch: 4})
	rd, err := warm.GetTag(ctx, "library/app", "latest")
	readAll(t, rd, err)
	wait(t, warm)
	up.Reset()

	// TagTTL 0: online, every tag read would revalidate.
	m := newMirror(t, mirror.Options{Store: st, Client: client, Offline: true})
	rd, err = m.GetTag(ctx, "library/app", "latest")
	if got := readAll(t, rd, err); string(got) != string(img.ManifestBody) {
		t.Errorf("GetTag served %q, want the cached manifest", got)
	}
	if desc, err := m.ResolveTag(ctx, "library/app", "latest"); err != nil || desc.Digest != img.Manifest {
		t.Errorf("ResolveTag = %+v, %v; want %s", desc, err, img.Manifest)
	}
	rd, err = m.GetManifest(ctx, "library/app", img.Manifest)
	readAll(t, rd, err)
	for _, d := range blobsOf(img) {
		rd, err := m.GetBlob(ctx, "library/app", d)
		if got := digest.FromBytes(readAll(t, rd, err)); got != d {
			t.Errorf("GetBlob(%s) served content hashing to %s", d, got)
		}
	}
	if tags, _, err := m.Tags(ctx, "library/app", -1, ""); err != nil || len(tags) != 1 || tags[0] != "latest" {
		t.Errorf("Tags = %v, %v; want [latest]", tags, err)
	}

	// What is not cached is unknown, and still nothing is asked.
	if _, err := m.GetTag(ctx, "library/app", "other"); !errors.Is(err, oci.ErrManifestUnknown) {
		t.Errorf("GetTag of an uncached tag: %v, want MANIFEST_UNKNOWN", err)
	}
	if _, err := m.GetBlob(ctx, "library/app", digest.FromString("not cached")); !errors.Is(err, oci.ErrBlobUnknown) {
		t.Errorf("GetBlob of an uncached blob: %v, want BLOB_UNKNOWN", err)
	}
	if _, err := m.GetManifest(ctx, "library/other", img.Manifest); !errors.Is(err, oci.ErrManifestUnknown) {
		t.Errorf("GetManifest in an uncached repository: %v, want MANIFEST_UNKNOWN", err)
	}
	if reqs := up.Requests(); len(reqs) != 0 {
		t.Errorf("offline mirror sent %d upstream requests, first %s %s", len(reqs), reqs[0].Method, reqs[0].Path)
	}
}

// An upstream that accepts connections and never answers must not hold a
// client past the mirror's Timeout: the stale cached tag is served.
func TestBlackHoledUpstreamServesStaleTag(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		cfg  upstream.Config
	}{
		// Only the mirror's Timeout can end the HEAD in time.
		{"mirror timeout", upstream.Config{Retries: 1, ResponseHeaderTimeout: time.Hour}},
		// The client gives up first, after its retries.
		{"client timeouts", upstream.Config{Retries: 2, DialTimeout: 100 * time.Millisecond, ResponseHeaderTimeout: 100 * time.Millisecond}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := upstreamtest.New(t, upstreamtest.Options{})
			img := up.AddImage("library/app", "latest", 1, 1<<10)
			st := openStore(t)
			ctx := testContext(t)
			warm := newMirror(t, mirror.Options{Store: st, Client: newClient(t, upstream.Config{URL: up.URL()}), Prefetch: -1})
			rd, err := warm.GetTag(ctx, "library/app", "latest")
			readAll(t, rd, err)

			release := make(chan struct{})
			var hits atomic.Int64
			hole := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}))
			t.Cleanup(hole.Close)
			t.Cleanup(func() { close(release) }) // runs before hole.Close, which waits for handlers

			cfg := tt.cfg
			cfg.URL = hole.URL
			// TagTTL 0: the cached tag is stale, so it is revalidated.
			m := newMirror(t, mirror.Options{Store: st, Client: newClient(t, cfg), Timeout: 300 * time.Millisecond})
			// A deadline well past the bound, so that a mirror ignoring its
			// Timeout fails the test instead of hanging it.
			callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			start := time.Now()
			rd, err = m.GetTag(callCtx, "library/app", "latest")
			elapsed := time.Since(start)
			if got := readAll(t, rd, err); string(got) != string(img.ManifestBody) {
				t.Errorf("GetTag served %q, want the cached manifest", got)
			}
			if elapsed > 5*time.Second {
				t.Errorf("GetTag took %s with a 300ms mirror timeout", elapsed)
			}
			if hits.Load() == 0 {
				t.Error("the black-holed upstream was never asked: the tag was not revalidated")
			}
		})
	}
}
