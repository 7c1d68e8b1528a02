package status

import (
	"slices"
	"sync"
	"time"

	"github.com/berth-dev/berth/upstream"
)

const (
	// rateLimitWindow is how long after a 429 an upstream is shown as
	// rate-limited.
	rateLimitWindow = 5 * time.Minute
	// latencies is how many recent exchanges the latency is taken from.
	latencies = 64
	// maxUpstreams bounds the names Observe adds on its own (an upstream
	// reporting before SetUpstreams listed it).
	maxUpstreams = 64
)

// health is what was seen of one upstream.
type health struct {
	mu        sync.Mutex
	exchanges int64
	lastOK    time.Time
	lastErr   time.Time
	errCause  string
	errStatus int
	errKind   string
	last429   time.Time
	lat       [latencies]time.Duration // a ring of the exchanges that got a response
	nlat      int                      // how many were ever written
}

// Observe records one exchange with an upstream; it implements
// upstream.Observer. A 401 (the start of the auth dance) is neither a
// success nor a failure, and neither is a canceled exchange: the client
// went away, the upstream did nothing wrong.
func (s *Status) Observe(e upstream.Exchange) {
	h := s.upstream(e.Upstream)
	if h == nil {
		return
	}
	now := s.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.exchanges++
	if e.Status != 0 {
		h.lat[h.nlat%latencies] = e.Duration
		h.nlat++
	}
	switch {
	case e.Cause == "canceled":
	case e.Cause != "":
		h.lastErr, h.errCause, h.errStatus, h.errKind = now, e.Cause, e.Status, e.Kind
		if e.Cause == "429" {
			h.last429 = now
		}
	case e.Status < 400:
		h.lastOK = now
	}
}

// upstream returns the health of the upstream named n, adding it if there
// is room.
func (s *Status) upstream(n string) *health {
	s.upMu.RLock()
	h := s.ups[n]
	s.upMu.RUnlock()
	if h != nil {
		return h
	}
	s.upMu.Lock()
	defer s.upMu.Unlock()
	if h = s.ups[n]; h == nil && len(s.ups) < maxUpstreams {
		h = new(health)
		s.ups[n] = h
	}
	return h
}

// Upstream is one upstream's health as the page shows it.
type Upstream struct {
	Name string
	// State is ok (the last exchange that said anything succeeded, or
	// failed with a 4xx), failing (it failed with a timeout, TLS,
	// connection or 5xx error), rate-limited (a 429 in the last five
	// minutes) or idle (no exchange yet).
	State     string
	Exchanges int64
	LastOK    time.Time
	LastErr   time.Time
	ErrCause  string // timeout, tls, connection, 429, 4xx, 5xx
	ErrStatus int    // 0 when no response came
	ErrKind   string // manifest, blob, token, ...
	// RateLimitedUntil is when the last 429 stops counting (zero if none
	// in the window).
	RateLimitedUntil time.Time
	// P50 and P90 are over the last exchanges that got a response (until
	// its headers); zero before one.
	P50, P90 time.Duration
}

// upstreams lists the configured upstreams first, in order, then any other
// that reported.
func (s *Status) upstreams() []Upstream {
	now := s.now()
	s.upMu.RLock()
	names := slices.Clone(s.names)
	var extra []string
	for n := range s.ups {
		if !slices.Contains(names, n) {
			extra = append(extra, n)
		}
	}
	slices.Sort(extra)
	names = append(names, extra...)
	hs := make([]*health, len(names))
	for i, n := range names {
		hs[i] = s.ups[n]
	}
	s.upMu.RUnlock()

	out := make([]Upstream, 0, len(names))
	for i, h := range hs {
		u := Upstream{Name: names[i]}
		h.mu.Lock()
		u.Exchanges, u.LastOK, u.LastErr = h.exchanges, h.lastOK, h.lastErr
		u.ErrCause, u.ErrStatus, u.ErrKind = h.errCause, h.errStatus, h.errKind
		if !h.last429.IsZero() && now.Sub(h.last429) < rateLimitWindow {
			u.RateLimitedUntil = h.last429.Add(rateLimitWindow)
		}
		n := min(h.nlat, latencies)
		lat := slices.Clone(h.lat[:n])
		h.mu.Unlock()
		if n > 0 {
			slices.Sort(lat)
			u.P50, u.P90 = percentile(lat, 50), percentile(lat, 90)
		}
		u.State = state(u)
		out = append(out, u)
	}
	return out
}

func state(u Upstream) string {
	switch {
	case !u.RateLimitedUntil.IsZero():
		return "rate-limited"
	case u.LastErr.After(u.LastOK) && u.ErrCause != "4xx" && u.ErrCause != "429":
		return "failing"
	case !u.LastOK.IsZero() || !u.LastErr.IsZero():
		return "ok"
	}
	return "idle"
}

// percentile is the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p int) time.Duration {
	return sorted[(len(sorted)*p+99)/100-1]
}
