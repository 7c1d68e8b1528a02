package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/upstream/upstreamtest"
)

const (
	testUser     = "alice"
	testPassword = "s3cret-Pa55word"
)

// fakeClock is a manually advanced clock for token expiry tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(d)
}

// newClient returns a client for reg with a short retry back-off.
func newClient(t *testing.T, reg *upstreamtest.Registry, mod func(*Config), opts ...Option) *Client {
	t.Helper()
	cfg := Config{Name: "test.registry", URL: reg.URL()}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	c.backoff = 2 * time.Millisecond
	return c
}

func withCreds(user, pass string) func(*Config) {
	return func(c *Config) { c.Username, c.Password = user, pass }
}

func mustGetManifest(t *testing.T, c *Client, repo, ref string) (Descriptor, []byte) {
	t.Helper()
	desc, body, err := c.GetManifest(t.Context(), repo, ref)
	if err != nil {
		t.Fatalf("GetManifest(%s, %s): %v", repo, ref, err)
	}
	return desc, body
}

func readBlob(t *testing.T, c *Client, repo string, d digest.Digest, offset int64) ([]byte, int64, error) {
	t.Helper()
	rc, size, err := c.GetBlob(t.Context(), repo, d, offset)
	if err != nil {
		return nil, 0, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return b, size, err
}

func TestNewValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; "" means success
	}{
		{"https ok", Config{URL: "https://registry-1.docker.io"}, ""},
		{"http with port ok", Config{URL: "http://127.0.0.1:5001/"}, ""},
		{"empty URL", Config{}, "Config.URL"},
		{"bad scheme", Config{URL: "ftp://example.com"}, "Config.URL"},
		{"no scheme", Config{URL: "registry.example.com"}, "Config.URL"},
		{"no host", Config{URL: "https://"}, "Config.URL"},
		{"credentials in URL", Config{URL: "https://bob:hunter2@example.com"}, "Config.URL"},
		{"query", Config{URL: "https://example.com/?x=1"}, "Config.URL"},
		{"negative retries", Config{URL: "https://example.com", Retries: -1}, "Config.Retries"},
		{"negative timeout", Config{URL: "https://example.com", IdleStreamTimeout: -time.Second}, "Config.IdleStreamTimeout"},
		{"negative operation timeout", Config{URL: "https://example.com", OperationTimeout: -time.Second}, "Config.OperationTimeout"},
		{"negative stream rate", Config{URL: "https://example.com", MinStreamRate: -1}, "Config.MinStreamRate"},
		{"negative manifest size", Config{URL: "https://example.com", MaxManifestSize: -1}, "Config.MaxManifestSize"},
		{"password without user", Config{URL: "https://example.com", Password: "x"}, "Config.Username"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: unexpected error %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("New(%+v) succeeded, want error mentioning %q", tt.cfg, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not name %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q leaks the URL password", err)
			}
			_ = c
		})
	}
	c, err := New(Config{URL: "https://registry-1.docker.io"})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Name(); got != "registry-1.docker.io" {
		t.Errorf("Name() = %q, want URL host as default", got)
	}
}

func TestBearerAnonymousTokenCaching(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	img := reg.AddImage("library/alpine", "latest", 1, 100)
	c := newClient(t, reg, nil)

	desc, body := mustGetManifest(t, c, "library/alpine", "latest")
	if desc.Digest != img.Manifest || !bytes.Equal(body, img.ManifestBody) || desc.MediaType != v1.MediaTypeImageManifest {
		t.Fatalf("GetManifest = %+v, want digest %s type %s", desc, img.Manifest, v1.MediaTypeImageManifest)
	}
	if got := reg.Count("GET", upstreamtest.KindToken); got != 1 {
		t.Fatalf("token fetches after first request = %d, want 1", got)
	}
	if got, authed := reg.Count("GET", upstreamtest.KindManifest), reg.CountAuthorized("GET", upstreamtest.KindManifest); got != 2 || authed != 1 {
		t.Fatalf("manifest GETs = %d (authorized %d), want 2 (1): one challenge, one retry", got, authed)
	}

	// Warm client: the cached token is sent proactively, no 401, no fetch.
	mustGetManifest(t, c, "library/alpine", "latest")
	if _, _, err := readBlob(t, c, "library/alpine", img.Layers[0], 0); err != nil {
		t.Fatalf("GetBlob: %v", err)
	}
	if got := reg.Count("GET", upstreamtest.KindToken); got != 1 {
		t.Errorf("token fetches after warm requests = %d, want 1", got)
	}
	if got, authed := reg.Count("GET", upstreamtest.KindManifest), reg.CountAuthorized("GET", upstreamtest.KindManifest); got != 3 || authed != 2 {
		t.Errorf("manifest GETs = %d (authorized %d), want 3 (2)", got, authed)
	}
	if got, authed := reg.Count("GET", upstreamtest.KindBlob), reg.CountAuthorized("GET", upstreamtest.KindBlob); got != 1 || authed != 1 {
		t.Errorf("blob GETs = %d (authorized %d), want 1 (1)", got, authed)
	}

	// The token request carried service and the repository pull scope and
	// no credentials (anonymous).
	for _, rec := range reg.Requests() {
		if rec.Kind != upstreamtest.KindToken {
			continue
		}
		if !strings.Contains(rec.Query, "scope=repository%3Alibrary%2Falpine%3Apull") || !strings.Contains(rec.Query, "service=upstreamtest") {
			t.Errorf("token request query = %q, want service and pull scope", rec.Query)
		}
		if rec.Auth != "none" {
			t.Errorf("anonymous token request sent %s credentials", rec.Auth)
		}
	}

	// Another repository needs another scope; since the client knows the
	// realm it fetches the token proactively, without a 401 round trip.
	reg.AddImage("other/repo", "v1", 1, 10)
	before := reg.Count("GET", upstreamtest.KindManifest) - reg.CountAuthorized("GET", upstreamtest.KindManifest)
	mustGetManifest(t, c, "other/repo", "v1")
	after := reg.Count("GET", upstreamtest.KindManifest) - reg.CountAuthorized("GET", upstreamtest.KindManifest)
	if got := reg.Count("GET", upstreamtest.KindToken); got != 2 {
		t.Errorf("token fetches after second repo = %d, want 2", got)
	}
	if after != before {
		t.Errorf("second repository got %d extra 401s, want 0", after-before)
	}
}

func TestConcurrentTokenFetchesShareOne(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	reg.AddImage("library/busybox", "latest", 1, 10)
	c := newClient(t, reg, nil)

	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			if _, _, err := c.GetManifest(t.Context(), "library/busybox", "latest"); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("GetManifest: %v", err)
	}
	if got := reg.Count("GET", upstreamtest.KindToken); got != 1 {
		t.Errorf("token fetches = %d, want 1 shared by %d concurrent requests", got, n)
	}
}

func TestBearerWithCredentials(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer, Username: testUser, Password: testPassword})
	img := reg.AddImage("private/app", "1.0", 2, 3000)
	reg.SetRedirectBlobs(true)

	t.Run("credentials go to the token server only", func(t *testing.T) {
		c := newClient(t, reg, withCreds(testUser, testPassword))
		mustGetManifest(t, c, "private/app", "1.0")
		for _, l := range img.Layers {
			if _, _, err := readBlob(t, c, "private/app", l, 0); err != nil {
				t.Fatalf("GetBlob: %v", err)
			}
		}
		cdn := 0
		for _, rec := range reg.Requests() {
			switch rec.Host {
			case reg.TokenHost():
				if rec.Auth != "basic" {
					t.Errorf("token request without Basic credentials: %+v", rec.Auth)
				}
			case reg.Host():
				if rec.Auth == "basic" {
					t.Errorf("registry received Basic credentials on %s %s", rec.Method, rec.Path)
				}
			case reg.CDNHost():
				cdn++
				if h := rec.Header.Get("Authorization"); h != "" {
					t.Errorf("CDN received Authorization header %q", h)
				}
			default:
				t.Errorf("request to unexpected host %q", rec.Host)
			}
		}
		if cdn != len(img.Layers) {
			t.Errorf("CDN requests = %d, want %d", cdn, len(img.Layers))
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		const wrong = "wr0ng-Pa55word"
		c := newClient(t, reg, withCreds(testUser, wrong))
		_, _, err := c.GetManifest(t.Context(), "private/app", "1.0")
		if !errors.Is(err, ErrDenied) {
			t.Fatalf("err = %v, want ErrDenied", err)
		}
		if IsUnavailable(err) {
			t.Errorf("IsUnavailable(%v) = true for denied", err)
		}
		if strings.Contains(err.Error(), wrong) {
			t.Errorf("error %q contains the password", err)
		}
	})

	t.Run("anonymous is refused", func(t *testing.T) {
		c := newClient(t, reg, nil)
		if _, _, err := c.GetManifest(t.Context(), "private/app", "1.0"); !errors.Is(err, ErrDenied) {
			t.Fatalf("err = %v, want ErrDenied", err)
		}
	})
}

func TestBasicAuth(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBasic, Username: testUser, Password: testPassword})
	img := reg.AddImage("team/svc", "prod", 1, 2000)
	reg.SetRedirectBlobs(true)

	c := newClient(t, reg, withCreds(testUser, testPassword))
	mustGetManifest(t, c, "team/svc", "prod")
	mustGetManifest(t, c, "team/svc", "prod")
	if got, authed := reg.Count("GET", upstreamtest.KindManifest), reg.CountAuthorized("GET", upstreamtest.KindManifest); got != 3 || authed != 2 {
		t.Errorf("manifest GETs = %d (authorized %d), want 3 (2): only the first request is challenged", got, authed)
	}
	got, _, err := readBlob(t, c, "team/svc", img.Layers[0], 0)
	if err != nil || len(got) != 2000 {
		t.Fatalf("GetBlob: %d bytes, %v", len(got), err)
	}
	for _, rec := range reg.Requests() {
		if rec.Host == reg.CDNHost() && rec.Header.Get("Authorization") != "" {
			t.Errorf("CDN received Authorization header")
		}
	}

	for name, cfg := range map[string]func(*Config){
		"no credentials":  nil,
		"wrong password":  withCreds(testUser, "not-"+testPassword),
		"wrong user name": withCreds("mallory", testPassword),
	} {
		t.Run(name, func(t *testing.T) {
			c := newClient(t, reg, cfg)
			_, _, err := c.GetManifest(t.Context(), "team/svc", "prod")
			if !errors.Is(err, ErrDenied) {
				t.Fatalf("err = %v, want ErrDenied", err)
			}
			if strings.Contains(err.Error(), testPassword) {
				t.Errorf("error %q contains the password", err)
			}
		})
	}
}

func TestTokenRefresh(t *testing.T) {
	t.Parallel()

	t.Run("after the upstream rejects the cached token", func(t *testing.T) {
		t.Parallel()
		reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
		reg.AddImage("library/nginx", "latest", 1, 10)
		c := newClient(t, reg, nil)
		mustGetManifest(t, c, "library/nginx", "latest")
		reg.ExpireTokens()
		mustGetManifest(t, c, "library/nginx", "latest")
		if got := reg.Count("GET", upstreamtest.KindToken); got != 2 {
			t.Errorf("token fetches = %d, want 2 (initial + refresh after 401)", got)
		}
		// The refreshed token is cached again.
		mustGetManifest(t, c, "library/nginx", "latest")
		if got := reg.Count("GET", upstreamtest.KindToken); got != 2 {
			t.Errorf("token fetches = %d, want still 2", got)
		}
	})

	t.Run("after the token expires locally", func(t *testing.T) {
		t.Parallel()
		reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer, TokenTTL: time.Minute})
		reg.AddImage("library/redis", "7", 1, 10)
		c := newClient(t, reg, nil)
		clock := newFakeClock()
		c.now = clock.Now

		mustGetManifest(t, c, "library/redis", "7")
		clock.Advance(50 * time.Second) // within TTL minus margin
		mustGetManifest(t, c, "library/redis", "7")
		if got := reg.Count("GET", upstreamtest.KindToken); got != 1 {
			t.Fatalf("token fetches before expiry = %d, want 1", got)
		}
		clock.Advance(5 * time.Second) // past 60s minus the 6s margin
		mustGetManifest(t, c, "library/redis", "7")
		if got := reg.Count("GET", upstreamtest.KindToken); got != 2 {
			t.Errorf("token fetches after expiry = %d, want 2", got)
		}
		if challenged := reg.Count("GET", upstreamtest.KindManifest) - reg.CountAuthorized("GET", upstreamtest.KindManifest); challenged != 1 {
			t.Errorf("401s = %d, want 1: an expired token is replaced proactively", challenged)
		}
	})
}

func TestTokenCacheIsBounded(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	for _, repo := range []string{"lib/r0", "lib/r1", "lib/r2"} {
		reg.AddImage(repo, "v", 1, 10)
	}
	c := newClient(t, reg, nil)
	c.auth.tokens = newTokenCache(2)

	for _, repo := range []string{"lib/r0", "lib/r1", "lib/r2"} {
		mustGetManifest(t, c, repo, "v")
	}
	if n := c.auth.tokens.Len(); n != 2 {
		t.Errorf("cached scopes = %d, want the bound 2", n)
	}
	mustGetManifest(t, c, "lib/r2", "v")
	if got := reg.Count("GET", upstreamtest.KindToken); got != 3 {
		t.Errorf("token fetches = %d, want 3: lib/r2's token is still cached", got)
	}
	mustGetManifest(t, c, "lib/r0", "v")
	if got := reg.Count("GET", upstreamtest.KindToken); got != 4 {
		t.Errorf("token fetches = %d, want 4: lib/r0's token, least recently used, was evicted", got)
	}
}

func TestExpiredTokensLeaveTheCache(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer, TokenTTL: time.Minute})
	for _, repo := range []string{"lib/r0", "lib/r1", "lib/r2"} {
		reg.AddImage(repo, "v", 1, 10)
	}
	c := newClient(t, reg, nil)
	clock := newFakeClock()
	c.now = clock.Now
	cached := func(repo string) bool { return c.auth.tokens.Contains(pullScope(repo)) }

	mustGetManifest(t, c, "lib/r0", "v") // usable until 54s
	clock.Advance(30 * time.Second)
	mustGetManifest(t, c, "lib/r1", "v") // until 84s
	clock.Advance(30 * time.Second)
	if !cached("lib/r0") {
		t.Fatal("lib/r0's token left the cache before anything looked at it")
	}
	// Storing a token drops the expired ones at the old end of the cache.
	mustGetManifest(t, c, "lib/r2", "v")
	if cached("lib/r0") || !cached("lib/r1") || !cached("lib/r2") {
		t.Errorf("cached r0 %v r1 %v r2 %v, want false true true", cached("lib/r0"), cached("lib/r1"), cached("lib/r2"))
	}
	// Looking up an expired token drops it.
	clock.Advance(30 * time.Second)
	if _, ok := c.token(pullScope("lib/r1")); ok || cached("lib/r1") {
		t.Errorf("expired lib/r1 token: usable %v, cached %v; want neither", ok, cached("lib/r1"))
	}
}

// TestTokenResponseVariants uses a hand-written registry whose token service
// answers OAuth2 style (access_token, no expires_in).
func TestTokenResponseVariants(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	fetches := 0
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		fetches++
		mu.Unlock()
		fmt.Fprint(w, `{"access_token":"oauth-tok"}`)
	}))
	t.Cleanup(tokenSrv.Close)
	regSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer oauth-tok" {
			// A realm with a comma inside quotes, and an unrelated
			// second challenge, to exercise the parser.
			w.Header().Add("WWW-Authenticate", `Bearer realm="`+tokenSrv.URL+`/oauth2/token?a=1,2",service="reg,istry", Foo bar=baz`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(regSrv.Close)

	c, err := New(Config{URL: regSrv.URL})
	if err != nil {
		t.Fatal(err)
	}
	clock := newFakeClock()
	c.now = clock.Now
	if err := c.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	clock.Advance(50 * time.Second) // default TTL 60s, margin 6s
	if err := c.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	mu.Lock()
	if fetches != 1 {
		t.Errorf("fetches = %d, want 1", fetches)
	}
	mu.Unlock()
	clock.Advance(5 * time.Second)
	if err := c.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fetches != 2 {
		t.Errorf("fetches = %d, want 2 after the default 60s expiry", fetches)
	}
}

func TestManifestAcceptHeader(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{})
	types := []string{
		v1.MediaTypeImageIndex,
		v1.MediaTypeImageManifest,
		oci.MediaTypeDockerList,
		oci.MediaTypeDockerManifest,
	}
	c := newClient(t, reg, nil)
	for i, mt := range types {
		body := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q}`, mt)
		tag := fmt.Sprintf("t%d", i)
		d := reg.AddManifest("lib/multi", tag, mt, body)
		// The fake registry, like real ones, refuses media types missing
		// from Accept, so success proves the header is right.
		desc, got := mustGetManifest(t, c, "lib/multi", tag)
		if desc.MediaType != mt || desc.Digest != d || !bytes.Equal(got, body) || desc.Size != int64(len(body)) {
			t.Errorf("GetManifest(%s) = %+v, want type %s digest %s", tag, desc, mt, d)
		}
	}
	for _, rec := range reg.Requests() {
		accept := rec.Header.Get("Accept")
		if accept != oci.ManifestAccept {
			t.Errorf("Accept = %q, want internal/oci's %q", accept, oci.ManifestAccept)
		}
		for _, mt := range types {
			if !strings.Contains(accept, mt) {
				t.Errorf("Accept %q lacks %s", accept, mt)
			}
		}
	}
}

func TestGetManifestVerification(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{})
	good := reg.AddImage("lib/good", "v1", 1, 10)
	bad := reg.AddImage("lib/bad", "v1", 1, 10)
	reg.SetCorrupt(bad.Manifest, true)
	c := newClient(t, reg, nil)

	tests := []struct {
		name    string
		repo    string
		ref     string
		wantErr error
	}{
		{"good by tag", "lib/good", "v1", nil},
		{"good by digest", "lib/good", good.Manifest.String(), nil},
		{"corrupt by digest", "lib/bad", bad.Manifest.String(), ErrDigestMismatch},
		{"corrupt by tag (header digest)", "lib/bad", "v1", ErrDigestMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			desc, body, err := c.GetManifest(t.Context(), tt.repo, tt.ref)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if desc.Digest != good.Manifest || digest.FromBytes(body) != good.Manifest {
				t.Errorf("digest = %s, want %s", desc.Digest, good.Manifest)
			}
		})
	}

	t.Run("no Docker-Content-Digest: computed", func(t *testing.T) {
		t.Parallel()
		reg := upstreamtest.New(t, upstreamtest.Options{})
		img := reg.AddImage("lib/nodigest", "v1", 1, 10)
		reg.SetOmitDigestHeader(true)
		desc, _ := mustGetManifest(t, newClient(t, reg, nil), "lib/nodigest", "v1")
		if desc.Digest != img.Manifest {
			t.Errorf("digest = %s, want computed %s", desc.Digest, img.Manifest)
		}
	})

	t.Run("too large", func(t *testing.T) {
		t.Parallel()
		reg := upstreamtest.New(t, upstreamtest.Options{})
		reg.AddManifest("lib/huge", "v1", v1.MediaTypeImageManifest, bytes.Repeat([]byte(" "), MaxManifestSize+1))
		_, _, err := newClient(t, reg, nil).GetManifest(t.Context(), "lib/huge", "v1")
		if !errors.Is(err, ErrTooLarge) {
			t.Errorf("err = %v, want ErrTooLarge", err)
		}
	})
}

func TestMaxManifestSize(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{})
	manifest := func(size int) []byte { return bytes.Repeat([]byte(" "), size) }
	reg.AddManifest("lib/m", "small", v1.MediaTypeImageManifest, manifest(100))
	reg.AddManifest("lib/m", "over", v1.MediaTypeImageManifest, manifest(101))
	reg.AddManifest("lib/m", "big", v1.MediaTypeImageManifest, manifest(MaxManifestSize+1))
	tests := []struct {
		name    string
		limit   int64
		tag     string
		wantErr error
	}{
		{"at the configured limit", 100, "small", nil},
		{"over the configured limit", 100, "over", ErrTooLarge},
		{"over the default", 0, "big", ErrTooLarge},
		{"a raised limit admits more than the default", MaxManifestSize + 1, "big", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, reg, func(cfg *Config) { cfg.MaxManifestSize = tt.limit })
			for name, err := range map[string]error{
				"GET":  third(c.GetManifest(t.Context(), "lib/m", tt.tag)),
				"HEAD": second(c.HeadManifest(t.Context(), "lib/m", tt.tag)),
			} {
				if tt.wantErr == nil && err != nil || !errors.Is(err, tt.wantErr) {
					t.Errorf("%s: err = %v, want %v", name, err, tt.wantErr)
				}
			}
		})
	}
}

// An upstream's malformed digest header is the upstream's fault: the error
// must not carry an *oci.Error, which a caller would pass on to its client
// as that client's own DIGEST_INVALID.
func TestUpstreamInvalidDigestHeader(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", v1.MediaTypeImageManifest)
		w.Header().Set("Docker-Content-Digest", "sha256:not-hex")
		_, _ = io.WriteString(w, "{}")
	}))
	t.Cleanup(srv.Close)
	c, err := New(Config{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"GET":  third(c.GetManifest(t.Context(), "lib/x", "v1")),
		"HEAD": second(c.HeadManifest(t.Context(), "lib/x", "v1")),
	} {
		var oe *oci.Error
		if !errors.Is(err, ErrUnexpectedResponse) || errors.As(err, &oe) {
			t.Errorf("%s: err = %v, want ErrUnexpectedResponse without an *oci.Error", name, err)
		}
	}
}

func TestHeadManifest(t *testing.T) {
	t.Parallel()
	for _, omit := range []bool{false, true} {
		t.Run(fmt.Sprintf("omitDigestHeader=%v", omit), func(t *testing.T) {
			t.Parallel()
			reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
			img := reg.AddImage("library/alpine", "3", 1, 10)
			reg.SetOmitDigestHeader(omit)
			c := newClient(t, reg, nil)
			for _, ref := range []string{"3", img.Manifest.String()} {
				desc, err := c.HeadManifest(t.Context(), "library/alpine", ref)
				if err != nil {
					t.Fatalf("HeadManifest(%s): %v", ref, err)
				}
				want := Descriptor{MediaType: img.MediaType, Digest: img.Manifest, Size: int64(len(img.ManifestBody))}
				if desc != want {
					t.Errorf("HeadManifest(%s) = %+v, want %+v", ref, desc, want)
				}
			}
			gets := reg.CountAuthorized("GET", upstreamtest.KindManifest)
			if !omit && gets != 0 {
				t.Errorf("HEAD issued %d manifest GETs, want 0", gets)
			}
			if omit && gets != 2 {
				t.Errorf("HEAD without digest header issued %d GETs, want 2 (fallback)", gets)
			}
			if _, err := c.HeadManifest(t.Context(), "library/alpine", "nope"); !errors.Is(err, ErrNotFound) {
				t.Errorf("HeadManifest(unknown) = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestHeadBlob(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	img := reg.AddImage("lib/x", "v", 1, 1234)
	c := newClient(t, reg, nil)
	desc, err := c.HeadBlob(t.Context(), "lib/x", img.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	if desc.Size != 1234 || desc.Digest != img.Layers[0] {
		t.Errorf("HeadBlob = %+v", desc)
	}
	if reg.Count("GET", upstreamtest.KindBlob) != 0 {
		t.Errorf("HeadBlob sent a GET")
	}
}

// stripRange is a transport that drops Range headers, like an upstream
// that ignores them and answers 200 with the whole blob.
type stripRange struct{ base http.RoundTripper }

func (s stripRange) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Del("Range")
	return s.base.RoundTrip(r)
}

func TestGetBlobResume(t *testing.T) {
	t.Parallel()
	const size = 5000
	tests := []struct {
		name       string
		redirect   bool
		ignoreRng  bool
		cutAfter   int64
		cuts       int
		wantRanges []string
		wantErr    bool
	}{
		{name: "direct", cutAfter: 1000, cuts: 2, wantRanges: []string{"bytes=1000-", "bytes=2000-"}},
		{name: "via CDN redirect", redirect: true, cutAfter: 1000, cuts: 2, wantRanges: []string{"bytes=1000-", "bytes=2000-"}},
		{name: "cut before any byte", cutAfter: 0, cuts: 1, wantRanges: nil},
		{name: "upstream ignores Range", ignoreRng: true, cutAfter: 1500, cuts: 2},
		{name: "too many cuts", cutAfter: 100, cuts: 10, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
			img := reg.AddImage("lib/big", "v", 1, size)
			layer := img.Layers[0]
			reg.SetRedirectBlobs(tt.redirect)
			var opts []Option
			if tt.ignoreRng {
				opts = append(opts, WithTransport(stripRange{http.DefaultTransport}))
			}
			c := newClient(t, reg, nil, opts...)
			if err := c.Ping(t.Context()); err != nil { // learn the challenge
				t.Fatal(err)
			}
			want, _, err := readBlob(t, c, "lib/big", layer, 0)
			if err != nil {
				t.Fatal(err)
			}
			reg.Reset()
			reg.SetCutAfter(layer, tt.cutAfter, tt.cuts)

			got, gotSize, err := readBlob(t, c, "lib/big", layer, 0)
			if tt.wantErr {
				if !IsUnavailable(err) {
					t.Fatalf("err = %v, want unavailable", err)
				}
				if len(got) >= size {
					t.Errorf("read %d bytes despite failure", len(got))
				}
				if gets := reg.Count("GET", upstreamtest.KindBlob); gets != DefaultRetries+1 {
					t.Errorf("blob GETs = %d, want %d (initial + %d resumptions)", gets, DefaultRetries+1, DefaultRetries)
				}
				return
			}
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if gotSize != size || !bytes.Equal(got, want) || digest.FromBytes(got) != layer {
				t.Fatalf("got %d bytes (size %d), digest %s; want identical %d bytes", len(got), gotSize, digest.FromBytes(got), size)
			}
			// Count Range headers where the bytes are served (with a
			// redirect the registry request carries them too).
			serving := upstreamtest.KindBlob
			if tt.redirect {
				serving = upstreamtest.KindCDN
			}
			var ranges []string
			for _, rec := range reg.Requests() {
				if rec.Method == "GET" && rec.Kind == serving {
					if r := rec.Header.Get("Range"); r != "" {
						ranges = append(ranges, r)
					}
				}
			}
			if !tt.ignoreRng && !slices.Equal(ranges, tt.wantRanges) {
				t.Errorf("Range requests = %q, want %q", ranges, tt.wantRanges)
			}
			if gets := reg.Count("GET", upstreamtest.KindBlob); gets != tt.cuts+1 {
				t.Errorf("blob GETs = %d, want %d", gets, tt.cuts+1)
			}
		})
	}
}

func TestGetBlobOffset(t *testing.T) {
	t.Parallel()
	const size = 4096
	reg := upstreamtest.New(t, upstreamtest.Options{})
	img := reg.AddImage("lib/off", "v", 1, size)
	layer := img.Layers[0]
	c := newClient(t, reg, nil)
	full, _, err := readBlob(t, c, "lib/off", layer, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 1, 2500, size - 1} {
		t.Run(fmt.Sprint(off), func(t *testing.T) {
			t.Parallel()
			got, gotSize, err := readBlob(t, c, "lib/off", layer, off)
			if err != nil {
				t.Fatal(err)
			}
			if gotSize != size || !bytes.Equal(got, full[off:]) {
				t.Errorf("offset %d: got %d bytes, size %d; want %d bytes, size %d", off, len(got), gotSize, size-off, size)
			}
		})
	}
	t.Run("ranges sent", func(t *testing.T) {
		t.Parallel()
		reg := upstreamtest.New(t, upstreamtest.Options{})
		img := reg.AddImage("lib/off", "v", 1, size)
		c := newClient(t, reg, nil)
		if _, _, err := readBlob(t, c, "lib/off", img.Layers[0], 100); err != nil {
			t.Fatal(err)
		}
		recs := reg.Requests()
		if len(recs) != 1 || recs[0].Header.Get("Range") != "bytes=100-" || recs[0].Status != http.StatusPartialContent {
			t.Errorf("requests = %+v, want one 206 for bytes=100-", recs)
		}
	})
	t.Run("beyond the end", func(t *testing.T) {
		t.Parallel()
		if _, _, err := c.GetBlob(t.Context(), "lib/off", layer, size); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("err = %v, want ErrInvalidArgument", err)
		}
	})
}

func TestRetries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		status    int
		failures  int
		wantErr   error
		wantCalls int
	}{
		{"503 then success", http.StatusServiceUnavailable, 2, nil, 3},
		{"500 exhausts retries", http.StatusInternalServerError, 3, ErrUnavailable, 3},
		{"400 not retried", http.StatusBadRequest, 1, ErrUnexpectedResponse, 1},
		{"429 not retried", http.StatusTooManyRequests, 1, ErrRateLimited, 1},
		{"403 not retried", http.StatusForbidden, 1, ErrDenied, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			reg := upstreamtest.New(t, upstreamtest.Options{})
			reg.AddImage("lib/r", "v", 1, 10)
			c := newClient(t, reg, nil)
			reg.FailNext(tt.status, tt.failures)
			_, _, err := c.GetManifest(t.Context(), "lib/r", "v")
			if tt.wantErr == nil && err != nil || !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got := reg.Count("GET", upstreamtest.KindManifest); got != tt.wantCalls {
				t.Errorf("attempts = %d, want %d", got, tt.wantCalls)
			}
			var e *Error
			if err != nil && (!errors.As(err, &e) || e.Status != tt.status) {
				t.Errorf("error %v does not carry status %d", err, tt.status)
			}
		})
	}
}

// roundTripFunc adapts a function to http.RoundTripper.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestBackoffHonoursContext(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{})
	reg.SetDown(true)
	ctx, cancel := context.WithCancel(t.Context())
	// Cancel the caller's context as soon as the first (503) answer
	// arrives; the client must then not wait out its back-off.
	cancelling := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := http.DefaultTransport.RoundTrip(r)
		cancel()
		return resp, err
	})
	c := newClient(t, reg, nil, WithTransport(cancelling))
	c.backoff = time.Hour // the test would hang if the wait ignored ctx
	_, _, err := c.GetManifest(ctx, "lib/x", "v")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if IsUnavailable(err) {
		t.Errorf("a cancelled request should not look like an outage: %v", err)
	}
	if got := reg.Count("GET", upstreamtest.KindManifest); got != 1 {
		t.Errorf("attempts = %d, want 1", got)
	}
}

func TestNotFound(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	img := reg.AddImage("lib/present", "v1", 1, 10)
	c := newClient(t, reg, nil)
	missing := digest.FromString("missing")
	tests := []struct {
		name     string
		call     func() error
		wantCode string
	}{
		{"manifest tag", func() error { _, _, err := c.GetManifest(t.Context(), "lib/present", "v2"); return err }, "MANIFEST_UNKNOWN"},
		{"manifest digest", func() error { _, _, err := c.GetManifest(t.Context(), "lib/present", missing.String()); return err }, "MANIFEST_UNKNOWN"},
		{"manifest repo", func() error { _, _, err := c.GetManifest(t.Context(), "lib/absent", "v1"); return err }, "NAME_UNKNOWN"},
		{"head manifest", func() error { _, err := c.HeadManifest(t.Context(), "lib/present", "v2"); return err }, ""},
		{"blob", func() error { _, _, err := c.GetBlob(t.Context(), "lib/present", missing, 0); return err }, "BLOB_UNKNOWN"},
		{"blob of another repo", func() error { _, _, err := c.GetBlob(t.Context(), "lib/absent", img.Layers[0], 0); return err }, "BLOB_UNKNOWN"},
		{"head blob", func() error { _, err := c.HeadBlob(t.Context(), "lib/present", missing); return err }, ""},
		{"tags", func() error { _, _, err := c.Tags(t.Context(), "lib/absent", 0, ""); return err }, "NAME_UNKNOWN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.call()
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("err = %v, want ErrNotFound", err)
			}
			var e *Error
			if !errors.As(err, &e) || e.Status != http.StatusNotFound || e.Code != tt.wantCode {
				t.Errorf("err = %#v, want status 404 code %q", err, tt.wantCode)
			}
			if IsUnavailable(err) {
				t.Errorf("IsUnavailable(not found) = true")
			}
		})
	}
}

func TestUnavailable(t *testing.T) {
	t.Parallel()
	t.Run("503 outage", func(t *testing.T) {
		t.Parallel()
		reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
		img := reg.AddImage("lib/x", "v", 1, 10)
		c := newClient(t, reg, nil)
		reg.SetDown(true)
		checks := map[string]error{
			"ping":     c.Ping(t.Context()),
			"manifest": second(c.HeadManifest(t.Context(), "lib/x", "v")),
			"blob":     third(c.GetBlob(t.Context(), "lib/x", img.Layers[0], 0)),
			"tags":     third(c.Tags(t.Context(), "lib/x", 0, "")),
		}
		for name, err := range checks {
			if !IsUnavailable(err) || !errors.Is(err, ErrUnavailable) {
				t.Errorf("%s: err = %v, want ErrUnavailable", name, err)
			}
		}
		reg.SetDown(false)
		if err := c.Ping(t.Context()); err != nil {
			t.Errorf("Ping after recovery: %v", err)
		}
	})
	t.Run("listener closed", func(t *testing.T) {
		t.Parallel()
		reg := upstreamtest.New(t, upstreamtest.Options{})
		reg.AddImage("lib/x", "v", 1, 10)
		c := newClient(t, reg, nil)
		reg.Close()
		_, _, err := c.GetManifest(t.Context(), "lib/x", "v")
		if !IsUnavailable(err) {
			t.Errorf("err = %v, want unavailable", err)
		}
	})
	t.Run("rate limited", func(t *testing.T) {
		t.Parallel()
		reg := upstreamtest.New(t, upstreamtest.Options{})
		reg.FailNext(http.StatusTooManyRequests, 1)
		err := newClient(t, reg, nil).Ping(t.Context())
		if !errors.Is(err, ErrRateLimited) || !IsUnavailable(err) {
			t.Errorf("err = %v, want ErrRateLimited (and IsUnavailable)", err)
		}
	})
}

// A stream that stalls after its first byte is abandoned after one window,
// and resumed, Retries times in all.
func TestStalledStream(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{})
	img := reg.AddImage("lib/slow", "v", 1, 100)
	reg.SetThrottle(1) // one byte, then a one-second pause
	c := newClient(t, reg, func(cfg *Config) {
		cfg.IdleStreamTimeout = 50 * time.Millisecond
		cfg.Retries = 2
	})
	got, _, err := readBlob(t, c, "lib/slow", img.Layers[0], 0)
	if !IsUnavailable(err) || !errors.Is(err, errSlowStream) {
		t.Fatalf("err = %v, want a too-slow stream (unavailable)", err)
	}
	// One byte per attempt: each attempt was cut before the second byte,
	// a second after the first.
	if len(got) != 3 {
		t.Errorf("got %d bytes, want 3 (one per attempt)", len(got))
	}
}

func TestTagsPagination(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	for _, tag := range []string{"e", "a", "c", "b", "d"} {
		reg.AddManifest("lib/tags", tag, v1.MediaTypeImageManifest, []byte(`{"tag":"`+tag+`"}`))
	}
	c := newClient(t, reg, nil)
	tests := []struct {
		n        int
		last     string
		want     []string
		wantNext string
	}{
		{0, "", []string{"a", "b", "c", "d", "e"}, ""},
		{2, "", []string{"a", "b"}, "b"},
		{2, "b", []string{"c", "d"}, "d"},
		{2, "d", []string{"e"}, ""},
		{5, "", []string{"a", "b", "c", "d", "e"}, ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("n=%d,last=%q", tt.n, tt.last), func(t *testing.T) {
			t.Parallel()
			tags, next, err := c.Tags(t.Context(), "lib/tags", tt.n, tt.last)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(tags, tt.want) || next != tt.wantNext {
				t.Errorf("Tags = %v, next %q; want %v, next %q", tags, next, tt.want, tt.wantNext)
			}
		})
	}
}

func TestNoSecretsInErrorsOrLogs(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer, Username: testUser, Password: testPassword})
	img := reg.AddImage("private/app", "v", 1, 2000)
	reg.SetRedirectBlobs(true)

	var logs syncBuffer
	logger := zerolog.New(&logs).Level(zerolog.DebugLevel)
	good := newClient(t, reg, withCreds(testUser, testPassword), WithLogger(logger))
	bad := newClient(t, reg, withCreds(testUser, testPassword+"-typo"), WithLogger(logger))

	var errs []error
	collect := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	mustGetManifest(t, good, "private/app", "v")
	collect(second(good.HeadManifest(t.Context(), "private/app", "nope")))
	collect(third(good.GetBlob(t.Context(), "private/app", digest.FromString("x"), 0)))
	reg.SetCutAfter(img.Layers[0], 10, 10)
	_, _, err := readBlob(t, good, "private/app", img.Layers[0], 0)
	collect(err)
	reg.FailNext(http.StatusInternalServerError, 10)
	collect(good.Ping(t.Context()))
	collect(third(bad.GetManifest(t.Context(), "private/app", "v")))
	collect(bad.Ping(t.Context()))
	if len(errs) != 6 {
		t.Fatalf("collected %d errors, want 6: %v", len(errs), errs)
	}

	secrets := []string{testPassword}
	for _, rec := range reg.Requests() {
		if h := rec.Header.Get("Authorization"); h != "" {
			_, cred, _ := strings.Cut(h, " ")
			secrets = append(secrets, cred) // tokens and base64 credentials
		}
	}
	secrets = append(secrets, reg.Tokens()...)
	if len(secrets) < 3 {
		t.Fatalf("expected to have seen tokens and credentials, got %d secrets", len(secrets))
	}
	for _, err := range errs {
		for _, s := range secrets {
			if strings.Contains(err.Error(), s) || strings.Contains(fmt.Sprintf("%+v", err), s) {
				t.Errorf("error %q leaks a secret", err)
			}
		}
	}
	out := logs.String()
	if !strings.Contains(out, "fetching registry token") {
		t.Errorf("expected debug logs, got %q", out)
	}
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("logs leak a secret")
		}
	}
}

func TestParseChallenges(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   []string
		want []challenge
	}{
		{
			name: "docker hub",
			in:   []string{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`},
			want: []challenge{{"bearer", map[string]string{"realm": "https://auth.docker.io/token", "service": "registry.docker.io", "scope": "repository:library/alpine:pull"}}},
		},
		{
			name: "quoted commas, escapes and spaces",
			in:   []string{`bearer  realm = "https://a/t?x=1,2" , scope="repository:a:pull,push" ,error="say \"hi\""`},
			want: []challenge{{"bearer", map[string]string{"realm": "https://a/t?x=1,2", "scope": "repository:a:pull,push", "error": `say "hi"`}}},
		},
		{
			name: "several challenges and headers",
			in:   []string{`Basic realm="r1", Bearer realm="r2",service=s`, `Negotiate abc==`},
			want: []challenge{
				{"basic", map[string]string{"realm": "r1"}},
				{"bearer", map[string]string{"realm": "r2", "service": "s"}},
				{"negotiate", map[string]string{}},
			},
		},
		{
			name: "unquoted and unterminated",
			in:   []string{`Basic realm=simple`, `Bearer realm="unterminated`},
			want: []challenge{{"basic", map[string]string{"realm": "simple"}}, {"bearer", map[string]string{"realm": "unterminated"}}},
		},
		{name: "empty", in: []string{"", " , "}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := parseChallenges(tt.in)
			if len(got) != len(tt.want) {
				t.Fatalf("parseChallenges = %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i].scheme != tt.want[i].scheme || fmt.Sprint(got[i].params) != fmt.Sprint(tt.want[i].params) {
					t.Errorf("challenge %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestNextLast(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   []string
		want string
	}{
		{nil, ""},
		{[]string{`</v2/foo/tags/list?last=b&n=2>; rel="next"`}, "b"},
		{[]string{`<https://r.example/v2/foo/tags/list?n=50&last=v1.2.3>; rel=next`}, "v1.2.3"},
		{[]string{`</x?last=a>; rel="prev", </y?last=z&n=1>; rel="next"`}, "z"},
		{[]string{`</x?last=a>; rel="prev"`}, ""},
	}
	for _, tt := range tests {
		if got := nextLast(tt.in); got != tt.want {
			t.Errorf("nextLast(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseRealm(t *testing.T) {
	t.Parallel()
	c, err := New(Config{URL: "https://registry.example", TokenRealms: []string{"auth.example", "tokens.example:8443"}})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := New(Config{URL: "http://127.0.0.1:5001"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		c     *Client
		realm string
		ok    bool
	}{
		{c, "https://auth.example/token", true},
		{c, "https://AUTH.example:444/token", true}, // a listed host name: any port
		{c, "https://registry.example:8443/token", true},
		{c, "https://tokens.example:8443/token", true},
		{c, "https://tokens.example/token", false}, // listed with a port: that port only
		{c, "https://evil.example/token", false},   // not configured: never contacted
		{c, "https://auth.example.evil/token", false},
		{c, "https://user:pw@auth.example/token", false},
		{c, "http://auth.example/token", false}, // would send credentials in clear
		{c, "/token", false},
		{c, "", false},
		{c, "ftp://auth.example/", false},
		{plain, "http://127.0.0.1:5002/token", true}, // same host, plain-http registry
		{plain, "http://127.0.0.2:5001/token", false},
		{plain, "http://localhost:5001/token", false},
	}
	for _, tt := range tests {
		_, err := tt.c.parseRealm(tt.realm)
		if (err == nil) != tt.ok {
			t.Errorf("%s: parseRealm(%q) err = %v, want ok=%v", tt.c.base, tt.realm, err, tt.ok)
		}
		// A well-formed realm on a host or scheme berth will not use is
		// refused (ErrMisconfigured); a malformed one is the upstream's fault.
		var refused realmRefused
		malformed := tt.realm == "" || tt.realm == "/token" || strings.HasPrefix(tt.realm, "ftp:") || strings.Contains(tt.realm, "@")
		if err != nil && errors.As(err, &refused) == malformed {
			t.Errorf("parseRealm(%q) = %v: refused %v, malformed %v", tt.realm, err, !malformed, malformed)
		}
	}
}

func TestInvalidArguments(t *testing.T) {
	t.Parallel()
	reg := upstreamtest.New(t, upstreamtest.Options{})
	c := newClient(t, reg, nil)
	calls := map[string]error{
		"repo traversal": third(c.GetManifest(t.Context(), "../etc", "v")),
		"repo upper":     third(c.GetManifest(t.Context(), "Lib/x", "v")),
		"bad tag":        third(c.GetManifest(t.Context(), "lib/x", "-v")),
		"bad digest ref": third(c.GetManifest(t.Context(), "lib/x", "sha256:zz")),
		"bad blob":       third(c.GetBlob(t.Context(), "lib/x", "sha256:zz", 0)),
		"neg offset":     third(c.GetBlob(t.Context(), "lib/x", digest.FromString("a"), -1)),
	}
	for name, err := range calls {
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want ErrInvalidArgument", name, err)
		}
	}
	if n := len(reg.Requests()); n != 0 {
		t.Errorf("invalid arguments caused %d requests", n)
	}
}

// second and third pick the error out of multi-value returns.
func second[A any](_ A, err error) error        { return err }
func third[A, B any](_ A, _ B, err error) error { return err }

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
