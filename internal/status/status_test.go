package status

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/proxy"
	"github.com/berth-dev/berth/upstream"
)

// clock is a hand-moved clock: the tests never sleep.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 30, 12, 0, 30, 0, time.UTC)} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// at is an event happening after the clock moved by a total of after.
type at struct {
	after time.Duration
	done  proxy.Done
}

func hit(repo string, n int64) proxy.Done {
	return proxy.Done{Repo: repo, Status: 200, Bytes: n, Route: "docker.io", Cache: "hit", Source: "cache"}
}

func TestTraffic(t *testing.T) {
	t.Parallel()
	miss := proxy.Done{Repo: "library/busybox", Status: 200, Bytes: 100, Route: "docker.io", Cache: "miss", Source: "upstream"}
	push := proxy.Done{Repo: "team/app", Status: 201, Route: "local"}
	pull := proxy.Done{Repo: "team/app", Status: 200, Bytes: 50, Route: "local", Source: "local"}
	fail := proxy.Done{Repo: "library/busybox", Status: 502, Route: "docker.io"}
	ping := proxy.Done{Status: 200}
	for _, tt := range []struct {
		name     string
		events   []at
		later    time.Duration // the clock moves on before the page is read
		requests int64
		errors   int64
		ratio    float64
		bytes    map[string]int64
		results  map[string]int64
	}{
		{name: "nothing yet", ratio: -1, bytes: map[string]int64{}, results: map[string]int64{}},
		{
			name:     "hits, a miss, local content, a ping",
			events:   []at{{0, hit("library/busybox", 100)}, {0, hit("library/busybox", 100)}, {time.Minute, hit("library/alpine", 100)}, {2 * time.Minute, miss}, {0, push}, {0, pull}, {0, ping}},
			requests: 7, ratio: 0.75,
			bytes:   map[string]int64{"cache": 300, "upstream": 100, "local": 50},
			results: map[string]int64{"hit": 3, "miss": 1},
		},
		{
			name: "stale, revalidated and negative come from the cache, joined does not",
			events: []at{{0, proxy.Done{Cache: "stale"}}, {0, proxy.Done{Cache: "revalidated"}}, {0, proxy.Done{Cache: "negative"}},
				{0, proxy.Done{Cache: "joined"}}, {0, proxy.Done{Cache: "something new"}}},
			requests: 5, ratio: 0.75, bytes: map[string]int64{},
			results: map[string]int64{"stale": 1, "revalidated": 1, "negative": 1, "joined": 1},
		},
		{
			name:     "5xx are errors",
			events:   []at{{0, fail}, {0, hit("x", 1)}},
			requests: 2, errors: 1, ratio: 1, bytes: map[string]int64{"cache": 1}, results: map[string]int64{"hit": 1},
		},
		{
			name:     "59 minutes later still counts",
			events:   []at{{0, miss}},
			later:    59 * time.Minute,
			requests: 1, ratio: 0, bytes: map[string]int64{"upstream": 100}, results: map[string]int64{"miss": 1},
		},
		{
			name:   "an hour later it is gone",
			events: []at{{0, miss}},
			later:  time.Hour, ratio: -1, bytes: map[string]int64{}, results: map[string]int64{},
		},
		{
			name:     "a bucket reused after an hour starts from zero",
			events:   []at{{0, miss}, {0, miss}, {time.Hour, hit("x", 7)}},
			requests: 1, ratio: 1, bytes: map[string]int64{"cache": 7}, results: map[string]int64{"hit": 1},
		},
		{
			name:     "only the last hour of a long run",
			events:   []at{{0, miss}, {30 * time.Minute, miss}, {45 * time.Minute, hit("x", 1)}},
			requests: 2, ratio: 0.5, bytes: map[string]int64{"upstream": 100, "cache": 1}, results: map[string]int64{"hit": 1, "miss": 1},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClock()
			s := New(Options{Now: c.Now})
			for _, e := range tt.events {
				c.Advance(e.after)
				s.Request(e.done)
			}
			c.Advance(tt.later)
			got := s.Snapshot().Traffic
			if got.Requests != tt.requests || got.Errors != tt.errors || got.HitRatio != tt.ratio {
				t.Errorf("requests, errors, hit ratio = %d, %d, %v; want %d, %d, %v", got.Requests, got.Errors, got.HitRatio, tt.requests, tt.errors, tt.ratio)
			}
			var total int64
			for _, b := range got.Bytes {
				total += tt.bytes[b.Name]
				if b.Value != tt.bytes[b.Name] {
					t.Errorf("bytes from %s = %d, want %d", b.Name, b.Value, tt.bytes[b.Name])
				}
			}
			if got.TotalBytes != total {
				t.Errorf("total bytes = %d, want %d", got.TotalBytes, total)
			}
			if len(got.Results) != len(resultNames) {
				t.Errorf("results %v: want every result listed", got.Results)
			}
			for _, r := range got.Results {
				if r.Value != tt.results[r.Name] {
					t.Errorf("%s = %d, want %d", r.Name, r.Value, tt.results[r.Name])
				}
			}
		})
	}
}

func TestBusiest(t *testing.T) {
	t.Parallel()
	c := newClock()
	s := New(Options{Now: c.Now})
	// Twelve repositories, repo-NN asked NN times, spread over the hour.
	for n := 1; n <= 12; n++ {
		for range n {
			s.Request(hit(fmt.Sprintf("repo-%02d", n), 10))
		}
		c.Advance(5 * time.Minute)
	}
	// Ties: the most bytes first, then by name.
	s.Request(hit("tie-b", 1))
	s.Request(hit("tie-a", 1))
	// The route of the latest minute wins.
	s.Request(proxy.Done{Repo: "repo-12", Route: "local"})
	got := s.Snapshot().Traffic
	var names []string
	for _, r := range got.Busiest {
		names = append(names, r.Name)
	}
	want := []string{"repo-12", "repo-11", "repo-10", "repo-09", "repo-08", "repo-07", "repo-06", "repo-05", "repo-04", "repo-03"}
	if !slices.Equal(names, want) {
		t.Errorf("busiest = %v, want %v", names, want)
	}
	if r := got.Busiest[0]; r.Requests != 13 || r.Bytes != 120 || r.Route != "local" {
		t.Errorf("busiest[0] = %+v, want 13 requests, 120 bytes, route local", r)
	}
	if r := got.Busiest[1]; r.Route != "docker.io" {
		t.Errorf("busiest[1] = %+v, want route docker.io", r)
	}

	c.Advance(time.Minute)
	s.Request(hit("tie-b", 1))
	s.Request(hit("tie-a", 1))
	s.Request(hit("big", 5))
	c.Advance(time.Hour - time.Minute) // only this minute is left
	names = names[:0]
	for _, r := range s.Snapshot().Traffic.Busiest {
		names = append(names, r.Name)
	}
	if want := []string{"big", "tie-a", "tie-b"}; !slices.Equal(names, want) {
		t.Errorf("busiest = %v, want %v", names, want)
	}
}

// One minute counts at most maxReposPerMinute repositories by name, the
// rest together: made-up names cannot grow memory without bound.
func TestBusiestBounded(t *testing.T) {
	t.Parallel()
	c := newClock()
	s := New(Options{Now: c.Now})
	for i := range maxReposPerMinute + 44 {
		s.Request(hit(fmt.Sprintf("scan/%d", i), 1))
	}
	s.Request(hit("scan/0", 1)) // a name already counted still is
	b := &s.minutes[c.Now().Unix()/60%window]
	if len(b.repos) != maxReposPerMinute || b.other.requests != 44 || b.repos["scan/0"].requests != 2 {
		t.Errorf("repos by name = %d (want %d), other = %d (want 44), scan/0 = %d (want 2)",
			len(b.repos), maxReposPerMinute, b.other.requests, b.repos["scan/0"].requests)
	}
	got := s.Snapshot().Traffic
	if got.OtherRepos != 44 || len(got.Busiest) != topRepos || got.Busiest[0].Name != "scan/0" {
		t.Errorf("other = %d, busiest = %v", got.OtherRepos, got.Busiest)
	}
}

func TestUpstreamHealth(t *testing.T) {
	t.Parallel()
	ok := func(ms int) upstream.Exchange {
		return upstream.Exchange{Upstream: "docker.io", Kind: "manifest", Status: 200, Duration: time.Duration(ms) * time.Millisecond}
	}
	failed := func(cause string, status int, kind string) upstream.Exchange {
		return upstream.Exchange{Upstream: "docker.io", Kind: kind, Status: status, Cause: cause, Duration: 5 * time.Millisecond}
	}
	type ex struct {
		after time.Duration
		e     upstream.Exchange
	}
	for _, tt := range []struct {
		name      string
		exchanges []ex
		later     time.Duration
		state     string
		okAgo     time.Duration // -1: never
		errAgo    time.Duration // -1: never
		cause     string
		status    int
		limited   bool
		p50, p90  time.Duration
	}{
		{name: "no exchange", state: "idle", okAgo: -1, errAgo: -1},
		{name: "a success", exchanges: []ex{{0, ok(10)}}, later: time.Second, state: "ok", okAgo: time.Second, errAgo: -1, p50: 10 * time.Millisecond, p90: 10 * time.Millisecond},
		{
			name:      "connection refused after a success",
			exchanges: []ex{{0, ok(10)}, {time.Minute, failed("connection", 0, "blob")}},
			state:     "failing", okAgo: time.Minute, errAgo: 0, cause: "connection",
			p50: 10 * time.Millisecond, p90: 10 * time.Millisecond, // no response, no latency
		},
		{
			name:      "back after a timeout",
			exchanges: []ex{{0, failed("timeout", 0, "manifest")}, {time.Minute, ok(20)}},
			state:     "ok", okAgo: 0, errAgo: time.Minute, cause: "timeout", p50: 20 * time.Millisecond, p90: 20 * time.Millisecond,
		},
		{
			name:      "a 5xx",
			exchanges: []ex{{0, failed("5xx", 503, "manifest")}},
			state:     "failing", okAgo: -1, errAgo: 0, cause: "5xx", status: 503, p50: 5 * time.Millisecond, p90: 5 * time.Millisecond,
		},
		{
			name:      "a 404 is an answer",
			exchanges: []ex{{0, ok(10)}, {0, failed("4xx", 404, "manifest")}},
			state:     "ok", okAgo: 0, errAgo: 0, cause: "4xx", status: 404, p50: 5 * time.Millisecond, p90: 10 * time.Millisecond,
		},
		{
			name:      "a 429 rate-limits for five minutes",
			exchanges: []ex{{0, ok(10)}, {0, failed("429", 429, "token")}, {time.Minute, ok(10)}},
			later:     3 * time.Minute,
			state:     "rate-limited", okAgo: 3 * time.Minute, errAgo: 4 * time.Minute, cause: "429", status: 429, limited: true,
			p50: 10 * time.Millisecond, p90: 10 * time.Millisecond,
		},
		{
			name:      "then no longer",
			exchanges: []ex{{0, failed("429", 429, "token")}},
			later:     rateLimitWindow,
			state:     "ok", okAgo: -1, errAgo: rateLimitWindow, cause: "429", status: 429,
			p50: 5 * time.Millisecond, p90: 5 * time.Millisecond,
		},
		{
			name:      "a 401 challenge and a canceled exchange say nothing",
			exchanges: []ex{{0, failed("", 401, "manifest")}, {0, failed("canceled", 0, "blob")}},
			state:     "idle", okAgo: -1, errAgo: -1, p50: 5 * time.Millisecond, p90: 5 * time.Millisecond,
		},
		{
			name: "latency percentiles of the last 64",
			exchanges: func() []ex {
				var out []ex
				for i := range 100 { // 1..36 ms drop out; 37..100 remain
					out = append(out, ex{0, ok(i + 1)})
				}
				return out
			}(),
			state: "ok", okAgo: 0, errAgo: -1, p50: 68 * time.Millisecond, p90: 94 * time.Millisecond,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClock()
			s := New(Options{Now: c.Now, Upstreams: []string{"docker.io", "ghcr.io"}})
			for _, e := range tt.exchanges {
				c.Advance(e.after)
				s.Observe(e.e)
			}
			c.Advance(tt.later)
			ups := s.Snapshot().Upstreams
			if len(ups) != 2 || ups[0].Name != "docker.io" || ups[1].Name != "ghcr.io" || ups[1].State != "idle" {
				t.Fatalf("upstreams = %+v, want docker.io then an idle ghcr.io", ups)
			}
			u := ups[0]
			now := c.Now()
			agoIs := func(what string, tm time.Time, want time.Duration) {
				if want < 0 && !tm.IsZero() || want >= 0 && now.Sub(tm) != want {
					t.Errorf("%s at %v (%v ago), want %v ago", what, tm, now.Sub(tm), want)
				}
			}
			agoIs("last success", u.LastOK, tt.okAgo)
			agoIs("last error", u.LastErr, tt.errAgo)
			if u.State != tt.state || u.ErrCause != tt.cause || u.ErrStatus != tt.status || !u.RateLimitedUntil.IsZero() != tt.limited {
				t.Errorf("state %s, cause %q, status %d, limited until %v; want %s, %q, %d, limited %v",
					u.State, u.ErrCause, u.ErrStatus, u.RateLimitedUntil, tt.state, tt.cause, tt.status, tt.limited)
			}
			if u.P50 != tt.p50 || u.P90 != tt.p90 {
				t.Errorf("p50, p90 = %v, %v; want %v, %v", u.P50, u.P90, tt.p50, tt.p90)
			}
		})
	}
}

func TestUpstreamsListed(t *testing.T) {
	t.Parallel()
	c := newClock()
	s := New(Options{Now: c.Now, Upstreams: []string{"quay.io", "docker.io"}})
	s.Observe(upstream.Exchange{Upstream: "docker.io", Status: 200})
	s.Observe(upstream.Exchange{Upstream: "unlisted", Status: 200}) // reports before a reload lists it
	names := func() (out []string) {
		for _, u := range s.Snapshot().Upstreams {
			out = append(out, u.Name+":"+u.State)
		}
		return out
	}
	if got, want := names(), []string{"quay.io:idle", "docker.io:ok", "unlisted:ok"}; !slices.Equal(got, want) {
		t.Errorf("upstreams = %v, want %v", got, want)
	}
	s.SetUpstreams([]string{"docker.io", "ghcr.io"}) // a reload: what docker.io did is kept
	if got, want := names(), []string{"docker.io:ok", "ghcr.io:idle"}; !slices.Equal(got, want) {
		t.Errorf("after a reload, upstreams = %v, want %v", got, want)
	}
	for i := range 2 * maxUpstreams {
		s.Observe(upstream.Exchange{Upstream: fmt.Sprint("u", i), Status: 200})
	}
	if n := len(s.Snapshot().Upstreams); n != maxUpstreams {
		t.Errorf("%d upstreams listed, want at most %d", n, maxUpstreams)
	}
}

func TestFormat(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		got, want string
	}{
		{formatBytes(0), "0 B"}, {formatBytes(1023), "1023 B"}, {formatBytes(1536), "1.5 KiB"},
		{formatBytes(50 << 30), "50.0 GiB"}, {formatBytes(3 << 60), "3.0 EiB"},
		{formatDuration(0), "0s"}, {formatDuration(59 * time.Second), "59s"}, {formatDuration(61 * time.Second), "1m 1s"},
		{formatDuration(3*time.Hour + 4*time.Minute + 5*time.Second), "3h 4m"}, {formatDuration(50 * time.Hour), "2d 2h"},
		{shortDigest("sha256:0123456789abcdef0123"), "sha256:0123456789ab"}, {shortDigest("sha256:01"), "sha256:01"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

// BenchmarkStatusRequest is the cost Request adds to every API request.
func BenchmarkStatusRequest(b *testing.B) {
	s := New(Options{})
	repos := make([]proxy.Done, 64)
	for i := range repos {
		repos[i] = hit(fmt.Sprintf("library/image-%d", i), 4096)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			s.Request(repos[i%len(repos)])
			i++
		}
	})
}
