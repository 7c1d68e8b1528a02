package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/testutil"
	"github.com/berth-dev/berth/upstream"
	"github.com/berth-dev/berth/upstream/upstreamtest"
	"github.com/opencontainers/go-digest"
)

// hookRegistry is a minimal anonymous upstream whose answers a test can
// take over request by request (for faults upstreamtest does not model).
type hookRegistry struct {
	mu        sync.Mutex
	manifests map[string][]byte // "repo:ref" -> body
	blobs     map[string][]byte // "repo@digest" -> body
	hook      func(w http.ResponseWriter, r *http.Request) bool
}

func (f *hookRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	hook := f.hook
	f.mu.Unlock()
	if hook != nil && hook(w, r) {
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case p == "":
		w.WriteHeader(http.StatusOK)
	case strings.Contains(p, "/manifests/"):
		i := strings.Index(p, "/manifests/")
		b, ok := f.manifests[p[:i]+":"+p[i+len("/manifests/"):]]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(b).String())
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		if r.Method == http.MethodGet {
			_, _ = w.Write(b)
		}
	case strings.Contains(p, "/blobs/"):
		i := strings.Index(p, "/blobs/")
		b, ok := f.blobs[p[:i]+"@"+p[i+len("/blobs/"):]]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		if r.Method == http.MethodGet {
			_, _ = w.Write(b)
		}
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func (f *hookRegistry) setHook(h func(w http.ResponseWriter, r *http.Request) bool) {
	f.mu.Lock()
	f.hook = h
	f.mu.Unlock()
}

func hookEnv(t *testing.T, f *hookRegistry, ttl time.Duration) *httptest.Server {
	t.Helper()
	up := httptest.NewServer(f)
	t.Cleanup(up.Close)
	c, err := upstream.New(upstream.Config{Name: "docker.io", URL: up.URL, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, srv := startServer(t, cache.Options{}, mirrorOf(c, ttl))
	return srv
}

func call(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", method, url, err)
	}
	return resp.StatusCode, string(b)
}

func configManifest(n int) []byte {
	cfg := []byte(`{}`)
	return fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[],"annotations":{"n":"%d"}}`, digest.FromBytes(cfg), len(cfg), n)
}

// The tag moved upstream (the HEAD says so) but the GET of the new manifest
// is rate-limited: the cached manifest is served (stale-if-error).
func TestStaleWhenNewManifestRateLimited(t *testing.T) {
	t.Parallel()
	a, b := configManifest(1), configManifest(2)
	f := &hookRegistry{manifests: map[string][]byte{"library/app:1": a}, blobs: map[string][]byte{}}
	srv := hookEnv(t, f, 0)
	if s, body := call(t, http.MethodGet, srv.URL+"/v2/app/manifests/1"); s != 200 {
		t.Fatal(s, body)
	}
	f.mu.Lock()
	f.manifests["library/app:1"] = b
	f.mu.Unlock()
	f.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") {
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		}
		return false
	})
	if s, body := call(t, http.MethodGet, srv.URL+"/v2/app/manifests/1"); s != 200 || body != string(a) {
		t.Errorf("tag moved + 429 on GET: %d %.100s, want the cached manifest", s, body)
	}
}

// One repository's failure for a digest is not another's: a slow 404 for a
// repository that lacks the blob does not fail a repository that has it.
func TestBlobErrorNotSharedAcrossRepositories(t *testing.T) {
	t.Parallel()
	content := bytes.Repeat([]byte("x"), 1000)
	d := digest.FromBytes(content)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	f := &hookRegistry{manifests: map[string][]byte{}, blobs: map[string][]byte{"good/app@" + d.String(): content}}
	f.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/v2/evil/none/blobs/") {
			once.Do(func() { close(entered) })
			<-release
			w.WriteHeader(http.StatusNotFound)
			return true
		}
		return false
	})
	srv := hookEnv(t, f, time.Minute)
	evilDone := fetchAsync(context.Background(), srv.URL+"/v2/evil/none/blobs/"+d.String())
	testutil.Recv(t, entered, "evil/none's upstream request")
	s, body := call(t, http.MethodGet, srv.URL+"/v2/good/app/blobs/"+d.String())
	close(release)
	if s != 200 || body != string(content) {
		t.Errorf("good/app while evil/none waits: %d", s)
	}
	if r := testutil.Recv(t, evilDone, "evil/none's answer"); r.err != nil || r.status != http.StatusNotFound {
		t.Errorf("evil/none: %d (%v), want 404", r.status, r.err)
	}
	if s, _ := call(t, http.MethodGet, srv.URL+"/v2/good/app/blobs/"+d.String()); s != 200 {
		t.Errorf("good/app afterwards: %d", s)
	}
}

// An empty blob is served whole through a fill.
func TestEmptyBlobThroughMirror(t *testing.T) {
	t.Parallel()
	d := digest.FromBytes(nil)
	f := &hookRegistry{manifests: map[string][]byte{}, blobs: map[string][]byte{"x/y@" + d.String(): {}}}
	srv := hookEnv(t, f, time.Minute)
	for i := 0; i < 2; i++ { // cold, then warm
		if s, body := call(t, http.MethodGet, srv.URL+"/v2/x/y/blobs/"+d.String()); s != 200 || body != "" {
			t.Errorf("empty blob: %d %q", s, body)
		}
	}
}

// A pre-signed CDN URL (credentials in its query) reaches no client.
func TestSignedURLNotInErrors(t *testing.T) {
	t.Parallel()
	d := digest.FromBytes([]byte("secret layer"))
	f := &hookRegistry{manifests: map[string][]byte{}, blobs: map[string][]byte{}}
	f.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			http.Redirect(w, r, "http://127.0.0.1:1/blob?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=SECRETSIG", http.StatusTemporaryRedirect)
			return true
		}
		return false
	})
	srv := hookEnv(t, f, time.Minute)
	s, body := call(t, http.MethodGet, srv.URL+"/v2/x/y/blobs/"+d.String())
	if s < 400 || strings.Contains(body, "SECRETSIG") || strings.Contains(body, "AKIAEXAMPLE") {
		t.Errorf("%d %s: a failed CDN download must not show its signed URL", s, body)
	}
}

// A push may not create a local repository under a name the default
// upstream serves: it would shadow that image for every mirror client.
func TestPushCannotShadowUpstreamName(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{auth: upstreamtest.AuthBearer, ttl: time.Hour})
	e.up.AddImage("bitnami/redis", "latest", 1, 64)
	blob := []byte("{}")
	d := digest.FromBytes(blob)
	for _, tc := range []struct {
		repo string
		want int
	}{{"bitnami/redis", http.StatusForbidden}, {"myteam/new", http.StatusCreated}} {
		resp, err := http.Post(e.srv.URL+"/v2/"+tc.repo+"/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("push to %s: %d %s, want %d", tc.repo, resp.StatusCode, b, tc.want)
		}
	}
	// and the mirror still serves the upstream's image under that name
	if resp, _ := e.get(t, context.Background(), http.MethodGet, manifestPath("bitnami/redis", "latest"), acceptAll...); resp.StatusCode != 200 {
		t.Errorf("mirror pull of bitnami/redis: %d", resp.StatusCode)
	}
}

// The referrers API of a mirrored repository asks the upstream (where
// signatures live), filters if the upstream did not, and falls back to
// the cache when the upstream lacks the API.
func TestMirroredReferrers(t *testing.T) {
	t.Parallel()
	subject := digest.FromString("image")
	sig := digest.FromString("signature")
	sbom := digest.FromString("sbom")
	index := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
		{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":10,"artifactType":"application/vnd.dev.cosign.simplesigning.v1+json"},
		{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":20,"artifactType":"application/spdx+json"}]}`, sig, sbom)
	f := &hookRegistry{manifests: map[string][]byte{}, blobs: map[string][]byte{}}
	f.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v2/library/app/referrers/"+subject.String() {
			w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
			_, _ = w.Write([]byte(index))
			return true
		}
		return false
	})
	srv := hookEnv(t, f, time.Minute)
	s, body := call(t, http.MethodGet, srv.URL+"/v2/app/referrers/"+subject.String())
	if s != 200 || !strings.Contains(body, sig.String()) || !strings.Contains(body, sbom.String()) {
		t.Errorf("referrers: %d %s", s, body)
	}
	s, body = call(t, http.MethodGet, srv.URL+"/v2/app/referrers/"+subject.String()+"?artifactType=application/spdx%2Bjson")
	if s != 200 || strings.Contains(body, sig.String()) || !strings.Contains(body, sbom.String()) {
		t.Errorf("filtered referrers: %d %s", s, body)
	}
	// an upstream without the API (404): the cached (empty) list
	s, body = call(t, http.MethodGet, srv.URL+"/v2/other/referrers/"+subject.String())
	if s != 200 || !strings.Contains(body, `"manifests":[]`) {
		t.Errorf("referrers without upstream support: %d %s", s, body)
	}
}

// With max_cache_bytes, an evicted mirrored blob is fetched again from the
// upstream on its next pull, and pushed content is never evicted.
func TestEvictedBlobIsFetchedAgain(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	client, err := upstream.New(upstream.Config{Name: "docker.io", URL: up.URL()})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	st, srv := startServer(t, cache.Options{MaxBytes: 1 << 20, Clock: clock}, berth{Upstream: client, TTL: time.Hour, Prefetch: -1, Local: []string{"team/**"}})

	pushed := randomBytes(900 << 10)
	pd := digest.FromBytes(pushed)
	if resp, err := http.Post(srv.URL+"/v2/team/app/blobs/uploads/?digest="+pd.String(), "application/octet-stream", bytes.NewReader(pushed)); err != nil || resp.StatusCode != 201 {
		t.Fatalf("push: %v %v", err, resp)
	}
	var mirrored []digest.Digest
	for i := 0; i < 3; i++ { // 3 x 600 KiB mirrored: over the 1 MiB limit
		d := up.AddBlob("library/app", randomBytes(600<<10))
		if s, _ := call(t, http.MethodGet, srv.URL+"/v2/app/blobs/"+d.String()); s != 200 {
			t.Fatalf("cold pull: %d", s)
		}
		mirrored = append(mirrored, d)
	}
	mu.Lock()
	now = now.Add(time.Hour) // every access is past the grace period
	mu.Unlock()
	// A background pass started by the last fill may see the new time
	// first: what counts is what is gone after this pass, not who removed it.
	if _, err := st.Evict(); err != nil {
		t.Fatal(err)
	}
	var evicted digest.Digest
	for _, d := range mirrored {
		if _, err := st.StatBlob(d); errors.Is(err, cache.ErrNotFound) {
			evicted = d
		}
	}
	if evicted == "" {
		t.Fatal("no mirrored blob was evicted past the limit")
	}
	if _, err := st.StatBlob(pd); err != nil {
		t.Fatalf("a pushed blob was evicted: %v", err)
	}
	if s, b := call(t, http.MethodGet, srv.URL+"/v2/team/app/blobs/"+pd.String()); s != 200 || b != string(pushed) {
		t.Errorf("pushed blob after eviction: %d", s)
	}
	up.Reset()
	if s, _ := call(t, http.MethodGet, srv.URL+"/v2/app/blobs/"+evicted.String()); s != 200 {
		t.Errorf("evicted blob: %d", s)
	}
	if got := up.CountAuthorized(http.MethodGet, upstreamtest.KindBlob); got != 1 {
		t.Errorf("evicted blob fetched from upstream %d times, want 1", got)
	}
}
