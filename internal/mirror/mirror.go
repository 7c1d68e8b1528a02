// Package mirror is one upstream registry cached in the local store, as a
// registry: a read side (registry.Reader and registry.Lister) built from the
// local store and an upstream client, as distribution's proxy builds a
// repository from a local and a remote store. Concurrent misses share one
// upstream request (singleflight); a blob miss is one upstream download into
// the store that every client streams from while it arrives.
//
// Repository names are the upstream's ("library/busybox"); content is stored
// as "<upstream>/<name>", so it can never collide with a local repository.
package mirror

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/internal/ttl"
	"github.com/berth-dev/berth/upstream"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"
	"golang.org/x/sync/singleflight"
)

// Upstream is what a mirror needs of a remote registry client
// (*upstream.Client implements it).
type Upstream interface {
	Name() string
	HeadManifest(ctx context.Context, repo, ref string) (upstream.Descriptor, error)
	GetManifest(ctx context.Context, repo, ref string) (upstream.Descriptor, []byte, error)
	HeadBlob(ctx context.Context, repo string, d digest.Digest) (upstream.Descriptor, error)
	GetBlob(ctx context.Context, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error)
	Tags(ctx context.Context, repo string, n int, last string) ([]string, string, error)
	Referrers(ctx context.Context, repo string, d digest.Digest, artifactType string) ([]ocispec.Descriptor, bool, error)
}

// BlobSource is where a mirror of a cluster looks for a blob it misses
// before its upstream (cluster.Source implements it). OpenBlob returns the
// blob's bytes and size and where they come from; from == "upstream" (and
// no reader) means this replica owns the download and asks its upstream,
// then calls Stored once the blob is stored (and after any successful fill
// from a peer: Stored publishes only what this replica downloaded, such as a
// download it took over midway). direct opens the upstream at
// an offset, for a download taken over midway.
type BlobSource interface {
	OpenBlob(ctx context.Context, upstream, repo string, d digest.Digest, direct func(ctx context.Context, offset int64) (io.ReadCloser, error)) (rc io.ReadCloser, size int64, from string, err error)
	Stored(d digest.Digest, size int64, upstream string)
}

// Options configure a Mirror.
type Options struct {
	Store  *cache.Store
	Client Upstream
	// TagTTL is how long a tag is served without asking the upstream; zero
	// means a HEAD on every request.
	TagTTL time.Duration
	// KeepOnNotFound keeps serving a cached tag the upstream no longer has.
	KeepOnNotFound bool
	// StaleIfDenied keeps serving a cached tag when the upstream answers
	// 401/403 (access revoked, credentials rejected), as for an outage;
	// false answers DENIED instead (berth's serve_stale_on_denied, default
	// on for availability).
	StaleIfDenied bool
	// Offline forbids any upstream contact: the cache alone answers.
	Offline bool
	// Prefetch bounds the background fills of an image's blobs started
	// (when every slot is busy the rest of that image is left to the
	// client's own requests, which start their fills as they ask)
	// after a manifest miss; zero means 4, negative disables prefetching.
	Prefetch int
	// Timeout bounds upstream work shared by many clients and detached from
	// each (a manifest fetch, a tag revalidation); zero means 20 s. Blob
	// downloads are bounded by the upstream client's minimum rate instead.
	Timeout time.Duration
	// Source, in a cluster, is asked for a blob before the upstream: the
	// bucket, or the replica that owns the blob's download. Nil: a single
	// node, the upstream alone.
	Source BlobSource
	// Metrics receives the mirror's counters; nil counts nothing.
	Metrics *Metrics
	Logger  zerolog.Logger
}

// negativeTTL is how long "the upstream does not have it" is remembered.
const negativeTTL = 30 * time.Second

// Mirror is the read side of one upstream, cached.
type Mirror struct {
	o        Options
	name     string
	local    *cache.Local
	sf       singleflight.Group // manifest fetches, tag revalidations, blob fill starts
	negative *ttl.Cache[string, struct{}]
	met      *upstreamMetrics

	prefetch chan struct{} // semaphore of background fills; nil disables
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup // prefetch goroutines
	closeMu  sync.Mutex     // orders wg.Add against Close
}

var _ registry.ReadLister = (*Mirror)(nil)

// New returns the mirror of o.Client. Close stops its background work.
func New(o Options) *Mirror {
	if o.Timeout == 0 {
		o.Timeout = 20 * time.Second
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	m := &Mirror{o: o, name: o.Client.Name(), local: cache.NewLocal(o.Store),
		negative: ttl.New[string, struct{}](8192, negativeTTL), met: o.Metrics.forUpstream(o.Client.Name())}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if o.Prefetch == 0 {
		o.Prefetch = 4
	}
	if o.Prefetch > 0 {
		m.prefetch = make(chan struct{}, o.Prefetch)
	}
	return m
}

// Name is the upstream's name.
func (m *Mirror) Name() string { return m.name }

// Close stops starting background fills and waits for the goroutines that
// start them; the fills themselves belong to the store, which waits for them.
func (m *Mirror) Close() {
	m.closeMu.Lock()
	m.cancel()
	m.closeMu.Unlock()
	m.wg.Wait()
}

// Wait blocks until the background prefetches started so far have ended
// (each blob stored or its fill failed), without stopping anything, so a
// test can look at a settled cache. Call it when no request that could start
// a prefetch is running: sync.WaitGroup forbids an Add from zero concurrent
// with a Wait.
func (m *Mirror) Wait() { m.wg.Wait() }

func (m *Mirror) storeRepo(repo string) string { return m.name + "/" + repo }

// detached is the context of upstream work shared by many clients: no
// client's hang-up ends it, its deadline does; it keeps the logger.
func (m *Mirror) detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), m.o.Timeout)
}

// shared runs fn once for all concurrent callers of key, under a detached
// context; each caller waits only as long as its own context lasts.
func (m *Mirror) shared(ctx context.Context, key string, fn func(ctx context.Context) (any, error)) (any, error) {
	ch := m.sf.DoChan(key, func() (any, error) {
		dctx, cancel := m.detached(ctx)
		defer cancel()
		return fn(dctx)
	})
	select {
	case res := <-ch:
		return res.Val, res.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// --- manifests ---------------------------------------------------------------

// GetTag implements registry.Reader.
//
// Eviction removes a mirrored manifest together with the tags that point
// at it; if that happens between the tag's read and the manifest's, the
// tag is resolved once more (now from the upstream) rather than answered
// 404 (found by crash-e2e under a 6 MiB cache limit).
func (m *Mirror) GetTag(ctx context.Context, repo, tag string) (registry.BlobReader, error) {
	for try := 0; ; try++ {
		d, err := m.resolveTag(ctx, repo, tag, true)
		if err != nil {
			return nil, err
		}
		rd, err := m.local.GetManifest(ctx, m.storeRepo(repo), d)
		if try == 0 && errors.Is(err, oci.ErrManifestUnknown) {
			continue
		}
		return rd, err
	}
}

// ResolveTag implements registry.Reader (evicted meanwhile: as GetTag).
func (m *Mirror) ResolveTag(ctx context.Context, repo, tag string) (registry.Descriptor, error) {
	for try := 0; ; try++ {
		d, err := m.resolveTag(ctx, repo, tag, false)
		if err != nil {
			return registry.Descriptor{}, outageUnknown(err, oci.CodeManifestUnknown, "manifest "+oci.Clip(tag))
		}
		desc, err := m.local.ResolveManifest(ctx, m.storeRepo(repo), d)
		if try == 0 && errors.Is(err, oci.ErrManifestUnknown) {
			continue
		}
		return desc, err
	}
}

// GetManifest implements registry.Reader.
func (m *Mirror) GetManifest(ctx context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	if err := m.ensureManifest(ctx, repo, d, true); err != nil {
		return nil, err
	}
	return m.local.GetManifest(ctx, m.storeRepo(repo), d)
}

// ResolveManifest implements registry.Reader. A miss fetches the manifest
// (a HEAD is often followed by its GET) but prefetches nothing.
func (m *Mirror) ResolveManifest(ctx context.Context, repo string, d digest.Digest) (registry.Descriptor, error) {
	if err := m.ensureManifest(ctx, repo, d, false); err != nil {
		return registry.Descriptor{}, outageUnknown(err, oci.CodeManifestUnknown, "manifest "+d.String())
	}
	return m.local.ResolveManifest(ctx, m.storeRepo(repo), d)
}

func (m *Mirror) ensureManifest(ctx context.Context, repo string, d digest.Digest, pull bool) error {
	if _, err := m.o.Store.Manifest(m.storeRepo(repo), d); err == nil {
		m.met.result(ctx, "manifest", "hit")
		return nil
	}
	if m.o.Offline {
		return oci.Errorf(oci.CodeManifestUnknown, "manifest %s is not cached and berth is offline", d)
	}
	_, err := m.fetchManifest(ctx, repo, d.String(), "", pull)
	return err
}

// resolveTag returns the digest a tag points at: from the index while it is
// fresh, else after one upstream HEAD (serving the cached digest if the
// upstream fails), else by fetching the manifest.
func (m *Mirror) resolveTag(ctx context.Context, repo, tag string, pull bool) (digest.Digest, error) {
	sr := m.storeRepo(repo)
	rec, err := m.o.Store.Tag(sr, tag)
	cached := err == nil
	if err != nil && !errors.Is(err, cache.ErrNotFound) {
		return "", err
	}
	if cached && (m.o.Offline || time.Since(rec.FetchedAt) < m.o.TagTTL) {
		m.met.result(ctx, "tag", "hit")
		return rec.Digest, nil
	}
	if m.o.Offline {
		return "", oci.Errorf(oci.CodeManifestUnknown, "%s:%s is not cached and berth is offline", repo, tag)
	}
	if !cached {
		m.met.result(ctx, "tag", "miss")
		return m.fetchManifest(ctx, repo, tag, tag, pull)
	}
	// Stale: one HEAD, shared by everyone asking now.
	v, err := m.shared(ctx, "head\x00"+sr+"\x00"+tag, func(dctx context.Context) (any, error) {
		desc, err := m.o.Client.HeadManifest(dctx, repo, tag)
		if err != nil {
			return nil, err
		}
		if desc.Digest == rec.Digest {
			return desc.Digest, m.o.Store.SetTag(sr, tag, desc.Digest, time.Now())
		}
		return m.fetch(dctx, repo, tag, tag, pull)
	})
	switch {
	case err == nil:
		m.met.result(ctx, "tag", "revalidated")
		return v.(digest.Digest), nil
	case ctx.Err() != nil:
		return "", ctx.Err()
	case errors.Is(err, upstream.ErrNotFound) && !m.o.KeepOnNotFound:
		_ = m.o.Store.DeleteTag(sr, tag)
		return "", oci.Errorf(oci.CodeManifestUnknown, "%s:%s no longer exists upstream", repo, tag)
	case errors.Is(err, upstream.ErrNotFound), upstream.IsUnavailable(err), errors.Is(err, upstream.ErrMisconfigured),
		errors.Is(err, upstream.ErrDenied) && m.o.StaleIfDenied, errors.Is(err, context.DeadlineExceeded):
		m.met.result(ctx, "tag", "stale")
		zerolog.Ctx(ctx).Warn().Err(err).Str("repo", sr).Str("tag", tag).
			Str("request_id", registry.InfoFrom(ctx).RequestID).Msg("upstream failed; serving cached tag")
		return rec.Digest, nil
	}
	return "", m.upstreamErr(ctx, err, oci.CodeManifestUnknown)
}

// fetchManifest fetches ref (a tag or digest) once for all concurrent askers
// and reports the digest it resolved to.
func (m *Mirror) fetchManifest(ctx context.Context, repo, ref, tag string, pull bool) (digest.Digest, error) {
	v, err := m.shared(ctx, "get\x00"+m.storeRepo(repo)+"\x00"+ref, func(dctx context.Context) (any, error) {
		return m.fetch(dctx, repo, ref, tag, pull)
	})
	if err != nil {
		return "", err
	}
	return v.(digest.Digest), nil
}

// fetch GETs a manifest from the upstream, stores it (tagging it when tag is
// set) and, for a pull, starts filling its blobs in the background.
func (m *Mirror) fetch(ctx context.Context, repo, ref, tag string, pull bool) (digest.Digest, error) {
	sr := m.storeRepo(repo)
	key := sr + "@" + ref
	if _, ok := m.negative.Get(key); ok {
		m.met.result(ctx, "manifest", "negative")
		return "", oci.Errorf(oci.CodeManifestUnknown, "manifest %s unknown upstream", oci.Clip(ref))
	}
	m.met.result(ctx, "manifest", "miss")
	desc, body, err := m.o.Client.GetManifest(ctx, repo, ref)
	if err != nil {
		m.met.mismatch("manifest", err)
		if errors.Is(err, upstream.ErrNotFound) {
			m.negative.Add(key, struct{}{})
		}
		return "", m.upstreamErr(ctx, err, oci.CodeManifestUnknown)
	}
	man, err := registry.ParseManifest(desc.MediaType, body, desc.Digest)
	if err != nil {
		return "", err
	}
	if err := m.o.Store.PutManifest(sr, m.name, cache.RecordOf(man), body, tag, time.Now()); err != nil {
		return "", err
	}
	if pull {
		m.prefetchBlobs(ctx, repo, man.Blobs)
	}
	return desc.Digest, nil
}

// prefetchBlobs starts filling an image's config and layers so that the
// client's next requests find them in flight or done.
func (m *Mirror) prefetchBlobs(ctx context.Context, repo string, descs []ocispec.Descriptor) {
	if m.prefetch == nil || len(descs) == 0 {
		return
	}
	m.closeMu.Lock() // no Add once Close has begun waiting
	defer m.closeMu.Unlock()
	if m.ctx.Err() != nil {
		return
	}
	log := zerolog.Ctx(ctx)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for _, d := range descs {
			if _, err := m.o.Store.StatBlob(d.Digest); err == nil {
				continue
			}
			select {
			case m.prefetch <- struct{}{}:
			default:
				return // all prefetch slots busy: the client's own requests fetch the rest
			}
			f, _, err := m.startFill(log.WithContext(m.o.Store.Context()), false, repo, d.Digest)
			if err != nil || f == nil { // nil: a client's own request stored it meanwhile
				<-m.prefetch
				if err != nil {
					log.Debug().Err(err).Str("digest", d.Digest.String()).Msg("prefetch not started")
				}
				continue
			}
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				defer func() { <-m.prefetch }()
				_ = f.Wait(m.ctx)
			}()
		}
	}()
}

// --- blobs -------------------------------------------------------------------

// ResolveBlob implements registry.Reader: a miss is a HEAD upstream.
func (m *Mirror) ResolveBlob(ctx context.Context, repo string, d digest.Digest) (registry.Descriptor, error) {
	sr := m.storeRepo(repo)
	if desc, err := m.local.ResolveBlob(ctx, sr, d); err == nil {
		m.met.result(ctx, "blob", "hit")
		return desc, nil
	}
	if err := m.missAllowed(ctx, sr, d); err != nil {
		return registry.Descriptor{}, err
	}
	if f := m.o.Store.InFlight(d); f != nil && f.HasRepo(sr) {
		m.met.result(ctx, "blob", "joined")
		return registry.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: f.Size}, nil
	}
	desc, err := m.confirm(ctx, repo, d)
	err = outageUnknown(err, oci.CodeBlobUnknown, "blob "+d.String())
	if err == nil && m.o.Store.Link(sr, m.name, d) == nil { // stored for another repository
		m.met.result(ctx, "blob", "hit")
		return m.local.ResolveBlob(ctx, sr, d)
	}
	m.met.result(ctx, "blob", "miss")
	if err != nil {
		return registry.Descriptor{}, err
	}
	return registry.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: desc.Size}, nil
}

// outageUnknown turns an outage (503) into code (404) for a HEAD: it is
// what push clients (docker, crane, oras, regctl) ask before uploading a
// blob, a child manifest or a tag (crane copy asks the tag) to a new
// repository, and a push must not fail while the default upstream is down. A TLS or configuration
// failure (502), a denial or a rate limit stays what it is.
func outageUnknown(err error, code oci.Code, what string) error {
	var oe *oci.Error
	if !errors.As(err, &oe) || oe.Code != oci.CodeUnavailable || oe.Status() != http.StatusServiceUnavailable || oe.Upstream == "" {
		return err
	}
	return &oci.Error{Code: code, Message: what + " is not cached, and the upstream is unavailable", Detail: oe.Detail, Cause: oe.Cause}
}

// missAllowed refuses a blob miss that cannot reach the upstream.
func (m *Mirror) missAllowed(ctx context.Context, sr string, d digest.Digest) error {
	if m.o.Offline {
		return oci.Errorf(oci.CodeBlobUnknown, "blob %s is not cached and berth is offline", d)
	}
	if _, ok := m.negative.Get(sr + "@" + d.String()); ok {
		m.met.result(ctx, "blob", "negative")
		return oci.Errorf(oci.CodeBlobUnknown, "blob %s unknown upstream", d)
	}
	return nil
}

// confirm asks the upstream, with a HEAD, whether repo has blob d.
func (m *Mirror) confirm(ctx context.Context, repo string, d digest.Digest) (upstream.Descriptor, error) {
	dctx, cancel := m.detached(ctx)
	defer cancel()
	desc, err := m.o.Client.HeadBlob(dctx, repo, d)
	if err != nil {
		m.met.mismatch("blob", err)
		if errors.Is(err, upstream.ErrNotFound) {
			m.negative.Add(m.storeRepo(repo)+"@"+d.String(), struct{}{})
		}
		return desc, m.upstreamErr(ctx, err, oci.CodeBlobUnknown)
	}
	return desc, nil
}

// GetBlob implements registry.Reader. A hit is served from the store. A
// blob stored for another repository is linked once the upstream confirms
// this repository has it. A miss starts or joins the one upstream download
// of the blob, and the reader follows it as it arrives.
func (m *Mirror) GetBlob(ctx context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	sr := m.storeRepo(repo)
	if rd, err := m.local.GetBlob(ctx, sr, d); err == nil {
		m.met.result(ctx, "blob", "hit")
		return rd, nil
	} else if !errors.Is(err, oci.ErrBlobUnknown) {
		return nil, err
	}
	if err := m.missAllowed(ctx, sr, d); err != nil {
		return nil, err
	}
	// Stored already for another repository: the upstream must confirm this
	// repository has it before it is linked (one HEAD, no download).
	if _, err := m.o.Store.StatBlob(d); err == nil {
		if _, err := m.confirm(ctx, repo, d); err != nil {
			return nil, err
		}
		if m.o.Store.Link(sr, m.name, d) == nil {
			m.met.result(ctx, "blob", "hit")
			return m.local.GetBlob(ctx, sr, d)
		}
		// Evicted a moment ago: fetch it like any miss.
	}
	return m.fillReader(ctx, repo, d)
}

// fillReader starts or joins the upstream download of d and reads it.
func (m *Mirror) fillReader(ctx context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	sr := m.storeRepo(repo)
	for try := range 3 {
		f, joined, err := m.startFill(zerolog.Ctx(ctx).WithContext(m.o.Store.Context()), registry.InfoFrom(ctx).Peer, repo, d)
		if try == 0 {
			if joined {
				m.met.result(ctx, "blob", "joined")
				m.met.joinsCounter.Inc()
			} else {
				m.met.result(ctx, "blob", "miss")
			}
		}
		if err != nil {
			if errors.Is(err, upstream.ErrNotFound) {
				m.negative.Add(sr+"@"+d.String(), struct{}{})
			}
			if uncachable(err) {
				return m.passThrough(ctx, repo, d, err)
			}
			return nil, m.upstreamErr(ctx, err, oci.CodeBlobUnknown)
		}
		if f == nil { // stored meanwhile
			if rd, err := m.local.GetBlob(ctx, sr, d); err == nil {
				return rd, nil
			}
			continue
		}
		if !f.HasRepo(sr) {
			// A fill started for another repository is joined only once the
			// upstream confirms this one has the blob: knowing a digest is
			// not access to it.
			if _, err := m.confirm(ctx, repo, d); err != nil {
				return nil, err
			}
			f.AddRepo(sr, m.name)
		}
		rd, err := f.NewReader(ctx, 0)
		if err != nil {
			// The fill ended between lookup and open. Stored: read it (or,
			// evicted since, fetch again). Failed: this client gets the
			// failure the clients reading it got, and the upstream is not
			// asked again for it within the same request.
			werr := f.Wait(ctx)
			if werr != nil {
				return nil, m.upstreamErr(ctx, werr, oci.CodeBlobUnknown)
			}
			if rd, err := m.local.GetBlob(ctx, sr, d); err == nil {
				return rd, nil
			}
			continue
		}
		return &fillBlob{ReadSeekCloser: rd, desc: registry.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: f.Size}}, nil
	}
	return nil, oci.Errorf(oci.CodeUnavailable, "upstream fill of %s failed; retry", d)
}

// fillBlob is a blob read while its fill runs. It implements io.Seeker (for
// Range) and registry.Streaming (the HTTP layer flushes as bytes arrive).
type fillBlob struct {
	io.ReadSeekCloser
	desc registry.Descriptor
}

func (b *fillBlob) Descriptor() registry.Descriptor { return b.desc }
func (b *fillBlob) Streaming() bool                 { return true }

// startFill returns the in-flight fill of d, starting one for repo if there
// is none. The singleflight makes concurrent misses share the one upstream
// GET that opens the stream; later arrivals find the fill in the store. It
// returns a nil fill if the blob is stored already. A fill started for
// another repository is returned as it is: the caller decides whether repo
// may join it.
// joined reports that the caller shares a download someone else started.
func (m *Mirror) startFill(fctx context.Context, peer bool, repo string, d digest.Digest) (f *cache.Fill, joined bool, err error) {
	sr := m.storeRepo(repo)
	// Keyed by repository too: one repository's failure (a 404 for a digest
	// it does not have) must not become another's. Repositories still share
	// one download through InFlight.
	var ran, found bool // this caller's closure: it runs for one caller only
	v, err, _ := m.sf.Do("blob\x00"+sr+"\x00"+d.String(), func() (any, error) {
		ran = true
		if f := m.o.Store.InFlight(d); f != nil {
			found = true
			return f, nil
		}
		if _, err := m.o.Store.StatBlob(d); err == nil {
			return (*cache.Fill)(nil), nil
		}
		rc, size, from, err := m.openBlob(fctx, peer, repo, d)
		if err != nil {
			m.met.mismatch("blob", err)
			return nil, err
		}
		m.met.inFlight.Inc() // before the fill can end and call onDone
		f, storeJoined, err := m.o.Store.Fill(d, size, sr, m.name,
			func(context.Context) (io.ReadCloser, error) { return rc, nil },
			func(res cache.FillResult) {
				m.met.inFlight.Dec()
				if from != "upstream" {
					// A peer's stream this replica finished from the upstream,
					// as the new owner, is its download to publish.
					if from == "peer" && res.Err == nil && m.o.Source != nil {
						m.o.Source.Stored(d, size, m.name)
					}
					return // counted by the cluster's series
				}
				m.met.upstreamBytes.Add(float64(res.Bytes))
				if res.Err != nil {
					m.met.fillsFailed.Inc()
					m.met.mismatch("blob", res.Err)
				} else {
					m.met.fillsOK.Inc()
					if m.o.Source != nil {
						m.o.Source.Stored(d, size, m.name)
					}
				}
			})
		if err != nil || storeJoined {
			m.met.inFlight.Dec() // no fill of ours runs
			rc.Close()
		}
		found = storeJoined // another repository's fill began meanwhile
		return f, err
	})
	if err != nil {
		return nil, false, err
	}
	f = v.(*cache.Fill)
	return f, f != nil && (found || !ran), nil
}

// openBlob opens blob d for a fill: from the upstream on a single node;
// in a cluster from the bucket or the blob's owner, or from the upstream
// when this replica owns the download (peer: a peer asked it as the owner).
func (m *Mirror) openBlob(fctx context.Context, peer bool, repo string, d digest.Digest) (io.ReadCloser, int64, string, error) {
	if m.o.Source != nil {
		ctx := registry.WithInfo(fctx, &registry.RequestInfo{Peer: peer})
		direct := func(ctx context.Context, offset int64) (io.ReadCloser, error) {
			rc, _, err := m.o.Client.GetBlob(ctx, repo, d, offset)
			return rc, err
		}
		rc, size, from, err := m.o.Source.OpenBlob(ctx, m.name, repo, d, direct)
		if from != "upstream" {
			if err == nil && from == "bucket" {
				// Knowing a digest is not access to it: the upstream
				// confirms this repository has the blob (a HEAD).
				if _, cerr := m.confirm(fctx, repo, d); cerr != nil {
					rc.Close()
					return nil, 0, from, cerr
				}
			}
			return rc, size, from, err
		}
	}
	rc, size, err := m.o.Client.GetBlob(fctx, repo, d, 0)
	return rc, size, "upstream", err
}

// --- lists -------------------------------------------------------------------

// Tags implements registry.Lister: the upstream's list, or the cached tags
// when the upstream cannot answer.
func (m *Mirror) Tags(ctx context.Context, repo string, n int, last string) ([]string, string, error) {
	if n == 0 {
		return []string{}, "", nil
	}
	var upErr error
	if !m.o.Offline {
		tctx, cancel := context.WithTimeout(ctx, m.o.Timeout)
		tags, next, err := m.o.Client.Tags(tctx, repo, max(n, 0), last)
		cancel()
		if err == nil {
			if tags == nil {
				tags = []string{}
			}
			return tags, next, nil
		}
		if errors.Is(err, upstream.ErrNotFound) {
			return nil, "", oci.Errorf(oci.CodeNameUnknown, "repository %s unknown upstream", repo)
		}
		upErr = err
		zerolog.Ctx(ctx).Warn().Err(err).Str("repo", m.storeRepo(repo)).
			Str("request_id", registry.InfoFrom(ctx).RequestID).Msg("upstream tag list failed; serving cached tags")
		m.met.result(ctx, "tags", "stale")
	}
	tags, next, err := m.local.Tags(ctx, m.storeRepo(repo), n, last)
	if errors.Is(err, oci.ErrNameUnknown) {
		if upErr != nil && !errors.Is(upErr, upstream.ErrDenied) {
			return nil, "", m.upstreamErr(ctx, upErr, oci.CodeNameUnknown)
		}
		return nil, "", oci.Errorf(oci.CodeNameUnknown, "repository %s is not cached", repo)
	}
	return tags, next, err
}

// Referrers implements registry.Lister: from the upstream (signatures and
// SBOMs attached there), falling back to what is cached when the upstream
// is unreachable or lacks the API.
func (m *Mirror) Referrers(ctx context.Context, repo string, d digest.Digest, artifactType string) ([]registry.Descriptor, bool, error) {
	if !m.o.Offline {
		rctx, cancel := context.WithTimeout(ctx, m.o.Timeout)
		descs, filtered, err := m.o.Client.Referrers(rctx, repo, d, artifactType)
		cancel()
		if err == nil {
			if artifactType != "" && !filtered {
				kept := descs[:0]
				for _, desc := range descs {
					if desc.ArtifactType == artifactType {
						kept = append(kept, desc)
					}
				}
				descs = kept
			}
			if descs == nil {
				descs = []registry.Descriptor{}
			}
			return descs, artifactType != "", nil
		}
		if !errors.Is(err, upstream.ErrNotFound) {
			zerolog.Ctx(ctx).Warn().Err(err).Str("repo", m.storeRepo(repo)).
				Str("request_id", registry.InfoFrom(ctx).RequestID).Msg("upstream referrers failed; serving cached referrers")
		}
	}
	return m.local.Referrers(ctx, m.storeRepo(repo), d, artifactType)
}

// Repositories implements registry.Lister: what is cached of this upstream
// is listed by the store's own catalog, so a mirror lists nothing itself.
func (m *Mirror) Repositories(context.Context, int, string) ([]string, string, error) {
	return []string{}, "", nil
}

// upstreamErr is the one place an upstream failure becomes the OCI error a
// client sees, and where its cause is logged (at warn, with the upstream's
// name). The client's detail names the upstream and what went wrong, never
// its URL or addresses (upstream.Public); the log has the whole error.
// Nothing of the upstream's credentials is in err (package upstream
// guarantees it).
//
//   - not found: notFound (404);
//   - rate limited: 429 TOOMANYREQUESTS with the upstream's Retry-After;
//   - denied (401/403 upstream, credentials rejected): 403 DENIED, since
//     the client's own credentials are not in question, so a 401 would
//     send it to log in again for nothing;
//   - unreachable, timed out, 5xx: 503 UNAVAILABLE;
//   - a TLS failure, a refused token realm, a failing credential helper,
//     content that does not match its digest, an answer berth cannot use:
//     502 UNAVAILABLE (the upstream, or berth's configuration of it, is
//     wrong; retrying will not help).
func (m *Mirror) upstreamErr(ctx context.Context, err error, notFound oci.Code) *oci.Error {
	var e *oci.Error
	if errors.As(err, &e) {
		return e
	}
	detail, ok := upstream.Public(err)
	if !ok {
		detail = "upstream " + m.name + ": " + oci.Clip(err.Error())
	}
	var ue *upstream.Error
	errors.As(err, &ue)
	name := m.name
	badGateway := func(msg string) *oci.Error {
		return &oci.Error{Code: oci.CodeUnavailable, Message: msg, Detail: detail, HTTPStatus: http.StatusBadGateway}
	}
	switch {
	case errors.Is(err, context.Canceled):
		// The client hung up: nothing to log, nothing it will read.
		return &oci.Error{Code: oci.CodeUnavailable, Message: "request canceled", HTTPStatus: 499, Cause: err, Upstream: name}
	case errors.Is(err, upstream.ErrInvalidArgument):
		return &oci.Error{Code: oci.CodeNameInvalid, Message: "invalid name or reference", Cause: err}
	case errors.Is(err, upstream.ErrNotFound):
		e = oci.Errorf(notFound, "not found upstream")
	case errors.Is(err, upstream.ErrRateLimited):
		e = &oci.Error{Code: oci.CodeTooManyRequests, Message: "upstream " + name + " is rate limiting berth and the content is not cached", Detail: detail}
		if ue != nil {
			e.RetryAfter = ue.RetryAfter
		}
	case errors.Is(err, upstream.ErrDenied):
		e = &oci.Error{Code: oci.CodeDenied, Message: "upstream " + name + " denied access and the content is not cached", Detail: detail}
	case errors.Is(err, upstream.ErrDigestMismatch), errors.Is(err, cache.ErrDigestMismatch):
		e = badGateway("upstream " + name + " sent content that does not match its digest")
	case errors.Is(err, upstream.ErrMisconfigured):
		m.met.refused.Inc()
		e = badGateway("berth's configuration of upstream " + name + " refused the request")
	case upstream.IsTLS(err):
		e = badGateway("upstream " + name + " failed the TLS handshake or certificate check")
	case errors.Is(err, upstream.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		e = &oci.Error{Code: oci.CodeUnavailable, Message: "upstream " + name + " is unavailable and the content is not cached", Detail: detail}
	default:
		e = badGateway("upstream " + name + " answered something berth cannot use")
	}
	if !errors.Is(err, upstream.ErrNotFound) {
		zerolog.Ctx(ctx).Warn().Err(err).Str("upstream", name).Str("code", string(e.Code)).Int("status", e.Status()).
			Str("request_id", registry.InfoFrom(ctx).RequestID).Msg("upstream request failed")
	}
	e.Cause, e.Upstream = err, name
	return e
}
