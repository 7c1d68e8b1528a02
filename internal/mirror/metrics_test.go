package mirror_test

import (
	"io"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/mirror"
	"github.com/berth-dev/berth/internal/testutil"
	"github.com/berth-dev/berth/upstream"
	"github.com/berth-dev/berth/upstream/upstreamtest"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// counter is the value of one counter series, failing if it does not exist.
func counter(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	m, ok := testutil.Sample(t, reg, name, labels)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	return m.GetCounter().GetValue()
}

// observations is the sample count of one histogram series.
func observations(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) uint64 {
	t.Helper()
	m, ok := testutil.Sample(t, reg, name, labels)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	return m.GetHistogram().GetSampleCount()
}

// Observe times every exchange but berth's own cancellations, and counts a
// failure by its cause.
func TestMetricsObserve(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cause    string
		timed    uint64
		failures float64
	}{
		{"", 1, 0},
		{"timeout", 1, 1},
		{"tls", 1, 1},
		{"429", 1, 1},
		{"5xx", 1, 1},
		{"canceled", 0, 1},
	} {
		t.Run("cause="+tc.cause, func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewRegistry()
			met := mirror.NewMetrics(reg)
			met.Observe(upstream.Exchange{Upstream: "ghcr.io", Kind: "manifest", Method: "GET", Status: 200,
				Duration: 250 * time.Millisecond, Cause: tc.cause})
			if tc.timed > 0 {
				m, _ := testutil.Sample(t, reg, "berth_upstream_request_duration_seconds", map[string]string{"upstream": "ghcr.io", "kind": "manifest"})
				if h := m.GetHistogram(); h.GetSampleCount() != 1 || h.GetSampleSum() != 0.25 {
					t.Errorf("latency: %d samples summing to %v s, want one of 0.25 s", h.GetSampleCount(), h.GetSampleSum())
				}
			} else if _, ok := testutil.Sample(t, reg, "berth_upstream_request_duration_seconds", nil); ok {
				t.Error("a canceled exchange was timed")
			}
			labels := map[string]string{"upstream": "ghcr.io", "kind": "manifest", "cause": tc.cause}
			_, ok := testutil.Sample(t, reg, "berth_upstream_errors_total", labels)
			switch {
			case tc.failures == 0 && ok:
				t.Error("a success was counted as an error")
			case tc.failures > 0 && counter(t, reg, "berth_upstream_errors_total", labels) != tc.failures:
				t.Errorf("errors{cause=%q} = %v, want %v", tc.cause, counter(t, reg, "berth_upstream_errors_total", labels), tc.failures)
			}
		})
	}
}

// The series a dashboard queries exist, at zero, as soon as a mirror of an
// upstream does; and a pull through a client observed by the metrics fills
// them per upstream and kind.
func TestMetricsPerUpstream(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	img := up.AddImage("library/app", "1", 1, 4<<10)
	reg := prometheus.NewRegistry()
	met := mirror.NewMetrics(reg)
	client, err := upstream.New(upstream.Config{Name: "docker.io", URL: up.URL()}, upstream.WithObserver(met))
	if err != nil {
		t.Fatal(err)
	}
	m := newMirror(t, mirror.Options{Store: openStore(t), Client: client, Prefetch: -1, Metrics: met})

	docker := map[string]string{"upstream": "docker.io"}
	with := func(kv ...string) map[string]string {
		l := map[string]string{"upstream": "docker.io"}
		for i := 0; i+1 < len(kv); i += 2 {
			l[kv[i]] = kv[i+1]
		}
		return l
	}
	for _, kind := range []string{"manifest", "blob", "token"} {
		if n := observations(t, reg, "berth_upstream_request_duration_seconds", with("kind", kind)); n != 0 {
			t.Errorf("%s exchanges before any request: %d", kind, n)
		}
	}
	for _, c := range []struct{ name, kind, cause, result string }{
		{"berth_upstream_errors_total", "blob", "digest_mismatch", ""},
		{"berth_upstream_errors_total", "blob", "timeout", ""},
		{"berth_upstream_errors_total", "manifest", "5xx", ""},
		{"berth_cache_requests_total", "blob", "", "hit"},
		{"berth_cache_requests_total", "tag", "", "miss"},
	} {
		l := with("kind", c.kind)
		if c.cause != "" {
			l["cause"] = c.cause
		}
		if c.result != "" {
			l["result"] = c.result
		}
		if v := counter(t, reg, c.name, l); v != 0 {
			t.Errorf("%s%v = %v before any request", c.name, l, v)
		}
	}
	for _, name := range []string{"berth_upstream_fills_total", "berth_upstream_fill_joins_total", "berth_upstream_fills_in_flight", "berth_upstream_fill_bytes_total"} {
		if _, ok := testutil.Sample(t, reg, name, docker); !ok {
			t.Errorf("no %s for docker.io before any request", name)
		}
	}

	ctx := testContext(t)
	rd, err := m.GetTag(ctx, "library/app", "1")
	readAll(t, rd, err)
	rd, err = m.GetBlob(ctx, "library/app", img.Layers[0])
	readAll(t, rd, err)
	if _, err := m.ResolveBlob(ctx, "library/app", digest.FromString("absent")); err == nil {
		t.Fatal("ResolveBlob of an absent blob succeeded")
	}
	for _, kind := range []string{"manifest", "blob", "token"} {
		if n := observations(t, reg, "berth_upstream_request_duration_seconds", with("kind", kind)); n == 0 {
			t.Errorf("no %s exchange timed", kind)
		}
	}
	if v := counter(t, reg, "berth_upstream_errors_total", with("kind", "blob", "cause", "4xx")); v != 1 {
		t.Errorf("errors{blob,4xx} = %v, want 1 (the HEAD of the absent blob)", v)
	}
	// The 401 challenges of the token dance are no errors.
	if v := counter(t, reg, "berth_upstream_errors_total", with("kind", "manifest", "cause", "4xx")); v != 0 {
		t.Errorf("errors{manifest,4xx} = %v, want 0", v)
	}
	for _, c := range []struct {
		kind, result string
		want         float64
	}{
		{"tag", "miss", 1},
		{"manifest", "miss", 1},
		{"blob", "miss", 2}, // the GET that filled the layer, the HEAD of the absent blob
	} {
		if v := counter(t, reg, "berth_cache_requests_total", with("kind", c.kind, "result", c.result)); v != c.want {
			t.Errorf("cache_requests{%s,%s} = %v, want %v", c.kind, c.result, v, c.want)
		}
	}
}

// A fill whose content does not hash to its digest is a failed fill and an
// upstream error of cause digest_mismatch.
func TestMetricsCountDigestMismatch(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	d := up.AddBlob("library/app", make([]byte, 64<<10))
	up.SetCorrupt(d, true)
	reg := prometheus.NewRegistry()
	met := mirror.NewMetrics(reg)
	// The store is closed by the test, not a cleanup: Close waits for the
	// fill's end, and so for its counting.
	st, err := cache.Open(t.TempDir(), cache.Options{Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	var closeOnce sync.Once
	closeStore := func() { closeOnce.Do(func() { st.Close() }) }
	t.Cleanup(closeStore)
	m := mirror.New(mirror.Options{Store: st, Client: newClient(t, upstream.Config{URL: up.URL()}), Prefetch: -1,
		Metrics: met, Logger: zerolog.Nop()})

	rd, err := m.GetBlob(testContext(t), "library/app", d)
	if err == nil {
		_, err = io.Copy(io.Discard, rd)
		rd.Close()
	}
	if err == nil {
		t.Fatal("a corrupt blob was read to a clean end")
	}
	m.Close()
	closeStore()
	l := map[string]string{"upstream": "docker.io", "kind": "blob", "cause": "digest_mismatch"}
	if v := counter(t, reg, "berth_upstream_errors_total", l); v != 1 {
		t.Errorf("errors{blob,digest_mismatch} = %v, want 1", v)
	}
	if v := counter(t, reg, "berth_upstream_fills_total", map[string]string{"upstream": "docker.io", "result": "failed"}); v != 1 {
		t.Errorf("fills{failed} = %v, want 1", v)
	}
}
