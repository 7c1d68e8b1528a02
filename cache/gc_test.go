package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"
)

func openGC(t *testing.T, clock *fakeClock, opts Options) *Store {
	t.Helper()
	opts.Logger = zerolog.Nop()
	opts.Clock = clock.Now
	st, err := Open(t.TempDir(), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func descOf(mt string, b []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
}

// pushManifest pushes a manifest body to repo through Local, as a client would.
func pushManifest(t testing.TB, st *Store, repo, tag string, v any) digest.Digest {
	t.Helper()
	body, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(body)
	m, err := registry.ParseManifest("", body, d)
	if err != nil {
		t.Fatalf("ParseManifest: %v", err)
	}
	if _, err := NewLocal(st).PushManifest(context.Background(), repo, tag, m); err != nil {
		t.Fatalf("PushManifest %s:%s: %v", repo, tag, err)
	}
	return d
}

// image pushes a config and the given layers to repo and a manifest naming
// them, tagged tag (if not empty); subject makes it a referrer.
func image(t testing.TB, st *Store, repo, tag string, subject *ocispec.Descriptor, layers ...[]byte) (digest.Digest, ocispec.Descriptor) {
	t.Helper()
	cfg := []byte(fmt.Sprintf(`{"repo":%q,"tag":%q,"n":%d}`, repo, tag, len(layers)))
	put(t, st, repo, "", cfg)
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: descOf(ocispec.MediaTypeImageConfig, cfg), Subject: subject}
	m.SchemaVersion = 2
	for _, l := range layers {
		put(t, st, repo, "", l)
		m.Layers = append(m.Layers, descOf(ocispec.MediaTypeImageLayer, l))
	}
	d := pushManifest(t, st, repo, tag, m)
	body, _ := json.Marshal(m)
	return d, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: int64(len(body))}
}

func collect(t *testing.T, st *Store, opts GCOptions) *GCReport {
	t.Helper()
	rep, err := st.Collect(context.Background(), opts)
	if err != nil {
		t.Fatalf("Collect: %v", err)
	}
	return rep
}

func removedBlobs(rep *GCReport) []digest.Digest {
	var out []digest.Digest
	for _, b := range rep.Blobs {
		out = append(out, b.Digest)
	}
	return out
}

func isStored(st *Store, d digest.Digest) bool { _, err := st.StatBlob(d); return err == nil }

// Marking: what a tag reaches is kept (indexes' children, referrers of kept
// subjects, shared layers); what nothing reaches goes after the grace period.
func TestGCMarking(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openGC(t, clock, Options{})
	shared, _ := blobOf(0, 100)
	onlyA, _ := blobOf(1, 200)
	onlyB, _ := blobOf(2, 300)
	child, _ := blobOf(3, 400)
	sig, _ := blobOf(4, 50)
	orphanSig, _ := blobOf(5, 60)

	a, _ := image(t, st, "team/a", "v1", nil, shared, onlyA)
	b, bDesc := image(t, st, "team/a", "v2", nil, shared, onlyB)
	// An index whose child is untagged: the child is kept through it.
	c, cDesc := image(t, st, "team/idx", "", nil, child)
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{cDesc}}
	idx.SchemaVersion = 2
	pushManifest(t, st, "team/idx", "latest", idx)
	// A signature of v2 (kept with it) and of v1 (which is deleted below).
	sigD, _ := image(t, st, "team/a", "", &bDesc, sig)
	orphanD, _ := image(t, st, "team/a", "", &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: a, Size: 1}, orphanSig)
	loose := put(t, st, "team/loose", "", []byte("pushed without a manifest"))

	// Delete v1 and the orphan signature: their own layers are released.
	local := NewLocal(st)
	for _, d := range []digest.Digest{a, orphanD} {
		if err := local.DeleteManifest(context.Background(), "team/a", d); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(2 * time.Hour)
	rep := collect(t, st, GCOptions{Grace: time.Hour})

	gone := removedBlobs(rep)
	for _, content := range [][]byte{onlyA, orphanSig, []byte("pushed without a manifest")} {
		d := digest.FromBytes(content)
		if !slices.Contains(gone, d) || isStored(st, d) {
			t.Errorf("blob %.19s: removed=%v stored=%v, want collected", d, slices.Contains(gone, d), isStored(st, d))
		}
	}
	if !slices.Contains(gone, a) || !slices.Contains(gone, orphanD) {
		t.Errorf("deleted manifests' bodies not collected: %v", gone)
	}
	for _, content := range [][]byte{shared, onlyB, child, sig} {
		if d := digest.FromBytes(content); !isStored(st, d) {
			t.Errorf("blob %.19s was collected, but a kept manifest references it", d)
		}
	}
	for _, d := range []digest.Digest{b, c, sigD} {
		if !isStored(st, d) {
			t.Errorf("manifest %.19s body collected", d)
		}
	}
	if loose == "" || !slices.Contains(rep.Repos, "team/loose") {
		t.Errorf("empty repository not removed: %v", rep.Repos)
	}
	names, _, _ := st.Repositories(0, "")
	if slices.Contains(names, "team/loose") || !slices.Contains(names, "team/a") {
		t.Errorf("catalog = %v", names)
	}
	var sum int64
	for _, bl := range rep.Blobs {
		sum += bl.Size
	}
	if rep.Bytes != sum || sum == 0 {
		t.Errorf("report bytes %d, blobs sum %d", rep.Bytes, sum)
	}
	// A second run finds nothing more.
	if rep := collect(t, st, GCOptions{Grace: time.Hour}); len(rep.Blobs) != 0 || len(rep.Manifests) != 0 {
		t.Errorf("second run removed %v %v", rep.Blobs, rep.Manifests)
	}
	// Every kept tag still pulls whole.
	for _, ref := range [][2]string{{"team/a", "v2"}, {"team/idx", "latest"}} {
		if _, err := local.GetTag(context.Background(), ref[0], ref[1]); err != nil {
			t.Errorf("GetTag %v: %v", ref, err)
		}
	}
}

// Within the grace period nothing is collected; after it, unreferenced
// blobs are. A blob linked again (mounted) within the grace period is kept.
func TestGCGracePeriod(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openGC(t, clock, Options{})
	d := put(t, st, "team/x", "", []byte("loose blob"))
	clock.Advance(30 * time.Minute)
	if rep := collect(t, st, GCOptions{Grace: time.Hour}); len(rep.Blobs) != 0 {
		t.Fatalf("collected within grace: %v", rep.Blobs)
	}
	clock.Advance(45 * time.Minute) // 75 minutes old, but mounted 0 minutes ago:
	if _, err := NewLocal(st).MountBlob(context.Background(), "team/x", "team/y", d); err != nil {
		t.Fatal(err)
	}
	if rep := collect(t, st, GCOptions{Grace: time.Hour}); len(rep.Blobs) != 0 {
		t.Fatalf("collected a blob linked within grace: %v", rep.Blobs)
	}
	clock.Advance(61 * time.Minute)
	rep := collect(t, st, GCOptions{Grace: time.Hour})
	if !slices.Equal(removedBlobs(rep), []digest.Digest{d}) || isStored(st, d) {
		t.Fatalf("after grace: removed %v, stored %v", removedBlobs(rep), isStored(st, d))
	}
	if ok, _ := st.Linked("team/y", d); ok {
		t.Error("link survived its blob")
	}
}

// A dry run reports what a real run then removes, and removes nothing.
func TestGCDryRun(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openGC(t, clock, Options{})
	l1, _ := blobOf(1, 1000)
	d, _ := image(t, st, "team/dry", "v1", nil, l1)
	if err := st.DeleteManifest("team/dry", d); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Hour)
	before := st.Usage()
	dry := collect(t, st, GCOptions{Grace: time.Hour, DryRun: true})
	if st.Usage() != before || !isStored(st, digest.FromBytes(l1)) {
		t.Fatal("dry run removed something")
	}
	if len(dry.Blobs) != 3 || !dry.DryRun { // config, layer, manifest body
		t.Fatalf("dry run plans %v", dry.Blobs)
	}
	real := collect(t, st, GCOptions{Grace: time.Hour})
	if !slices.Equal(removedBlobs(dry), removedBlobs(real)) || dry.Bytes != real.Bytes || !slices.Equal(dry.Repos, real.Repos) {
		t.Errorf("dry run %v/%d/%v, real %v/%d/%v", removedBlobs(dry), dry.Bytes, dry.Repos, removedBlobs(real), real.Bytes, real.Repos)
	}
	if got := st.Usage(); got.Bytes != before.Bytes-real.Bytes {
		t.Errorf("usage %d, want %d", got.Bytes, before.Bytes-real.Bytes)
	}
}

// Mirrored blobs belong to eviction; a blob shared by a local and a
// mirrored repository is kept, and the local link is dropped once no local
// manifest needs it, so the cache limit applies to it again.
func TestGCMirroredContent(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openGC(t, clock, Options{})
	sharedL, _ := blobOf(1, 500)
	mirroredOnly := put(t, st, mirrorRepo, mirrorName, []byte("mirrored, unreferenced"))
	shared := put(t, st, mirrorRepo, mirrorName, sharedL)
	d, _ := image(t, st, localRepo, "v1", nil, sharedL)
	if err := st.DeleteManifest(localRepo, d); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Hour)
	rep := collect(t, st, GCOptions{Grace: time.Hour})
	if !isStored(st, shared) || !isStored(st, mirroredOnly) {
		t.Fatal("collector removed a mirrored blob")
	}
	if ok, _ := st.Linked(mirrorRepo, shared); !ok {
		t.Error("mirrored link dropped")
	}
	if ok, _ := st.Linked(localRepo, shared); ok || rep.Unlinked != 1 {
		t.Errorf("local link kept (unlinked=%d)", rep.Unlinked)
	}
	if slices.Contains(rep.Repos, mirrorRepo) {
		t.Error("mirrored repository removed")
	}
}

// Untagged manifests go once a rule says so; those an index or a kept
// subject reaches stay.
func TestGCUntaggedAfter(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openGC(t, clock, Options{})
	old, _ := image(t, st, "ci/app", "", nil, []byte("old layer"))
	kid, kidDesc := image(t, st, "ci/app", "", nil, []byte("child layer"))
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{kidDesc}}
	idx.SchemaVersion = 2
	pushManifest(t, st, "ci/app", "multi", idx)
	other, _ := image(t, st, "other/app", "", nil, []byte("other layer"))
	clock.Advance(25 * time.Hour)
	young, _ := image(t, st, "ci/app", "", nil, []byte("young layer"))
	rules := []RetentionRule{{Repos: []string{"ci/**"}, Match: func(r string) bool { return r == "ci/app" }, UntaggedAfter: 24 * time.Hour}}
	rep := collect(t, st, GCOptions{Grace: time.Hour, Retention: rules})
	var gone []digest.Digest
	for _, m := range rep.Manifests {
		gone = append(gone, m.Digest)
	}
	if !slices.Equal(gone, []digest.Digest{old}) {
		t.Fatalf("removed manifests %v, want only %s", gone, old)
	}
	for _, k := range []struct {
		repo string
		d    digest.Digest
	}{{"ci/app", kid}, {"ci/app", young}, {"other/app", other}} {
		if _, err := st.Manifest(k.repo, k.d); err != nil {
			t.Errorf("manifest %s@%.19s: %v", k.repo, k.d, err)
		}
	}
	if isStored(st, digest.FromBytes([]byte("old layer"))) || !isStored(st, digest.FromBytes([]byte("child layer"))) {
		t.Error("layers of removed/kept manifests wrong")
	}
}

func tagsAt(base time.Time, ages map[string]time.Duration) map[string]TagRecord {
	out := map[string]TagRecord{}
	for t, age := range ages {
		out[t] = TagRecord{Digest: digest.FromString(t), FetchedAt: base.Add(-age)}
	}
	return out
}

// Each retention rule, alone and combined.
func TestRetentionTags(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	tags := tagsAt(now, map[string]time.Duration{"v1.0": 50 * day, "v2.0": 40 * day, "latest": 40 * day,
		"b1": 3 * day, "b2": 2 * day, "b3": day, "old": 60 * day})
	pulled := map[string]time.Time{"old": now.Add(-day)}
	keepV := []*regexp.Regexp{regexp.MustCompile(`^v\d+`), regexp.MustCompile(`^latest$`)}
	tests := []struct {
		name string
		rule RetentionRule
		want []string
	}{
		{"no keep rule removes nothing", RetentionRule{KeepTags: keepV, UntaggedAfter: day}, nil},
		{"keep_last", RetentionRule{KeepLast: 2}, []string{"b1", "latest", "old", "v1.0", "v2.0"}},
		{"keep_last with keep_tags", RetentionRule{KeepLast: 2, KeepTags: keepV}, []string{"b1", "old"}},
		{"keep_last larger than tags", RetentionRule{KeepLast: 100}, nil},
		{"not_pulled_for counts pulls and pushes", RetentionRule{NotPulledFor: 30 * day}, []string{"latest", "v1.0", "v2.0"}},
		{"not_pulled_for with keep_tags", RetentionRule{NotPulledFor: 30 * day, KeepTags: keepV}, nil},
		{"keep_last or recently used", RetentionRule{KeepLast: 1, NotPulledFor: 2*day + time.Hour}, []string{"b1", "latest", "v1.0", "v2.0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := tt.rule
			r.Repos = []string{"ci/**"}
			var got []string
			for _, x := range r.expiredTags("ci/app", tags, pulled, now) {
				got = append(got, x.Tag)
				if x.Repo != "ci/app" || x.Digest != tags[x.Tag].Digest || x.Reason == "" {
					t.Errorf("bad entry %+v", x)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("expired %v, want %v", got, tt.want)
			}
		})
	}
}

// Rules apply to local repositories through the collector: the first
// matching rule wins, pulls recorded through Local count, mirrored
// repositories are never touched, and a tag moved since the plan is kept.
func TestRetentionThroughCollector(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openGC(t, clock, Options{})
	for i := range 4 {
		image(t, st, "ci/app", fmt.Sprintf("b%d", i), nil, []byte(fmt.Sprintf("layer %d", i)))
		clock.Advance(time.Hour)
	}
	// A mirrored repository with old tags.
	mb := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
	md := digest.FromBytes(mb)
	if err := st.PutManifest("docker.io/ci/app", mirrorName, ManifestRecord{Digest: md, MediaType: ocispec.MediaTypeImageManifest, Size: int64(len(mb))}, mb, "old", clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := NewLocal(st).GetTag(context.Background(), "ci/app", "b0"); err != nil { // pulled: kept by not_pulled_for
		t.Fatal(err)
	}
	clock.Advance(48 * time.Hour)
	always := func(string) bool { return true }
	rules := []RetentionRule{
		{Repos: []string{"ci/app"}, Match: func(r string) bool { return r == "ci/app" }, KeepLast: 1, NotPulledFor: 24 * time.Hour},
		{Repos: []string{"**"}, Match: always, KeepLast: 100},
	}
	if _, err := NewLocal(st).GetTag(context.Background(), "ci/app", "b0"); err != nil {
		t.Fatal(err)
	}
	dry := collect(t, st, GCOptions{Grace: time.Hour, Retention: rules, DryRun: true})
	var planned []string
	for _, x := range dry.Tags {
		planned = append(planned, x.Tag)
	}
	if !slices.Equal(planned, []string{"b1", "b2"}) {
		t.Fatalf("plan %v, want [b1 b2] (b3 newest, b0 pulled)", planned)
	}
	rep := collect(t, st, GCOptions{Grace: time.Hour, Retention: []RetentionRule{{Repos: []string{"**"}, Match: always, KeepLast: 1}}})
	var removed []string
	for _, x := range rep.Tags {
		removed = append(removed, x.Tag)
	}
	if !slices.Equal(removed, []string{"b0", "b1", "b2"}) {
		t.Errorf("removed %v", removed)
	}
	if tags, _, _ := st.Tags("docker.io/ci/app", 0, ""); !slices.Equal(tags, []string{"old"}) {
		t.Errorf("mirrored tags = %v: retention touched a mirrored repository", tags)
	}
	if tags, _, _ := st.Tags("ci/app", 0, ""); !slices.Equal(tags, []string{"b3"}) {
		t.Errorf("tags = %v", tags)
	}
	// Untagged now, but no untagged_after: the manifests and their layers stay.
	if isStored(st, digest.FromBytes([]byte("layer 0"))) == false {
		t.Error("layer of an untagged manifest collected without untagged_after")
	}
}

// Pushes racing collections: every acknowledged push pulls whole, whoever
// wins; a push that loses fails with MANIFEST_BLOB_UNKNOWN.
func TestGCRacingPushes(t *testing.T) {
	t.Parallel()
	st, err := Open(t.TempDir(), Options{Logger: zerolog.Nop()}) // the real clock: stamps and runs interleave
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var once sync.Once
	halt := func() { once.Do(func() { close(stop); wg.Wait() }) }
	t.Cleanup(halt) // before the store closes
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := st.Collect(ctx, GCOptions{Grace: 0}); err != nil {
				t.Errorf("Collect: %v", err)
				return
			}
		}
	}()
	local := NewLocal(st)
	var lost int
	for i := range 60 {
		layer := []byte(fmt.Sprintf("shared layer %d", i%3)) // re-pushed layers race removals
		cfg := []byte(fmt.Sprintf(`{"i":%d}`, i))
		m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: descOf(ocispec.MediaTypeImageConfig, cfg),
			Layers: []ocispec.Descriptor{descOf(ocispec.MediaTypeImageLayer, layer)}}
		m.SchemaVersion = 2
		body, _ := json.Marshal(m)
		pm, err := registry.ParseManifest("", body, digest.FromBytes(body))
		if err != nil {
			t.Fatal(err)
		}
		repo := fmt.Sprintf("race/r%d", i%5)
		if err := st.PutBlob(repo, "", digest.FromBytes(layer), -1, bytes.NewReader(layer)); err != nil {
			t.Fatal(err)
		}
		if err := st.PutBlob(repo, "", digest.FromBytes(cfg), -1, bytes.NewReader(cfg)); err != nil {
			t.Fatal(err)
		}
		_, err = local.PushManifest(ctx, repo, "t", pm)
		var oe *oci.Error
		if errors.As(err, &oe) && oe.Code == oci.CodeManifestBlobUnknown {
			lost++
			continue
		}
		if err != nil {
			t.Fatalf("push %d: %v", i, err)
		}
		for _, d := range []digest.Digest{pm.Desc.Digest, digest.FromBytes(cfg), digest.FromBytes(layer)} {
			if _, err := local.ResolveBlob(ctx, repo, d); err != nil {
				t.Fatalf("push %d acknowledged, but %.19s: %v", i, d, err)
			}
		}
	}
	halt()
	t.Logf("%d of 60 pushes lost their race and failed cleanly", lost)
	// After the pushes, a collection keeps every tagged image whole.
	collect(t, st, GCOptions{})
	for i := range 5 {
		repo := fmt.Sprintf("race/r%d", i)
		desc, err := local.ResolveTag(ctx, repo, "t")
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			continue // every push to it lost
		}
		body, _ := st.ManifestBody(desc.Digest)
		pm, _ := registry.ParseManifest(desc.MediaType, body, desc.Digest)
		for _, b := range pm.Blobs {
			if !isStored(st, b.Digest) {
				t.Errorf("%s:t references collected blob %.19s", repo, b.Digest)
			}
		}
	}
}

// Upload sessions: capped in number and bytes (TOOMANYREQUESTS), and those
// idle past the TTL are removed with their files.
func TestUploadLimitsAndTTL(t *testing.T) {
	t.Parallel()
	st, err := Open(t.TempDir(), Options{Logger: zerolog.Nop(), MaxUploads: 2, MaxUploadBytes: 1 << 20, UploadTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	local := NewLocal(st)
	ctx := context.Background()
	u1, err := local.StartUpload(ctx, "team/up")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := local.StartUpload(ctx, "team/up"); err != nil {
		t.Fatal(err)
	}
	_, err = local.StartUpload(ctx, "team/up")
	var oe *oci.Error
	if !errors.As(err, &oe) || oe.Code != oci.CodeTooManyRequests || oe.Status() != 429 {
		t.Fatalf("third upload: %v, want TOOMANYREQUESTS 429", err)
	}
	if err := local.CancelUpload(ctx, "team/up", u1.ID); err != nil {
		t.Fatal(err)
	}
	u3, err := local.StartUpload(ctx, "team/up") // room again
	if err != nil {
		t.Fatal(err)
	}
	if _, err := local.AppendUpload(ctx, "team/up", u3.ID, 0, bytes.NewReader(make([]byte, 1<<20))); err != nil {
		t.Fatal(err)
	}
	if err := local.CancelUpload(ctx, "team/up", func() string {
		for _, id := range uploadIDs(t, st) {
			if id != u3.ID {
				return id
			}
		}
		return ""
	}()); err != nil {
		t.Fatal(err)
	}
	if _, err := local.StartUpload(ctx, "team/up"); !errors.As(err, &oe) || oe.Code != oci.CodeTooManyRequests {
		t.Fatalf("over the byte cap: %v, want TOOMANYREQUESTS", err)
	}
	// The TTL is enforced by the index's expiry (whole seconds): poll.
	deadline := time.Now().Add(15 * time.Second)
	for {
		rep := collect(t, st, GCOptions{})
		if len(rep.Uploads) == 1 && rep.Uploads[0].Upload == u3.ID && rep.Uploads[0].Size == 1<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("idle upload not removed: %+v", rep.Uploads)
		}
		time.Sleep(100 * time.Millisecond) // polling Badger's TTL, not synchronising
	}
	if f := files(t, st.Root(), "ingest"); len(f) != 0 {
		t.Errorf("ingest/ still holds %v", f)
	}
	if _, err := local.UploadStatus(ctx, "team/up", u3.ID); err == nil {
		t.Error("expired upload still answers")
	}
}

func uploadIDs(t *testing.T, st *Store) []string {
	t.Helper()
	return files(t, st.Root(), "ingest")
}

// A copy of an image (blobs mounted into a second repository) whose
// manifest is deleted leaves the second repository empty: its links to
// blobs the first still uses are dropped, the blobs stay.
func TestGCDropsStaleLinks(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openGC(t, clock, Options{})
	l, _ := blobOf(1, 800)
	d, _ := image(t, st, "team/app", "v1", nil, l)
	local := NewLocal(st)
	ctx := context.Background()
	body, _ := st.ManifestBody(d)
	pm, _ := registry.ParseManifest("", body, d)
	for _, b := range pm.Blobs {
		if _, err := local.MountBlob(ctx, "team/app", "team/copy", b.Digest); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := local.PushManifest(ctx, "team/copy", "v1", pm); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteManifest("team/copy", d); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Hour)
	rep := collect(t, st, GCOptions{Grace: time.Hour})
	if len(rep.Blobs) != 0 || rep.Unlinked != 2 || !slices.Equal(rep.Repos, []string{"team/copy"}) {
		t.Fatalf("removed %v, unlinked %d, repos %v", rep.Blobs, rep.Unlinked, rep.Repos)
	}
	if _, err := local.GetTag(ctx, "team/app", "v1"); err != nil || !isStored(st, digest.FromBytes(l)) {
		t.Errorf("original image damaged: %v", err)
	}
	if ok, _ := st.Linked("team/app", digest.FromBytes(l)); !ok {
		t.Error("original repository lost its link")
	}
}

// Pull times are saved in batches and survive a restart; those of deleted
// tags are dropped by the next collection.
func TestPullTimes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	clock := newClock()
	st, err := Open(dir, Options{Logger: zerolog.Nop(), Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	image(t, st, "team/p", "a", nil, []byte("pa"))
	image(t, st, "team/p", "b", nil, []byte("pb"))
	clock.Advance(time.Hour)
	pulledAt := clock.Now()
	for _, tag := range []string{"a", "b"} {
		if _, err := NewLocal(st).GetTag(context.Background(), "team/p", tag); err != nil {
			t.Fatal(err)
		}
	}
	st.RecordPull(mirrorRepo, "x") // not local: ignored
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st, err = Open(dir, Options{Logger: zerolog.Nop(), Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	p, err := st.Pulls("team/p")
	if err != nil || !p["a"].Equal(pulledAt) || !p["b"].Equal(pulledAt) {
		t.Fatalf("pulls after restart = %v, %v", p, err)
	}
	if p, _ := st.Pulls(mirrorRepo); len(p) != 0 {
		t.Errorf("mirrored pulls recorded: %v", p)
	}
	if err := st.DeleteTag("team/p", "a"); err != nil {
		t.Fatal(err)
	}
	collect(t, st, GCOptions{Grace: time.Hour})
	if p, _ := st.Pulls("team/p"); len(p) != 1 || p["b"].IsZero() {
		t.Errorf("pulls after gc = %v", p)
	}
}

// A blob file without a record (a crash between a removal's index update
// and its unlink) is removed once past the grace period.
func TestGCOrphanFiles(t *testing.T) {
	t.Parallel()
	st, err := Open(t.TempDir(), Options{Logger: zerolog.Nop()}) // the real clock, as file times are
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	content := []byte("orphaned by a crash")
	d := digest.FromBytes(content)
	p := blobPath(st.Root(), d)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, content, 0o644); err != nil {
		t.Fatal(err)
	}
	kept := put(t, st, "team/o", "", []byte("indexed"))
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	if rep := collect(t, st, GCOptions{Grace: 3 * time.Hour}); len(rep.Blobs) != 0 {
		t.Fatalf("orphan within grace removed: %v", rep.Blobs)
	}
	rep := collect(t, st, GCOptions{Grace: time.Hour})
	if !slices.ContainsFunc(rep.Blobs, func(b GCBlob) bool { return b.Digest == d && b.Size == int64(len(content)) }) {
		t.Fatalf("orphan not reported: %v", rep.Blobs)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("orphan file still there: %v", err)
	}
	if !isStored(st, kept) {
		t.Error("indexed blob removed")
	}
}

// The staging file of an upload a request is writing stays, even if its
// record expired meanwhile; an abandoned one goes.
func TestGCKeepsUploadBeingWritten(t *testing.T) {
	t.Parallel()
	st := openGC(t, newClock(), Options{})
	busy, err := st.NewUpload("team/u")
	if err != nil {
		t.Fatal(err)
	}
	idle, err := st.NewUpload("team/u")
	if err != nil {
		t.Fatal(err)
	}
	release, err := st.claimUpload(busy.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	st.dropUpload(busy.ID) // as if its record expired during a long PATCH
	st.dropUpload(idle.ID)
	rep := collect(t, st, GCOptions{})
	if len(rep.Uploads) != 1 || rep.Uploads[0].Upload != idle.ID {
		t.Fatalf("removed uploads %+v, want only %s", rep.Uploads, idle.ID)
	}
	if _, err := os.Stat(ingestPath(st.Root(), busy.ID)); err != nil {
		t.Errorf("file of the upload being written: %v", err)
	}
}

// A collection whose context ends stops before removing anything more.
func TestGCCancelled(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openGC(t, clock, Options{})
	d := put(t, st, "team/c", "", []byte("loose"))
	clock.Advance(2 * time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := st.Collect(ctx, GCOptions{Grace: time.Hour}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Collect = %v, want context.Canceled", err)
	}
	if !isStored(st, d) {
		t.Error("a cancelled collection removed a blob")
	}
	if s := st.GCStats(); s.Runs != 1 || s.Errors != 1 {
		t.Errorf("stats %+v", s)
	}
}

// A kept manifest whose body cannot be read stops the collection before it
// removes anything: what it references is unknown.
func TestGCUnreadableManifest(t *testing.T) {
	t.Parallel()
	clock := newClock()
	st := openGC(t, clock, Options{})
	d, _ := image(t, st, "team/broken", "v1", nil, []byte("layer"))
	loose := put(t, st, "team/loose", "", []byte("loose"))
	if err := os.Remove(blobPath(st.Root(), d)); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Hour)
	_, err := st.Collect(context.Background(), GCOptions{Grace: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "team/broken@"+d.String()) || !strings.Contains(err.Error(), "nothing removed") {
		t.Fatalf("Collect = %v", err)
	}
	if !isStored(st, loose) || !isStored(st, digest.FromBytes([]byte("layer"))) {
		t.Error("a failed mark removed blobs")
	}
}
