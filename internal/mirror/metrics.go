package mirror

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the mirrors' Prometheus series, shared by every Mirror of a
// process. Each label combination is resolved once, so counting costs no
// map lookup on the request path.
type Metrics struct {
	manifestHit, manifestMiss, manifestNegative prometheus.Counter
	tagHit, tagMiss, tagRevalidated, tagStale   prometheus.Counter
	tagsStale                                   prometheus.Counter
	blobHit, blobMiss, blobNegative             prometheus.Counter
	fillsOK, fillsFailed                        prometheus.Counter
	upstreamBytes, joins                        prometheus.Counter
	inFlight                                    prometheus.Gauge
}

// NewMetrics creates the series and registers them with reg (nil: counted
// but not exported).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_cache_requests_total",
		Help: "Mirrored lookups by kind and result: hit, miss, revalidated, stale (served while the upstream failed), negative."}, []string{"kind", "result"})
	fills := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_upstream_fills_total",
		Help: "Blob downloads from upstreams by result."}, []string{"result"})
	m := &Metrics{
		manifestHit:      lookups.WithLabelValues("manifest", "hit"),
		manifestMiss:     lookups.WithLabelValues("manifest", "miss"),
		manifestNegative: lookups.WithLabelValues("manifest", "negative"),
		tagHit:           lookups.WithLabelValues("tag", "hit"),
		tagMiss:          lookups.WithLabelValues("tag", "miss"),
		tagRevalidated:   lookups.WithLabelValues("tag", "revalidated"),
		tagStale:         lookups.WithLabelValues("tag", "stale"),
		tagsStale:        lookups.WithLabelValues("tags", "stale"),
		blobHit:          lookups.WithLabelValues("blob", "hit"),
		blobMiss:         lookups.WithLabelValues("blob", "miss"),
		blobNegative:     lookups.WithLabelValues("blob", "negative"),
		fillsOK:          fills.WithLabelValues("ok"),
		fillsFailed:      fills.WithLabelValues("failed"),
		upstreamBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_upstream_fill_bytes_total",
			Help: "Bytes downloaded from upstreams into the cache."}),
		joins: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_upstream_fill_joins_total",
			Help: "Blob misses that joined a download already in flight instead of starting one."}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_upstream_fills_in_flight",
			Help: "Blob downloads from upstreams running now."}),
	}
	if reg != nil {
		reg.MustRegister(lookups, fills, m.upstreamBytes, m.joins, m.inFlight)
	}
	return m
}
