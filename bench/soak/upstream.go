package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// fault is how the upstream misbehaves right now.
type fault int32

const (
	faultNone  fault = iota
	faultSlow        // blobs at 256 KiB/s
	fault5xx         // half the requests answer 503
	faultReset       // blob bodies cut off halfway
	faultWrong       // blob bodies with one byte changed
	faultHang        // blob bodies stall halfway until the client leaves (or 60 s)
	nFaults
)

func (f fault) String() string {
	return [...]string{"none", "slow", "5xx", "reset", "wrong-bytes", "hang"}[f]
}

// upstream is a registry speaking the distribution API (no auth: berth's
// token dance is tested elsewhere) that serves a fixed set of images and
// misbehaves on demand. Tag lookups, manifests and Range requests are
// what real registries send.
type upstream struct {
	srv   *http.Server
	addr  string
	fault atomic.Int32

	mu        sync.RWMutex
	blobs     map[digest.Digest][]byte
	manifests map[string][]byte // "repo@digest" and "repo:tag"
	images    []image

	stop  chan struct{}
	seed  uint64
	cold  atomic.Int64 // images made by newCold so far
	colds []image      // the ones still served, oldest first
}

// addImage makes image n of repo (deterministic from the seed) and serves it.
func (u *upstream) addImage(repo string, n, layers, layerSize int) image {
	rng := rand.New(rand.NewPCG(u.seed, uint64(n)+1))
	var descs []ocispec.Descriptor
	u.mu.Lock()
	defer u.mu.Unlock()
	for range layers {
		b := randBytes(rng, layerSize/2+rng.IntN(layerSize))
		descs = append(descs, u.addBlob(b, ocispec.MediaTypeImageLayer))
	}
	cfg := u.addBlob([]byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","repo":%q,"n":%d}`, repo, n)), ocispec.MediaTypeImageConfig)
	body, d := manifestFor(cfg, descs)
	u.manifests[repo+"@"+d.String()] = body
	u.manifests[repo+":latest"] = body
	img := image{Repo: repo, Tag: "latest", Manifest: d, Blobs: []digest.Digest{cfg.Digest}}
	for _, l := range descs {
		img.Blobs = append(img.Blobs, l.Digest)
	}
	return img
}

// newCold makes an image berth has never seen: a cold pull, a fill under
// whatever fault the upstream has now.
// The upstream keeps the last keepCold of them, so that its memory stays
// bounded over a long soak.
func (u *upstream) newCold() image {
	n := int(u.cold.Add(1))
	img := u.addImage(fmt.Sprintf("library/cold%d", n), 1000000+n, 2, 128<<10)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.colds = append(u.colds, img)
	if len(u.colds) > keepCold {
		old := u.colds[0]
		u.colds = u.colds[1:]
		delete(u.manifests, old.Repo+"@"+old.Manifest.String())
		delete(u.manifests, old.Repo+":"+old.Tag)
		for _, b := range old.Blobs {
			delete(u.blobs, b)
		}
	}
	return img
}

const keepCold = 256

// has reports whether the upstream still serves img.
func (u *upstream) has(img image) bool {
	u.mu.RLock()
	defer u.mu.RUnlock()
	_, ok := u.manifests[img.Repo+"@"+img.Manifest.String()]
	return ok
}

// image is one upstream image: what a pull must get.
type image struct {
	Repo, Tag string
	Manifest  digest.Digest
	Blobs     []digest.Digest // config first
}

func newUpstream(seed uint64, nImages, layers int, layerSize int) (*upstream, error) {
	u := &upstream{blobs: map[digest.Digest][]byte{}, manifests: map[string][]byte{}, stop: make(chan struct{}), seed: seed}
	for i := range nImages {
		u.images = append(u.images, u.addImage(fmt.Sprintf("library/img%d", i), i, layers, layerSize))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u.addr = ln.Addr().String()
	u.srv = &http.Server{Handler: u, ReadHeaderTimeout: 10 * time.Second}
	go u.srv.Serve(ln)
	return u, nil
}

func (u *upstream) close() {
	close(u.stop)
	u.srv.Close()
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func (u *upstream) addBlob(b []byte, mt string) ocispec.Descriptor {
	d := digest.FromBytes(b)
	u.blobs[d] = b
	return ocispec.Descriptor{MediaType: mt, Digest: d, Size: int64(len(b))}
}

// manifestFor is an OCI image manifest of cfg and layers, and its digest.
func manifestFor(cfg ocispec.Descriptor, layers []ocispec.Descriptor) ([]byte, digest.Digest) {
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: layers}
	m.SchemaVersion = 2
	body, _ := json.Marshal(m)
	return body, digest.FromBytes(body)
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f := fault(u.fault.Load())
	if r.URL.Path == "/v2/" {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		w.Write([]byte("{}"))
		return
	}
	if f == fault5xx && rand.IntN(2) == 0 {
		http.Error(w, `{"errors":[{"code":"UNAVAILABLE","message":"soak: injected"}]}`, http.StatusServiceUnavailable)
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	switch {
	case strings.Contains(p, "/manifests/"):
		i := strings.LastIndex(p, "/manifests/")
		repo, ref := p[:i], p[i+len("/manifests/"):]
		sep := ":"
		if strings.Contains(ref, ":") {
			sep = "@"
		}
		u.mu.RLock()
		body, ok := u.manifests[repo+sep+ref]
		u.mu.RUnlock()
		if !ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}`))
			return
		}
		w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(body).String())
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		if r.Method != http.MethodHead {
			w.Write(body)
		}
	case strings.Contains(p, "/blobs/"):
		d, err := digest.Parse(p[strings.LastIndex(p, "/blobs/")+len("/blobs/"):])
		u.mu.RLock()
		b, ok := u.blobs[d]
		u.mu.RUnlock()
		if err != nil || !ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}`))
			return
		}
		u.serveBlob(w, r, d, b, f)
	default:
		http.NotFound(w, r)
	}
}

// serveBlob answers a blob GET (with Range, as registries do) through the
// current fault.
func (u *upstream) serveBlob(w http.ResponseWriter, r *http.Request, d digest.Digest, b []byte, f fault) {
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		return
	}
	if f == faultWrong {
		b = bytes.Clone(b)
		b[len(b)/2] ^= 0xff
	}
	fw := &faultWriter{ResponseWriter: w, f: f, total: len(b), stop: u.stop, ctx: r.Context().Done()}
	http.ServeContent(fw, r, "", time.Time{}, bytes.NewReader(b))
	if fw.cut {
		panic(http.ErrAbortHandler) // a reset: the connection goes, no clean end
	}
}

// faultWriter applies a fault to a body as it is written.
type faultWriter struct {
	http.ResponseWriter
	f       fault
	total   int
	written int
	cut     bool
	stop    <-chan struct{}
	ctx     <-chan struct{}
}

func (w *faultWriter) Write(p []byte) (int, error) {
	if w.cut {
		return 0, http.ErrAbortHandler
	}
	half := w.total / 2
	switch w.f {
	case faultSlow:
		n := 0
		for len(p) > 0 {
			c := min(len(p), 16<<10)
			m, err := w.ResponseWriter.Write(p[:c])
			n += m
			if err != nil {
				return n, err
			}
			if fl, ok := w.ResponseWriter.(http.Flusher); ok {
				fl.Flush()
			}
			p = p[c:]
			select { // 16 KiB every 62.5 ms: 256 KiB/s
			case <-time.After(62500 * time.Microsecond):
			case <-w.ctx:
				return n, http.ErrAbortHandler
			}
		}
		return n, nil
	case faultReset, faultHang:
		if w.written+len(p) > half && w.total > 1 {
			n, err := w.ResponseWriter.Write(p[:max(half-w.written, 0)])
			w.written += n
			if fl, ok := w.ResponseWriter.(http.Flusher); ok {
				fl.Flush()
			}
			if err != nil {
				return n, err
			}
			if w.f == faultHang {
				select {
				case <-w.ctx:
				case <-w.stop:
				case <-time.After(60 * time.Second):
				}
			}
			w.cut = true
			return n, http.ErrAbortHandler
		}
	}
	n, err := w.ResponseWriter.Write(p)
	w.written += n
	return n, err
}
