package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
)

// blob is generated content: id and size determine every byte, so nothing
// is kept on disk but what the upstream registry stores.
type blob struct {
	ID     uint64
	Size   int64
	Digest digest.Digest
	data   []byte // set for configs (JSON); generated otherwise
}

func (b blob) reader() io.Reader {
	if b.data != nil {
		return bytes.NewReader(b.data)
	}
	return newGen(b.ID, b.Size)
}

// image is a repository with one tagged OCI manifest.
type image struct {
	Repo, Tag string
	Config    blob
	Layers    []blob
	Manifest  []byte
	Digest    digest.Digest
}

// content is everything pushed to the upstream before the measurements.
type content struct {
	big   image // one big layer: warm throughput
	small image // many small layers: request rate
	ten   image // nLayers layers: manifest by tag, and priming
	// bundle is exported and imported (bundle.go).
	bundle image
	// Per server and round: distinct, so that every cold run is cold.
	cold   map[string][]image
	herd   map[string][]blob // in repository herdRepo
	single map[string][]blob
}

const herdRepo = "library/herd"

// genPool is the pattern generated blobs are made of; each 4 KiB block is
// stamped with the blob's id and the block's index, so no two blocks of the
// run are alike.
var genPool = func() []byte {
	p := make([]byte, 1<<20)
	r := rand.NewChaCha8([32]byte{'b', 'e', 'r', 't', 'h', 'b', 'e', 'n', 'c', 'h'})
	_, _ = r.Read(p)
	return p
}()

type gen struct {
	id     uint64
	size   int64
	off    int64
	blkIdx int64
	blk    [4096]byte
}

func newGen(id uint64, size int64) *gen { return &gen{id: id, size: size, blkIdx: -1} }

func (g *gen) Read(p []byte) (int, error) {
	if g.off >= g.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && g.off < g.size {
		i := g.off / 4096
		if i != g.blkIdx {
			copy(g.blk[:], genPool[(i*4096)%int64(len(genPool)):])
			binary.LittleEndian.PutUint64(g.blk[0:], g.id)
			binary.LittleEndian.PutUint64(g.blk[8:], uint64(i))
			g.blkIdx = i
		}
		end := min(int64(len(g.blk)), g.size-i*4096)
		c := copy(p[n:], g.blk[g.off%4096:end])
		n += c
		g.off += int64(c)
	}
	return n, nil
}

// planner hands out blob ids.
type planner struct {
	mu   sync.Mutex
	next uint64
}

func (p *planner) blob(size int64) blob {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next++
	return blob{ID: p.next, Size: size}
}

func (p *planner) image(repo, tag string, n int, size int64) image {
	im := image{Repo: repo, Tag: tag}
	for range n {
		im.Layers = append(im.Layers, p.blob(size))
	}
	return im
}

// plan decides the content of the run. Digests are computed by digestAll.
func (b *bench) plan() *content {
	p := &planner{}
	c := &content{
		big:    p.image("library/big", "latest", 1, b.o.bigSize),
		small:  p.image("library/small", "latest", b.o.nSmall, b.o.smallSize),
		ten:    p.image("library/ten", "latest", b.o.nLayers, b.o.layerSize),
		bundle: p.image("library/bundle", "latest", b.o.bundleLayers, b.o.bundleSize/int64(b.o.bundleLayers)),
		cold:   map[string][]image{},
		herd:   map[string][]blob{},
		single: map[string][]blob{},
	}
	for _, s := range []string{srvBerth, srvDistProxy, srvDirect} {
		for r := range b.o.rounds {
			c.cold[s] = append(c.cold[s], p.image(fmt.Sprintf("library/cold-%s-%d", s, r), "latest", b.o.nLayers, b.o.layerSize))
		}
	}
	for _, s := range []string{srvBerth, srvDistProxy} {
		for range b.o.rounds {
			c.herd[s] = append(c.herd[s], p.blob(b.o.herdSize))
			c.single[s] = append(c.single[s], p.blob(b.o.herdSize))
		}
	}
	return c
}

func (c *content) images() []*image {
	out := []*image{&c.big, &c.small, &c.ten, &c.bundle}
	for _, s := range sortedKeys(c.cold) {
		for i := range c.cold[s] {
			out = append(out, &c.cold[s][i])
		}
	}
	return out
}

func (c *content) looseBlobs() []*blob {
	var out []*blob
	for _, m := range []map[string][]blob{c.herd, c.single} {
		for _, s := range sortedKeys(m) {
			for i := range m[s] {
				out = append(out, &m[s][i])
			}
		}
	}
	return out
}

func (c *content) totalBytes() int64 {
	var n int64
	for _, im := range c.images() {
		for _, l := range im.Layers {
			n += l.Size
		}
	}
	for _, bl := range c.looseBlobs() {
		n += bl.Size
	}
	return n
}

// digestAll computes the digest of every generated blob, then builds the
// configs and manifests.
func (c *content) digestAll(ctx context.Context) error {
	var all []*blob
	for _, im := range c.images() {
		for i := range im.Layers {
			all = append(all, &im.Layers[i])
		}
	}
	all = append(all, c.looseBlobs()...)
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.NumCPU())
	for _, bl := range all {
		g.Go(func() error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			h := sha256.New()
			buf := make([]byte, 1<<20)
			if _, err := io.CopyBuffer(h, newGen(bl.ID, bl.Size), buf); err != nil {
				return err
			}
			bl.Digest = digest.NewDigest(digest.SHA256, h)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, im := range c.images() {
		if err := im.build(); err != nil {
			return err
		}
	}
	return nil
}

func (im *image) build() error {
	cfg := ocispec.Image{
		Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"},
		RootFS:   ocispec.RootFS{Type: "layers"},
		Config:   ocispec.ImageConfig{Cmd: []string{"/bin/true"}},
	}
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest}
	for _, l := range im.Layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.Digest)
		m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: l.Digest, Size: l.Size})
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	im.Config = blob{Size: int64(len(data)), Digest: digest.FromBytes(data), data: data}
	m.Config = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: im.Config.Digest, Size: im.Config.Size}
	if im.Manifest, err = json.Marshal(m); err != nil {
		return err
	}
	im.Digest = digest.FromBytes(im.Manifest)
	return nil
}

// push uploads all content to the registry at base.
func (c *content) push(ctx context.Context, base string) error {
	client := newClient(8)
	defer client.CloseIdleConnections()
	type job struct {
		repo string
		b    blob
	}
	var jobs []job
	for _, im := range c.images() {
		jobs = append(jobs, job{im.Repo, im.Config})
		for _, l := range im.Layers {
			jobs = append(jobs, job{im.Repo, l})
		}
	}
	for _, bl := range c.looseBlobs() {
		jobs = append(jobs, job{herdRepo, *bl})
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, j := range jobs {
		g.Go(func() error { return pushBlob(gctx, client, base, j.repo, j.b) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, im := range c.images() {
		if err := pushManifest(ctx, client, base, im); err != nil {
			return err
		}
	}
	return nil
}

// pushBlob uploads a blob monolithically: POST opens the upload, one PUT
// with ?digest= carries the whole body.
func pushBlob(ctx context.Context, client *http.Client, base, repo string, b blob) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/", nil)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	drain(resp)
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST upload %s: %s", repo, resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return err
	}
	baseURL, _ := url.Parse(base)
	loc = baseURL.ResolveReference(loc)
	q := loc.Query()
	q.Set("digest", b.Digest.String())
	loc.RawQuery = q.Encode()
	req, _ = http.NewRequestWithContext(ctx, http.MethodPut, loc.String(), b.reader())
	req.ContentLength = b.Size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = client.Do(req)
	if err != nil {
		return err
	}
	body := drain(resp)
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("PUT blob %s@%s: %s %s", repo, b.Digest, resp.Status, body)
	}
	return nil
}

func pushManifest(ctx context.Context, client *http.Client, base string, im *image) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, base+"/v2/"+im.Repo+"/manifests/"+im.Tag, bytes.NewReader(im.Manifest))
	req.Header.Set("Content-Type", ocispec.MediaTypeImageManifest)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	body := drain(resp)
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("PUT manifest %s:%s: %s %s", im.Repo, im.Tag, resp.Status, body)
	}
	return nil
}

// drain reads and closes a response body, returning up to 512 bytes of it.
func drain(resp *http.Response) string {
	defer resp.Body.Close()
	head, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, resp.Body)
	return strings.TrimSpace(string(head))
}
