package proxy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/testutil"
	"github.com/berth-dev/berth/upstream"
	"github.com/berth-dev/berth/upstream/upstreamtest"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
)

// countingTransport counts every request berth sends upstream (a request
// that is never sent opens no connection) and can hold a blob body after
// `gateAt` bytes until `gate` is closed.
type countingTransport struct {
	base     http.RoundTripper
	requests atomic.Int64
	blobGETs atomic.Int64 // blob GETs answered with content

	gateAt  int64
	gate    chan struct{}
	reached chan struct{} // closed when a gated body reaches gateAt
	once    sync.Once
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.requests.Add(1)
	isBlob := r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/")
	resp, err := c.base.RoundTrip(r)
	if err == nil && isBlob && resp.StatusCode/100 == 2 { // a download, not an auth challenge
		c.blobGETs.Add(1)
	}
	if err == nil && isBlob && c.gate != nil && resp.StatusCode == http.StatusOK {
		resp.Body = &gatedBody{ReadCloser: resp.Body, t: c}
	}
	return resp, err
}

type gatedBody struct {
	io.ReadCloser
	t *countingTransport
	n int64
}

func (g *gatedBody) Read(p []byte) (int, error) {
	if g.n >= g.t.gateAt {
		g.t.once.Do(func() { close(g.t.reached) })
		<-g.t.gate
	} else if rest := g.t.gateAt - g.n; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := g.ReadCloser.Read(p)
	g.n += int64(n)
	return n, err
}

type env struct {
	up    *upstreamtest.Registry
	tr    *countingTransport
	store *cache.Store
	srv   *httptest.Server
	reg   *prometheus.Registry // the server's metrics
}

type envOptions struct {
	auth    upstreamtest.AuthMode
	ttl     time.Duration
	offline bool
	gateAt  int64
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	up := upstreamtest.New(t, upstreamtest.Options{Auth: o.auth, Username: "robot", Password: "s3cret"})
	tr := &countingTransport{base: http.DefaultTransport.(*http.Transport).Clone()}
	if o.gateAt > 0 {
		tr.gateAt, tr.gate, tr.reached = o.gateAt, make(chan struct{}), make(chan struct{})
	}
	cfg := upstream.Config{Name: "docker.io", URL: up.URL()}
	if o.auth != upstreamtest.AuthNone {
		cfg.Username, cfg.Password = "robot", "s3cret"
	}
	client, err := upstream.New(cfg, upstream.WithTransport(tr))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	st, srv := startServer(t, cache.Options{}, berth{Upstream: client, TTL: o.ttl, Prefetch: -1, Offline: o.offline, Registerer: reg})
	// Registered after startServer, so it runs first: a request held at
	// the gate must be let go before the server waits for it.
	t.Cleanup(func() {
		if tr.gate != nil {
			select {
			case <-tr.gate:
			default:
				close(tr.gate)
			}
		}
	})
	return &env{up: up, tr: tr, store: st, srv: srv, reg: reg}
}

func (e *env) get(t *testing.T, ctx context.Context, method, path string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, e.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, b
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// The herd: many clients miss the same cold blob at once. Exactly one
// upstream GET, every client gets the right bytes, and every client has
// its first byte while the upstream is held mid-blob (so nobody waited for
// the whole download).
func TestHerdSharesOneUpstreamDownload(t *testing.T) {
	t.Parallel()
	const clients = 64
	const size = 64 << 20
	e := newEnv(t, envOptions{auth: upstreamtest.AuthBearer, gateAt: size / 2})
	content := randomBytes(size)
	d := e.up.AddBlob("library/app", content)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var firstByte sync.WaitGroup
	firstByte.Add(clients)
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		go func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/v2/app/blobs/"+d.String(), nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				firstByte.Done()
				errs <- err
				return
			}
			defer resp.Body.Close()
			one := make([]byte, 1)
			if _, err := io.ReadFull(resp.Body, one); err != nil {
				firstByte.Done()
				errs <- err
				return
			}
			firstByte.Done()
			h := digest.Canonical.Digester()
			h.Hash().Write(one)
			n, err := io.Copy(h.Hash(), resp.Body)
			switch {
			case err != nil:
				errs <- err
			case resp.StatusCode != http.StatusOK:
				errs <- errors.New(resp.Status)
			case n+1 != size || h.Digest() != d:
				errs <- errors.New("wrong bytes")
			default:
				errs <- nil
			}
		}()
	}
	// Every client must get its first byte while the upstream is held at
	// half the blob; only then is the rest released.
	select {
	case <-e.tr.reached:
	case <-ctx.Done():
		t.Fatal("upstream download never reached the gate")
	}
	waitCtx(t, ctx, firstByte.Wait)
	close(e.tr.gate)
	for i := 0; i < clients; i++ {
		if err := testutil.Recv(t, errs, "a client to finish"); err != nil {
			t.Errorf("client: %v", err)
		}
	}
	if got := e.tr.blobGETs.Load(); got != 1 {
		t.Errorf("upstream blob GETs = %d, want exactly 1", got)
	}
	if got := e.up.CountAuthorized(http.MethodGet, upstreamtest.KindBlob); got != 1 {
		t.Errorf("upstream saw %d authorized blob GETs, want 1", got)
	}
	if _, err := e.store.StatRepoBlob("docker.io/library/app", d); err != nil {
		t.Errorf("blob not indexed after the fill: %v", err)
	}
	// One client started the download; every other one waited on it.
	docker := map[string]string{"upstream": "docker.io"}
	if got := testutil.Value(t, e.reg, "berth_upstream_fill_joins_total", docker); got != clients-1 {
		t.Errorf("berth_upstream_fill_joins_total = %v, want %d", got, clients-1)
	}
	for result, want := range map[string]float64{"miss": 1, "joined": clients - 1} {
		l := map[string]string{"upstream": "docker.io", "kind": "blob", "result": result}
		if got := testutil.Value(t, e.reg, "berth_cache_requests_total", l); got != want {
			t.Errorf("berth_cache_requests_total%v = %v, want %v", l, got, want)
		}
	}
	if got := testutil.ValueReaches(t, e.reg, "berth_http_response_bytes_total", map[string]string{"source": "upstream"}, clients*size); got != clients*size {
		t.Errorf("bytes served from the upstream stream = %v, want %d", got, clients*size)
	}
}

func waitCtx(t *testing.T, ctx context.Context, wait func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("clients did not receive their first byte while the upstream was still sending: berth waited for the whole blob")
	}
}

// The first client hanging up does not abort the fill for the others.
func TestFirstClientDisconnectDoesNotStopFill(t *testing.T) {
	t.Parallel()
	const size = 8 << 20
	e := newEnv(t, envOptions{gateAt: size / 4})
	content := randomBytes(size)
	d := e.up.AddBlob("library/app", content)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	first, stop := context.WithCancel(ctx)
	req, _ := http.NewRequestWithContext(first, http.MethodGet, e.srv.URL+"/v2/app/blobs/"+d.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	testutil.Recv(t, e.tr.reached, "the upstream download to reach the gate")
	stop() // the first client goes away mid-fill
	resp.Body.Close()

	second := fetchAsync(ctx, e.srv.URL+"/v2/app/blobs/"+d.String())
	close(e.tr.gate)
	if r := testutil.Recv(t, second, "the second client"); r.err != nil || !bytes.Equal(r.body, content) {
		t.Fatalf("second client got %d bytes (%v), not the blob", len(r.body), r.err)
	}
	if got := e.tr.blobGETs.Load(); got != 1 {
		t.Errorf("upstream blob GETs = %d, want 1 (the fill must survive the first client)", got)
	}
	if _, err := e.store.StatRepoBlob("docker.io/library/app", d); err != nil {
		t.Errorf("blob not indexed: %v", err)
	}
}

// Wrong bytes from the upstream: the client is cut off, nothing is indexed,
// and the next request fetches afresh.
func TestCorruptUpstreamIsDiscarded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{auth: upstreamtest.AuthBasic})
	content := randomBytes(1 << 20)
	d := e.up.AddBlob("library/app", content)
	e.up.SetCorrupt(d, true)

	resp, err := http.Get(e.srv.URL + "/v2/app/blobs/" + d.String())
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatal("client read a corrupt blob to a clean end")
	}
	if _, err := e.store.StatBlob(d); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("corrupt blob indexed: %v", err)
	}
	e.up.SetCorrupt(d, false)
	r2, b := e.get(t, context.Background(), http.MethodGet, "/v2/app/blobs/"+d.String())
	if r2.StatusCode != http.StatusOK || !bytes.Equal(b, content) {
		t.Fatalf("retry: status %d, %d bytes", r2.StatusCode, len(b))
	}
	// (Basic auth: the first GET is challenged with a 401, so count the
	// upstream's authorized GETs, not berth's requests.)
	if got := e.up.CountAuthorized(http.MethodGet, upstreamtest.KindBlob); got != 2 {
		t.Errorf("upstream blob GETs = %d, want 2 (the failed fill and a fresh one)", got)
		dumpRequests(t, e.up)
	}
}

// A stream cut mid-way resumes with Range and the client never notices.
func TestCutStreamResumesWithRange(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{auth: upstreamtest.AuthBearer})
	content := randomBytes(4 << 20)
	d := e.up.AddBlob("library/app", content)
	e.up.SetCutAfter(d, 1<<20, 1)

	resp, b := e.get(t, context.Background(), http.MethodGet, "/v2/app/blobs/"+d.String())
	if resp.StatusCode != http.StatusOK || !bytes.Equal(b, content) {
		t.Fatalf("status %d, %d bytes; want the whole blob", resp.StatusCode, len(b))
	}
	ranged := 0
	for _, r := range e.up.Requests() {
		if r.Kind == upstreamtest.KindBlob && r.Header.Get("Range") != "" && r.Status == http.StatusPartialContent {
			ranged++
		}
	}
	if ranged != 1 {
		t.Errorf("upstream saw %d ranged blob GETs, want 1 resume", ranged)
	}
	if _, err := e.store.StatRepoBlob("docker.io/library/app", d); err != nil {
		t.Errorf("resumed blob not indexed: %v", err)
	}
}

func manifestPath(repo, ref string) string { return "/v2/" + repo + "/manifests/" + ref }

var acceptAll = []string{"Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"}

// Within the tag TTL a tag is answered with no upstream request at all.
func TestTagWithinTTLAsksNoUpstream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{auth: upstreamtest.AuthBearer, ttl: time.Hour})
	img := e.up.AddImage("library/app", "1.0", 2, 1024)
	resp, b := e.get(t, context.Background(), http.MethodGet, manifestPath("app", "1.0"), acceptAll...)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(b, img.ManifestBody) {
		t.Fatalf("cold: status %d", resp.StatusCode)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != img.Manifest.String() {
		t.Errorf("Docker-Content-Digest = %q, want %s", got, img.Manifest)
	}
	before := e.tr.requests.Load()
	for i := 0; i < 3; i++ {
		resp, b = e.get(t, context.Background(), http.MethodGet, manifestPath("app", "1.0"), acceptAll...)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(b, img.ManifestBody) {
			t.Fatalf("warm: status %d", resp.StatusCode)
		}
	}
	if got := e.tr.requests.Load() - before; got != 0 {
		t.Errorf("warm tag requests sent %d upstream requests, want 0", got)
	}
}

// After the TTL: one HEAD per request and no manifest GET while the digest
// is unchanged; a moved tag fetches the new manifest by digest.
func TestTagAfterTTLRevalidatesWithHead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{auth: upstreamtest.AuthBearer, ttl: 0})
	img := e.up.AddImage("library/app", "1.0", 1, 1024)
	e.get(t, context.Background(), http.MethodGet, manifestPath("app", "1.0"), acceptAll...)
	e.up.Reset()
	resp, b := e.get(t, context.Background(), http.MethodGet, manifestPath("app", "1.0"), acceptAll...)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(b, img.ManifestBody) {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := e.up.CountAuthorized(http.MethodHead, upstreamtest.KindManifest); got != 1 {
		t.Errorf("manifest HEADs = %d, want 1", got)
	}
	if got := e.up.Count(http.MethodGet, upstreamtest.KindManifest); got != 0 {
		t.Errorf("manifest GETs = %d, want 0", got)
	}

	img2 := e.up.AddImage("library/app", "1.0", 1, 1024) // the tag moves
	e.up.Reset()
	resp, b = e.get(t, context.Background(), http.MethodGet, manifestPath("app", "1.0"), acceptAll...)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(b, img2.ManifestBody) {
		t.Fatalf("moved tag: status %d, got the old manifest: %v", resp.StatusCode, bytes.Equal(b, img.ManifestBody))
	}
	if got := e.up.CountAuthorized(http.MethodGet, upstreamtest.KindManifest); got != 1 {
		t.Errorf("moved tag: manifest GETs = %d, want 1", got)
	}
}

// With the upstream gone, cached tags, manifests and blobs are still served.
func TestUpstreamDownServesCache(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{auth: upstreamtest.AuthBearer, ttl: 0})
	img := e.up.AddImage("library/app", "1.0", 2, 4096)
	e.get(t, context.Background(), http.MethodGet, manifestPath("app", "1.0"), acceptAll...)
	for _, l := range append(img.Layers, img.Config) {
		if resp, _ := e.get(t, context.Background(), http.MethodGet, "/v2/app/blobs/"+l.String()); resp.StatusCode != 200 {
			t.Fatalf("cold blob: %d", resp.StatusCode)
		}
	}
	for _, mode := range []string{"503", "closed"} {
		if mode == "503" {
			e.up.SetDown(true)
		} else {
			e.up.Close()
		}
		resp, b := e.get(t, context.Background(), http.MethodGet, manifestPath("app", "1.0"), acceptAll...)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(b, img.ManifestBody) {
			t.Fatalf("%s: tag with upstream down: status %d", mode, resp.StatusCode)
		}
		for _, l := range img.Layers {
			if resp, _ := e.get(t, context.Background(), http.MethodGet, "/v2/app/blobs/"+l.String()); resp.StatusCode != 200 {
				t.Fatalf("%s: cached blob with upstream down: %d", mode, resp.StatusCode)
			}
		}
		resp, b = e.get(t, context.Background(), http.MethodGet, "/v2/app/tags/list")
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"1.0"`) {
			t.Fatalf("%s: tag list falls back to cached tags: %d %s", mode, resp.StatusCode, b)
		}
	}
}

// offline: true serves the cache and opens no upstream connection at all.
func TestOfflineContactsNoUpstream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{offline: true})
	e.up.AddImage("library/app", "1.0", 1, 1024)
	for _, p := range []string{manifestPath("app", "1.0"), "/v2/app/tags/list",
		"/v2/app/blobs/" + digest.FromString("x").String()} {
		resp, b := e.get(t, context.Background(), http.MethodGet, p)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s offline and uncached: status %d, want 404 (%s)", p, resp.StatusCode, b)
		}
	}
	if got := e.tr.requests.Load(); got != 0 {
		t.Errorf("offline berth sent %d upstream requests", got)
	}
}

// ?ns= naming a host that is not configured is DENIED without any
// connection; so is a push into a mirrored repository.
func TestUnconfiguredNamespaceDenied(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/v2/library/app/manifests/1.0?ns=evil.example.com"},
		{http.MethodGet, "/v2/library/app/blobs/" + digest.FromString("x").String() + "?ns=169.254.169.254"},
		{http.MethodPost, "/v2/library/app/blobs/uploads/"},
		{http.MethodPost, "/v2/docker.io/team/app/blobs/uploads/"},
		{http.MethodGet, "/v2/evil.example.com/app/manifests/1.0"},
	} {
		resp, b := e.get(t, context.Background(), tc.method, tc.path)
		var body struct{ Errors []struct{ Code string } }
		_ = json.Unmarshal(b, &body)
		if resp.StatusCode != http.StatusForbidden || len(body.Errors) == 0 || body.Errors[0].Code != "DENIED" {
			t.Errorf("%s %s: %d %s, want 403 DENIED", tc.method, tc.path, resp.StatusCode, b)
		}
	}
	if got := e.tr.requests.Load(); got != 0 {
		t.Errorf("%d upstream requests for denied requests, want 0", got)
	}
}

// A blob HEAD on a miss asks the upstream with a HEAD, never a download;
// a blob the upstream lacks is 404 and remembered briefly.
func TestBlobHeadMissAndNegativeCache(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{auth: upstreamtest.AuthBearer})
	content := randomBytes(1 << 20)
	d := e.up.AddBlob("library/app", content)
	resp, _ := e.get(t, context.Background(), http.MethodHead, "/v2/app/blobs/"+d.String())
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(content)) {
		t.Fatalf("HEAD miss: %d, length %d", resp.StatusCode, resp.ContentLength)
	}
	if got := e.tr.blobGETs.Load(); got != 0 {
		t.Errorf("HEAD miss downloaded the blob (%d GETs)", got)
	}
	missing := digest.FromString("missing")
	for i := 0; i < 3; i++ {
		if resp, _ := e.get(t, context.Background(), http.MethodGet, "/v2/app/blobs/"+missing.String()); resp.StatusCode != http.StatusNotFound {
			t.Fatalf("missing blob: %d", resp.StatusCode)
		}
	}
	if got := e.up.CountAuthorized(http.MethodGet, upstreamtest.KindBlob); got != 1 {
		t.Errorf("missing blob asked upstream %d times, want 1 (negative cache)", got)
	}
}

// A Range request on a miss is answered from the fill.
func TestRangeOnMiss(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	content := randomBytes(2 << 20)
	d := e.up.AddBlob("library/app", content)
	resp, b := e.get(t, context.Background(), http.MethodGet, "/v2/app/blobs/"+d.String(), "Range", "bytes=1000-1999")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, content[1000:2000]) {
		t.Fatalf("range on miss: %d, %d bytes", resp.StatusCode, len(b))
	}
	if got := resp.Header.Get("Content-Range"); got != "bytes 1000-1999/2097152" {
		t.Errorf("Content-Range = %q", got)
	}
}

// Upstream credentials never reach a client.
func TestUpstreamCredentialsNotLeaked(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{auth: upstreamtest.AuthBearer})
	e.up.AddImage("library/app", "1.0", 1, 1024)
	e.up.SetDown(false)
	var all []byte
	for _, p := range []string{manifestPath("app", "1.0"), manifestPath("app", "nope"), "/v2/app/tags/list"} {
		resp, b := e.get(t, context.Background(), http.MethodGet, p, "Authorization", "Basic Y2xpZW50OmNsaWVudHB3")
		all = append(all, b...)
		for k, v := range resp.Header {
			all = append(all, []byte(k+strings.Join(v, ","))...)
		}
	}
	for _, secret := range append(e.up.Tokens(), "s3cret", "cm9ib3Q6czNjcmV0") {
		if bytes.Contains(all, []byte(secret)) {
			t.Errorf("a client saw upstream secret %q", secret)
		}
	}
	for _, r := range e.up.Requests() {
		if strings.Contains(r.Header.Get("Authorization"), "Y2xpZW50OmNsaWVudHB3") {
			t.Errorf("client credentials forwarded upstream on %s %s", r.Method, r.Path)
		}
	}
}

func dumpRequests(t *testing.T, up *upstreamtest.Registry) {
	for _, r := range up.Requests() {
		t.Logf("%s %s %s range=%q status=%d", r.Method, r.Kind, r.Path, r.Header.Get("Range"), r.Status)
	}
}

// After a manifest miss the layers fill in the background; the client's
// own blob requests join those fills, so each blob is downloaded once.
func TestPrefetchDoesNotDownloadTwice(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	client, err := upstream.New(upstream.Config{Name: "docker.io", URL: up.URL()})
	if err != nil {
		t.Fatal(err)
	}
	st, srv := startServer(t, cache.Options{}, berth{Upstream: client, TTL: time.Hour, Prefetch: 2})
	e := &env{up: up, store: st, srv: srv}

	img := up.AddImage("library/app", "1.0", 6, 256<<10)
	if resp, _ := e.get(t, context.Background(), http.MethodGet, manifestPath("app", "1.0"), acceptAll...); resp.StatusCode != 200 {
		t.Fatalf("manifest: %d", resp.StatusCode)
	}
	for _, d := range append([]digest.Digest{img.Config}, img.Layers...) {
		if resp, _ := e.get(t, context.Background(), http.MethodGet, "/v2/app/blobs/"+d.String()); resp.StatusCode != 200 {
			t.Fatalf("blob %s: %d", d, resp.StatusCode)
		}
	}
	if got, want := up.CountAuthorized(http.MethodGet, upstreamtest.KindBlob), len(img.Layers)+1; got != want {
		t.Errorf("upstream blob GETs = %d, want %d (one per blob)", got, want)
	}
}

// Tag listing of a mirrored repository comes from the upstream with its
// pagination; the Link header points back at berth.
func TestMirroredTagListPagination(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{auth: upstreamtest.AuthBearer, ttl: time.Hour})
	for _, tag := range []string{"a", "b", "c", "d", "e"} {
		e.up.AddImage("library/app", tag, 1, 16)
	}
	var all []string
	next := "/v2/app/tags/list?n=2"
	for pages := 0; next != ""; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		resp, b := e.get(t, context.Background(), http.MethodGet, next)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", next, resp.StatusCode, b)
		}
		var tl struct{ Tags []string }
		if err := json.Unmarshal(b, &tl); err != nil {
			t.Fatal(err)
		}
		if len(tl.Tags) > 2 {
			t.Fatalf("page of %d tags with n=2", len(tl.Tags))
		}
		all = append(all, tl.Tags...)
		next = ""
		if link := resp.Header.Get("Link"); link != "" {
			next = link[1:strings.Index(link, ">")]
		}
	}
	if strings.Join(all, ",") != "a,b,c,d,e" {
		t.Errorf("tags over all pages = %v", all)
	}
}

// A tag the upstream deleted disappears, unless keep_on_not_found; a 429
// serves the cached tag.
func TestUpstreamTagGoneAndRateLimited(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{ttl: 0})
	img := e.up.AddImage("library/app", "1.0", 1, 64)
	e.get(t, context.Background(), http.MethodGet, manifestPath("app", "1.0"), acceptAll...)

	e.up.FailNext(http.StatusTooManyRequests, 1)
	resp, b := e.get(t, context.Background(), http.MethodGet, manifestPath("app", "1.0"), acceptAll...)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(b, img.ManifestBody) {
		t.Fatalf("429 upstream: %d, want the cached manifest", resp.StatusCode)
	}

	other := newEnv(t, envOptions{ttl: 0})
	other.up.AddImage("library/app", "1.0", 1, 64)
	other.get(t, context.Background(), http.MethodGet, manifestPath("app", "1.0"), acceptAll...)
	other.up.FailNext(http.StatusNotFound, 1)
	if resp, _ := other.get(t, context.Background(), http.MethodGet, manifestPath("app", "1.0"), acceptAll...); resp.StatusCode != http.StatusNotFound {
		t.Errorf("tag deleted upstream: %d, want 404", resp.StatusCode)
	}
}

// Knowing a digest is not access: a repository joins a fill (or a stored
// blob) started for another repository only if the upstream confirms it has
// the blob.
func TestCrossRepositoryJoinNeedsUpstreamConfirmation(t *testing.T) {
	t.Parallel()
	const size = 4 << 20
	e := newEnv(t, envOptions{auth: upstreamtest.AuthBearer, gateAt: size / 2})
	content := randomBytes(size)
	d := e.up.AddBlob("library/a", content)
	e.up.AddBlob("library/c", content) // c really has it too
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	first := fetchAsync(ctx, e.srv.URL+"/v2/a/blobs/"+d.String())
	testutil.Recv(t, e.tr.reached, "the fill for a to be in flight, held mid-blob")
	if resp, b := e.get(t, ctx, http.MethodGet, "/v2/b/blobs/"+d.String()); resp.StatusCode != http.StatusNotFound {
		t.Errorf("repository b read a's in-flight blob: %d (%d bytes)", resp.StatusCode, len(b))
	}
	third := fetchAsync(ctx, e.srv.URL+"/v2/c/blobs/"+d.String())
	close(e.tr.gate)
	if r := testutil.Recv(t, first, "the first client"); r.err != nil || !bytes.Equal(r.body, content) {
		t.Fatalf("first client got wrong bytes (%v)", r.err)
	}
	if r := testutil.Recv(t, third, "the client of c"); r.err != nil || r.status != http.StatusOK || !bytes.Equal(r.body, content) {
		t.Errorf("repository c (which has the blob upstream): %d, %v", r.status, r.err)
	}
	if resp, _ := e.get(t, ctx, http.MethodGet, "/v2/b/blobs/"+d.String()); resp.StatusCode != http.StatusNotFound {
		t.Errorf("repository b read a's stored blob: %d", resp.StatusCode)
	}
	if got := e.tr.blobGETs.Load(); got != 1 {
		t.Errorf("upstream blob downloads = %d, want 1", got)
	}
}
