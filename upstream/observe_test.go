package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/berth-dev/berth/upstream/upstreamtest"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

type recordingObserver struct {
	mu sync.Mutex
	ex []Exchange
}

func (r *recordingObserver) Observe(e Exchange) { r.mu.Lock(); r.ex = append(r.ex, e); r.mu.Unlock() }

func (r *recordingObserver) kinds() map[string][]Exchange {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string][]Exchange{}
	for _, e := range r.ex {
		out[e.Kind] = append(out[e.Kind], e)
	}
	return out
}

func TestObserverSeesEveryExchange(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	up.AddImage("library/app", "1", 1, 100)
	obs := &recordingObserver{}
	c, err := New(Config{Name: "docker.io", URL: up.URL()}, WithObserver(obs))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.GetManifest(t.Context(), "library/app", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.HeadBlob(t.Context(), "library/app", digest.FromString("absent")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("HeadBlob of an absent blob: %v", err)
	}
	k := obs.kinds()
	if len(k["token"]) != 1 || k["token"][0].Cause != "" || k["token"][0].Upstream != "docker.io" {
		t.Errorf("token exchanges = %+v, want one success", k["token"])
	}
	var ok200, challenged bool
	for _, e := range k["manifest"] {
		ok200 = ok200 || (e.Status == 200 && e.Cause == "")
		challenged = challenged || (e.Status == 401 && e.Cause == "")
	}
	if !ok200 || !challenged {
		t.Errorf("manifest exchanges = %+v, want a 401 challenge and a 200, neither a failure", k["manifest"])
	}
	if b := k["blob"]; len(b) == 0 || b[len(b)-1].Status != 404 || b[len(b)-1].Cause != "4xx" {
		t.Errorf("blob exchanges = %+v, want a 404 classified 4xx", b)
	}
}

func TestCause(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		status int
		err    error
		want   string
	}{
		{200, nil, ""}, {304, nil, ""}, {401, nil, ""}, {404, nil, "4xx"}, {429, nil, "429"}, {503, nil, "5xx"},
		{0, context.DeadlineExceeded, "timeout"}, {0, context.Canceled, "canceled"},
		{0, errors.New("tls: failed to verify certificate"), "tls"}, {0, errors.New("connection refused"), "connection"},
	} {
		if got := Cause(tt.status, tt.err); got != tt.want {
			t.Errorf("Cause(%d, %v) = %q, want %q", tt.status, tt.err, got, tt.want)
		}
	}
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // nothing listens: a connection failure
	obs := &recordingObserver{}
	c, err := New(Config{URL: srv.URL, Retries: 1}, WithObserver(obs))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.HeadManifest(t.Context(), "app", "1")
	if k := obs.kinds()["manifest"]; len(k) != 1 || k[0].Cause != "connection" || k[0].Status != 0 {
		t.Errorf("exchanges with a closed port = %+v, want one connection failure", k)
	}
}

func TestWithObserverTwice(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	a, b, c := &recordingObserver{}, &recordingObserver{}, &recordingObserver{}
	cl, err := New(Config{Name: "up", URL: up.URL()}, WithObserver(a), WithObserver(b), WithObserver(c))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	for i, o := range []*recordingObserver{a, b, c} {
		if k := o.kinds()["ping"]; len(k) != 1 || k[0].Upstream != "up" {
			t.Errorf("observer %d saw pings %+v, want one", i, k)
		}
	}
}

func TestExchangeKind(t *testing.T) {
	t.Parallel()
	o := &observing{prefix: "/mirror", host: "reg.example"}
	for _, tt := range []struct{ url, want string }{
		{"https://reg.example/mirror/v2/", "ping"},
		{"https://reg.example/mirror/v2/library/a/manifests/1", "manifest"},
		{"https://reg.example/mirror/v2/library/a/blobs/sha256:x", "blob"},
		{"https://reg.example/mirror/v2/library/a/tags/list", "tags"},
		{"https://reg.example/mirror/v2/library/a/referrers/sha256:x", "referrers"},
		{"https://reg.example/token?service=reg&scope=repository:a:pull", "token"},
		{"https://auth.example/token?service=reg&scope=repository:a:pull", "token"},
		{"https://cdn.example/blobs/abc?X-Amz-Signature=s", "blob"},
		{"https://reg.example/mirror/v2/_catalog", "other"},
	} {
		req, _ := http.NewRequest(http.MethodGet, tt.url, nil)
		if got := o.kind(req); got != tt.want {
			t.Errorf("kind(%s) = %q, want %q", tt.url, got, tt.want)
		}
	}
}

// An upstream without the referrers API (distribution's registry) is asked
// for the spec's fallback tag, where oras pushes its referrers index.
func TestReferrersFallbackTag(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	img := up.AddImage("library/app", "1", 1, 100)
	sbom := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("sbom"), Size: 42, ArtifactType: "application/spdx+json"}
	idx, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{sbom}})
	c, err := New(Config{Name: "docker.io", URL: up.URL()})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Referrers(t.Context(), "library/app", img.Manifest, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Referrers without the API or the tag: %v, want ErrNotFound", err)
	}
	up.AddManifest("library/app", "sha256-"+img.Manifest.Encoded(), ocispec.MediaTypeImageIndex, idx)
	descs, filtered, err := c.Referrers(t.Context(), "library/app", img.Manifest, "")
	if err != nil || filtered || len(descs) != 1 || descs[0].Digest != sbom.Digest || descs[0].ArtifactType != sbom.ArtifactType {
		t.Fatalf("Referrers through the fallback tag = %v, %v, %v", descs, filtered, err)
	}
}
