package proxy_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/mirror"
	"github.com/berth-dev/berth/internal/route"
	"github.com/berth-dev/berth/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// berth is how a test's server is put together, as cmd/berth does it.
type berth struct {
	Upstream mirror.Upstream // the default upstream (docker.io); nil: local only
	TTL      time.Duration
	Prefetch int // background fills after a manifest miss (-1: off)
	Offline  bool
	Local    []string // local patterns
	Auth     *proxy.Auth
	// Registerer receives the HTTP and mirror metrics; nil: none exported.
	Registerer prometheus.Registerer
	Log        io.Writer // the request log, as JSON lines; nil: none
	// OnRequest is told of every finished request (after its metrics).
	OnRequest func(proxy.Done)
}

// localOnly is a berth serving only local repositories.
var localOnly = berth{}

// mirrorOf is a berth with client as its default upstream (docker.io),
// tags fresh for ttl, and no background prefetch unless a test asks.
func mirrorOf(client mirror.Upstream, ttl time.Duration) berth {
	return berth{Upstream: client, TTL: ttl, Prefetch: -1}
}

// startServer runs berth over a store in tb's temp dir, on a real loopback
// socket. Everything is closed when the test ends, the server first.
func startServer(tb testing.TB, so cache.Options, b berth) (*cache.Store, *httptest.Server) {
	tb.Helper()
	so.Logger = zerolog.Nop()
	st, err := cache.Open(tb.TempDir(), so)
	if err != nil {
		tb.Fatal(err)
	}
	var ups []route.Upstream
	var m *mirror.Mirror
	if b.Upstream != nil {
		m = mirror.New(mirror.Options{Store: st, Client: b.Upstream, TagTTL: b.TTL, Offline: b.Offline, Prefetch: b.Prefetch,
			Metrics: mirror.NewMetrics(b.Registerer)})
		ups = append(ups, route.Upstream{Name: b.Upstream.Name(), Default: true, Registry: m})
	}
	rt := route.New(route.Options{Local: cache.NewLocal(st), Store: st, Upstreams: ups, LocalPatterns: b.Local, Offline: b.Offline})
	log := zerolog.Nop()
	if b.Log != nil {
		log = zerolog.New(b.Log)
	}
	srv := httptest.NewUnstartedServer(proxy.New(proxy.Options{Registry: rt, Logger: log, Auth: b.Auth, Registerer: b.Registerer, OnRequest: b.OnRequest}))
	srv.Config.ConnContext = proxy.WithConn // as berth serve: batched writes, corked sendfile
	srv.Listener = proxy.Listener(srv.Listener)
	srv.Start()
	tb.Cleanup(func() {
		srv.Close()
		if m != nil {
			m.Close()
		}
		st.Close()
	})
	return st, srv
}

// fetched is the outcome of fetchAsync.
type fetched struct {
	status int
	body   []byte
	err    error
}

// fetchAsync GETs url on a goroutine of its own (which must not call
// t.Fatal) and delivers the outcome.
func fetchAsync(ctx context.Context, url string) <-chan fetched {
	ch := make(chan fetched, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			ch <- fetched{err: err}
			return
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			ch <- fetched{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		ch <- fetched{status: resp.StatusCode, body: b, err: err}
	}()
	return ch
}
