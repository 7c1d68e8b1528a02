package mirror

import (
	"context"

	"github.com/berth-dev/berth/internal/registry"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the mirrors' Prometheus series, shared by every Mirror of a
// process and labelled by upstream.
type Metrics struct {
	lookups       *prometheus.CounterVec
	fills         *prometheus.CounterVec
	upstreamBytes *prometheus.CounterVec
	joins         *prometheus.CounterVec
	inFlight      *prometheus.GaugeVec
}

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
	}
	if reg != nil {
		reg.MustRegister(m.lookups, m.fills, m.upstreamBytes, m.joins, m.inFlight)
	}
	return m
}

// upstreamMetrics are one upstream's series, each label combination
// resolved once, so counting costs no label hashing on the request path.
type upstreamMetrics struct {
	results                     map[[2]string]prometheus.Counter // kind, result
	fillsOK, fillsFailed        prometheus.Counter
	upstreamBytes, joinsCounter prometheus.Counter
	inFlight                    prometheus.Gauge
}

var lookupResults = map[string][]string{
	"manifest": {"hit", "miss", "negative"},
	"tag":      {"hit", "miss", "revalidated", "stale"},
	"tags":     {"stale"},
	"blob":     {"hit", "miss", "joined", "negative"},
}

func (m *Metrics) forUpstream(name string) *upstreamMetrics {
	u := &upstreamMetrics{results: map[[2]string]prometheus.Counter{},
		fillsOK:       m.fills.WithLabelValues(name, "ok"),
		fillsFailed:   m.fills.WithLabelValues(name, "failed"),
		upstreamBytes: m.upstreamBytes.WithLabelValues(name),
		joinsCounter:  m.joins.WithLabelValues(name),
		inFlight:      m.inFlight.WithLabelValues(name),
	}
	for kind, results := range lookupResults {
		for _, r := range results {
			u.results[[2]string{kind, r}] = m.lookups.WithLabelValues(name, kind, r)
		}
	}
	return u
}

// result counts a lookup and tells the request's log how the cache answered.
func (u *upstreamMetrics) result(ctx context.Context, kind, result string) {
	u.results[[2]string{kind, result}].Inc()
	registry.InfoFrom(ctx).Cache = result
}
