package proxy

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the HTTP series. With a nil Registerer they are still counted
// (tests read them) but not exported. The series of a request are looked up
// in arrays, not through the vectors' label hashing: a warm request pays a
// few atomic adds.
type metrics struct {
	requests *prometheus.CounterVec
	duration [len(kindNames)]prometheus.Observer
	bytesOut [len(sources)]prometheus.Counter
	cells    [len(kindNames)][len(methods) + 1][len(statuses)]atomic.Pointer[prometheus.Counter]
	// auth counts what an operator of access control watches: failed
	// logins, rate-limited ones, denied requests, tokens issued.
	auth *prometheus.CounterVec
}

var (
	methods  = [...]string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost, http.MethodPatch, http.MethodDelete}
	statuses = [...]int{200, 201, 202, 204, 206, 304, 400, 401, 403, 404, 405, 413, 416, 429, 500, 502, 503}
	// sources are the values of source(), and "other" for bytes no backend
	// answered with (the API base, an error before routing), so that the
	// series add up to every byte sent.
	sources = [...]string{"cache", "upstream", "local", "other"}
)

// Metrics are the HTTP series, shared by handlers that serve one after
// another (a configuration reload builds a new Handler): registered once,
// they keep counting across them.
type Metrics struct{ m *metrics }

// NewMetrics creates the HTTP series and registers them with reg (nil:
// counted, not exported).
func NewMetrics(reg prometheus.Registerer) *Metrics { return &Metrics{newMetrics(reg)} }

func newMetrics(reg prometheus.Registerer) *metrics {
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "berth_http_request_duration_seconds",
		Help: "API request latency by kind.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"kind"})
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_http_requests_total",
			Help: "API requests by kind, method and status."}, []string{"kind", "method", "status"}),
	}
	bytesOut := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_http_response_bytes_total",
		Help: "Bytes sent to clients by source: cache (mirrored content on disk), upstream (streamed while it downloads), local (pushed content), other."},
		[]string{"source"})
	for k := range kindNames {
		m.duration[k] = duration.WithLabelValues(kindNames[k])
	}
	for i, s := range sources {
		m.bytesOut[i] = bytesOut.WithLabelValues(s)
	}
	m.auth = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_auth_events_total",
		Help: "Client authentication and access control: login_failed, rate_limited (a login refused unchecked), denied, token_issued."},
		[]string{"event"})
	for _, e := range authEvents {
		m.auth.WithLabelValues(e)
	}
	if reg != nil {
		reg.MustRegister(m.requests, duration, bytesOut, m.auth)
	}
	return m
}

// authEvents are the values of berth_auth_events_total's event label.
var authEvents = [...]string{"login_failed", "rate_limited", "denied", "token_issued"}

func index[T comparable](list []T, v T) int {
	for i, x := range list {
		if x == v {
			return i
		}
	}
	return len(list)
}

func (m *metrics) observe(k Kind, method string, status int, bytes int64, source string, d time.Duration) {
	mi, si := index(methods[:], method), index(statuses[:], status)
	if mi == len(methods) {
		method = "OTHER" // a client's made-up method must not grow the series
	}
	if si == len(statuses) { // rare: no cell of its own
		m.requests.WithLabelValues(k.String(), method, strconv.Itoa(status)).Inc()
	} else {
		cell := &m.cells[k][mi][si]
		c := cell.Load()
		if c == nil {
			counter := m.requests.WithLabelValues(k.String(), method, strconv.Itoa(status))
			c = &counter
			cell.Store(c)
		}
		(*c).Inc()
	}
	m.duration[k].Observe(d.Seconds())
	if bytes > 0 {
		m.bytesOut[index(sources[:len(sources)-1], source)].Add(float64(bytes))
	}
}
