package proxy_test

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/proxy"
	"github.com/rs/zerolog"
)

// startServer runs berth over a store in tb's temp dir, on a real loopback
// socket. opts receives the store (a Router needs it) and returns the
// handler's options. Both are closed when the test ends, the server first.
func startServer(tb testing.TB, so cache.Options, opts func(*cache.Store) proxy.Options) (*cache.Store, *httptest.Server) {
	tb.Helper()
	so.Logger = zerolog.Nop()
	st, err := cache.Open(tb.TempDir(), so)
	if err != nil {
		tb.Fatal(err)
	}
	o := opts(st)
	o.Store, o.Logger = st, zerolog.Nop()
	srv := httptest.NewServer(proxy.New(o))
	tb.Cleanup(func() { srv.Close(); st.Close() })
	return st, srv
}

// localOnly is a berth serving only local repositories.
func localOnly(st *cache.Store) proxy.Options { return proxy.Options{Router: &proxy.Router{Store: st}} }

// mirrorOf is a berth with client as its default upstream (docker.io),
// tags fresh for ttl, and no background prefetch unless a test asks.
func mirrorOf(client proxy.Upstream, ttl time.Duration) func(*cache.Store) proxy.Options {
	return func(st *cache.Store) proxy.Options {
		return proxy.Options{PrefetchConcurrency: -1, Router: &proxy.Router{Store: st,
			Mirrors: []*proxy.Mirror{{Client: client, Default: true, TagTTL: ttl}}}}
	}
}
