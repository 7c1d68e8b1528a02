package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/bucket"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/upstream"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// BlobGetter is what the peer API serves a blob from: a mirror.
type BlobGetter interface {
	GetBlob(ctx context.Context, repo string, d digest.Digest) (registry.BlobReader, error)
}

// Handler serves the peer API: health, and the blobs this replica owns,
// from the mirror named in the request (mirrors looks it up in the current
// configuration). The mirror downloads a blob itself for a peer, so each
// blob is downloaded by its owner and streamed to the peers that asked.
func (c *Cluster) Handler(mirrors func(upstream string) BlobGetter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !c.authorized(r) {
			http.Error(w, "cluster secret required", http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case healthPath:
			_, _ = w.Write([]byte("ok\n"))
		case blobPath:
			c.serveBlob(w, r, mirrors)
		default:
			http.NotFound(w, r)
		}
	})
}

func (c *Cluster) serveBlob(w http.ResponseWriter, r *http.Request, mirrors func(string) BlobGetter) {
	q := r.URL.Query()
	d, err := digest.Parse(q.Get("digest"))
	if err != nil || !oci.ValidName(q.Get("repo")) {
		http.Error(w, "bad digest or repository", http.StatusBadRequest)
		return
	}
	m := mirrors(q.Get("upstream"))
	if m == nil {
		http.Error(w, "upstream not configured here", http.StatusNotFound)
		return
	}
	var offset int64
	if rg := r.Header.Get("Range"); rg != "" {
		n, ok := strings.CutPrefix(rg, "bytes=")
		n, open := strings.CutSuffix(n, "-")
		start, err := strconv.ParseInt(n, 10, 64)
		if !ok || !open || err != nil || start < 0 {
			http.Error(w, "only bytes=N- ranges", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		offset = start
	}
	ctx := registry.WithInfo(r.Context(), &registry.RequestInfo{Peer: true, RequestID: r.Header.Get("X-Request-Id")})
	rd, err := m.GetBlob(ctx, q.Get("repo"), d)
	if err != nil {
		status := http.StatusBadGateway
		if errors.Is(err, oci.ErrBlobUnknown) {
			status = http.StatusNotFound
		}
		http.Error(w, err.Error(), status)
		return
	}
	defer rd.Close()
	size := rd.Descriptor().Size
	if offset > 0 {
		s, ok := rd.(io.Seeker)
		if !ok || offset > size {
			http.Error(w, "cannot seek", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		if _, err := s.Seek(offset, io.SeekStart); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", offset, size-1, size))
	}
	w.Header().Set("X-Blob-Size", strconv.FormatInt(size, 10))
	w.Header().Set("Content-Length", strconv.FormatInt(size-offset, 10))
	w.Header().Set("Content-Type", "application/octet-stream")
	if offset > 0 {
		w.WriteHeader(http.StatusPartialContent)
	}
	fw := &flushWriter{w: w, rc: http.NewResponseController(w)}
	if _, err := io.CopyBuffer(fw, rd, make([]byte, 256<<10)); err != nil {
		// Cut the connection: the peer must not take a short stream for
		// a whole one (it verifies the digest anyway).
		panic(http.ErrAbortHandler)
	}
}

type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// fetch asks member u for blob d of repo on upstream, from offset on.
func (c *Cluster) fetch(ctx context.Context, u, up, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	q := url.Values{"upstream": {up}, "repo": {repo}, "digest": {d.String()}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+blobPath+"?"+q.Encode(), nil)
	if err != nil {
		return nil, 0, err
	}
	c.authorize(req)
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	if id := registry.InfoFrom(ctx).RequestID; id != "" {
		req.Header.Set("X-Request-Id", id)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		c.peerReqs.WithLabelValues("error").Inc()
		if ctx.Err() == nil {
			c.markDown(u)
		}
		return nil, 0, fmt.Errorf("%w: %s: %v", errUnreachable, u, err)
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusPartialContent:
		size, err := strconv.ParseInt(resp.Header.Get("X-Blob-Size"), 10, 64)
		if err != nil {
			resp.Body.Close()
			return nil, 0, fmt.Errorf("cluster member %s: no blob size", u)
		}
		c.peerReqs.WithLabelValues("ok").Inc()
		return resp.Body, size, nil
	case http.StatusNotFound:
		resp.Body.Close()
		c.peerReqs.WithLabelValues("not_found").Inc()
		return nil, 0, fmt.Errorf("%w (cluster member %s)", upstream.ErrNotFound, u)
	}
	resp.Body.Close()
	c.peerReqs.WithLabelValues("error").Inc()
	return nil, 0, fmt.Errorf("cluster member %s answered %s", u, resp.Status)
}

// Source is where a mirror of a cluster finds a blob it misses: the bucket,
// else the replica that owns the blob's download. Only the owner asks the
// upstream, and it publishes what it stored to the bucket.
type Source struct {
	c     *Cluster
	b     Bucket
	store *cache.Store
	log   zerolog.Logger

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // publishes
	// downloads are the blobs this replica asks its upstream for, as their
	// owner: from the start, or from where a dead owner stopped. Stored
	// publishes only those.
	downloads map[digest.Digest]bool
}

// Bucket is what a Source needs of the shared bucket (*bucket.Registry).
type Bucket interface {
	StatBlob(ctx context.Context, d digest.Digest) (int64, error)
	Opener(d digest.Digest) cache.FetchFunc
	PublishFile(ctx context.Context, d digest.Digest, f *os.File, size int64, origin string) error
}

// NewSource returns the blob source of a replica.
func NewSource(c *Cluster, b Bucket, store *cache.Store, log zerolog.Logger) *Source {
	return &Source{c: c, b: b, store: store, log: log, downloads: map[digest.Digest]bool{}}
}

// Where a blob came from, as OpenBlob reports it.
const (
	FromBucket = "bucket"
	FromPeer   = "peer"
	// FromUpstream: this replica owns the download; the caller asks its
	// upstream itself (and calls Stored once the blob is stored).
	FromUpstream = "upstream"
)

// OpenBlob opens blob d of repo (on upstream up) from the bucket or from
// its owner. direct opens it from the upstream at an offset: it continues
// a download whose owner died midway, when this replica is the new owner.
// It returns FromUpstream and no reader when this replica owns the blob.
func (s *Source) OpenBlob(ctx context.Context, up, repo string, d digest.Digest, direct func(ctx context.Context, offset int64) (io.ReadCloser, error)) (io.ReadCloser, int64, string, error) {
	if size, err := s.b.StatBlob(ctx, d); err == nil {
		rc, err := s.b.Opener(d)(ctx)
		return rc, size, FromBucket, err
	} else if !errors.Is(err, bucket.ErrNotFound) {
		s.log.Warn().Err(err).Str("digest", d.String()).Msg("bucket unavailable; asking the blob's owner")
	}
	if registry.InfoFrom(ctx).Peer {
		s.downloading(d)
		return nil, 0, FromUpstream, nil // asked as the owner
	}
	var size int64
	open := func(ctx context.Context, offset int64) (io.ReadCloser, error) {
		for range 3 {
			owner := s.c.Owner(d.String())
			if owner == s.c.self {
				if offset == 0 {
					return nil, errOwn
				}
				s.downloading(d)
				return direct(ctx, offset)
			}
			rc, n, err := s.c.fetch(ctx, owner, up, repo, d, offset)
			if errors.Is(err, errUnreachable) {
				continue // marked down: the next owner is asked
			}
			if err == nil && offset == 0 {
				size = n
			}
			return rc, err
		}
		return nil, fmt.Errorf("%w: no cluster member could serve %s", errUnreachable, d)
	}
	rc, err := bucket.Resume(ctx, 3, open)
	switch {
	case errors.Is(err, errOwn):
		s.downloading(d)
		return nil, 0, FromUpstream, nil
	case errors.Is(err, upstream.ErrNotFound):
		return nil, 0, FromPeer, err
	case err != nil:
		// The owner failed (its upstream, its disk): availability first,
		// this replica downloads the blob itself.
		s.log.Warn().Err(err).Str("digest", d.String()).Msg("the blob's owner failed; downloading it here")
		s.downloading(d)
		return nil, 0, FromUpstream, nil
	}
	return rc, size, FromPeer, nil
}

var errOwn = errors.New("this replica owns the download")

func (s *Source) downloading(d digest.Digest) {
	s.mu.Lock()
	s.downloads[d] = true
	s.mu.Unlock()
}

// Stored publishes blob d, if this replica downloaded it from the upstream
// (as its owner, or taking over from a dead owner), to the bucket, in the
// background. It is called after every stored fill that did not come from
// the bucket.
func (s *Source) Stored(d digest.Digest, size int64, origin string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mine := s.downloads[d]
	delete(s.downloads, d)
	if s.closed || !mine {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f, err := s.store.OpenBlob(d)
		if err != nil {
			return // evicted already
		}
		defer f.Close()
		if err := s.b.PublishFile(s.store.Context(), d, f, size, origin); err != nil {
			s.log.Warn().Err(err).Str("digest", d.String()).Msg("publishing a downloaded blob to the bucket")
		}
	}()
}

// Close waits for the publishes in flight (they end with the store's context).
func (s *Source) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
}
