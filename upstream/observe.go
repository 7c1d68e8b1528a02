package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"
)

// Exchange is one HTTP request to an upstream (each attempt and each token
// fetch is one), as an Observer sees it. It carries no URL, header or body:
// nothing of credentials or pre-signed queries.
type Exchange struct {
	Upstream string
	// Kind is what was asked for: manifest, blob, tags, referrers, ping,
	// token, or other.
	Kind   string
	Method string
	// Status is the HTTP status, 0 when no response came.
	Status int
	// Duration is until the response headers (or the failure).
	Duration time.Duration
	// Cause classifies a failure: "" for a success (below 400), else
	// timeout, tls, connection, canceled, 429, 4xx, 5xx.
	Cause string
}

// Observer is told of every exchange with an upstream, for metrics and the
// status page. It is called on the request's goroutine: it must be quick.
type Observer interface {
	Observe(Exchange)
}

// WithObserver has every exchange reported to o. Given more than once, it
// reports to each, in order (metrics and the status page both listen).
func WithObserver(o Observer) Option {
	return func(c *Client) {
		switch prev := c.observer.(type) {
		case nil:
			c.observer = o
		case observers:
			c.observer = append(prev, o)
		default:
			c.observer = observers{prev, o}
		}
	}
}

// observers reports an exchange to each of several observers.
type observers []Observer

func (obs observers) Observe(e Exchange) {
	for _, o := range obs {
		o.Observe(e)
	}
}

// observing wraps a transport to report each exchange.
type observing struct {
	base   http.RoundTripper
	name   string
	obs    Observer
	prefix string // the upstream URL's own path ("/mirror" in https://host/mirror)
	host   string // the upstream's host: anything else is a token realm or storage
}

func (o *observing) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := o.base.RoundTrip(req)
	e := Exchange{Upstream: o.name, Kind: o.kind(req), Method: req.Method, Duration: time.Since(start)}
	if resp != nil {
		e.Status = resp.StatusCode
	}
	e.Cause = Cause(e.Status, err)
	o.obs.Observe(e)
	return resp, err
}

// kind names what a request asks for from its path under the upstream's.
func (o *observing) kind(req *http.Request) string {
	p, under := strings.CutPrefix(req.URL.Path, o.prefix)
	if !under || req.URL.Host != o.host || !strings.HasPrefix(p, "/v2/") {
		q := req.URL.Query()
		if req.URL.Host == o.host || q.Has("scope") || q.Has("service") {
			return "token" // a realm
		}
		return "blob" // a redirect to storage (a CDN holding the layers)
	}
	switch {
	case p == "/v2/":
		return "ping"
	case strings.Contains(p, "/manifests/"):
		return "manifest"
	case strings.Contains(p, "/blobs/"):
		return "blob"
	case strings.HasSuffix(p, "/tags/list"):
		return "tags"
	case strings.Contains(p, "/referrers/"):
		return "referrers"
	}
	return "other"
}

// Cause classifies the outcome of an exchange: "" for a success, else
// timeout, tls, connection, canceled, 429, 4xx or 5xx.
func Cause(status int, err error) string {
	if err != nil {
		var tlsErr *tls.CertificateVerificationError
		var recErr tls.RecordHeaderError
		var ne net.Error
		switch {
		case errors.Is(err, context.Canceled):
			return "canceled"
		case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
			return "timeout"
		case errors.As(err, &tlsErr), errors.As(err, &recErr), strings.Contains(err.Error(), "tls:"):
			return "tls"
		}
		return "connection"
	}
	switch {
	case status == http.StatusTooManyRequests:
		return "429"
	case status >= 500:
		return "5xx"
	case status >= 400 && status != http.StatusUnauthorized:
		return "4xx" // a 401 is the start of the auth dance, not a failure
	}
	return ""
}
