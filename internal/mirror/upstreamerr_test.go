package mirror_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/mirror"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/testutil"
	"github.com/berth-dev/berth/upstream"
	"github.com/berth-dev/berth/upstream/upstreamtest"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// syncBuffer collects log lines from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// loggedContext is a test context carrying a logger into buf, as the HTTP
// layer's request context carries the request logger.
func loggedContext(t *testing.T, buf *syncBuffer) context.Context {
	l := zerolog.New(buf)
	return l.WithContext(testContext(t))
}

func ociError(t *testing.T, err error) *oci.Error {
	t.Helper()
	var e *oci.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not an *oci.Error", err)
	}
	return e
}

// scripted is an upstream that answers every request with one status and
// header set, counting what reaches it.
type scripted struct {
	status int
	header map[string]string
	n      atomic.Int64
}

func (s *scripted) start(t *testing.T, tls bool) *httptest.Server {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.n.Add(1)
		for k, v := range s.header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(s.status)
		fmt.Fprint(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"x"}]}`)
	})
	var srv *httptest.Server
	if tls {
		srv = httptest.NewUnstartedServer(h)
		srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		srv.StartTLS()
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	return srv
}

// warmTag caches library/app:latest from a working upstream into the
// returned mirror's store.
func warmTag(t *testing.T) (*mirror.Options, upstreamtest.Image) {
	t.Helper()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.AddImage("library/app", "latest", 1, 1<<10)
	st := openStore(t)
	warm := newMirror(t, mirror.Options{Store: st, Client: newClient(t, upstream.Config{URL: up.URL()}), Prefetch: -1})
	rd, err := warm.GetTag(testContext(t), "library/app", "latest")
	readAll(t, rd, err)
	return &mirror.Options{Store: st, Prefetch: -1}, img
}

// A private-CA upstream berth does not trust: 502 with a detail naming the
// upstream (not its address), and a warn line with the cause, never 404.
func TestTLSFailureIsBadGateway(t *testing.T) {
	t.Parallel()
	srv := (&scripted{status: 200}).start(t, true)
	var logs syncBuffer
	ctx := loggedContext(t, &logs)
	m := newMirror(t, mirror.Options{Store: openStore(t), Prefetch: -1,
		Client: newClient(t, upstream.Config{Name: "private.test", URL: srv.URL, Retries: 1})})
	addr := strings.TrimPrefix(srv.URL, "https://")
	d := digest.FromString("x")
	for name, call := range map[string]func() error{
		"GetTag":          func() error { _, err := m.GetTag(ctx, "app", "1"); return err },
		"ResolveTag":      func() error { _, err := m.ResolveTag(ctx, "app", "1"); return err },
		"GetManifest":     func() error { _, err := m.GetManifest(ctx, "app", d); return err },
		"GetBlob":         func() error { _, err := m.GetBlob(ctx, "app", d); return err },
		"ResolveBlob":     func() error { _, err := m.ResolveBlob(ctx, "app", d); return err },
		"ResolveManifest": func() error { _, err := m.ResolveManifest(ctx, "app", d); return err },
	} {
		e := ociError(t, call())
		detail, _ := e.Detail.(string)
		body := string(oci.Body(e))
		if e.Status() != http.StatusBadGateway || e.Code != oci.CodeUnavailable {
			t.Errorf("%s: %d %s, want 502 UNAVAILABLE", name, e.Status(), e.Code)
		}
		if !strings.Contains(detail, "private.test") || !strings.Contains(detail, "ca_file") || strings.Contains(body, addr) {
			t.Errorf("%s: body %s: want the upstream's name and ca_file, not %s", name, body, addr)
		}
	}
	out := logs.String()
	if !strings.Contains(out, `"level":"warn"`) || !strings.Contains(out, `"upstream":"private.test"`) || !strings.Contains(out, "certificate") {
		t.Errorf("no warn line with the upstream and the cause: %s", out)
	}
}

// An unreachable upstream with nothing cached is 503, except a HEAD by
// digest, which push clients send before uploading and which stays 404.
func TestUnreachableIsUnavailable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	ctx := testContext(t)
	m := newMirror(t, mirror.Options{Store: openStore(t), Prefetch: -1,
		Client: newClient(t, upstream.Config{Name: "gone.test", URL: srv.URL, Retries: 1})})
	e := ociError(t, second(m.GetTag(ctx, "app", "1")))
	if e.Status() != http.StatusServiceUnavailable || e.Detail != "upstream gone.test: connection refused" {
		t.Errorf("GetTag: %d %v, want 503 with detail naming the upstream", e.Status(), e.Detail)
	}
	e = ociError(t, second(m.GetBlob(ctx, "app", digest.FromString("x"))))
	if e.Status() != http.StatusServiceUnavailable {
		t.Errorf("GetBlob: %d, want 503", e.Status())
	}
	e = ociError(t, second(m.GetManifest(ctx, "app", digest.FromString("x"))))
	if e.Status() != http.StatusServiceUnavailable {
		t.Errorf("GetManifest: %d, want 503", e.Status())
	}
	e = ociError(t, second(m.ResolveBlob(ctx, "app", digest.FromString("x"))))
	if e.Code != oci.CodeBlobUnknown || e.Status() != http.StatusNotFound {
		t.Errorf("ResolveBlob: %d %s, want 404 BLOB_UNKNOWN (push flows HEAD blobs first)", e.Status(), e.Code)
	}
	e = ociError(t, second(m.ResolveManifest(ctx, "app", digest.FromString("y"))))
	if e.Code != oci.CodeManifestUnknown || e.Status() != http.StatusNotFound {
		t.Errorf("ResolveManifest: %d %s, want 404 MANIFEST_UNKNOWN (push flows HEAD child manifests first)", e.Status(), e.Code)
	}
}

func second[T any](_ T, err error) error { return err }

// An upstream 429 with Retry-After: a client without a cached copy gets
// 429 TOOMANYREQUESTS with the wait; cached tags keep being served; and
// during the wait no client's request reaches the upstream.
func TestRateLimitPassedOnAndHonoured(t *testing.T) {
	t.Parallel()
	o, img := warmTag(t)
	limited := &scripted{status: http.StatusTooManyRequests, header: map[string]string{"Retry-After": "60"}}
	srv := limited.start(t, false)
	o.Client = newClient(t, upstream.Config{URL: srv.URL})
	m := newMirror(t, *o) // TagTTL 0: every cached tag read revalidates
	ctx := testContext(t)

	e := ociError(t, second(m.GetTag(ctx, "library/other", "1")))
	if e.Code != oci.CodeTooManyRequests || e.Status() != http.StatusTooManyRequests || e.RetryAfter <= 50*time.Second || e.RetryAfter > time.Minute {
		t.Fatalf("uncached tag under a 429: %d %s retry-after %s, want 429 TOOMANYREQUESTS with about 60s", e.Status(), e.Code, e.RetryAfter)
	}
	var wg sync.WaitGroup
	const clients = 16
	errs := make(chan error, 2*clients)
	for i := range clients {
		wg.Go(func() {
			rd, err := m.GetTag(ctx, "library/app", "latest")
			if err == nil {
				var b []byte
				b, err = io.ReadAll(rd)
				rd.Close()
				if err == nil && !bytes.Equal(b, img.ManifestBody) {
					err = errors.New("cached tag served other bytes")
				}
			}
			errs <- err
		})
		wg.Go(func() {
			_, err := m.GetBlob(ctx, "library/other", digest.FromString(fmt.Sprint(i)))
			var e *oci.Error
			if !errors.As(err, &e) || e.Code != oci.CodeTooManyRequests || e.RetryAfter <= 0 {
				errs <- fmt.Errorf("uncached blob: %v, want TOOMANYREQUESTS with a Retry-After", err)
				return
			}
			errs <- nil
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := limited.n.Load(); n != 1 {
		t.Errorf("the rate-limited upstream was asked %d times, want 1", n)
	}
}

// After the upstream answers 401/403 (access revoked), a cached tag is
// served while serve_stale_on_denied is on, and DENIED when it is off;
// either way nothing cached is deleted.
func TestDeniedWithCache(t *testing.T) {
	t.Parallel()
	for _, stale := range []bool{true, false} {
		t.Run(fmt.Sprint("stale=", stale), func(t *testing.T) {
			t.Parallel()
			o, img := warmTag(t)
			revoked := &scripted{status: http.StatusUnauthorized, header: map[string]string{"WWW-Authenticate": `Basic realm="x"`}}
			o.Client = newClient(t, upstream.Config{URL: revoked.start(t, false).URL, Username: "robot", Password: "old"})
			o.StaleIfDenied = stale
			m := newMirror(t, *o)
			ctx := testContext(t)
			rd, err := m.GetTag(ctx, "library/app", "latest")
			if stale {
				if got := readAll(t, rd, err); !bytes.Equal(got, img.ManifestBody) {
					t.Errorf("served %q, want the cached manifest", got)
				}
			} else if e := ociError(t, err); e.Code != oci.CodeDenied || e.Status() != http.StatusForbidden {
				t.Errorf("GetTag: %d %s, want 403 DENIED", e.Status(), e.Code)
			}
			if _, err := o.Store.Tag("docker.io/library/app", "latest"); err != nil {
				t.Errorf("the cached tag is gone: %v", err)
			}
			if revoked.n.Load() == 0 {
				t.Error("the upstream was never asked")
			}
		})
	}
}

// A token realm berth may not follow: 502, not "not found", and a cached
// tag is still served.
func TestRefusedRealmIsBadGateway(t *testing.T) {
	t.Parallel()
	o, img := warmTag(t)
	evil := &scripted{status: http.StatusUnauthorized, header: map[string]string{"WWW-Authenticate": `Bearer realm="https://elsewhere.invalid/token"`}}
	o.Client = newClient(t, upstream.Config{URL: evil.start(t, false).URL, Username: "robot", Password: "pw"})
	reg := prometheus.NewRegistry()
	o.Metrics = mirror.NewMetrics(reg)
	m := newMirror(t, *o)
	ctx := testContext(t)
	e := ociError(t, second(m.GetTag(ctx, "library/other", "1")))
	if e.Status() != http.StatusBadGateway || strings.Contains(fmt.Sprint(e.Detail), "elsewhere") {
		t.Errorf("uncached tag: %d %v, want 502 without the realm's host", e.Status(), e.Detail)
	}
	if s, ok := testutil.Sample(t, reg, "berth_upstream_errors_total", map[string]string{"upstream": "docker.io", "kind": "auth", "cause": "config"}); !ok || s.GetCounter().GetValue() != 1 {
		t.Errorf("berth_upstream_errors_total{kind=auth,cause=config} = %v, want 1", s)
	}
	rd, err := m.GetTag(ctx, "library/app", "latest")
	if got := readAll(t, rd, err); !bytes.Equal(got, img.ManifestBody) {
		t.Errorf("cached tag: served %q", got)
	}
}
