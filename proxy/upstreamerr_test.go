package proxy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/upstream"
)

// Over HTTP, an upstream failure is answered with its status, the OCI code,
// a detail naming the upstream but not its address, and for a 429 the
// upstream's Retry-After.
func TestUpstreamFailureResponses(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	var status atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.Header().Set("Retry-After", "42")
		w.WriteHeader(int(status.Load()))
	}))
	t.Cleanup(up.Close)
	client, err := upstream.New(upstream.Config{Name: "docker.io", URL: up.URL, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, srv := startServer(t, cache.Options{}, mirrorOf(client, 0))
	addr := strings.TrimPrefix(up.URL, "http://")

	for _, tt := range []struct {
		upstream, want int
		code           string
		retryAfter     bool
	}{
		{http.StatusBadGateway, http.StatusServiceUnavailable, "UNAVAILABLE", false},
		{http.StatusForbidden, http.StatusForbidden, "DENIED", false},
		{http.StatusTooManyRequests, http.StatusTooManyRequests, "TOOMANYREQUESTS", true}, // last: its window answers all that follow
	} {
		status.Store(int64(tt.upstream))
		resp, err := http.Get(srv.URL + "/v2/library/app" + strconv.Itoa(tt.upstream) + "/manifests/1")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var body struct {
			Errors []struct {
				Code   string
				Detail string
			}
		}
		if err := json.Unmarshal(b, &body); err != nil || len(body.Errors) != 1 {
			t.Fatalf("upstream %d: body %s", tt.upstream, b)
		}
		e := body.Errors[0]
		if resp.StatusCode != tt.want || e.Code != tt.code || !strings.Contains(e.Detail, "upstream docker.io") || strings.Contains(string(b), addr) {
			t.Errorf("upstream %d: %d %s, want %d %s with a detail naming docker.io and not %s", tt.upstream, resp.StatusCode, b, tt.want, tt.code, addr)
		}
		if got := resp.Header.Get("Retry-After"); (got == "42") != tt.retryAfter {
			t.Errorf("upstream %d: Retry-After %q", tt.upstream, got)
		}
		if tt.retryAfter {
			// Within the window the next request is answered without asking.
			before := n.Load()
			resp, err := http.Get(srv.URL + "/v2/library/app/manifests/2")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || n.Load() != before {
				t.Errorf("during the window: %d, Retry-After %q, %d upstream requests", resp.StatusCode, resp.Header.Get("Retry-After"), n.Load()-before)
			}
		}
	}
}
