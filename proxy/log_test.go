package proxy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/proxy"
	"github.com/berth-dev/berth/upstream"
	"github.com/berth-dev/berth/upstream/upstreamtest"
	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"
)

// logLines collects a server's JSON log lines as they are written. A
// request's line is written after its response may have reached the
// client, so tests wait for it by request id.
type logLines struct {
	t       *testing.T
	mu      sync.Mutex
	lines   []map[string]any
	changed chan struct{} // closed and replaced on every line
}

func newLogLines(t *testing.T) *logLines {
	return &logLines{t: t, changed: make(chan struct{})}
}

func (l *logLines) Write(p []byte) (int, error) {
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		l.t.Errorf("log line is not JSON: %v: %s", err, p)
		return len(p), nil
	}
	l.mu.Lock()
	l.lines = append(l.lines, m)
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	return len(p), nil
}

// find waits for a line with the message msg and the request id id.
func (l *logLines) find(t *testing.T, msg, id string) map[string]any {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		l.mu.Lock()
		lines, ch := l.lines, l.changed
		l.mu.Unlock()
		for _, m := range lines {
			if m["message"] == msg && m["request_id"] == id {
				return m
			}
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("no %q log line with request_id %q in %v", msg, id, lines)
		}
	}
}

// logClient sends requests to a berth and returns each with its log line.
type logClient struct {
	srv  *httptest.Server
	logs *logLines
}

type logReq struct {
	method, path string
	body         []byte
	user, pass   string
	hdr          []string // name, value, ...
}

func (c *logClient) do(t *testing.T, r logReq) (*http.Response, map[string]any) {
	t.Helper()
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequest(r.method, c.srv.URL+r.path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("User-Agent", "berth-test/1.0")
	if r.user != "" {
		req.SetBasicAuth(r.user, r.pass)
	}
	for i := 0; i+1 < len(r.hdr); i += 2 {
		req.Header.Set(r.hdr[i], r.hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	ids := resp.Header.Values("X-Request-Id")
	if len(ids) != 1 || ids[0] == "" {
		t.Fatalf("%s %s: X-Request-Id %q, want one", r.method, r.path, ids)
	}
	return resp, c.logs.find(t, "request", ids[0])
}

// wantFields checks a log line: each field in want has the given value, and
// each field mapped to nil is absent. The fields every line carries are
// checked too.
func wantFields(t *testing.T, what string, line map[string]any, want map[string]any) {
	t.Helper()
	for k, v := range want {
		got, ok := line[k]
		switch {
		case v == nil && ok:
			t.Errorf("%s: %s = %v, want none", what, k, got)
		case v != nil && got != v:
			t.Errorf("%s: %s = %v (%T), want %v (%T)", what, k, got, got, v, v)
		}
	}
	if d, ok := line["duration_ms"].(float64); !ok || d < 0 {
		t.Errorf("%s: duration_ms = %v, want a number of milliseconds", what, line["duration_ms"])
	}
	if host, port, err := net.SplitHostPort(fmt.Sprint(line["client"])); err != nil || host != "127.0.0.1" || port == "" {
		t.Errorf("%s: client = %v, want the peer's host:port", what, line["client"])
	}
	if line["user_agent"] != "berth-test/1.0" {
		t.Errorf("%s: user_agent = %v", what, line["user_agent"])
	}
}

func n(i int) float64 { return float64(i) } // JSON numbers decode as float64

// One line per request names the client, the user, the user agent, the
// request id, how the cache answered and the bytes each way.
func TestRequestLogLocal(t *testing.T) {
	t.Parallel()
	hash, err := bcrypt.GenerateFromPassword([]byte("pushpw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := proxy.ParseHtpasswd(strings.NewReader(fmt.Sprintf("ci:%s\n", hash)), true)
	if err != nil {
		t.Fatal(err)
	}
	logs := newLogLines(t)
	_, srv := startServer(t, cache.Options{}, berth{Auth: auth, Log: logs})
	c := &logClient{srv: srv, logs: logs}

	blob := []byte("a layer pushed in one request")
	d := digest.FromBytes(blob)
	resp, line := c.do(t, logReq{method: "POST", path: "/v2/team/app/blobs/uploads/?digest=" + d.String(), body: blob, user: "ci", pass: "pushpw"})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("monolithic push: %d", resp.StatusCode)
	}
	wantFields(t, "monolithic push", line, map[string]any{"method": "POST", "path": "/v2/team/app/blobs/uploads/",
		"kind": "upload", "repo": "team/app", "route": "local", "digest": d.String(), "status": n(201), "bytes": n(0),
		"bytes_in": n(len(blob)), "user": "ci", "cache": nil, "duration": nil})

	// A chunked push: each request counts the body bytes it carried.
	chunked := []byte("0123456789abcdef, then the rest")
	cd := digest.FromBytes(chunked)
	resp, line = c.do(t, logReq{method: "POST", path: "/v2/team/app/blobs/uploads/", user: "ci", pass: "pushpw"})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload: %d", resp.StatusCode)
	}
	wantFields(t, "start upload", line, map[string]any{"status": n(202), "bytes_in": n(0), "user": "ci"})
	loc := resp.Header.Get("Location")
	resp, line = c.do(t, logReq{method: "PATCH", path: loc, body: chunked[:16], user: "ci", pass: "pushpw",
		hdr: []string{"Content-Range", "0-15", "Content-Type", "application/octet-stream"}})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("patch: %d", resp.StatusCode)
	}
	wantFields(t, "patch", line, map[string]any{"method": "PATCH", "status": n(202), "bytes_in": n(16), "user": "ci"})
	resp, line = c.do(t, logReq{method: "PUT", path: resp.Header.Get("Location") + "?digest=" + cd.String(), body: chunked[16:],
		user: "ci", pass: "pushpw", hdr: []string{"Content-Range", fmt.Sprintf("16-%d", len(chunked)-1)}})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("finish upload: %d", resp.StatusCode)
	}
	wantFields(t, "finish upload", line, map[string]any{"method": "PUT", "status": n(201), "bytes_in": n(len(chunked) - 16),
		"digest": cd.String(), "user": "ci", "cache": nil})

	manifest := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}]}`,
		d, len(blob), cd, len(chunked))
	md := digest.FromBytes(manifest)
	resp, line = c.do(t, logReq{method: "PUT", path: "/v2/team/app/manifests/1.0", body: manifest, user: "ci", pass: "pushpw",
		hdr: []string{"Content-Type", "application/vnd.oci.image.manifest.v1+json"}})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("manifest push: %d", resp.StatusCode)
	}
	wantFields(t, "manifest push", line, map[string]any{"kind": "manifest", "ref": "1.0", "route": "local", "status": n(201),
		"bytes_in": n(len(manifest)), "digest": md.String(), "user": "ci", "cache": nil})

	// Pulls: anonymous, then authenticated; content from local storage.
	_, line = c.do(t, logReq{method: "GET", path: "/v2/team/app/blobs/" + d.String()})
	wantFields(t, "anonymous pull", line, map[string]any{"method": "GET", "kind": "blob", "ref": d.String(), "route": "local",
		"cache": "local", "status": n(200), "bytes": n(len(blob)), "user": nil, "bytes_in": nil,
		"digest": nil}) // the reference is the digest: not twice on the line
	_, line = c.do(t, logReq{method: "GET", path: "/v2/team/app/manifests/1.0", user: "ci", pass: "pushpw",
		hdr: []string{"Accept", "application/vnd.oci.image.manifest.v1+json"}})
	wantFields(t, "authenticated pull", line, map[string]any{"kind": "manifest", "cache": "local", "status": n(200),
		"bytes": n(len(manifest)), "digest": md.String(), "user": "ci"})
	_, line = c.do(t, logReq{method: "HEAD", path: "/v2/team/app/manifests/1.0", user: "ci", pass: "pushpw"})
	wantFields(t, "authenticated HEAD", line, map[string]any{"method": "HEAD", "cache": "local", "status": n(200), "bytes": n(0), "user": "ci"})

	// Errors: a local miss answered nothing from the cache; a refused
	// request names no user, and still carries its id.
	_, line = c.do(t, logReq{method: "GET", path: "/v2/team/app/blobs/" + digest.FromString("none").String()})
	wantFields(t, "local miss", line, map[string]any{"route": "local", "status": n(404), "cache": nil})
	_, line = c.do(t, logReq{method: "GET", path: "/v2/team/app/blobs/" + d.String(), user: "ci", pass: "wrong"})
	wantFields(t, "wrong password", line, map[string]any{"status": n(401), "user": nil, "cache": nil, "route": nil})
	_, line = c.do(t, logReq{method: "DELETE", path: "/v2/team/app/manifests/" + md.String(), user: "ci", pass: "pushpw"})
	wantFields(t, "delete", line, map[string]any{"method": "DELETE", "status": n(202), "user": "ci", "cache": nil, "bytes_in": nil})
}

// A mirrored request logs the upstream as its route and how the cache
// answered; a warning the mirror logs during the request carries its id.
func TestRequestLogMirror(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	client, err := upstream.New(upstream.Config{Name: "docker.io", URL: up.URL()})
	if err != nil {
		t.Fatal(err)
	}
	logs := newLogLines(t)
	_, srv := startServer(t, cache.Options{}, berth{Upstream: client, TTL: 0, Prefetch: -1, Log: logs})
	c := &logClient{srv: srv, logs: logs}
	img := up.AddImage("library/app", "1.0", 1, 4096)
	layer := img.Layers[0]

	for _, want := range []string{"miss", "hit"} {
		_, line := c.do(t, logReq{method: "GET", path: "/v2/library/app/blobs/" + layer.String()})
		wantFields(t, "blob "+want, line, map[string]any{"kind": "blob", "repo": "library/app", "route": "docker.io",
			"cache": want, "status": n(200), "bytes": n(4096), "user": nil})
	}
	_, line := c.do(t, logReq{method: "GET", path: "/v2/library/app/manifests/1.0", hdr: acceptAll})
	wantFields(t, "tag miss", line, map[string]any{"route": "docker.io", "cache": "miss", "status": n(200), "digest": img.Manifest.String()})
	_, line = c.do(t, logReq{method: "GET", path: "/v2/library/app/manifests/" + digest.FromString("none").String(), hdr: acceptAll})
	wantFields(t, "manifest unknown upstream", line, map[string]any{"route": "docker.io", "status": n(404)})

	up.SetDown(true)
	resp, line := c.do(t, logReq{method: "GET", path: "/v2/library/app/manifests/1.0", hdr: acceptAll})
	wantFields(t, "stale tag", line, map[string]any{"route": "docker.io", "cache": "stale", "status": n(200)})
	warn := logs.find(t, "upstream failed; serving cached tag", resp.Header.Get("X-Request-Id"))
	if warn["level"] != "warn" {
		t.Errorf("stale tag warning: %v", warn)
	}
}

// X-Request-Id: a short plain id from the client is kept (a proxy in front
// and berth then log the same id); anything else is replaced by berth's own,
// unique per request, on every response, errors included.
func TestRequestID(t *testing.T) {
	t.Parallel()
	logs := newLogLines(t)
	_, srv := startServer(t, cache.Options{}, berth{Log: logs})
	c := &logClient{srv: srv, logs: logs}
	missing := "/v2/team/app/blobs/" + digest.FromString("none").String()
	long := strings.Repeat("a", 65)
	for _, tc := range []struct {
		name, in string
		keep     bool
	}{
		{"plain", "req-42_a.B", true},
		{"64 bytes", long[:64], true},
		{"65 bytes", long, false},
		{"space", "req 42", false},
		{"quote", `req"42`, false},
		{"newline escape", `req\n42`, false},
		{"non-ASCII", "réq", false},
	} {
		for _, path := range []string{"/v2/", missing, "/v2/not/../an/api"} {
			resp, line := c.do(t, logReq{method: "GET", path: path, hdr: []string{"X-Request-Id", tc.in}})
			got := resp.Header.Get("X-Request-Id")
			if (got == tc.in) != tc.keep {
				t.Errorf("%s, GET %s: X-Request-Id %q in, %q out; keep = %v", tc.name, path, tc.in, got, tc.keep)
			}
			if line["request_id"] != got {
				t.Errorf("%s: logged request_id %v, header %q", tc.name, line["request_id"], got)
			}
		}
	}

	seen := map[string]bool{}
	for range 20 {
		resp, _ := c.do(t, logReq{method: "GET", path: missing})
		id := resp.Header.Get("X-Request-Id")
		if resp.StatusCode != http.StatusNotFound || seen[id] || len(id) > 64 || strings.Trim(id, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			t.Errorf("generated id %q (status %d, seen before: %v)", id, resp.StatusCode, seen[id])
		}
		seen[id] = true
	}
}
