package status

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/proxy"
	"github.com/berth-dev/berth/upstream"
	"github.com/berth-dev/berth/upstream/upstreamtest"
	"github.com/opencontainers/go-digest"
)

// withFills is a real store with fills in flight made up: a real fill
// finishes too soon to be seen.
type withFills struct {
	*cache.Store
	fills []cache.FillProgress
}

func (s withFills) Fills() []cache.FillProgress { return s.fills }

const (
	user     = "berth-robot"
	password = "hunter2-do-not-show"
)

// get fetches path from h with method.
func get(t *testing.T, h http.Handler, method, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	resp := rec.Result()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// The page shows what happened, and nothing of an upstream's URL or
// credentials, even from a client configured with them.
func TestPage(t *testing.T) {
	t.Parallel()
	c := newClock()
	store, err := cache.Open(t.TempDir(), cache.Options{MaxBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	blob := bytes.Repeat([]byte("x"), 3000)
	if err := store.PutBlob("team/app", "", digest.FromBytes(blob), int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	filling := digest.FromString("a layer on its way")
	st := withFills{store, []cache.FillProgress{{Digest: filling, Origin: "docker.io", Size: 4 << 20, Written: 1 << 20, Started: c.Now().Add(-90 * time.Second)}}}
	s := New(Options{Version: "v9.8.7-test", Started: c.Now().Add(-26 * time.Hour), Store: st, Now: c.Now,
		Upstreams: []string{"docker.io", "quay.io", "mirror.example"}})

	// docker.io answers, with basic auth; mirror.example's port is closed.
	up := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBasic, Username: user, Password: password})
	up.AddImage("library/busybox", "latest", 1, 100)
	good, err := upstream.New(upstream.Config{Name: "docker.io", URL: up.URL(), Username: user, Password: password}, upstream.WithObserver(s))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := good.GetManifest(t.Context(), "library/busybox", "latest"); err != nil {
		t.Fatal(err)
	}
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	bad, err := upstream.New(upstream.Config{Name: "mirror.example", URL: deadURL + "/v2-behind-a-path", Username: user, Password: password, Retries: 1},
		upstream.WithObserver(s))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.HeadManifest(t.Context(), "library/busybox", "latest"); err == nil {
		t.Fatal("HeadManifest from a closed port succeeded")
	}

	for range 3 {
		s.Request(hit("library/busybox", 1000))
	}
	s.Request(proxy.Done{Repo: "library/busybox", Status: 200, Bytes: 500, Route: "docker.io", Cache: "miss", Source: "upstream"})
	for range 5 {
		s.Request(proxy.Done{Repo: "team/app", Status: 200, Bytes: 3000, Route: "local", Source: "local"})
	}
	s.Request(proxy.Done{Repo: `evil<script>alert(1)</script>`, Status: 404})

	resp, body := get(t, s, http.MethodGet, "/")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET /: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy %q allows scripts", csp)
	}
	for _, want := range []string{
		`<strong id="version">v9.8.7-test</strong>`,
		`<span id="uptime">1d 2h</span>`,
		`<div class="big" id="requests">10</div>`,
		`<div class="big" id="hit-ratio">75.0%</div>`,
		`<td class="num" data-result="hit">3</td>`,
		`<td class="num" data-source="cache">2.9 KiB</td>`,
		`<td class="num" data-source="local">14.6 KiB</td>`,
		`<td class="num" data-source="upstream">500 B</td>`,
		`<td class="repo">team/app</td><td>local</td><td class="num">5</td>`,
		`<td class="repo">library/busybox</td><td>docker.io</td><td class="num">4</td>`,
		`evil&lt;script&gt;alert(1)&lt;/script&gt;`,
		`<td class="upstream">docker.io</td><td><span class="state state-ok">ok</span>`,
		`<td class="upstream">quay.io</td><td><span class="state state-idle">idle</span>`,
		`<td class="upstream">mirror.example</td><td><span class="state state-failing">failing</span>`,
		`<span class="big" id="disk-used">2.9 KiB</span> on disk, blobs: 1.`,
		`Mirrored content: 2.9 KiB of the limit of`,
		`<strong id="disk-limit">1.0 GiB</strong>`,
		`<code title="` + filling.String() + `">` + filling.String()[:19] + `</code></td><td>docker.io</td>`,
		`25%`, `1.0 MiB of 4.0 MiB`, `1m 30s`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	if !regexp.MustCompile(`<td>connection on \w+, 0s ago</td>`).MatchString(body) {
		t.Errorf("the page lacks mirror.example's connection failure")
	}
	for _, secret := range []string{password, user, up.Host(), deadURL, strings.TrimPrefix(deadURL, "http://"), "v2-behind-a-path", "<script", "Authorization"} {
		if strings.Contains(body, secret) {
			t.Errorf("the page shows %q", secret)
		}
	}
	if t.Failed() {
		t.Logf("page:\n%s", body)
	}
}

func TestPageEmpty(t *testing.T) {
	t.Parallel()
	s := New(Options{Version: "dev"})
	resp, body := get(t, s, http.MethodGet, "/")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d", resp.StatusCode)
	}
	for _, want := range []string{`id="hit-ratio">–<`, "No requests for a repository", "No upstream configured", "No store.", "None: nothing is being downloaded"} {
		if !strings.Contains(body, want) {
			t.Errorf("the empty page lacks %q", want)
		}
	}
}

func TestPageMethodsAndPaths(t *testing.T) {
	t.Parallel()
	s := New(Options{Version: "dev"})
	resp, body := get(t, s, http.MethodHead, "/")
	if resp.StatusCode != http.StatusOK || body != "" || resp.Header.Get("Content-Length") == "" || resp.Header.Get("Content-Length") == "0" {
		t.Errorf("HEAD /: %d, Content-Length %q, body %q", resp.StatusCode, resp.Header.Get("Content-Length"), body)
	}
	if resp, _ := get(t, s, http.MethodPost, "/"); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /: %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	for _, p := range []string{"/index.html", "/status", "/v3/"} {
		if resp, _ := get(t, s, http.MethodGet, p); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
}
