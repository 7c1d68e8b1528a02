package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
)

// Sentinel errors returned (wrapped) by Client methods. Match them with
// errors.Is; the concrete error is usually an *Error carrying details.
var (
	// ErrNotFound means the upstream does not have the manifest, blob or
	// repository (HTTP 404 or a MANIFEST_UNKNOWN / BLOB_UNKNOWN /
	// NAME_UNKNOWN error code).
	ErrNotFound = errors.New("not found")
	// ErrDenied means the upstream refused access even after the
	// authentication dance was attempted (HTTP 401/403).
	ErrDenied = errors.New("access denied")
	// ErrRateLimited means the upstream answered HTTP 429.
	ErrRateLimited = errors.New("rate limited")
	// ErrUnavailable means the upstream could not be reached or failed:
	// connection errors, timeouts, HTTP 5xx.
	ErrUnavailable = errors.New("upstream unavailable")
	// ErrDigestMismatch means content received from the upstream does not
	// match the digest it was requested by or advertised with.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrTooLarge means a manifest exceeded Config.MaxManifestSize.
	ErrTooLarge = errors.New("manifest too large")
	// ErrUnexpectedResponse means the upstream answered something that does
	// not follow the distribution protocol (unexpected status, malformed
	// body or headers, inconsistent Content-Range, ...).
	ErrUnexpectedResponse = errors.New("unexpected upstream response")
	// ErrMisconfigured means berth's own configuration for the upstream
	// stopped the request: a token realm on a host it may not send
	// credentials to, a credential helper or docker config that failed.
	// Nothing was sent to the host in question.
	ErrMisconfigured = errors.New("upstream configuration refused the request")
	// ErrInvalidArgument means the caller passed an invalid repository name,
	// reference or digest; no request was sent.
	ErrInvalidArgument = errors.New("invalid argument")
)

// IsUnavailable reports whether err means the upstream is (temporarily)
// unable to serve: ErrUnavailable or ErrRateLimited. Callers use it to
// decide to serve stale cached content instead of failing.
func IsUnavailable(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrRateLimited)
}

// Error describes a failed upstream operation. It wraps one of the sentinel
// errors (Kind) and, when there is one, the underlying cause (Err), so both
// can be matched with errors.Is / errors.As.
//
// Error never contains credentials or tokens: those are only ever carried in
// request headers, which are not part of any field.
type Error struct {
	Upstream string // Config.Name of the upstream
	Op       string // what was attempted, e.g. "GET manifest library/alpine:latest"
	Status   int    // HTTP status, 0 when no response was received
	Code     string // first error code from the upstream's error body, if any
	Message  string // upstream's error message or local detail, truncated
	Kind     error  // one of the sentinel errors
	Err      error  // underlying cause, may be nil
	// RetryAfter is how long a rate-limited upstream asked to be left
	// alone (its 429's Retry-After, or what remains of it); 0 if unknown.
	RetryAfter time.Duration
}

// Error implements the error interface.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "upstream %s: %s: ", e.Upstream, e.Op)
	if e.Status != 0 {
		fmt.Fprintf(&b, "status %d", e.Status)
		if e.Code != "" || e.Message != "" {
			b.WriteString(" (")
			b.WriteString(e.Code)
			if e.Code != "" && e.Message != "" {
				b.WriteString(": ")
			}
			b.WriteString(e.Message)
			b.WriteString(")")
		}
		b.WriteString(": ")
	} else if e.Message != "" {
		b.WriteString(e.Message)
		b.WriteString(": ")
	}
	if e.Kind != nil {
		b.WriteString(e.Kind.Error())
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(redactURLs(e.Err))
	}
	return b.String()
}

// redactURLs renders err with the query strings and user info of the URLs
// it names removed: a redirect to a storage CDN carries a pre-signed query
// (credentials, signatures) that must reach neither logs nor clients.
func redactURLs(err error) string {
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil && (u.RawQuery != "" || u.User != nil) {
			u.RawQuery, u.User, u.Fragment = "", nil, ""
			msg = strings.ReplaceAll(msg, ue.URL, u.String()+"?[redacted]")
		}
	}
	return msg
}

// Unwrap exposes both the sentinel kind and the cause to errors.Is/As.
func (e *Error) Unwrap() []error {
	errs := make([]error, 0, 2)
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// newError builds an *Error for this client.
func (c *Client) newError(op string, kind error, msg string, cause error) *Error {
	return &Error{Upstream: c.name, Op: op, Kind: kind, Message: msg, Err: cause}
}

// maxErrorBody bounds how much of an error response body is read; error
// bodies are small JSON documents and we must not buffer arbitrary data.
const maxErrorBody = 64 << 10

// maxMessageLen bounds the upstream message copied into errors so logs stay
// readable even if an upstream returns a whole HTML page.
const maxMessageLen = 200

// ociErrors is the distribution-spec error body.
type ociErrors struct {
	Errors []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// statusError converts a non-success response into an *Error, reading (a
// bounded part of) and closing its body.
func (c *Client) statusError(op string, resp *http.Response) *Error {
	defer resp.Body.Close()
	e := &Error{Upstream: c.name, Op: op, Status: resp.StatusCode}
	if resp.Request == nil || resp.Request.Method != http.MethodHead {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		var oe ociErrors
		if json.Unmarshal(body, &oe) == nil && len(oe.Errors) > 0 {
			e.Code = sanitize(oe.Errors[0].Code)
			e.Message = sanitize(oe.Errors[0].Message)
		}
	}
	e.Kind = classify(resp.StatusCode, e.Code)
	if resp.StatusCode == http.StatusTooManyRequests {
		e.RetryAfter = c.limit(resp.Header.Get("Retry-After"))
	}
	return e
}

// maxRetryAfter bounds how long one 429 can silence an upstream.
const maxRetryAfter = time.Hour

// DefaultRetryAfter is the wait after a 429 without a usable Retry-After
// (Docker Hub's pull limit sends none): long enough that clients retrying
// meanwhile do not each go upstream, short enough not to matter otherwise.
const DefaultRetryAfter = 10 * time.Second

// limit records an upstream 429's Retry-After (seconds or an HTTP date;
// DefaultRetryAfter when missing, unreadable or past): until it ends, no
// request is sent to the upstream (see rateLimited). It returns the wait.
func (c *Client) limit(h string) time.Duration {
	var d time.Duration
	if n, err := strconv.Atoi(strings.TrimSpace(h)); err == nil && n > 0 {
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(h); err == nil {
		d = t.Sub(c.now())
	}
	if d <= 0 {
		d = DefaultRetryAfter
	}
	d = min(d, maxRetryAfter)
	until := c.now().Add(d).UnixNano()
	for {
		cur := c.limitedUntil.Load()
		if cur >= until || c.limitedUntil.CompareAndSwap(cur, until) {
			return d
		}
	}
}

// rateLimited fails op without sending it while an upstream 429's
// Retry-After lasts, so clients retrying during a rate limit do not each
// go upstream.
func (c *Client) rateLimited(op string) error {
	left := time.Duration(c.limitedUntil.Load() - c.now().UnixNano())
	if left <= 0 {
		return nil
	}
	return &Error{Upstream: c.name, Op: op, Status: http.StatusTooManyRequests, Kind: ErrRateLimited,
		Message: "not asked: the upstream's Retry-After has not passed", RetryAfter: left}
}

// Public describes err for a client of berth: the upstream's name and what
// went wrong, without its URL, addresses or anything the upstream said
// beyond its status and error code. ok is false when err is not an
// upstream *Error.
func Public(err error) (string, bool) {
	var e *Error
	if !errors.As(err, &e) {
		return "", false
	}
	return "upstream " + e.Upstream + ": " + e.reason(), true
}

// reason is Public's description of what went wrong.
func (e *Error) reason() string {
	var (
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		invalid   x509.CertificateInvalidError
		record    tls.RecordHeaderError
		alert     tls.AlertError
		verify    *tls.CertificateVerificationError
		dns       *net.DNSError
	)
	switch {
	case e.Kind == ErrRateLimited:
		return "rate limited (HTTP 429)"
	case e.Status != 0:
		s := fmt.Sprintf("answered HTTP %d", e.Status)
		if e.Code != "" {
			s += " " + e.Code
		}
		if errors.Is(e.Kind, ErrDenied) && e.Message != "" && e.Code == "" {
			s += ": " + e.Message // berth's own words (credentials rejected, ...)
		}
		return s
	case e.Kind == ErrMisconfigured:
		return e.Message
	case errors.As(e.Err, &unknownCA):
		return "TLS: its certificate is signed by an authority berth does not trust (set ca_file)"
	case errors.As(e.Err, &hostErr):
		return "TLS: its certificate is not valid for its host name"
	case errors.As(e.Err, &invalid):
		return "TLS: its certificate is not valid (expired, not yet valid, or not for serving)"
	case errors.As(e.Err, &record):
		return "TLS: it did not answer with TLS (is its url http://?)"
	case errors.As(e.Err, &alert) || isRemoteAlert(e.Err):
		return "TLS: it refused the handshake (a client certificate missing or not accepted?)"
	case errors.As(e.Err, &verify):
		return "TLS: its certificate could not be verified"
	case errors.As(e.Err, &dns):
		return "its host name could not be resolved"
	case errors.Is(e.Err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(e.Err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(e.Err, context.DeadlineExceeded) || isTimeout(e.Err):
		return "timed out"
	case e.Kind == ErrUnavailable:
		return "unreachable"
	}
	return e.Kind.Error()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// IsTLS reports whether err is a failed TLS handshake or certificate check
// with the upstream: a configuration problem (ca_file, client certificate)
// rather than an outage.
func IsTLS(err error) bool {
	var (
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		invalid   x509.CertificateInvalidError
		record    tls.RecordHeaderError
		alert     tls.AlertError
		verify    *tls.CertificateVerificationError
	)
	return errors.As(err, &unknownCA) || errors.As(err, &hostErr) || errors.As(err, &invalid) ||
		errors.As(err, &record) || errors.As(err, &alert) || errors.As(err, &verify) || isRemoteAlert(err)
}

// isRemoteAlert reports a TLS alert the upstream sent (crypto/tls reports
// it as a *net.OpError "remote error" around an unexported type).
func isRemoteAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}

// classify maps an HTTP status and distribution error code to a sentinel.
func classify(status int, code string) error {
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden || code == "DENIED" || code == "UNAUTHORIZED":
		return ErrDenied
	case status == http.StatusTooManyRequests || code == "TOOMANYREQUESTS":
		return ErrRateLimited
	case status >= 500:
		return ErrUnavailable
	case status == http.StatusNotFound || code == "MANIFEST_UNKNOWN" || code == "BLOB_UNKNOWN" || code == "NAME_UNKNOWN":
		return ErrNotFound
	default:
		return ErrUnexpectedResponse
	}
}

// sanitize makes upstream-provided text safe and short for error strings.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxMessageLen {
		s = strings.ToValidUTF8(s[:maxMessageLen], "") + "..."
	}
	return strings.TrimSpace(s)
}
