// Package status is berth's status page for people: version and uptime,
// the last hour's requests (hit ratio, bytes by source, the busiest
// repositories), each upstream's health, disk use and the fills in flight,
// rendered on the server with html/template and no JavaScript.
//
// It is fed by the other packages' hooks: proxy.Options.OnRequest calls
// Request after every API request, upstream.WithObserver has Observe called
// after every exchange with an upstream, and the store is asked for its
// usage and fills when the page is rendered. It keeps names only: never an
// upstream's URL, a header or a credential.
package status

import (
	"sync"
	"time"

	"github.com/berth-dev/berth/cache"
)

// Store is what the page asks of the cache; *cache.Store implements it.
type Store interface {
	Usage() cache.Usage
	Fills() []cache.FillProgress
}

// Options configure a Status.
type Options struct {
	Version string
	// Started is when berth started, for the uptime; zero means now.
	Started time.Time
	// Store, if set, reports disk use and fills in flight.
	Store Store
	// Upstreams are the configured upstreams' names, listed even before
	// any exchange with them.
	Upstreams []string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Status aggregates what the page shows. Its methods are safe for
// concurrent use.
type Status struct {
	version string
	started time.Time
	store   Store
	now     func() time.Time
	// epoch and epochSecond let the hot path read the monotonic clock
	// only, when no clock was given (time.Since costs half of time.Now).
	epoch       time.Time
	epochSecond int64

	minutes [window]minute // the last hour, one bucket a minute

	upMu  sync.RWMutex
	ups   map[string]*health
	names []string // the configured upstreams, in config order
}

// New returns a Status with nothing observed yet.
func New(opts Options) *Status {
	s := &Status{version: opts.Version, started: opts.Started, store: opts.Store, now: opts.Now,
		ups: make(map[string]*health)}
	if s.now == nil {
		s.now = time.Now
		s.epoch = time.Now()
		s.epochSecond = s.epoch.Unix()
	}
	if s.started.IsZero() {
		s.started = s.now()
	}
	s.SetUpstreams(opts.Upstreams)
	return s
}

// SetUpstreams replaces the list of configured upstreams (after a reload):
// what was observed of a name that stays is kept.
func (s *Status) SetUpstreams(names []string) {
	s.upMu.Lock()
	defer s.upMu.Unlock()
	s.names = append([]string(nil), names...)
	keep := make(map[string]*health, len(names))
	for _, n := range names {
		h := s.ups[n]
		if h == nil {
			h = new(health)
		}
		keep[n] = h
	}
	s.ups = keep
}

// minute is the current minute (Unix seconds / 60), which Request counts
// into and the page reads back from.
func (s *Status) minute() int64 {
	if s.epoch.IsZero() {
		return s.now().Unix() / 60
	}
	return (s.epochSecond + int64(time.Since(s.epoch)/time.Second)) / 60
}
