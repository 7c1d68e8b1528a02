package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// model is what clients were told: every tag's acknowledged manifest, and
// every manifest's blobs. A write that got no answer (berth was killed, the
// connection broke) may or may not have happened: it is kept as possible
// until a quiet check sees which.
type model struct {
	mu        sync.Mutex
	tags      map[string]*tagState              // "repo:tag"
	manifests map[digest.Digest][]digest.Digest // manifest -> its config and layers
	uploads   map[string]string                 // upload id -> repo, every upload ever started
	mirrored  map[digest.Digest]image           // upstream images pulled whole at least once
}

type tagState struct {
	acked    digest.Digest          // "" = absent (never pushed, or deleted)
	possible map[digest.Digest]bool // what it may be instead: writes unanswered or concurrent with the last acknowledged one ("" = a delete)
	ever     map[digest.Digest]bool // every digest ever written to it: what a pull during load may see
	inflight map[*write]bool
}

// write is one manifest PUT or tag DELETE (d "") in flight. Two writes
// that overlap in time may land in either order, so the one acknowledged
// last need not be the one berth kept: overlap is what it raced with.
type write struct {
	d       digest.Digest
	overlap map[digest.Digest]bool
}

// begin records a write of d to ref as started. The caller holds m.mu.
func (m *model) begin(ref string, d digest.Digest) *write {
	t := m.tag(ref)
	w := &write{d: d, overlap: map[digest.Digest]bool{}}
	for o := range t.inflight {
		o.overlap[d] = true
		w.overlap[o.d] = true
	}
	t.inflight[w] = true
	t.possible[d] = true
	if d != "" {
		t.ever[d] = true
	}
	return w
}

// end records how a write ended: acknowledged, or not (no answer, or an
// error that may have come after the write: it stays possible).
func (m *model) end(ref string, w *write, acked bool) {
	t := m.tag(ref)
	delete(t.inflight, w)
	if !acked {
		return
	}
	t.acked = w.d
	t.possible = w.overlap
	for o := range t.inflight {
		t.possible[o.d] = true
	}
}

func newModel() *model {
	return &model{tags: map[string]*tagState{}, manifests: map[digest.Digest][]digest.Digest{}, uploads: map[string]string{}, mirrored: map[digest.Digest]image{}}
}

func (m *model) tag(ref string) *tagState {
	t := m.tags[ref]
	if t == nil {
		t = &tagState{possible: map[digest.Digest]bool{}, ever: map[digest.Digest]bool{}, inflight: map[*write]bool{}}
		m.tags[ref] = t
	}
	return t
}

// stats counts operations and what went wrong, for the report.
type stats struct {
	mu       sync.Mutex
	ops      map[string]int
	errs     map[string]int
	samples  map[string][]string // a few error messages per kind
	failures []string            // wrong bytes, lost writes: the run fails
}

func newStats() *stats {
	return &stats{ops: map[string]int{}, errs: map[string]int{}, samples: map[string][]string{}}
}

func (s *stats) op(kind string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops[kind]++
	if err != nil {
		s.errs[kind]++
		if len(s.samples[kind]) < 5 {
			s.samples[kind] = append(s.samples[kind], err.Error())
		}
	}
}

func (s *stats) fail(format string, a ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := fmt.Sprintf(format, a...)
	if len(s.failures) < 100 {
		s.failures = append(s.failures, msg)
	}
	fmt.Fprintln(os.Stderr, "FAILURE:", msg)
}

func (s *stats) failed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.failures)
}

// errWrong marks content that arrived whole (200, full length, clean end)
// and does not match its digest: never allowed.
var errWrong = errors.New("wrong bytes")

// client speaks the distribution API to berth.
type client struct {
	base string
	hc   *http.Client
}

func newClient(addr string) *client {
	tr := &http.Transport{MaxIdleConnsPerHost: 32, ResponseHeaderTimeout: 90 * time.Second}
	return &client{base: "http://" + addr, hc: &http.Client{Transport: tr, Timeout: 120 * time.Second}}
}

func (c *client) do(ctx context.Context, method, url string, body io.Reader, hdr map[string]string) (*http.Response, error) {
	if !strings.HasPrefix(url, "http") {
		url = c.base + url
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return c.hc.Do(req)
}

func drain(resp *http.Response) {
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

func statusErr(resp *http.Response, what string) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	resp.Body.Close()
	return fmt.Errorf("%s: HTTP %d %s", what, resp.StatusCode, strings.TrimSpace(string(b)))
}

// getBlob reads a blob and checks it: errWrong for a whole body with
// other content, another error for a failed or cut read.
func (c *client) getBlob(ctx context.Context, repo string, d digest.Digest) error {
	resp, err := c.do(ctx, http.MethodGet, "/v2/"+repo+"/blobs/"+d.String(), nil, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return statusErr(resp, "GET blob "+d.String())
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return fmt.Errorf("GET blob %s: cut after %d bytes: %w", d, n, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return fmt.Errorf("GET blob %s: %d of %d bytes", d, n, resp.ContentLength)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d.String() {
		return fmt.Errorf("%w: blob %s of %s arrived whole (%d bytes) as %s", errWrong, d, repo, n, got)
	}
	return nil
}

// getManifest reads a manifest by reference and checks its body against
// the digest berth announces (and the one asked for).
func (c *client) getManifest(ctx context.Context, repo, ref string) (digest.Digest, []byte, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v2/"+repo+"/manifests/"+ref, nil,
		map[string]string{"Accept": ocispec.MediaTypeImageManifest})
	if err != nil {
		return "", nil, err
	}
	if resp.StatusCode != http.StatusOK {
		if resp.StatusCode == http.StatusNotFound {
			drain(resp)
			return "", nil, errNotFound
		}
		return "", nil, statusErr(resp, "GET manifest "+repo+":"+ref)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", nil, err
	}
	d := digest.FromBytes(body)
	if hd := resp.Header.Get("Docker-Content-Digest"); hd != d.String() {
		return "", nil, fmt.Errorf("%w: manifest %s:%s hashes to %s, berth said %s", errWrong, repo, ref, d, hd)
	}
	if strings.HasPrefix(ref, "sha256:") && ref != d.String() {
		return "", nil, fmt.Errorf("%w: manifest %s@%s arrived as %s", errWrong, repo, ref, d)
	}
	return d, body, nil
}

var (
	errNotFound = errors.New("not found")
	errSkipped  = errors.New("skipped") // an operation this berth does not have
)

// pushBlob uploads b into repo: monolithic (POST ?digest=) or chunked
// (POST, PATCHes, PUT), as clients do. It records the upload id.
func (c *client) pushBlob(ctx context.Context, m *model, repo string, b []byte, chunked bool) error {
	d := digest.FromBytes(b)
	if !chunked {
		resp, err := c.do(ctx, http.MethodPost, "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), bytes.NewReader(b),
			map[string]string{"Content-Type": "application/octet-stream"})
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusCreated {
			return statusErr(resp, "monolithic push")
		}
		drain(resp)
		return nil
	}
	resp, err := c.do(ctx, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", nil, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusAccepted {
		return statusErr(resp, "upload POST")
	}
	drain(resp)
	loc := resp.Header.Get("Location")
	if i := strings.LastIndex(loc, "/uploads/"); i >= 0 {
		id, _, _ := strings.Cut(loc[i+len("/uploads/"):], "?")
		m.mu.Lock()
		m.uploads[id] = repo
		m.mu.Unlock()
	}
	half := len(b) / 2
	for _, part := range [][2]int{{0, half}, {half, len(b)}} {
		if part[1] == part[0] {
			continue
		}
		resp, err := c.do(ctx, http.MethodPatch, loc, bytes.NewReader(b[part[0]:part[1]]), map[string]string{
			"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("%d-%d", part[0], part[1]-1)})
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusAccepted {
			return statusErr(resp, "upload PATCH")
		}
		drain(resp)
		loc = resp.Header.Get("Location")
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	resp, err = c.do(ctx, http.MethodPut, loc+sep+"digest="+d.String(), nil, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusCreated {
		return statusErr(resp, "upload PUT")
	}
	drain(resp)
	return nil
}

// pushImage pushes a new image (config and 1 to 3 layers) to repo:tag.
// Only a 201 for the manifest makes the tag's new digest acknowledged.
func (w *worker) pushImage(ctx context.Context, repo, tag string) error {
	var layers []ocispec.Descriptor
	for range 1 + w.rng.IntN(3) {
		b := randBytes(w.rng, 1<<10+w.rng.IntN(w.maxLayer))
		if err := w.c.pushBlob(ctx, w.m, repo, b, w.rng.IntN(2) == 0); err != nil {
			return err
		}
		layers = append(layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(b), Size: int64(len(b))})
	}
	cb := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","soak":%d}`, w.rng.Uint64()))
	if err := w.c.pushBlob(ctx, w.m, repo, cb, false); err != nil {
		return err
	}
	body, d := manifestFor(ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cb), Size: int64(len(cb))}, layers)
	blobs := []digest.Digest{digest.FromBytes(cb)}
	for _, l := range layers {
		blobs = append(blobs, l.Digest)
	}
	ref := repo + ":" + tag
	w.m.mu.Lock()
	w.m.manifests[d] = blobs
	wr := w.m.begin(ref, d)
	w.m.mu.Unlock()
	acked := false
	defer func() {
		w.m.mu.Lock()
		w.m.end(ref, wr, acked)
		w.m.mu.Unlock()
	}()
	resp, err := w.c.do(ctx, http.MethodPut, "/v2/"+repo+"/manifests/"+tag, bytes.NewReader(body),
		map[string]string{"Content-Type": ocispec.MediaTypeImageManifest})
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusCreated {
		return statusErr(resp, "manifest PUT")
	}
	drain(resp)
	acked = true
	return nil
}

func (w *worker) deleteTag(ctx context.Context, repo, tag string) error {
	ref := repo + ":" + tag
	w.m.mu.Lock()
	if w.m.tag(ref).acked == "" {
		w.m.mu.Unlock()
		return nil
	}
	wr := w.m.begin(ref, "")
	w.m.mu.Unlock()
	acked := false
	defer func() {
		w.m.mu.Lock()
		w.m.end(ref, wr, acked)
		w.m.mu.Unlock()
	}()
	resp, err := w.c.do(ctx, http.MethodDelete, "/v2/"+repo+"/manifests/"+tag, nil, nil)
	if err != nil {
		return err
	}
	switch resp.StatusCode {
	case http.StatusAccepted:
		acked = true
	case http.StatusNotFound: // absent already: a concurrent delete, or never there
	default:
		return statusErr(resp, "tag DELETE")
	}
	drain(resp)
	return nil
}

// pullLocal pulls a pushed tag during load: it may see any digest ever
// written to the tag, but every byte it gets whole must be right.
func (w *worker) pullLocal(ctx context.Context, repo, tag string) error {
	d, _, err := w.c.getManifest(ctx, repo, tag)
	if errors.Is(err, errNotFound) {
		return nil // never pushed, deleted, or a delete in flight
	}
	if err != nil {
		return err
	}
	w.m.mu.Lock()
	t := w.m.tag(repo + ":" + tag)
	known := t.ever[d]
	blobs := w.m.manifests[d]
	w.m.mu.Unlock()
	if !known {
		return fmt.Errorf("%w: %s:%s resolved to %s, which no client ever pushed there", errWrong, repo, tag, d)
	}
	for _, b := range blobs {
		if err := w.c.getBlob(ctx, repo, b); err != nil {
			return err
		}
	}
	return nil
}

// pullMirror pulls upstream image i through berth, checking its manifest
// digest and every blob.
func (w *worker) pullMirror(ctx context.Context, img image) error {
	d, _, err := w.c.getManifest(ctx, img.Repo, img.Tag)
	if err != nil {
		return err
	}
	if d != img.Manifest {
		return fmt.Errorf("%w: mirrored %s:%s resolved to %s, upstream has %s", errWrong, img.Repo, img.Tag, d, img.Manifest)
	}
	for _, b := range img.Blobs {
		if err := w.c.getBlob(ctx, img.Repo, b); err != nil {
			return err
		}
	}
	w.m.mu.Lock()
	w.m.mirrored[img.Manifest] = img
	w.m.mu.Unlock()
	return nil
}

// worker is one client: a loop of random operations until its context ends.
type worker struct {
	c        *client
	m        *model
	st       *stats
	up       *upstream
	rng      *rand.Rand
	repos    []string
	tags     []string
	maxLayer int
	gc       *atomic.Int32 // 0 unknown, 1 POST /admin/gc works, -1 it answered 404
}

func (w *worker) run(ctx context.Context) {
	for ctx.Err() == nil {
		repo := w.repos[w.rng.IntN(len(w.repos))]
		tag := w.tags[w.rng.IntN(len(w.tags))]
		var kind string
		var err error
		switch p := w.rng.IntN(100); {
		case p < 30:
			kind, err = "pull-local", w.pullLocal(ctx, repo, tag)
		case p < 44:
			kind, err = "pull-mirror-warm", w.pullMirror(ctx, w.up.images[w.rng.IntN(len(w.up.images))])
		case p < 52:
			kind, err = "pull-mirror-cold", w.pullMirror(ctx, w.up.newCold())
		case p < 57:
			kind, err = "pull-herd-cold", w.herd(ctx)
		case p < 80:
			kind, err = "push", w.pushImage(ctx, repo, tag)
		case p < 88:
			kind, err = "push-overwrite", w.overwrite(ctx, repo)
		case p < 96:
			kind, err = "delete-tag", w.deleteTag(ctx, repo, tag)
		default:
			kind, err = "gc", w.runGC(ctx)
		}
		if ctx.Err() != nil {
			return // cut by the end of the phase or a kill: not the op's fault
		}
		if errors.Is(err, errSkipped) {
			continue
		}
		if errors.Is(err, errWrong) {
			w.st.fail("%s: %v", kind, err)
		}
		w.st.op(kind, err)
	}
}

// overwrite pushes a new image over a tag that has one.
func (w *worker) overwrite(ctx context.Context, repo string) error {
	for _, tag := range w.tags {
		w.m.mu.Lock()
		has := w.m.tag(repo+":"+tag).acked != ""
		w.m.mu.Unlock()
		if has {
			return w.pushImage(ctx, repo, tag)
		}
	}
	return w.pushImage(ctx, repo, w.tags[0])
}

// herd is 8 clients pulling one new upstream image at once: one fill
// each blob, shared.
func (w *worker) herd(ctx context.Context) error {
	img := w.up.newCold()
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for k := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[k] = w.pullMirror(ctx, img)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if errors.Is(err, errWrong) {
			return err
		}
	}
	return errors.Join(errs...)
}

// runGC asks for a collection if berth has one (POST /admin/gc); a 404
// means this berth has none, and GC is left out from then on.
func (w *worker) runGC(ctx context.Context) error {
	if w.gc.Load() < 0 {
		return errSkipped
	}
	resp, err := w.c.do(ctx, http.MethodPost, "/admin/gc", nil, nil)
	if err != nil {
		return err
	}
	defer drain(resp)
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		if w.gc.CompareAndSwap(0, -1) {
			fmt.Fprintln(os.Stderr, "soak: POST /admin/gc answered", resp.StatusCode, "- this berth has no GC; GC runs left out")
		}
		return errSkipped
	case resp.StatusCode/100 == 2:
		w.gc.Store(1)
		return nil
	}
	return fmt.Errorf("POST /admin/gc: HTTP %d", resp.StatusCode)
}

// verify is the quiet check after a restart, with no client running: every
// tag is what was acknowledged (or what an unanswered write may have made
// it), every blob of every tagged manifest reads whole and verifies, every
// mirrored image pulled before pulls again right, and every staging file
// belongs to an upload that is still open.
func verify(ctx context.Context, c *client, m *model, up *upstream, data string, st *stats) {
	// Staging files as berth left them at start, before this check's own
	// pulls start fills of their own.
	entries, err := os.ReadDir(filepath.Join(data, "ingest"))
	if err != nil {
		st.fail("read ingest/: %v", err)
	}
	m.mu.Lock()
	refs := make([]string, 0, len(m.tags))
	for r := range m.tags {
		refs = append(refs, r)
	}
	m.mu.Unlock()
	slices.Sort(refs)
	for _, ref := range refs {
		repo, tag, _ := strings.Cut(ref, ":")
		d, _, err := c.getManifest(ctx, repo, tag)
		m.mu.Lock()
		t := m.tags[ref]
		switch {
		case errors.Is(err, errNotFound):
			if t.acked != "" && !t.possible[""] {
				st.fail("lost push: %s was acknowledged as %s and is gone after a restart", ref, t.acked)
			}
			t.acked = ""
		case err != nil:
			st.fail("verify %s: %v", ref, err)
		case d != t.acked && !t.possible[d]:
			st.fail("lost push: %s resolves to %s; acknowledged %s", ref, d, t.acked)
		default:
			t.acked = d
		}
		clear(t.possible)
		blobs := m.manifests[t.acked]
		m.mu.Unlock()
		for _, b := range blobs {
			if err := c.getBlob(ctx, repo, b); err != nil {
				st.fail("verify %s: blob %s: %v", ref, b, err)
			}
		}
	}
	// Every mirrored image pulled so far would be thousands in a long
	// soak: the warm set and up to 24 of the cold ones.
	m.mu.Lock()
	mirrored := slices.Clone(up.images)
	for _, img := range m.mirrored {
		if len(mirrored) >= len(up.images)+24 {
			break
		}
		if strings.Contains(img.Repo, "/cold") && up.has(img) {
			mirrored = append(mirrored, img)
		}
	}
	m.mu.Unlock()
	for _, img := range mirrored {
		d, _, err := c.getManifest(ctx, img.Repo, img.Tag)
		if err != nil || d != img.Manifest {
			st.fail("verify mirrored %s: %s %v", img.Repo, d, err)
			continue
		}
		for _, b := range img.Blobs {
			if err := c.getBlob(ctx, img.Repo, b); err != nil {
				st.fail("verify mirrored %s: blob %s: %v", img.Repo, b, err)
			}
		}
	}
	for _, e := range entries {
		m.mu.Lock()
		repo, ok := m.uploads[e.Name()]
		m.mu.Unlock()
		// An upload whose POST was cut by the kill before its answer is
		// unknown to the clients, but may be open: ask each repository.
		repos := []string{repo}
		if !ok {
			repos = uploadRepos
		}
		live := false
		for _, repo := range repos {
			resp, err := c.do(ctx, http.MethodGet, "/v2/"+repo+"/blobs/uploads/"+e.Name(), nil, nil)
			if err != nil {
				st.fail("upload status %s: %v", e.Name(), err)
				break
			}
			drain(resp)
			live = live || resp.StatusCode == http.StatusNoContent
		}
		if !live {
			info := ""
			if fi, err := e.Info(); err == nil {
				info = fmt.Sprintf(", %d bytes, written %v before the check", fi.Size(), time.Since(fi.ModTime()).Round(time.Millisecond))
			}
			st.fail("staging file %s outlived its upload (no repository has it open%s)", e.Name(), info)
		}
	}
}

// uploadRepos are the repositories clients push to.
var uploadRepos = []string{"team/a", "team/b", "team/c"}
