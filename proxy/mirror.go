package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/upstream"
	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"
	"golang.org/x/sync/singleflight"
)

// negativeTTL is how long "the upstream does not have it" is remembered.
const negativeTTL = 30 * time.Second

// mirror serves requests for repositories mirrored from an upstream.
type mirror struct {
	h        *Handler
	sf       singleflight.Group // manifest fetches, tag revalidations, blob fill starts
	negative *expirable.LRU[string, struct{}]
	prefetch chan struct{} // semaphore bounding background layer fills; nil disables
}

func newMirror(h *Handler, prefetch int) *mirror {
	m := &mirror{h: h, negative: expirable.NewLRU[string, struct{}](8192, nil, negativeTTL)}
	if prefetch == 0 {
		prefetch = 4
	}
	if prefetch > 0 {
		m.prefetch = make(chan struct{}, prefetch)
	}
	return m
}

func (m *mirror) serve(w http.ResponseWriter, r *http.Request, req Request, t Target) error {
	read := r.Method == http.MethodGet || r.Method == http.MethodHead
	if !read {
		return errMethod
	}
	switch req.Kind {
	case KindManifest:
		return m.manifest(w, r, req, t)
	case KindBlob:
		d, err := oci.ParseDigest(req.Reference)
		if err != nil {
			return err
		}
		return m.blob(w, r, t, d)
	case KindTags:
		return m.tags(w, r, req, t)
	case KindReferrers:
		return m.referrers(w, r, req, t)
	}
	return errMethod
}

// referrers answers the referrers API for a mirrored repository from the
// upstream (signatures and SBOMs attached there), falling back to what is
// cached when the upstream is unreachable or lacks the API.
func (m *mirror) referrers(w http.ResponseWriter, r *http.Request, req Request, t Target) error {
	d, err := oci.ParseDigest(req.Reference)
	if err != nil {
		return err
	}
	if !m.offline() {
		at := r.URL.Query().Get("artifactType")
		descs, filtered, err := t.Upstream.Client.Referrers(r.Context(), t.Repo, d, at)
		if err == nil {
			if at != "" {
				if !filtered {
					kept := descs[:0]
					for _, desc := range descs {
						if desc.ArtifactType == at {
							kept = append(kept, desc)
						}
					}
					descs = kept
				}
				w.Header().Set("OCI-Filters-Applied", "artifactType")
			}
			return writeIndex(w, r, descs)
		}
		if !errors.Is(err, upstream.ErrNotFound) {
			zerolog.Ctx(r.Context()).Warn().Err(err).Str("repo", t.StoreRepo).Msg("upstream referrers failed; serving cached referrers")
		}
	}
	return m.h.referrers(w, r, t.StoreRepo, req.Reference)
}

// upstreamCtx detaches work that is shared by many clients from the one
// client that happened to start it, keeping its logger.
func upstreamCtx(r *http.Request) context.Context { return context.WithoutCancel(r.Context()) }

// fillCtx is the context of a blob download: the store's (so closing the
// store ends it, and no client does) with the request's logger.
func (m *mirror) fillCtx(r *http.Request) context.Context {
	return zerolog.Ctx(r.Context()).WithContext(m.h.store.Context())
}

func (m *mirror) offline() bool { return m.h.router.Offline }

// --- manifests ---------------------------------------------------------------

func (m *mirror) manifest(w http.ResponseWriter, r *http.Request, req Request, t Target) error {
	ref := req.Reference
	var d digest.Digest
	if oci.IsDigest(ref) {
		var err error
		if d, err = oci.ParseDigest(ref); err != nil {
			return err
		}
	} else {
		if !oci.ValidTag(ref) {
			return oci.Errorf(oci.CodeManifestInvalid, "invalid tag %q", clip(ref))
		}
		var err error
		if d, err = m.resolveTag(r, t, ref); err != nil {
			return err
		}
	}
	if _, err := m.h.store.Manifest(t.StoreRepo, d); err == nil {
		m.h.metrics.cache.WithLabelValues("manifest", "hit").Inc()
		return m.h.getManifest(w, r, t.StoreRepo, d.String())
	}
	if err := m.fetchManifest(r, t, d.String(), ""); err != nil {
		return err
	}
	return m.h.getManifest(w, r, t.StoreRepo, d.String())
}

// resolveTag returns the digest a tag points at: from the index while it is
// fresh, else after one upstream HEAD (serving the cached digest if the
// upstream fails), else by fetching the manifest.
func (m *mirror) resolveTag(r *http.Request, t Target, tag string) (digest.Digest, error) {
	log := zerolog.Ctx(r.Context())
	rec, err := m.h.store.Tag(t.StoreRepo, tag)
	cached := err == nil
	if err != nil && !errors.Is(err, cache.ErrNotFound) {
		return "", err
	}
	if cached && (m.offline() || time.Since(rec.FetchedAt) < t.Upstream.TagTTL) {
		m.h.metrics.cache.WithLabelValues("tag", "hit").Inc()
		return rec.Digest, nil
	}
	if m.offline() {
		return "", oci.Errorf(oci.CodeManifestUnknown, "%s:%s is not cached and berth is offline", t.Repo, tag)
	}
	if !cached {
		m.h.metrics.cache.WithLabelValues("tag", "miss").Inc()
		var d digest.Digest
		err := m.fetchManifestTo(r, t, tag, &d)
		return d, err
	}
	// Stale: one HEAD, shared by everyone asking now.
	v, err, _ := m.sf.Do("head\x00"+t.StoreRepo+"\x00"+tag, func() (any, error) {
		desc, err := t.Upstream.Client.HeadManifest(upstreamCtx(r), t.Repo, tag)
		if err != nil {
			return nil, err
		}
		if desc.Digest == rec.Digest {
			return desc.Digest, m.h.store.SetTag(t.StoreRepo, tag, desc.Digest, time.Now())
		}
		var d digest.Digest
		return d, m.fetchManifestTo(r, t, tag, &d)
	})
	switch {
	case err == nil:
		m.h.metrics.cache.WithLabelValues("tag", "revalidated").Inc()
		return v.(digest.Digest), nil
	case errors.Is(err, upstream.ErrNotFound) && !t.Upstream.KeepOnNotFound:
		_ = m.h.store.DeleteTag(t.StoreRepo, tag)
		return "", oci.Errorf(oci.CodeManifestUnknown, "%s:%s no longer exists upstream", t.Repo, tag)
	case errors.Is(err, upstream.ErrNotFound), upstream.IsUnavailable(err), errors.Is(err, upstream.ErrDenied):
		m.h.metrics.cache.WithLabelValues("tag", "stale").Inc()
		log.Warn().Err(err).Str("repo", t.StoreRepo).Str("tag", tag).Msg("upstream failed; serving cached tag")
		return rec.Digest, nil
	}
	return "", upstreamErr(err, oci.CodeManifestUnknown)
}

// fetchManifestTo fetches ref (a tag) and reports the digest it resolved to.
func (m *mirror) fetchManifestTo(r *http.Request, t Target, tag string, d *digest.Digest) error {
	v, err, _ := m.sf.Do("get\x00"+t.StoreRepo+"\x00"+tag, func() (any, error) {
		return m.fetch(r, t, tag, tag)
	})
	if err != nil {
		return err
	}
	*d = v.(digest.Digest)
	return nil
}

// fetchManifest fetches a manifest by digest into the store.
func (m *mirror) fetchManifest(r *http.Request, t Target, ref, tag string) error {
	if m.offline() {
		return oci.Errorf(oci.CodeManifestUnknown, "manifest %s is not cached and berth is offline", clip(ref))
	}
	_, err, _ := m.sf.Do("get\x00"+t.StoreRepo+"\x00"+ref, func() (any, error) {
		return m.fetch(r, t, ref, tag)
	})
	return err
}

// fetch GETs a manifest from the upstream, stores it (tagging it when tag is
// set) and starts filling its blobs in the background.
func (m *mirror) fetch(r *http.Request, t Target, ref, tag string) (digest.Digest, error) {
	key := t.StoreRepo + "@" + ref
	if _, ok := m.negative.Get(key); ok {
		m.h.metrics.cache.WithLabelValues("manifest", "negative").Inc()
		return "", oci.Errorf(oci.CodeManifestUnknown, "manifest %s unknown upstream", clip(ref))
	}
	m.h.metrics.cache.WithLabelValues("manifest", "miss").Inc()
	desc, body, err := t.Upstream.Client.GetManifest(upstreamCtx(r), t.Repo, ref)
	if err != nil {
		if errors.Is(err, upstream.ErrNotFound) {
			m.negative.Add(key, struct{}{})
		}
		return "", upstreamErr(err, oci.CodeManifestUnknown)
	}
	rec, mf, err := parseManifest(desc.MediaType, body)
	if err != nil {
		return "", err
	}
	rec.Digest, rec.Size = desc.Digest, int64(len(body))
	if err := m.h.store.PutManifest(t.StoreRepo, t.Upstream.Client.Name(), rec, body, tag, time.Now()); err != nil {
		return "", err
	}
	if r.Method == http.MethodGet { // a HEAD is a check, not a pull
		m.prefetchBlobs(r, t, mf.blobs())
	}
	return desc.Digest, nil
}

// prefetchBlobs starts filling an image's config and layers so that the
// client's next requests find them in flight or done.
func (m *mirror) prefetchBlobs(r *http.Request, t Target, descs []ocispec.Descriptor) {
	if m.prefetch == nil || len(descs) == 0 {
		return
	}
	ctx := m.fillCtx(r)
	go func() {
		for _, d := range descs {
			if d.Digest.Validate() != nil {
				continue
			}
			if _, err := m.h.store.StatBlob(d.Digest); err == nil {
				continue
			}
			select {
			case m.prefetch <- struct{}{}:
			default:
				return // all prefetch slots busy: the client's own requests fetch the rest
			}
			f, err := m.startFill(ctx, t, d.Digest)
			if err != nil || f == nil { // nil: a client's own request stored it meanwhile
				<-m.prefetch
				if err != nil {
					zerolog.Ctx(ctx).Debug().Err(err).Str("digest", d.Digest.String()).Msg("prefetch not started")
				}
				continue
			}
			go func() {
				defer func() { <-m.prefetch }()
				_ = f.Wait(context.Background())
			}()
		}
	}()
}

// --- blobs -------------------------------------------------------------------

func (m *mirror) blob(w http.ResponseWriter, r *http.Request, t Target, d digest.Digest) error {
	if ok, err := m.h.store.Linked(t.StoreRepo, d); err != nil {
		return err
	} else if ok {
		m.h.metrics.cache.WithLabelValues("blob", "hit").Inc()
		return m.h.serveStoredBlob(w, r, t.StoreRepo, d)
	}
	if m.offline() {
		return oci.Errorf(oci.CodeBlobUnknown, "blob %s is not cached and berth is offline", d)
	}
	key := t.StoreRepo + "@" + d.String()
	if _, ok := m.negative.Get(key); ok {
		m.h.metrics.cache.WithLabelValues("blob", "negative").Inc()
		return oci.Errorf(oci.CodeBlobUnknown, "blob %s unknown upstream", d)
	}
	// Stored already for another repository: the upstream must confirm this
	// repository has it before it is linked (one HEAD, no download).
	if _, err := m.h.store.StatBlob(d); err == nil || r.Method == http.MethodHead {
		desc, err := t.Upstream.Client.HeadBlob(upstreamCtx(r), t.Repo, d)
		if err != nil {
			if errors.Is(err, upstream.ErrNotFound) {
				m.negative.Add(key, struct{}{})
			}
			if r.Method == http.MethodHead {
				return upstreamErr(err, oci.CodeBlobUnknown).WithStatus(http.StatusNotFound)
			}
			return upstreamErr(err, oci.CodeBlobUnknown)
		}
		if err := m.h.store.Link(t.StoreRepo, t.Upstream.Client.Name(), d); err == nil {
			return m.h.serveStoredBlob(w, r, t.StoreRepo, d)
		}
		if r.Method == http.MethodGet {
			// Stored a moment ago, evicted since: fetch it like any miss.
			return m.fillAndStream(w, r, t, d, key)
		}
		hdr := w.Header()
		hdr.Set("Docker-Content-Digest", d.String())
		hdr.Set("Content-Type", "application/octet-stream")
		hdr.Set("Content-Length", strconv.FormatInt(desc.Size, 10))
		hdr.Set("Accept-Ranges", "bytes")
		w.WriteHeader(http.StatusOK)
		return nil
	}
	return m.fillAndStream(w, r, t, d, key)
}

// fillAndStream answers a blob GET miss: it starts or joins the one
// upstream download of d and streams from it.
func (m *mirror) fillAndStream(w http.ResponseWriter, r *http.Request, t Target, d digest.Digest, key string) error {
	m.h.metrics.cache.WithLabelValues("blob", "miss").Inc()
	f, err := m.startFill(m.fillCtx(r), t, d)
	if err != nil {
		if errors.Is(err, upstream.ErrNotFound) {
			m.negative.Add(key, struct{}{})
		}
		return upstreamErr(err, oci.CodeBlobUnknown)
	}
	if f == nil { // stored meanwhile: link it (after the checks above) and serve it
		return m.blob(w, r, t, d)
	}
	if err := m.joinFill(r, t, f); err != nil {
		return err
	}
	return m.streamFill(w, r, t, f)
}

// startFill returns the in-flight fill of d, starting one for t's
// repository if there is none. The singleflight makes concurrent misses
// share the one upstream GET that opens the stream; later arrivals find the
// fill in the store. It returns a nil fill if the blob is stored already.
// A fill started for another repository is returned as it is: the caller
// decides whether t's repository may join it.
func (m *mirror) startFill(ctx context.Context, t Target, d digest.Digest) (*cache.Fill, error) {
	// Keyed by repository too: one repository's failure (a 404 for a digest
	// it does not have) must not become another's. Repositories still share
	// one download through InFlight.
	v, err, _ := m.sf.Do("blob\x00"+t.StoreRepo+"\x00"+d.String(), func() (any, error) {
		if f := m.h.store.InFlight(d); f != nil {
			m.h.metrics.joins.Inc()
			return f, nil
		}
		if _, err := m.h.store.StatBlob(d); err == nil {
			return (*cache.Fill)(nil), nil
		}
		rc, size, err := t.Upstream.Client.GetBlob(ctx, t.Repo, d, 0)
		if err != nil {
			return nil, err
		}
		m.h.metrics.inFlight.Inc() // before the fill can end and call onDone
		f, joined, err := m.h.store.Fill(d, size, t.StoreRepo, t.Upstream.Client.Name(),
			func(context.Context) (io.ReadCloser, error) { return rc, nil },
			func(res cache.FillResult) {
				m.h.metrics.inFlight.Dec()
				m.h.metrics.upstreamByte.Add(float64(res.Bytes))
				if res.Err != nil {
					m.h.metrics.fills.WithLabelValues("failed").Inc()
				} else {
					m.h.metrics.fills.WithLabelValues("ok").Inc()
				}
			})
		if err != nil || joined {
			m.h.metrics.inFlight.Dec() // no fill of ours runs
			rc.Close()
		}
		return f, err
	})
	if err != nil {
		return nil, err
	}
	return v.(*cache.Fill), nil
}

// joinFill lets t's repository read fill f. A fill started for another
// repository is joined only once the upstream confirms, with a HEAD, that
// t's repository has the blob: knowing a digest is not access to it.
func (m *mirror) joinFill(r *http.Request, t Target, f *cache.Fill) error {
	if f.HasRepo(t.StoreRepo) {
		return nil
	}
	if _, err := t.Upstream.Client.HeadBlob(upstreamCtx(r), t.Repo, f.Digest); err != nil {
		return upstreamErr(err, oci.CodeBlobUnknown)
	}
	f.AddRepo(t.StoreRepo, t.Upstream.Client.Name())
	return nil
}

// streamFill answers a blob GET from a fill in progress: every client reads
// the staging file as it grows. A Range is answered as soon as it arrives.
// If the fill fails the connection is cut, so no client takes a clean end
// of a truncated or corrupt body for the blob.
func (m *mirror) streamFill(w http.ResponseWriter, r *http.Request, t Target, f *cache.Fill) error {
	start, end := int64(0), f.Size-1
	status := http.StatusOK
	hdr := w.Header()
	if rng := r.Header.Get("Range"); rng != "" {
		s, e, ok := parseRangeOpen(rng, f.Size)
		if !ok {
			hdr.Set("Content-Range", "bytes */"+strconv.FormatInt(f.Size, 10))
			return &oci.Error{Code: oci.CodeRangeInvalid, Message: "invalid range", HTTPStatus: http.StatusRequestedRangeNotSatisfiable}
		}
		start, end, status = s, e, http.StatusPartialContent
		hdr.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", s, e, f.Size))
	}
	rd, err := f.NewReader(r.Context(), start)
	if err != nil {
		// The staging file was renamed or removed between lookup and open:
		// the fill is ending. Once it has, the blob is on disk or gone.
		if werr := f.Wait(r.Context()); werr == nil {
			return m.h.serveStoredBlob(w, r, t.StoreRepo, f.Digest)
		}
		return oci.Errorf(oci.CodeUnavailable, "upstream fill of %s failed; retry", f.Digest)
	}
	defer rd.Close()
	hdr.Set("Docker-Content-Digest", f.Digest.String())
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Accept-Ranges", "bytes")
	hdr.Set("Content-Length", strconv.FormatInt(end-start+1, 10))
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return nil
	}
	rc := http.NewResponseController(w)
	buf := make([]byte, 256<<10)
	remaining := end - start + 1
	// A response that ends with the blob's last byte holds that byte back
	// until the whole blob is verified: a client must never see a clean end
	// of content that fails its digest. (A range that stops earlier cannot
	// be verified on its own and is answered as soon as it has arrived.)
	hold := int64(0)
	if end == f.Size-1 && remaining > 0 {
		hold = 1
	}
	cut := func(err error) {
		if r.Context().Err() == nil {
			zerolog.Ctx(r.Context()).Warn().Err(err).Str("digest", f.Digest.String()).Msg("cutting client off: fill failed")
		}
		panic(http.ErrAbortHandler)
	}
	for remaining > hold {
		n, err := rd.Read(buf[:min(int64(len(buf)), remaining-hold)])
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil // client went away; the fill goes on
			}
			_ = rc.Flush()
			remaining -= int64(n)
		}
		if err != nil && remaining > hold {
			cut(err)
		}
	}
	if hold > 0 || f.Size == 0 {
		if err := f.Wait(r.Context()); err != nil {
			cut(err)
		}
		n, err := io.ReadFull(rd, buf[:hold])
		if err != nil {
			cut(err)
		}
		_, _ = w.Write(buf[:n])
	}
	return nil
}

// parseRangeOpen parses "bytes=a-b", "bytes=a-" or "bytes=-n" against size.
func parseRangeOpen(s string, size int64) (int64, int64, bool) {
	if s, e, ok := oci.ParseRange(s); ok {
		if s >= size {
			return 0, 0, false
		}
		return s, min(e, size-1), true
	}
	spec, ok := strings.CutPrefix(s, "bytes=")
	if !ok || len(spec) < 2 {
		return 0, 0, false
	}
	if spec[len(spec)-1] == '-' {
		a, err := strconv.ParseInt(spec[:len(spec)-1], 10, 64)
		if err != nil || a < 0 || a >= size {
			return 0, 0, false
		}
		return a, size - 1, true
	}
	if spec[0] == '-' {
		n, err := strconv.ParseInt(spec[1:], 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false
		}
		return max(0, size-n), size - 1, true
	}
	return 0, 0, false
}

// --- tags --------------------------------------------------------------------

func (m *mirror) tags(w http.ResponseWriter, r *http.Request, req Request, t Target) error {
	n, hasN, last, err := pageParams(r)
	if err != nil {
		return err
	}
	if hasN && n == 0 {
		return writeTagList(w, r, req, []string{}, "", 0)
	}
	if !m.offline() {
		tags, next, err := t.Upstream.Client.Tags(r.Context(), t.Repo, n, last)
		if err == nil {
			if tags == nil {
				tags = []string{}
			}
			return writeTagList(w, r, req, tags, next, n)
		}
		if errors.Is(err, upstream.ErrNotFound) {
			return oci.Errorf(oci.CodeNameUnknown, "repository %s unknown upstream", t.Repo)
		}
		zerolog.Ctx(r.Context()).Warn().Err(err).Str("repo", t.StoreRepo).Msg("upstream tag list failed; serving cached tags")
		m.h.metrics.cache.WithLabelValues("tags", "stale").Inc()
	}
	return m.h.storedTags(w, r, req, t.StoreRepo, n, hasN, last, "repository "+t.Repo+" is not cached")
}

// upstreamErr maps an upstream failure to the OCI error a client sees.
// Nothing of the upstream's credentials is in err (package upstream
// guarantees it), so its text may be passed on as detail.
func upstreamErr(err error, notFound oci.Code) *oci.Error {
	var e *oci.Error
	if errors.As(err, &e) {
		return e
	}
	switch {
	case errors.Is(err, upstream.ErrNotFound):
		e = oci.Errorf(notFound, "not found upstream")
	case errors.Is(err, upstream.ErrRateLimited):
		e = &oci.Error{Code: oci.CodeTooManyRequests, Message: "upstream rate limit reached and the content is not cached", Detail: err.Error()}
	case errors.Is(err, upstream.ErrDenied):
		e = &oci.Error{Code: oci.CodeDenied, Message: "upstream denied access", Detail: err.Error()}
	case errors.Is(err, upstream.ErrDigestMismatch), errors.Is(err, cache.ErrDigestMismatch):
		e = &oci.Error{Code: oci.CodeUnavailable, Message: "upstream sent content that does not match its digest", Detail: err.Error(), HTTPStatus: http.StatusBadGateway}
	default:
		// Unreachable and not cached: from here the content does not exist.
		// 404 (not 503) keeps push flows working offline: clients HEAD a blob
		// in a new repository before they upload it.
		e = &oci.Error{Code: notFound, Message: "not cached, and the upstream is unavailable", Detail: err.Error()}
	}
	e.Cause = err // resolveTag tells stale-if-error cases apart through it
	return e
}
