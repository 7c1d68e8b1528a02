package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// bound is how long a call may take in these tests before it counts as
// hung. The configured timeouts are a few milliseconds; the bound is far
// above them so that a slow machine does not fail the tests, and far below
// what the calls take without the deadline under test (minutes).
const bound = 10 * time.Second

// within runs f and fails the test if it has not returned within bound.
func within[T any](t *testing.T, what string, f func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- f() }()
	select {
	case v := <-done:
		return v
	case <-time.After(bound):
		t.Fatalf("%s did not return within %s", what, bound)
		panic("unreachable")
	}
}

// stallingServer starts an upstream whose handler holds every request until
// the client gives up or the test ends, after calling answer (which may
// write headers and some bytes first). It counts the requests.
func stallingServer(t *testing.T, answer func(http.ResponseWriter, *http.Request)) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		if answer != nil {
			answer(w, r)
		}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: handlers return, Close does not wait on them
	return srv, &n
}

// A hung upstream costs a metadata operation Config.OperationTimeout, not
// Retries x ResponseHeaderTimeout.
func TestOperationTimeout(t *testing.T) {
	t.Parallel()
	const opTimeout = 50 * time.Millisecond
	d := digest.FromString("x")
	ops := []struct {
		name      string
		readsBody bool // needs the response body, not only its headers
		call      func(context.Context, *Client) error
	}{
		{"HeadManifest", true, func(ctx context.Context, c *Client) error { return second(c.HeadManifest(ctx, "lib/x", "v")) }},
		{"GetManifest", true, func(ctx context.Context, c *Client) error { return third(c.GetManifest(ctx, "lib/x", "v")) }},
		{"HeadBlob", false, func(ctx context.Context, c *Client) error { return second(c.HeadBlob(ctx, "lib/x", d)) }},
		{"Tags", true, func(ctx context.Context, c *Client) error { return third(c.Tags(ctx, "lib/x", 0, "")) }},
		{"Referrers", true, func(ctx context.Context, c *Client) error { return third(c.Referrers(ctx, "lib/x", d, "")) }},
		{"Ping", false, func(ctx context.Context, c *Client) error { return c.Ping(ctx) }},
	}
	upstreams := []struct {
		name    string
		onlyGET bool
		answer  func(http.ResponseWriter, *http.Request)
	}{
		// No response headers ever.
		{"silent", false, nil},
		// Headers at once, then a body that drips one byte at a time,
		// each well within any idle timeout. (HeadManifest falls back
		// to a GET as the headers lack a digest.)
		{"dripping body", true, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", "1000000")
			rc := http.NewResponseController(w)
			if r.Method == http.MethodHead {
				_ = rc.Flush()
				return
			}
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for {
				if _, err := io.WriteString(w, " "); err != nil || rc.Flush() != nil {
					return
				}
				select {
				case <-r.Context().Done():
					return
				case <-tick.C:
				}
			}
		}},
	}
	for _, up := range upstreams {
		for _, op := range ops {
			if up.onlyGET && !op.readsBody {
				continue
			}
			t.Run(up.name+"/"+op.name, func(t *testing.T) {
				t.Parallel()
				srv, _ := stallingServer(t, up.answer)
				c, err := New(Config{URL: srv.URL, OperationTimeout: opTimeout, ResponseHeaderTimeout: time.Minute})
				if err != nil {
					t.Fatal(err)
				}
				err = within(t, op.name, func() error { return op.call(t.Context(), c) })
				if !IsUnavailable(err) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), opTimeout.String()) {
					t.Errorf("err = %v, want unavailable after the %s operation timeout", err, opTimeout)
				}
			})
		}
	}
}

// A hung token service costs a call OperationTimeout, or less when the
// caller gives up first; the fetch the call started, detached so that
// other callers can share it, ends by the same deadline after the call has
// returned.
func TestHungTokenService(t *testing.T) {
	t.Parallel()
	// hungAuth returns a client for a registry whose token service hangs,
	// and a channel that receives when a token request arrives.
	hungAuth := func(t *testing.T, opTimeout time.Duration) (*Client, <-chan struct{}) {
		arrived := make(chan struct{}, 1)
		tokenSrv, _ := stallingServer(t, func(http.ResponseWriter, *http.Request) {
			select {
			case arrived <- struct{}{}:
			default:
			}
		})
		regSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+tokenSrv.URL+`/token",service="reg"`)
			w.WriteHeader(http.StatusUnauthorized)
		}))
		t.Cleanup(regSrv.Close)
		c, err := New(Config{URL: regSrv.URL, OperationTimeout: opTimeout, ResponseHeaderTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		return c, arrived
	}
	detachedDone := func(t *testing.T, c *Client) {
		t.Helper()
		within(t, "the detached token fetch", func() struct{} { c.detached.Wait(); return struct{}{} })
	}

	t.Run("operation deadline", func(t *testing.T) {
		t.Parallel()
		c, _ := hungAuth(t, 50*time.Millisecond)
		err := within(t, "Ping", func() error { return c.Ping(t.Context()) })
		if !IsUnavailable(err) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Ping: err = %v, want unavailable after the operation timeout", err)
		}
		detachedDone(t, c)
	})

	t.Run("caller gives up", func(t *testing.T) {
		t.Parallel()
		c, arrived := hungAuth(t, 300*time.Millisecond)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- c.Ping(ctx) }()
		select {
		case <-arrived:
		case <-time.After(bound):
			t.Fatal("no token request arrived")
		}
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) || IsUnavailable(err) {
				t.Errorf("Ping: err = %v, want context.Canceled (not an outage)", err)
			}
		case <-time.After(bound):
			t.Fatal("Ping did not return after its caller gave up")
		}
		detachedDone(t, c)
	})
}

// A blob download is not bounded as a whole, but each attempt waits
// ResponseHeaderTimeout at most for the response to start.
func TestBlobHeaderTimeoutPerAttempt(t *testing.T) {
	t.Parallel()
	srv, attempts := stallingServer(t, nil)
	c, err := New(Config{URL: srv.URL, ResponseHeaderTimeout: 20 * time.Millisecond, Retries: 2})
	if err != nil {
		t.Fatal(err)
	}
	c.backoff = time.Millisecond
	err = within(t, "GetBlob", func() error { return third(c.GetBlob(t.Context(), "lib/x", digest.FromString("x"), 0)) })
	if !IsUnavailable(err) {
		t.Errorf("err = %v, want unavailable", err)
	}
	if n := attempts.Load(); n != 2 {
		t.Errorf("attempts = %d, want Retries = 2", n)
	}
}
