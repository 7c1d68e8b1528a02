package proxy_test

import (
	"bytes"
	"net/http"
	"testing"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/testutil"
	"github.com/berth-dev/berth/proxy"
	"github.com/berth-dev/berth/upstream"
	"github.com/berth-dev/berth/upstream/upstreamtest"
	"github.com/prometheus/client_golang/prometheus"
)

// Bytes sent are counted by where they came from: a pushed blob is local, a
// mirrored blob is upstream while it streams in and cache once stored.
func TestResponseBytesBySource(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	mirrored := randomBytes(48 << 10)
	md := up.AddBlob("library/app", mirrored)
	client, err := upstream.New(upstream.Config{Name: "docker.io", URL: up.URL()})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	// A response reaches the client before its handler has counted it:
	// each request is waited for through OnRequest, which runs after.
	finished := make(chan proxy.Done, 16)
	_, srv := startServer(t, cache.Options{}, berth{Upstream: client, Prefetch: -1, Local: []string{"team/*"}, Registerer: reg,
		OnRequest: func(d proxy.Done) { finished <- d }})
	s := &regSrv{srv: srv}
	bySource := func() map[string]float64 {
		out := map[string]float64{}
		for _, src := range []string{"cache", "upstream", "local", "other"} {
			out[src] = testutil.Value(t, reg, "berth_http_response_bytes_total", map[string]string{"source": src})
		}
		return out
	}
	if got := bySource(); got["cache"]+got["upstream"]+got["local"]+got["other"] != 0 {
		t.Fatalf("bytes before any request: %v", got)
	}

	pushed := randomBytes(32 << 10)
	pd := s.pushBlob(t, "team/app", pushed)
	testutil.Recv(t, finished, "the push to be counted")
	get := func(path string, want []byte) {
		t.Helper()
		resp, body := s.do(t, http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
			t.Fatalf("GET %s: %d, %d bytes", path, resp.StatusCode, len(body))
		}
		testutil.Recv(t, finished, "GET "+path+" to be counted")
	}
	get("/v2/team/app/blobs/"+pd.String(), pushed)
	get("/v2/library/app/blobs/"+md.String(), mirrored) // a miss: streamed as it arrives
	// The fill commits before the last byte goes out; the next read is a hit.
	get("/v2/library/app/blobs/"+md.String(), mirrored)
	want := map[string]float64{"local": float64(len(pushed)), "upstream": float64(len(mirrored)), "cache": float64(len(mirrored)), "other": 0}
	if got := bySource(); !equalMaps(got, want) {
		t.Errorf("berth_http_response_bytes_total by source = %v, want %v", got, want)
	}
	// A body no backend produced still counts, so the sources add up.
	if resp, _ := s.do(t, http.MethodGet, "/v2/", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v2/: %d", resp.StatusCode)
	}
	testutil.Recv(t, finished, "GET /v2/ to be counted")
	if got := bySource()["other"]; got <= 0 {
		t.Errorf("bytes of /v2/ counted as other: %v", got)
	}
}

func equalMaps(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
