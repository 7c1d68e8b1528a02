package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
)

// newClient is a keep-alive client for up to conns connections per host,
// never through an environment proxy, never compressing.
func newClient(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        2 * conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}}
}

var manifestAccept = ocispec.MediaTypeImageManifest + ", " + ocispec.MediaTypeImageIndex + ", " +
	"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

var bufPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// fetchResult is one GET of a blob.
type fetchResult struct {
	ttfb, total time.Duration
}

// fetch GETs a blob and reads it whole, checking its size (and, with
// verify, its digest).
func fetch(ctx context.Context, client *http.Client, url string, want blob, verify bool) (fetchResult, error) {
	start := time.Now()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		return fetchResult{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		err := fmt.Errorf("GET %s: %s %s", url, resp.Status, drain(resp))
		if resp.StatusCode == http.StatusServiceUnavailable {
			err = &unavailableError{err}
		}
		return fetchResult{}, err
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var h hash.Hash
	if verify {
		h = sha256.New()
	}
	var n int64
	var ttfb time.Duration
	for {
		m, rerr := resp.Body.Read(buf)
		if m > 0 {
			if n == 0 {
				ttfb = time.Since(start)
			}
			n += int64(m)
			if h != nil {
				h.Write(buf[:m])
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fetchResult{}, fmt.Errorf("GET %s: after %d bytes: %w", url, n, rerr)
		}
	}
	if n != want.Size {
		return fetchResult{}, fmt.Errorf("GET %s: %d bytes, want %d", url, n, want.Size)
	}
	if h != nil {
		if got := digest.NewDigest(digest.SHA256, h); got != want.Digest {
			return fetchResult{}, fmt.Errorf("GET %s: content hashes to %s", url, got)
		}
	}
	return fetchResult{ttfb: ttfb, total: time.Since(start)}, nil
}

// unavailableError is a 503: registry clients retry those.
type unavailableError struct{ error }

func (e *unavailableError) Unwrap() error { return e.error }

// fetchRetry is fetch with the retries of a registry client: a 503 is
// retried (up to 3 times, after 50 ms) and counted in retries.
func fetchRetry(ctx context.Context, client *http.Client, url string, want blob, retries *atomic.Int64) (fetchResult, error) {
	for i := 0; ; i++ {
		r, err := fetch(ctx, client, url, want, false)
		var ue *unavailableError
		if err == nil || i == 3 || !errors.As(err, &ue) {
			return r, err
		}
		retries.Add(1)
		select {
		case <-ctx.Done():
			return r, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// getManifest GETs a manifest and returns its body.
func getManifest(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Accept", manifestAccept)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s %s", url, resp.Status, drain(resp))
	}
	return io.ReadAll(resp.Body)
}

// pullMany has n clients GET the same blob at once (each on its own
// connection) and returns the wall time and each client's result.
func pullMany(ctx context.Context, url string, want blob, n int) (time.Duration, []fetchResult, error) {
	client := newClient(n)
	defer client.CloseIdleConnections()
	return pullManyWith(ctx, client, url, want, n)
}

// pullManyWith is pullMany with the client given (one that trusts a CA).
func pullManyWith(ctx context.Context, client *http.Client, url string, want blob, n int) (time.Duration, []fetchResult, error) {
	results := make([]fetchResult, n)
	startGate := make(chan struct{})
	g, gctx := errgroup.WithContext(ctx)
	var ready sync.WaitGroup
	ready.Add(n)
	for i := range n {
		g.Go(func() error {
			ready.Done()
			<-startGate
			r, err := fetch(gctx, client, url, want, false)
			results[i] = r
			return err
		})
	}
	ready.Wait()
	start := time.Now()
	close(startGate)
	err := g.Wait()
	return time.Since(start), results, err
}

// rateResult is a fixed-duration request-rate run.
type rateResult struct {
	rps      float64
	p50, p99 time.Duration
	errors   int64
}

// rate keeps conns connections busy with GETs of urls (round-robin) for
// dur, after a warm-up of dur/5, and reports completed requests per second
// and their latency percentiles.
func rate(ctx context.Context, urls []string, accept string, conns int, dur time.Duration) (rateResult, error) {
	return rateHeader(ctx, urls, accept, nil, conns, dur)
}

// rateHeader is rate with hdr on every request (an Authorization, say).
func rateHeader(ctx context.Context, urls []string, accept string, hdr http.Header, conns int, dur time.Duration) (rateResult, error) {
	client := newClient(conns)
	defer client.CloseIdleConnections()
	begin := time.Now()
	from, until := begin.Add(dur/5), begin.Add(dur/5+dur)
	t := tally{lat: make([][]time.Duration, conns)}
	workers(conns, func(w int, buf []byte) {
		for i := w; ctx.Err() == nil; i += conns {
			t0 := time.Now()
			if t0.After(until) {
				return
			}
			if err := getOnce(ctx, client, urls[i%len(urls)], accept, hdr, buf); err != nil {
				t.fail(err)
				if ctx.Err() == nil {
					time.Sleep(time.Millisecond)
				}
				continue
			}
			if !t0.Before(from) {
				t.lat[w] = append(t.lat[w], time.Since(t0))
			}
		}
	})
	return t.result(ctx, dur)
}

// fixedRate offers GETs of urls (round-robin) at rps requests a second for
// dur, after a warm-up of dur/5, spread over conns connections: an open
// loop, whose requests are sent on schedule whatever the server's pace.
// Each latency counts from the request's scheduled start, so a server that
// falls behind is charged the time its requests waited to be sent. The
// rate reported is the completed requests a second of the measured window.
func fixedRate(ctx context.Context, urls []string, accept string, conns int, rps float64, dur time.Duration) (rateResult, error) {
	client := newClient(conns)
	defer client.CloseIdleConnections()
	interval := time.Duration(float64(conns) / rps * float64(time.Second))
	begin := time.Now()
	from, until := begin.Add(dur/5), begin.Add(dur/5+dur)
	t := tally{lat: make([][]time.Duration, conns)}
	workers(conns, func(w int, buf []byte) {
		next := begin.Add(interval * time.Duration(w) / time.Duration(conns))
		for i := w; ctx.Err() == nil; i += conns {
			if d := time.Until(next); d > 0 {
				time.Sleep(d) // pacing: the open loop's schedule
			}
			t0 := next
			next = next.Add(interval)
			if t0.After(until) {
				return
			}
			if err := getOnce(ctx, client, urls[i%len(urls)], accept, nil, buf); err != nil {
				t.fail(err)
				continue
			}
			if !t0.Before(from) {
				t.lat[w] = append(t.lat[w], time.Since(t0))
			}
		}
	})
	return t.result(ctx, dur)
}

// workers runs work on conns goroutines, one per connection (w its
// index, buf its read buffer), and waits for them.
func workers(conns int, work func(w int, buf []byte)) {
	var wg sync.WaitGroup
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work(w, make([]byte, 32<<10))
		}()
	}
	wg.Wait()
}

// getOnce GETs url and reads the body to its end; a status other than 200
// is an error.
func getOnce(ctx context.Context, client *http.Client, url, accept string, hdr http.Header, buf []byte) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	for {
		if _, err := resp.Body.Read(buf); err != nil {
			if err != io.EOF {
				return err
			}
			break
		}
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// tally gathers a load run's latencies (one slice per connection, each
// written by its own goroutine) and errors.
type tally struct {
	lat      [][]time.Duration
	errs     atomic.Int64
	firstErr atomic.Value
}

func (t *tally) fail(err error) {
	t.errs.Add(1)
	t.firstErr.CompareAndSwap(nil, err)
}

// result is the run's rate over dur and its latency percentiles.
func (t *tally) result(ctx context.Context, dur time.Duration) (rateResult, error) {
	if ctx.Err() != nil {
		return rateResult{}, ctx.Err()
	}
	all := slices.Concat(t.lat...)
	if len(all) == 0 {
		err, _ := t.firstErr.Load().(error)
		return rateResult{}, fmt.Errorf("no request succeeded: %v", err)
	}
	slices.Sort(all)
	return rateResult{
		rps:    float64(len(all)) / dur.Seconds(),
		p50:    percentile(all, 0.50),
		p99:    percentile(all, 0.99),
		errors: t.errs.Load(),
	}, nil
}

func percentile[T any](sorted []T, q float64) T {
	return sorted[int(q*float64(len(sorted)-1)+0.5)]
}

// pullImage pulls an image the way crane pull does: the manifest by tag,
// then its config and layers, all at once.
func pullImage(ctx context.Context, s *server, im *image, retries *atomic.Int64) (time.Duration, error) {
	client := newClient(len(im.Layers) + 1)
	defer client.CloseIdleConnections()
	start := time.Now()
	body, err := getManifest(ctx, client, s.manifestURL(im.Repo, im.Tag))
	if err != nil {
		return 0, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return 0, fmt.Errorf("manifest of %s: %w", im.Repo, err)
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		g.Go(func() error {
			_, err := fetchRetry(gctx, client, s.blobURL(im.Repo, d.Digest), blob{Size: d.Size, Digest: d.Digest}, retries)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
