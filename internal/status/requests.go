package status

import (
	"cmp"
	"slices"
	"sync"

	"github.com/berth-dev/berth/proxy"
)

const (
	// window is how many one-minute buckets are kept: the page shows the
	// last hour.
	window = 60
	// maxReposPerMinute bounds the repositories counted by name in one
	// minute; requests for more (a scan of made-up names) are counted
	// together, so memory stays bounded whatever clients ask for.
	maxReposPerMinute = 256
	// topRepos is how many of the busiest repositories the page lists.
	topRepos = 10
)

// The cache results a mirror reports (registry.RequestInfo.Cache), in the
// order the page lists them; the first four were answered from the cache.
var resultNames = [...]string{"hit", "revalidated", "stale", "negative", "miss", "joined"}

const servedFromCache = 4 // resultNames[:servedFromCache]

// The sources of response bytes (proxy.Done.Source), in the page's order.
var sourceNames = [...]string{"cache", "upstream", "local"}

func resultIndex(r string) int {
	switch r {
	case "hit":
		return 0
	case "revalidated":
		return 1
	case "stale":
		return 2
	case "negative":
		return 3
	case "miss":
		return 4
	case "joined":
		return 5
	}
	return -1
}

func sourceIndex(s string) int {
	switch s {
	case "cache":
		return 0
	case "upstream":
		return 1
	case "local":
		return 2
	}
	return -1
}

// minute counts the requests that finished in one minute. One short lock
// per request: the counters and the repository map change together.
type minute struct {
	mu       sync.Mutex
	at       int64 // the minute (Unix seconds / 60) counted; reset when the ring comes round
	requests int64
	errors   int64 // responses with status >= 500
	results  [len(resultNames)]int64
	bytes    [len(sourceNames)]int64
	repos    map[string]*repoCount
	other    repoCount // requests for repositories past maxReposPerMinute
}

type repoCount struct {
	requests int64
	bytes    int64
	route    string // local or the upstream's name, as last seen
}

// Request counts a finished API request; it is proxy.Options.OnRequest.
func (s *Status) Request(d proxy.Done) {
	m := s.minute()
	b := &s.minutes[m%window]
	b.mu.Lock()
	if b.at != m {
		b.reset(m)
	}
	b.requests++
	if d.Status >= 500 {
		b.errors++
	}
	if i := resultIndex(d.Cache); i >= 0 {
		b.results[i]++
	}
	if i := sourceIndex(d.Source); i >= 0 {
		b.bytes[i] += d.Bytes
	}
	if d.Repo != "" {
		rc := b.repos[d.Repo]
		if rc == nil {
			if len(b.repos) < maxReposPerMinute {
				rc = new(repoCount)
				b.repos[d.Repo] = rc
			} else {
				rc = &b.other
			}
		}
		rc.requests++
		rc.bytes += d.Bytes
		if d.Route != "" {
			rc.route = d.Route
		}
	}
	b.mu.Unlock()
}

// reset makes b count minute at, from zero; b.mu is held.
func (b *minute) reset(at int64) {
	b.at, b.requests, b.errors = at, 0, 0
	b.results, b.bytes, b.other = [len(resultNames)]int64{}, [len(sourceNames)]int64{}, repoCount{}
	if b.repos == nil {
		b.repos = make(map[string]*repoCount)
	}
	clear(b.repos)
}

// Traffic is the last hour of requests.
type Traffic struct {
	Requests int64
	Errors   int64 // status >= 500
	// Results counts the requests a mirror answered, by cache result
	// (hit, revalidated, stale, negative, miss, joined; all listed).
	Results []Count
	// HitRatio is the part of Results answered from the cache (hit,
	// revalidated, stale, negative); -1 when a mirror answered nothing.
	HitRatio float64
	// Bytes is what responses carried, by source (cache, upstream, local).
	Bytes      []Count
	TotalBytes int64
	// Busiest are the repositories with the most requests, most first.
	Busiest []Repo
	// OtherRepos counts requests for repositories not counted by name
	// (past the per-minute bound).
	OtherRepos int64
}

// Count is one named number.
type Count struct {
	Name  string
	Value int64
}

// Repo is one of the busiest repositories.
type Repo struct {
	Name     string // as clients named it
	Route    string // local or the upstream's name
	Requests int64
	Bytes    int64
}

// traffic sums the buckets of the last hour.
func (s *Status) traffic() Traffic {
	now := s.minute()
	var t Traffic
	var results [len(resultNames)]int64
	var bytes [len(sourceNames)]int64
	type agg struct {
		Repo
		routeAt int64 // the minute Route was seen in: the latest wins
	}
	repos := make(map[string]*agg)
	for i := range s.minutes {
		b := &s.minutes[i]
		b.mu.Lock()
		if b.at > now-window && b.at <= now {
			t.Requests += b.requests
			t.Errors += b.errors
			for j, v := range b.results {
				results[j] += v
			}
			for j, v := range b.bytes {
				bytes[j] += v
			}
			for name, rc := range b.repos {
				r := repos[name]
				if r == nil {
					r = &agg{Repo: Repo{Name: name}}
					repos[name] = r
				}
				r.Requests += rc.requests
				r.Bytes += rc.bytes
				if rc.route != "" && b.at >= r.routeAt {
					r.Route, r.routeAt = rc.route, b.at
				}
			}
			t.OtherRepos += b.other.requests
		}
		b.mu.Unlock()
	}
	var answered, cached int64
	for i, v := range results {
		t.Results = append(t.Results, Count{resultNames[i], v})
		answered += v
		if i < servedFromCache {
			cached += v
		}
	}
	t.HitRatio = -1
	if answered > 0 {
		t.HitRatio = float64(cached) / float64(answered)
	}
	for i, v := range bytes {
		t.Bytes = append(t.Bytes, Count{sourceNames[i], v})
		t.TotalBytes += v
	}
	t.Busiest = make([]Repo, 0, len(repos))
	for _, r := range repos {
		t.Busiest = append(t.Busiest, r.Repo)
	}
	slices.SortFunc(t.Busiest, func(a, b Repo) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(b.Bytes, a.Bytes), cmp.Compare(a.Name, b.Name))
	})
	if len(t.Busiest) > topRepos {
		t.Busiest = t.Busiest[:topRepos]
	}
	return t
}
