// Package cluster makes several berth replicas on one bucket act as one
// mirror: members are health-checked, the owner of a blob's upstream
// download is chosen by rendezvous hashing over the healthy members, and a
// replica that misses a blob reads it from the bucket, or streams it from
// its owner while the owner downloads it: one upstream download per blob
// for the whole cluster.
package cluster

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Options configure a Cluster.
type Options struct {
	// Self is this replica's URL as its peers reach it.
	Self string
	// Members are the replicas' URLs (Self among them).
	Members []string
	// DNS, if set, is a URL whose host resolves to the members (a
	// Kubernetes headless Service): each address is a member, with the
	// URL's scheme and port.
	DNS string
	// Secret authenticates peer requests (both ways); "" sends and checks none.
	Secret string
	// Interval between health checks; zero means 1 s.
	Interval   time.Duration
	Logger     zerolog.Logger
	Registerer prometheus.Registerer
	// Resolver resolves DNS; nil is net.DefaultResolver.
	Resolver *net.Resolver
}

// Cluster is this replica's view of its peers.
type Cluster struct {
	o      Options
	self   string
	client *http.Client
	log    zerolog.Logger

	mu      sync.RWMutex
	members map[string]*member

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	membersGauge *prometheus.GaugeVec
	peerReqs     *prometheus.CounterVec
}

type member struct {
	url     string
	healthy atomic.Bool
	fails   int // consecutive failed checks, by the checker only
}

// Paths of the peer API, on the same port as the registry.
const (
	healthPath = "/_berth/cluster/health"
	blobPath   = "/_berth/cluster/blob"
	// Prefix is where the peer API lives.
	Prefix = "/_berth/cluster/"
)

// downAfter consecutive failed checks mark a member down; one success
// brings it back.
const downAfter = 2

// New starts watching the members. Close stops it.
func New(o Options) (*Cluster, error) {
	if o.Interval == 0 {
		o.Interval = time.Second
	}
	if o.Resolver == nil {
		o.Resolver = net.DefaultResolver
	}
	self, err := normalize(o.Self)
	if err != nil {
		return nil, fmt.Errorf("self: %w", err)
	}
	c := &Cluster{o: o, self: self, log: o.Logger, members: map[string]*member{},
		client: &http.Client{Transport: &http.Transport{
			Proxy:                 nil, // peers are reached directly, never through a proxy
			DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost:   32,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
		}},
		membersGauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_cluster_members",
			Help: "Cluster members by state (healthy, down), this replica included."}, []string{"state"}),
		peerReqs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_cluster_peer_requests_total",
			Help: "Blob requests to the owning replica by result: ok, not_found, error (the owner failed: another is asked, or this replica downloads)."}, []string{"result"}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(c.membersGauge, c.peerReqs)
	}
	var urls []string
	for _, m := range o.Members {
		u, err := normalize(m)
		if err != nil {
			return nil, fmt.Errorf("members: %w", err)
		}
		urls = append(urls, u)
	}
	if o.DNS != "" {
		if _, err := normalize(o.DNS); err != nil {
			return nil, fmt.Errorf("dns: %w", err)
		}
	}
	if len(o.Members) > 0 && !slices.Contains(urls, self) {
		return nil, fmt.Errorf("self %s is not one of the members", self)
	}
	c.setMembers(append(urls, self))
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.wg.Add(1)
	go c.watch()
	return c, nil
}

// normalize checks a member URL and drops a trailing slash.
func normalize(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return "", fmt.Errorf("%q is not a replica URL (http(s)://host:port)", s)
	}
	return u.Scheme + "://" + u.Host, nil
}

// setMembers makes urls the members, keeping the health of those known.
func (c *Cluster) setMembers(urls []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := map[string]*member{}
	for _, u := range urls {
		if m, ok := c.members[u]; ok {
			next[u] = m
			continue
		}
		m := &member{url: u}
		m.healthy.Store(true) // until a check says otherwise
		next[u] = m
		if len(c.members) > 0 {
			c.log.Info().Str("member", u).Msg("cluster member joined")
		}
	}
	for u := range c.members {
		if next[u] == nil {
			c.log.Info().Str("member", u).Msg("cluster member left")
		}
	}
	c.members = next
}

// Close stops the health checks.
func (c *Cluster) Close() {
	c.cancel()
	c.wg.Wait()
	c.client.CloseIdleConnections()
}

// Self is this replica's URL.
func (c *Cluster) Self() string { return c.self }

func (c *Cluster) watch() {
	defer c.wg.Done()
	t := time.NewTicker(c.o.Interval)
	defer t.Stop()
	lastDNS := time.Time{}
	for {
		if c.o.DNS != "" && time.Since(lastDNS) >= 5*time.Second {
			lastDNS = time.Now()
			c.resolve()
		}
		c.check()
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// resolve makes every address of the DNS name a member.
func (c *Cluster) resolve() {
	u, _ := url.Parse(c.o.DNS)
	ctx, cancel := context.WithTimeout(c.ctx, 2*time.Second)
	defer cancel()
	addrs, err := c.o.Resolver.LookupHost(ctx, u.Hostname())
	if err != nil {
		c.log.Warn().Err(err).Str("dns", c.o.DNS).Msg("resolving cluster members; keeping the last known")
		return
	}
	urls := []string{c.self}
	for _, a := range addrs {
		host := a
		if p := u.Port(); p != "" {
			host = net.JoinHostPort(a, p)
		} else if net.ParseIP(a).To4() == nil {
			host = "[" + a + "]"
		}
		if m := u.Scheme + "://" + host; m != c.self {
			urls = append(urls, m)
		}
	}
	for _, m := range c.o.Members {
		if n, err := normalize(m); err == nil && n != c.self {
			urls = append(urls, n)
		}
	}
	c.setMembers(urls)
}

// check asks every other member for its health, at once.
func (c *Cluster) check() {
	c.mu.RLock()
	ms := make([]*member, 0, len(c.members))
	for _, m := range c.members {
		if m.url != c.self {
			ms = append(ms, m)
		}
	}
	c.mu.RUnlock()
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok := c.ping(m.url)
			if ok {
				m.fails = 0
				if !m.healthy.Swap(true) {
					c.log.Info().Str("member", m.url).Msg("cluster member is back")
				}
				return
			}
			m.fails++
			if m.fails >= downAfter && m.healthy.Swap(false) {
				c.log.Warn().Str("member", m.url).Msg("cluster member is down; its blobs are owned by others until it is back")
			}
		}()
	}
	wg.Wait()
	healthy, down := 1, 0 // this replica
	for _, m := range ms {
		if m.healthy.Load() {
			healthy++
		} else {
			down++
		}
	}
	c.membersGauge.WithLabelValues("healthy").Set(float64(healthy))
	c.membersGauge.WithLabelValues("down").Set(float64(down))
}

func (c *Cluster) ping(u string) bool {
	ctx, cancel := context.WithTimeout(c.ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+healthPath, nil)
	if err != nil {
		return false
	}
	c.authorize(req)
	resp, err := c.client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// markDown takes a member out of ownership now (a request to it failed to
// connect); the next successful check brings it back.
func (c *Cluster) markDown(u string) {
	c.mu.RLock()
	m := c.members[u]
	c.mu.RUnlock()
	if m != nil && u != c.self && m.healthy.Swap(false) {
		c.log.Warn().Str("member", u).Msg("cluster member unreachable; its blobs are owned by others until it is back")
	}
}

// Owner returns the member that owns key (a digest): the healthy member
// with the highest rendezvous score. When one dies only its keys move, and
// they move back when it returns.
func (c *Cluster) Owner(key string) string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var best string
	var bestScore uint64
	for u, m := range c.members {
		if u != c.self && !m.healthy.Load() {
			continue
		}
		if s := score(u, key); best == "" || s > bestScore || (s == bestScore && u < best) {
			best, bestScore = u, s
		}
	}
	return best
}

func score(member, key string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(member))
	h.Write([]byte{0})
	h.Write([]byte(key))
	// FNV's high bits mix poorly over similar inputs: finish with
	// splitmix64's finalizer.
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Member is one member's state, for the status page and logs.
type Member struct {
	URL     string `json:"url"`
	Self    bool   `json:"self,omitempty"`
	Healthy bool   `json:"healthy"`
}

// Members lists the members in URL order.
func (c *Cluster) Members() []Member {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Member, 0, len(c.members))
	for u, m := range c.members {
		out = append(out, Member{URL: u, Self: u == c.self, Healthy: u == c.self || m.healthy.Load()})
	}
	slices.SortFunc(out, func(a, b Member) int {
		if a.URL < b.URL {
			return -1
		}
		return 1
	})
	return out
}

func (c *Cluster) authorize(req *http.Request) {
	if c.o.Secret != "" {
		req.Header.Set("Authorization", "Bearer "+c.o.Secret)
	}
}

func (c *Cluster) authorized(r *http.Request) bool {
	if c.o.Secret == "" {
		return true
	}
	want := "Bearer " + c.o.Secret
	return subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(want)) == 1
}

// errUnreachable is a peer that did not answer (refused, timed out).
var errUnreachable = errors.New("cluster member unreachable")
