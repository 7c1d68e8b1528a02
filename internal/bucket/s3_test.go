package bucket

// Tests against a real S3 server: they run when S3_ENDPOINT is set
// (.ci/cluster-e2e.sh starts SeaweedFS and runs them), and skip otherwise.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// replicas opens n registries on one bucket prefix, each with its own store.
func replicas(t *testing.T, n int) []*Registry {
	t.Helper()
	ep := os.Getenv("S3_ENDPOINT")
	if ep == "" {
		if os.Getenv("BERTH_S3_TESTS") != "" {
			t.Fatal("BERTH_S3_TESTS is set but S3_ENDPOINT is not")
		}
		t.Skip("S3_ENDPOINT is not set: no S3 server to test against (.ci/cluster-e2e.sh starts SeaweedFS)")
	}
	bucketName := os.Getenv("S3_BUCKET")
	if bucketName == "" {
		bucketName = "berth-ci"
	}
	prefix := fmt.Sprintf("gotest/%s-%d/", t.Name(), time.Now().UnixNano())
	var out []*Registry
	for range n {
		b, err := Open(context.Background(), Options{Endpoint: ep, Bucket: bucketName, Region: "us-east-1", Prefix: prefix,
			AccessKey: os.Getenv("AWS_ACCESS_KEY_ID"), SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY"), PathStyle: true})
		if err != nil {
			t.Fatal(err)
		}
		st, err := cache.Open(t.TempDir(), cache.Options{Logger: zerolog.Nop(), DiskReserve: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		out = append(out, NewRegistry(b, st, 4<<20))
	}
	return out
}

func randomBlob(t *testing.T, n int) ([]byte, digest.Digest) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b, digest.FromBytes(b)
}

// image pushes a config and a layer to r and returns the manifest (not pushed).
func image(t *testing.T, ctx context.Context, r *Registry, repo string, layer []byte) *registry.Manifest {
	t.Helper()
	config := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]}}`, digest.FromBytes(layer)))
	for _, b := range [][]byte{config, layer} {
		if _, err := r.PushBlob(ctx, repo, registry.Descriptor{Digest: digest.FromBytes(b), Size: int64(len(b))}, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}]}`,
		digest.FromBytes(config), len(config), digest.FromBytes(layer), len(layer)))
	m, err := registry.ParseManifest("application/vnd.oci.image.manifest.v1+json", body, digest.FromBytes(body))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func readBlob(t *testing.T, ctx context.Context, r *Registry, repo string, d digest.Digest) []byte {
	t.Helper()
	rd, err := r.GetBlob(ctx, repo, d)
	if err != nil {
		t.Fatalf("blob %s from %s: %v", d, repo, err)
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A push through one replica is seen by the others at once; a chunked
// upload continues on another replica; a tag written by two replicas at
// once has one winner that every replica reads.
func TestS3Replicas(t *testing.T) {
	rs := replicas(t, 3)
	ctx := context.Background()
	layer, ld := randomBlob(t, 3<<20)
	m := image(t, ctx, rs[0], "team/app", layer)
	if _, err := rs[0].PushManifest(ctx, "team/app", "v1", m); err != nil {
		t.Fatal(err)
	}
	for i, r := range rs[1:] {
		desc, err := r.ResolveTag(ctx, "team/app", "v1")
		if err != nil || desc.Digest != m.Desc.Digest {
			t.Fatalf("replica %d resolves v1 to %v, %v", i+1, desc.Digest, err)
		}
		if got := readBlob(t, ctx, r, "team/app", ld); !bytes.Equal(got, layer) {
			t.Fatalf("replica %d read the wrong layer", i+1)
		}
	}

	// Chunked: start on 0, append on 1 and 2, commit on 0.
	data, d := randomBlob(t, 1<<20)
	u, err := rs[0].StartUpload(ctx, "team/app")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rs[1].AppendUpload(ctx, "team/app", u.ID, 0, bytes.NewReader(data[:400000])); err != nil {
		t.Fatal(err)
	}
	// A chunk at a stale offset is refused with 416, whichever replica.
	if _, err := rs[0].AppendUpload(ctx, "team/app", u.ID, 0, bytes.NewReader(data[:10])); !errors.Is(err, oci.ErrUploadOffset) {
		t.Fatalf("stale chunk: %v", err)
	}
	if _, err := rs[2].AppendUpload(ctx, "team/app", u.ID, 400000, bytes.NewReader(data[400000:])); err != nil {
		t.Fatal(err)
	}
	if _, err := rs[0].CommitUpload(ctx, "team/app", u.ID, d, nil); err != nil {
		t.Fatal(err)
	}
	if got := readBlob(t, ctx, rs[1], "team/app", d); !bytes.Equal(got, data) {
		t.Fatal("chunked upload read back wrong")
	}

	// One tag, two writers.
	l2, _ := randomBlob(t, 1000)
	l3, _ := randomBlob(t, 1000)
	m2, m3 := image(t, ctx, rs[1], "team/app", l2), image(t, ctx, rs[2], "team/app", l3)
	var wg sync.WaitGroup
	for i, mm := range []*registry.Manifest{m2, m3} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := rs[i+1].PushManifest(ctx, "team/app", "race", mm); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	var seen []digest.Digest
	for _, r := range rs {
		desc, err := r.ResolveTag(ctx, "team/app", "race")
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, desc.Digest)
	}
	if seen[0] != seen[1] || seen[1] != seen[2] || (seen[0] != m2.Desc.Digest && seen[0] != m3.Desc.Digest) {
		t.Fatalf("replicas read %v after the race: not one winner", seen)
	}
}

// The collector removes what a deleted image alone held, keeps what a kept
// one shares, and a push racing a removal fails cleanly.
func TestS3Collect(t *testing.T) {
	rs := replicas(t, 2)
	ctx := context.Background()
	shared, sd := randomBlob(t, 100000)
	only, od := randomBlob(t, 200000)
	keep := image(t, ctx, rs[0], "team/keep", shared)
	gone := image(t, ctx, rs[0], "team/gone", only)
	for repo, m := range map[string]*registry.Manifest{"team/keep": keep, "team/gone": gone} {
		if _, err := rs[0].PushManifest(ctx, repo, "1", m); err != nil {
			t.Fatal(err)
		}
	}
	if err := rs[1].DeleteManifest(ctx, "team/gone", gone.Desc.Digest); err != nil {
		t.Fatal(err)
	}
	// Dry run: the plan, nothing removed.
	plan, err := rs[1].Collect(ctx, GCOptions{GCOptions: cache.GCOptions{DryRun: true}})
	if err != nil {
		t.Fatal(err)
	}
	planned := map[digest.Digest]bool{}
	for _, b := range plan.Blobs {
		planned[b.Digest] = true
	}
	if !planned[od] || planned[sd] {
		t.Fatalf("dry run plans %v: want the deleted image's layer, not the kept one's", plan.Blobs)
	}
	if _, err := rs[0].b.Stat(ctx, blobKey(od)); err != nil {
		t.Fatalf("dry run removed a blob: %v", err)
	}
	// With the grace period, nothing just written goes.
	if rep, err := rs[1].Collect(ctx, GCOptions{GCOptions: cache.GCOptions{Grace: time.Hour}}); err != nil || len(rep.Blobs) != 0 {
		t.Fatalf("collected %v within the grace period (%v)", rep.Blobs, err)
	}
	rep, err := rs[1].Collect(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rs[0].b.Stat(ctx, blobKey(od)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the deleted image's layer is still in the bucket (%v); report %+v", err, rep)
	}
	if got := readBlob(t, ctx, rs[1], "team/keep", sd); !bytes.Equal(got, shared) {
		t.Fatal("the kept image's layer was damaged")
	}
	if names, _, _ := rs[0].Repositories(ctx, -1, ""); len(names) != 1 || names[0] != "team/keep" {
		t.Fatalf("catalog after collection: %v", names)
	}

	// A blob under collection (its tombstone written) cannot be referenced.
	again := image(t, ctx, rs[0], "team/again", only)
	if err := rs[0].b.PutBytes(ctx, tombstoneKey(od), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := rs[0].PushManifest(ctx, "team/again", "1", again); !errors.Is(err, &oci.Error{Code: oci.CodeManifestBlobUnknown}) {
		t.Fatalf("push during a removal: %v, want MANIFEST_BLOB_UNKNOWN", err)
	}
	_ = rs[0].b.Delete(ctx, tombstoneKey(od))
	if _, err := rs[0].PushManifest(ctx, "team/again", "1", again); err != nil {
		t.Fatalf("push after the removal ended: %v", err)
	}
}
