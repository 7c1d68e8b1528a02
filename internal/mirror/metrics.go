package mirror

import (
	"context"
	"errors"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/upstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the mirrors' Prometheus series, shared by every Mirror of a
// process and labelled by upstream. Metrics is also the upstream.Observer
// of the upstream clients (upstream.WithObserver), so that a digest
// mismatch found by a mirror and a timeout seen by a client are counted in
// the one series of upstream errors.
type Metrics struct {
	lookups       *prometheus.CounterVec
	fills         *prometheus.CounterVec
	upstreamBytes *prometheus.CounterVec
	joins         *prometheus.CounterVec
	inFlight      *prometheus.GaugeVec
	latency       *prometheus.HistogramVec
	errors        *prometheus.CounterVec
}

var _ upstream.Observer = (*Metrics)(nil)

// NewMetrics creates the series and registers them with reg (nil: counted
// but not exported).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_cache_requests_total",
			Help: "Mirrored lookups by upstream, kind and result: hit, miss, joined, revalidated, stale (served while the upstream failed), negative."},
			[]string{"upstream", "kind", "result"}),
		fills: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_upstream_fills_total",
			Help: "Blob downloads from upstreams by upstream and result."}, []string{"upstream", "result"}),
		upstreamBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_upstream_fill_bytes_total",
			Help: "Bytes downloaded from upstreams into the cache."}, []string{"upstream"}),
		joins: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_upstream_fill_joins_total",
			Help: "Blob misses that joined a download already in flight instead of starting one (coalesced waiters)."}, []string{"upstream"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_upstream_fills_in_flight",
			Help: "Blob downloads from upstreams running now."}, []string{"upstream"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "berth_upstream_request_duration_seconds",
			Help: "Upstream HTTP exchanges until the response headers (or the failure), by upstream and kind: manifest, blob, tags, referrers, ping, token (a token realm or a storage redirect).",
			// 5 ms (an upstream next door) to 19 s (ResponseHeaderTimeout is 10 s by default).
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 10)}, []string{"upstream", "kind"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_upstream_errors_total",
			Help: "Failed upstream exchanges by upstream, kind and cause: timeout, tls, connection, canceled, 429, 4xx (a 401 challenge is not one), 5xx, digest_mismatch (content that failed verification); kind auth, cause config: a request berth did not send because its configuration refused it (a token realm not allowed, a failing credential helper)."},
			[]string{"upstream", "kind", "cause"}),
	}
	if reg != nil {
		reg.MustRegister(m.lookups, m.fills, m.upstreamBytes, m.joins, m.inFlight, m.latency, m.errors)
	}
	return m
}

// Observe implements upstream.Observer. It is called on the request's
// goroutine once per exchange: the labels are hashed here, a cost far below
// the round trip's.
func (m *Metrics) Observe(e upstream.Exchange) {
	if e.Cause != "canceled" { // berth hung up: that measures its patience, not the upstream
		m.latency.WithLabelValues(e.Upstream, e.Kind).Observe(e.Duration.Seconds())
	}
	if e.Cause != "" {
		m.errors.WithLabelValues(e.Upstream, e.Kind, e.Cause).Inc()
	}
}

// upstreamMetrics are one upstream's series, each label combination
// resolved once, so counting costs no label hashing on the request path.
type upstreamMetrics struct {
	results                     map[[2]string]prometheus.Counter // kind, result
	fillsOK, fillsFailed        prometheus.Counter
	upstreamBytes, joinsCounter prometheus.Counter
	inFlight                    prometheus.Gauge
	blobMismatch, manMismatch   prometheus.Counter
	refused                     prometheus.Counter
}

var lookupResults = map[string][]string{
	"manifest": {"hit", "miss", "negative"},
	"tag":      {"hit", "miss", "revalidated", "stale"},
	"tags":     {"stale"},
	"blob":     {"hit", "miss", "joined", "negative", "uncached"},
}

// Exchange kinds and failure causes (as package upstream names them) whose
// series exist from start-up, so that a dashboard's panels are not empty
// and rate() sees an upstream's first error (a series born at 1 shows no
// increase). Errors are created for the kinds that carry content and for
// tokens; a rarer one (a failing tag list) appears when it first happens.
var (
	exchangeKinds = []string{"manifest", "blob", "tags", "referrers", "ping", "token"}
	errorKinds    = []string{"manifest", "blob", "token"}
	errorCauses   = []string{"timeout", "tls", "connection", "429", "4xx", "5xx"}
)

func (m *Metrics) forUpstream(name string) *upstreamMetrics {
	u := &upstreamMetrics{results: map[[2]string]prometheus.Counter{},
		fillsOK:       m.fills.WithLabelValues(name, "ok"),
		fillsFailed:   m.fills.WithLabelValues(name, "failed"),
		upstreamBytes: m.upstreamBytes.WithLabelValues(name),
		joinsCounter:  m.joins.WithLabelValues(name),
		inFlight:      m.inFlight.WithLabelValues(name),
		blobMismatch:  m.errors.WithLabelValues(name, "blob", "digest_mismatch"),
		manMismatch:   m.errors.WithLabelValues(name, "manifest", "digest_mismatch"),
		refused:       m.errors.WithLabelValues(name, "auth", "config"),
	}
	for kind, results := range lookupResults {
		for _, r := range results {
			u.results[[2]string{kind, r}] = m.lookups.WithLabelValues(name, kind, r)
		}
	}
	for _, kind := range exchangeKinds {
		m.latency.WithLabelValues(name, kind)
	}
	for _, kind := range errorKinds {
		for _, cause := range errorCauses {
			m.errors.WithLabelValues(name, kind, cause)
		}
	}
	return u
}

// result counts a lookup and tells the request's log how the cache answered.
func (u *upstreamMetrics) result(ctx context.Context, kind, result string) {
	u.results[[2]string{kind, result}].Inc()
	registry.InfoFrom(ctx).Cache = result
}

// mismatch counts err if it says the upstream's content did not match its
// digest: the client's check (a manifest, a Docker-Content-Digest header) or
// the store's, when a fill verifies what it downloaded.
func (u *upstreamMetrics) mismatch(kind string, err error) {
	if !errors.Is(err, upstream.ErrDigestMismatch) && !errors.Is(err, cache.ErrDigestMismatch) {
		return
	}
	if kind == "manifest" {
		u.manMismatch.Inc()
	} else {
		u.blobMismatch.Inc()
	}
}
