package proxy

import (
	"strconv"

	"time"

	"github.com/berth-dev/berth/cache"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are berth's Prometheus series. With a nil Registerer they are
// still counted (tests read them) but not exported.
type metrics struct {
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	bytesOut     prometheus.Counter
	cache        *prometheus.CounterVec // kind, result (hit|miss|stale)
	fills        *prometheus.CounterVec // result (ok|failed)
	upstreamByte prometheus.Counter
	joins        prometheus.Counter
	inFlight     prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_http_requests_total",
			Help: "API requests by kind, method and status."}, []string{"kind", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "berth_http_request_duration_seconds",
			Help: "API request latency by kind.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"kind"}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_http_response_bytes_total",
			Help: "Bytes sent to clients."}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_cache_requests_total",
			Help: "Mirrored lookups by kind and result: hit, miss, revalidated, stale (served while the upstream failed), negative."}, []string{"kind", "result"}),
		fills: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_upstream_fills_total",
			Help: "Blob downloads from upstreams by result."}, []string{"result"}),
		upstreamByte: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_upstream_fill_bytes_total",
			Help: "Bytes downloaded from upstreams into the cache."}),
		joins: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_upstream_fill_joins_total",
			Help: "Blob misses that joined a download already in flight instead of starting one."}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_upstream_fills_in_flight",
			Help: "Blob downloads from upstreams running now."}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.bytesOut, m.cache, m.fills, m.upstreamByte, m.joins, m.inFlight)
	}
	return m
}

// registerStore exports the store's disk usage and eviction counters.
func registerStore(reg prometheus.Registerer, st *cache.Store) {
	if reg == nil || st == nil {
		return
	}
	u := func(f func(cache.Usage) float64) func() float64 { return func() float64 { return f(st.Usage()) } }
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_cache_bytes", Help: "Bytes of blobs on disk."},
			u(func(x cache.Usage) float64 { return float64(x.Bytes) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_cache_blobs", Help: "Blobs on disk."},
			u(func(x cache.Usage) float64 { return float64(x.Blobs) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_cache_pinned_bytes", Help: "Bytes of pushed (never evicted) blobs, as of the last eviction pass."},
			u(func(x cache.Usage) float64 { return float64(x.PinnedBytes) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_cache_limit_bytes", Help: "max_cache_bytes (0: unbounded)."},
			u(func(x cache.Usage) float64 { return float64(x.Limit) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_cache_evicted_blobs_total", Help: "Mirrored blobs evicted."},
			u(func(x cache.Usage) float64 { return float64(x.EvictedBlobs) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_cache_evicted_bytes_total", Help: "Bytes of mirrored blobs evicted."},
			u(func(x cache.Usage) float64 { return float64(x.EvictedBytes) })),
	)
}

func (m *metrics) observe(k Kind, method string, status int, bytes int64, d time.Duration) {
	m.requests.WithLabelValues(k.String(), method, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(k.String()).Observe(d.Seconds())
	m.bytesOut.Add(float64(bytes))
}
