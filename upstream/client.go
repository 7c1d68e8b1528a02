// Package upstream is berth's client for one remote OCI / Docker registry.
//
// A Client speaks the read-only half of the OCI distribution protocol
// (manifests, blobs, tags, ping) against a single upstream such as Docker Hub,
// GHCR or a private registry. It owns everything that is specific to talking
// to a remote registry over an unreliable network:
//
//   - the authentication dance (Bearer token challenges with a bounded
//     per-scope token cache and one shared fetch per scope, or Basic), with
//     credentials (fixed, from a docker config.json or a credential helper:
//     Credentials) sent only to the upstream host and to a token realm on
//     that host or one listed in Config.TokenRealms, never to redirect
//     targets such as storage CDNs;
//   - TLS towards the upstream: a private CA, a client certificate;
//   - honouring a 429's Retry-After: nothing is sent until it has passed;
//   - timeouts: dial, TLS handshake and response header per attempt, an
//     overall deadline per metadata operation, and a minimum rate for
//     response bodies;
//   - retries with exponential back-off for idempotent requests;
//   - transparent resumption of interrupted blob downloads with Range
//     requests;
//   - mapping of failures to a small set of sentinel errors (ErrNotFound,
//     ErrDenied, ErrRateLimited, ErrUnavailable, ...) so the caching layer can
//     decide, e.g., to serve stale content when IsUnavailable(err).
//
// A Client is safe for concurrent use by multiple goroutines.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Default values used for zero fields of Config.
const (
	DefaultDialTimeout           = 5 * time.Second
	DefaultTLSHandshakeTimeout   = 5 * time.Second
	DefaultResponseHeaderTimeout = 10 * time.Second
	DefaultOperationTimeout      = 10 * time.Second
	DefaultIdleStreamTimeout     = 60 * time.Second
	DefaultMinStreamRate         = 16 << 10 // bytes per second
	DefaultRetries               = 3
)

// defaultBackoff is the first retry delay; it doubles on each further retry.
// It is small because a pull-through mirror has a client waiting on it.
const defaultBackoff = 100 * time.Millisecond

// maxRedirects bounds redirect chains (blob GETs are usually redirected once,
// to a storage CDN).
const maxRedirects = 10

// Config describes one upstream registry.
type Config struct {
	// Name is the host name clients use for this upstream, e.g.
	// "docker.io". It only labels errors and logs; it defaults to the host
	// of URL.
	Name string
	// URL is the registry's base URL, e.g. "https://registry-1.docker.io"
	// or "http://127.0.0.1:5001". The /v2/ API is addressed below it.
	URL string
	// Username and Password are optional credentials. They are used for
	// Basic challenges and for token requests to a Bearer realm, never
	// elsewhere. Password is expected to be resolved already (from a file or
	// environment variable) by the caller. Credentials replaces them.
	Username string
	Password string
	// Credentials, when set, supplies the credential on demand instead of
	// Username and Password (a docker config file, a credential helper).
	Credentials Credentials

	// CAFile is a PEM file of certificate authorities trusted for this
	// upstream in addition to the system's; ClientCertFile and
	// ClientKeyFile are a client certificate (mutual TLS);
	// InsecureSkipVerify turns certificate verification off. They
	// configure the default transport (ignored with WithTransport).
	CAFile             string
	ClientCertFile     string
	ClientKeyFile      string
	InsecureSkipVerify bool

	// TokenRealms are the hosts, besides the upstream's own, that a Bearer
	// challenge may send berth's credentials to ("auth.docker.io"; an
	// entry with a port matches that port only). A realm on any other host
	// is refused with ErrMisconfigured and never contacted.
	TokenRealms []string

	// DialTimeout, TLSHandshakeTimeout and ResponseHeaderTimeout configure
	// the default transport (they are ignored when WithTransport is used).
	// Zero means the Default* constant.
	DialTimeout           time.Duration
	TLSHandshakeTimeout   time.Duration
	ResponseHeaderTimeout time.Duration

	// IdleStreamTimeout and MinStreamRate (bytes per second) set the
	// slowest a response body may arrive: each IdleStreamTimeout spent
	// waiting for it must bring at least MinStreamRate x IdleStreamTimeout
	// bytes (at least one), else the read fails as ErrUnavailable and
	// GetBlob resumes from where it stopped, at most Retries times. With
	// the defaults that is 960 KiB a minute. Time the caller spends between
	// reads does not count. Zero means the Default* constant.
	IdleStreamTimeout time.Duration
	MinStreamRate     int64

	// OperationTimeout bounds a whole metadata operation: HeadManifest,
	// GetManifest, HeadBlob, Tags, Referrers, Ping and a token fetch, over
	// all their attempts and back-offs and the reading of the body, so that
	// a hung upstream costs a caller this long and not attempts times
	// ResponseHeaderTimeout. GetBlob is not bounded as a whole (a large blob
	// takes as long as it takes): each of its attempts has
	// ResponseHeaderTimeout and its body IdleStreamTimeout and
	// MinStreamRate. Zero means DefaultOperationTimeout.
	OperationTimeout time.Duration

	// Retries is the number of attempts for idempotent requests failing
	// with connection errors or 5xx, and the number of resumptions of an
	// interrupted blob stream. Zero means DefaultRetries.
	Retries int

	// MaxManifestSize bounds a manifest HeadManifest or GetManifest
	// accepts, in bytes (max_manifest_bytes). Zero means MaxManifestSize,
	// the package constant.
	MaxManifestSize int64
}

// Option customises a Client.
type Option func(*Client)

// WithTransport sets the base HTTP transport, replacing the default one
// built from the Config timeouts. Tests use it to inject counting or
// fault-injecting transports.
func WithTransport(rt http.RoundTripper) Option {
	return func(c *Client) { c.transport = rt }
}

// WithLogger sets the logger for debug information about retries, token
// fetches and resumptions. Credentials and tokens are never logged.
func WithLogger(l zerolog.Logger) Option {
	return func(c *Client) { c.log = l }
}

// Client talks to one upstream registry. Create it with New.
type Client struct {
	name   string
	base   *url.URL
	creds  Credentials // nil: anonymous
	realms []string    // allowed token realm hosts besides base's

	// limitedUntil is when an upstream 429's Retry-After ends (Unix
	// nanoseconds); until then no request is sent.
	limitedUntil atomic.Int64

	retries     int
	maxManifest int64
	idleTimeout time.Duration
	minRate     int64
	// opTimeout bounds a metadata operation; opTimeoutCause is what a
	// context it ended reports, naming the bound.
	opTimeout      time.Duration
	opTimeoutCause error
	// backoff is the first retry delay; a field so in-package tests can
	// shorten it.
	backoff time.Duration
	// now is the clock used for token expiry; a field so in-package tests
	// can move time forward without sleeping.
	now func() time.Time

	transport http.RoundTripper
	observer  Observer
	http      *http.Client
	log       zerolog.Logger

	auth authState
	// detached tracks the goroutines a call leaves running after it
	// returns (shared token fetches); each has a deadline of its own.
	detached sync.WaitGroup
}

// New validates cfg and returns a Client for it. Validation errors name the
// offending Config field.
func New(cfg Config, opts ...Option) (*Client, error) {
	base, err := parseBaseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	durations := []struct {
		name string
		v    time.Duration
	}{
		{"DialTimeout", cfg.DialTimeout},
		{"TLSHandshakeTimeout", cfg.TLSHandshakeTimeout},
		{"ResponseHeaderTimeout", cfg.ResponseHeaderTimeout},
		{"IdleStreamTimeout", cfg.IdleStreamTimeout},
		{"OperationTimeout", cfg.OperationTimeout},
	}
	for _, d := range durations {
		if d.v < 0 {
			return nil, fmt.Errorf("upstream: Config.%s must not be negative, got %s", d.name, d.v)
		}
	}
	if cfg.Retries < 0 {
		return nil, fmt.Errorf("upstream: Config.Retries must not be negative, got %d", cfg.Retries)
	}
	if cfg.MinStreamRate < 0 {
		return nil, fmt.Errorf("upstream: Config.MinStreamRate must not be negative, got %d", cfg.MinStreamRate)
	}
	if cfg.MaxManifestSize < 0 {
		return nil, fmt.Errorf("upstream: Config.MaxManifestSize must not be negative, got %d", cfg.MaxManifestSize)
	}
	if cfg.Password != "" && cfg.Username == "" {
		return nil, errors.New("upstream: Config.Username is required when Config.Password is set")
	}
	if (cfg.ClientCertFile == "") != (cfg.ClientKeyFile == "") {
		return nil, errors.New("upstream: Config.ClientCertFile and Config.ClientKeyFile go together")
	}

	c := &Client{
		name:        cfg.Name,
		base:        base,
		creds:       cfg.Credentials,
		realms:      cfg.TokenRealms,
		retries:     orDefault(cfg.Retries, DefaultRetries),
		maxManifest: orDefault(cfg.MaxManifestSize, MaxManifestSize),
		idleTimeout: orDefault(cfg.IdleStreamTimeout, DefaultIdleStreamTimeout),
		minRate:     orDefault(cfg.MinStreamRate, DefaultMinStreamRate),
		opTimeout:   orDefault(cfg.OperationTimeout, DefaultOperationTimeout),
		backoff:     defaultBackoff,
		now:         time.Now,
		log:         zerolog.Nop(),
	}
	if c.name == "" {
		c.name = base.Host
	}
	c.opTimeoutCause = fmt.Errorf("operation took longer than %s: %w", c.opTimeout, context.DeadlineExceeded)
	c.auth.tokens = newTokenCache(maxTokenScopes)
	c.auth.flights = make(map[string]*tokenFlight)
	if c.creds == nil && cfg.Username != "" {
		c.creds = Static{Username: cfg.Username, Password: cfg.Password}
	}
	for _, opt := range opts {
		opt(c)
	}
	if c.transport == nil {
		tc, err := tlsConfig(cfg)
		if err != nil {
			return nil, err
		}
		c.transport = defaultTransport(cfg, tc)
	}
	rt := c.transport
	if c.observer != nil {
		rt = &observing{base: rt, name: c.name, obs: c.observer, prefix: strings.TrimSuffix(c.base.Path, "/"), host: c.base.Host}
	}
	c.http = &http.Client{Transport: rt, CheckRedirect: checkRedirect}
	return c, nil
}

// Name returns the upstream's name (Config.Name, or the URL host).
func (c *Client) Name() string { return c.name }

// parseBaseURL validates Config.URL. Errors never echo the URL itself since
// it might (wrongly) contain credentials.
func parseBaseURL(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("upstream: Config.URL is required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("upstream: Config.URL is not a valid URL: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("upstream: Config.URL must use http or https, got scheme %q", u.Scheme)
	case u.Host == "":
		return nil, errors.New("upstream: Config.URL has no host")
	case u.User != nil:
		return nil, errors.New("upstream: Config.URL must not contain credentials; use Config.Username and Config.Password")
	case u.RawQuery != "" || u.Fragment != "":
		return nil, errors.New("upstream: Config.URL must not have a query or fragment")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// defaultTransport builds a transport honouring the Config timeouts. It is
// built from scratch rather than cloned from http.DefaultTransport so that
// nothing else in the process can influence it.
func defaultTransport(cfg Config, tc *tls.Config) *http.Transport {
	dialer := &net.Dialer{
		Timeout:   orDefault(cfg.DialTimeout, DefaultDialTimeout),
		KeepAlive: 30 * time.Second,
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   32, // a mirror talks to this one host a lot
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   orDefault(cfg.TLSHandshakeTimeout, DefaultTLSHandshakeTimeout),
		ResponseHeaderTimeout: orDefault(cfg.ResponseHeaderTimeout, DefaultResponseHeaderTimeout),
		ExpectContinueTimeout: time.Second,
		TLSClientConfig:       tc,
	}
}

// tlsConfig builds the TLS client configuration of Config's CAFile,
// ClientCertFile/ClientKeyFile and InsecureSkipVerify; nil when none is set.
// Errors name the Config field and the file, never its content.
func tlsConfig(cfg Config) (*tls.Config, error) {
	if cfg.CAFile == "" && cfg.ClientCertFile == "" && !cfg.InsecureSkipVerify {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify} //nolint:gosec // an operator's explicit choice, logged at warn
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream: Config.CAFile: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream: Config.CAFile: %s holds no PEM certificate", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	if cfg.ClientCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.ClientCertFile, cfg.ClientKeyFile)
		if err != nil {
			return nil, fmt.Errorf("upstream: Config.ClientCertFile/ClientKeyFile: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// checkRedirect follows redirects but drops the Authorization header when the
// target is another origin: blob downloads are redirected to storage CDNs
// with pre-signed URLs, and our token or credentials must not leak there.
// (net/http's own rule ignores the port and keeps the header for
// subdomains, which is not strict enough.)
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	orig := via[0].URL
	if req.URL.Scheme != orig.Scheme || req.URL.Host != orig.Host {
		req.Header.Del("Authorization")
	}
	return nil
}

// request describes one logical API request. Requests are rebuilt for every
// attempt, which is possible because all of them are bodiless HEAD/GETs.
type request struct {
	op     string // for errors and logs, e.g. "GET manifest foo:bar"
	method string
	path   string // below the base URL, starting with "/v2/"
	query  url.Values
	header http.Header
	scope  string // token scope, "" for registry-wide requests (ping)
}

// url returns the absolute URL for an API path.
func (c *Client) url(path string, q url.Values) string {
	u := *c.base
	u.Path = c.base.Path + path
	if len(q) > 0 {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// do performs r with authentication and retries. It returns the response for
// any status below 400 (the body is wrapped to enforce the minimum rate) and
// an *Error otherwise. A 401 triggers one round of the auth dance followed
// by one more attempt.
func (c *Client) do(ctx context.Context, r *request) (*http.Response, error) {
	challenged, renewed, renewals := false, false, 0
	for {
		authz, err := c.authorization(ctx, r.op, r.scope)
		if err != nil {
			return nil, err
		}
		resp, err := c.roundTrip(ctx, r.op, func(ctx context.Context) (*http.Request, error) {
			req, err := http.NewRequestWithContext(ctx, r.method, c.url(r.path, r.query), nil)
			if err != nil {
				return nil, err
			}
			for k, vs := range r.header {
				req.Header[k] = append([]string(nil), vs...)
			}
			if authz != "" {
				req.Header.Set("Authorization", authz)
			}
			return req, nil
		})
		if err != nil {
			return nil, err
		}
		// Only the registry's own challenges are answered: a 401 from a
		// host a redirect led to (a storage CDN) must never make berth
		// send this upstream's credentials to a realm that host names.
		// One more round is allowed when the rejected credential was
		// replaced by a fresh one (a helper's token that had expired).
		if resp.StatusCode == http.StatusUnauthorized && (!challenged || renewed && renewals < 2) && c.sameOrigin(resp.Request) {
			if challenged {
				renewals++
			}
			challenged = true
			hdr := resp.Header
			drain(resp)
			renewed, err = c.handleChallenge(ctx, r, hdr, authz)
			if err != nil {
				return nil, err
			}
			continue
		}
		if resp.StatusCode >= 400 {
			return nil, c.statusError(r.op, resp)
		}
		return resp, nil
	}
}

// sameOrigin reports whether req went to the registry itself (scheme, host
// and port), not to a host a redirect led to.
func (c *Client) sameOrigin(req *http.Request) bool {
	return req != nil && req.URL.Scheme == c.base.Scheme && req.URL.Host == c.base.Host
}

// roundTrip sends the request produced by build, retrying connection errors
// and 5xx responses with exponential back-off, up to c.retries attempts.
// Successful responses (status < 500) get their body wrapped so that it
// honours the minimum stream rate and releases the per-attempt context on
// Close.
func (c *Client) roundTrip(ctx context.Context, op string, build func(context.Context) (*http.Request, error)) (*http.Response, error) {
	var last error
	for attempt := 1; ; attempt++ {
		if err := c.rateLimited(op); err != nil {
			return nil, err
		}
		// Each attempt gets its own cancelable context: cancelling it is
		// how a stalled body read is aborted.
		reqCtx, cancel := context.WithCancel(ctx)
		req, err := build(reqCtx)
		if err != nil {
			cancel()
			return nil, c.newError(op, ErrInvalidArgument, "cannot build request", err)
		}
		resp, err := c.http.Do(req)
		switch {
		case err != nil:
			cancel()
			if ctx.Err() != nil {
				return nil, c.ctxError(op, ctx)
			}
			last = c.newError(op, ErrUnavailable, "", err)
		case resp.StatusCode >= 500:
			last = c.statusError(op, resp)
			cancel()
		default:
			resp.Body = newRateBody(resp.Body, c.idleTimeout, c.minRate, cancel)
			return resp, nil
		}
		if attempt >= c.retries {
			return nil, last
		}
		delay := c.backoff << (attempt - 1)
		c.log.Debug().Str("upstream", c.name).Str("op", op).Int("attempt", attempt).
			Dur("backoff", delay).AnErr("error", last).Msg("retrying upstream request")
		if err := sleep(ctx, delay); err != nil {
			return nil, c.ctxError(op, ctx)
		}
	}
}

// withOperationDeadline bounds a metadata operation by Config.OperationTimeout.
func (c *Client) withOperationDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, c.opTimeout, c.opTimeoutCause)
}

// ctxError reports that the caller's context ended. A deadline, the
// caller's or the operation's own, counts as the upstream being too slow
// (ErrUnavailable) so callers may serve stale content; a cancellation is
// just the context error.
func (c *Client) ctxError(op string, ctx context.Context) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return c.newError(op, ErrUnavailable, "", context.Cause(ctx))
	}
	return c.newError(op, err, "", nil)
}

// bodyError classifies an error that occurred while reading a response body.
func (c *Client) bodyError(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return c.ctxError(op, ctx)
	}
	return c.newError(op, ErrUnavailable, "reading response body", err)
}

// sleep waits for d or until ctx is done, whichever comes first.
func sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// drain discards a little of the body so the connection can be reused, then
// closes it.
func drain(resp *http.Response) {
	_, _ = ioCopyN(resp.Body, 4<<10)
	_ = resp.Body.Close()
}
