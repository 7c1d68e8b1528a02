// Package upstreamtest provides an in-process fake OCI registry that speaks
// the real distribution protocol over HTTP, for tests across berth.
//
// A Registry runs on httptest servers: the registry itself, a separate
// Bearer token service (Docker Hub style) and a "CDN" that blob downloads
// can be redirected to. It supports anonymous, Bearer and Basic
// authentication, Range requests, tag pagination and fault injection
// (throttling, corruption, cut connections, outages, failing requests), and
// records every request so tests can assert on what reached which host.
//
// All methods are safe for concurrent use and may be called at any time,
// including while requests are in flight.
package upstreamtest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-dev/berth/internal/oci"
)

// AuthMode selects how the fake registry authenticates clients.
type AuthMode int

const (
	// AuthNone serves everything anonymously.
	AuthNone AuthMode = iota
	// AuthBearer works like Docker Hub: every request without a valid
	// token for its repository's pull scope (and GET /v2/ without any
	// valid token) gets 401 with
	// `WWW-Authenticate: Bearer realm=...,service=...,scope=...`; tokens
	// are issued by a separate token server.
	AuthBearer
	// AuthBasic answers 401 with `WWW-Authenticate: Basic realm=...` to
	// requests without the configured credentials.
	AuthBasic
)

// Service is the service name the fake token server expects and issues
// tokens for.
const Service = "upstreamtest"

// DefaultTokenTTL is the token lifetime when Options.TokenTTL is zero.
const DefaultTokenTTL = 5 * time.Minute

// Request kinds used by Count, CountAuthorized and RequestRecord.Kind.
const (
	KindPing     = "ping"
	KindManifest = "manifest"
	KindBlob     = "blob"
	KindTags     = "tags"
	KindToken    = "token"
	KindCDN      = "cdn" // blob download on the CDN server after a redirect
	KindOther    = "other"
)

// Options configures a Registry.
type Options struct {
	// Auth selects the authentication mode.
	Auth AuthMode
	// Username and Password, when Username is set, are required by the
	// token server (AuthBearer: anonymous token requests are then refused)
	// or by the registry (AuthBasic).
	Username, Password string
	// TokenTTL is the lifetime of issued tokens, reported as expires_in
	// (rounded up to whole seconds) and enforced. Zero means
	// DefaultTokenTTL.
	TokenTTL time.Duration
}

// Image describes an image added with AddImage.
type Image struct {
	Manifest     digest.Digest
	ManifestBody []byte
	MediaType    string
	Config       digest.Digest
	Layers       []digest.Digest
}

// RequestRecord describes one request received by any of the servers.
type RequestRecord struct {
	Method string
	Host   string // Host header: tells registry, token server and CDN apart
	Path   string
	Query  string // raw query
	Kind   string // one of the Kind* constants
	Auth   string // "none", "basic" or "bearer"
	Header http.Header
	Status int // status sent; 0 if the connection was cut before headers
}

// cut is a pending SetCutAfter instruction.
type cut struct {
	after int64
	times int
}

// token is an issued bearer token.
type token struct {
	scopes map[string]bool // "repository:<name>:pull" etc.; "" = registry-wide only
	expiry time.Time
}

// manifest is a stored manifest.
type manifest struct {
	mediaType string
	body      []byte
}

// countKey identifies a request counter.
type countKey struct{ method, kind string }

// Registry is a fake registry. Create it with New.
type Registry struct {
	opts Options

	srv, tokenSrv, cdn *httptest.Server
	closeOnce          sync.Once

	mu        sync.Mutex
	blobs     map[digest.Digest][]byte
	repoBlobs map[string]map[digest.Digest]bool
	manifests map[string]map[digest.Digest]manifest
	tags      map[string]map[string]digest.Digest
	tokens    map[string]token
	counts    map[countKey]int
	authed    map[countKey]int
	records   []RequestRecord
	gen       int // incremented by Reset, so late status updates skip dropped records

	throttle     int64
	corrupt      map[digest.Digest]bool
	cuts         map[digest.Digest]*cut
	down         bool
	failStatus   int
	failCount    int
	redirect     bool
	omitDigest   bool
	cdnSignature string
}

// New starts a Registry (and its token and CDN servers); t.Cleanup closes
// them.
func New(t testing.TB, opts Options) *Registry {
	t.Helper()
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = DefaultTokenTTL
	}
	r := &Registry{
		opts:         opts,
		blobs:        map[digest.Digest][]byte{},
		repoBlobs:    map[string]map[digest.Digest]bool{},
		manifests:    map[string]map[digest.Digest]manifest{},
		tags:         map[string]map[string]digest.Digest{},
		tokens:       map[string]token{},
		counts:       map[countKey]int{},
		authed:       map[countKey]int{},
		corrupt:      map[digest.Digest]bool{},
		cuts:         map[digest.Digest]*cut{},
		cdnSignature: randomHex(8),
	}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serveRegistry))
	r.tokenSrv = httptest.NewServer(http.HandlerFunc(r.serveToken))
	r.cdn = httptest.NewServer(http.HandlerFunc(r.serveCDN))
	t.Cleanup(r.Close)
	return r
}

// URL returns the registry's base URL, e.g. "http://127.0.0.1:40123".
func (r *Registry) URL() string { return r.srv.URL }

// Host returns the registry's host:port.
func (r *Registry) Host() string { return r.srv.Listener.Addr().String() }

// TokenURL returns the token server's base URL (the realm is TokenURL()+"/token").
func (r *Registry) TokenURL() string { return r.tokenSrv.URL }

// TokenHost returns the token server's host:port.
func (r *Registry) TokenHost() string { return r.tokenSrv.Listener.Addr().String() }

// CDNHost returns the host:port of the server blob downloads are redirected
// to in SetRedirectBlobs mode.
func (r *Registry) CDNHost() string { return r.cdn.Listener.Addr().String() }

// Close stops all servers, forcibly closing open connections. Subsequent
// requests fail with connection errors. It is idempotent.
func (r *Registry) Close() {
	r.closeOnce.Do(func() {
		for _, s := range []*httptest.Server{r.srv, r.tokenSrv, r.cdn} {
			s.CloseClientConnections()
			s.Close()
		}
	})
}

// AddBlob stores content as a blob of repo and returns its digest.
func (r *Registry) AddBlob(repo string, content []byte) digest.Digest {
	d := digest.FromBytes(content)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.blobs[d] = append([]byte(nil), content...)
	if r.repoBlobs[repo] == nil {
		r.repoBlobs[repo] = map[digest.Digest]bool{}
	}
	r.repoBlobs[repo][d] = true
	return d
}

// AddManifest stores a manifest in repo, tags it with tagOrEmpty unless that
// is empty, and returns its digest.
func (r *Registry) AddManifest(repo, tagOrEmpty, mediaType string, body []byte) digest.Digest {
	d := digest.FromBytes(body)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.manifests[repo] == nil {
		r.manifests[repo] = map[digest.Digest]manifest{}
	}
	r.manifests[repo][d] = manifest{mediaType: mediaType, body: append([]byte(nil), body...)}
	if tagOrEmpty != "" {
		if r.tags[repo] == nil {
			r.tags[repo] = map[string]digest.Digest{}
		}
		r.tags[repo][tagOrEmpty] = d
	}
	return d
}

// AddImage builds and stores a small random OCI image: a config blob and
// `layers` random layers of layerSize bytes, referenced by an OCI image
// manifest tagged with tag (unless tag is empty).
func (r *Registry) AddImage(repo, tag string, layers int, layerSize int) Image {
	img := Image{MediaType: v1.MediaTypeImageManifest}
	m := v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
	}
	var diffIDs []digest.Digest
	for range layers {
		content := make([]byte, layerSize)
		_, _ = rand.Read(content)
		d := r.AddBlob(repo, content)
		img.Layers = append(img.Layers, d)
		diffIDs = append(diffIDs, d) // the layers are uncompressed tars
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: d, Size: int64(layerSize)})
	}
	cfg, err := json.Marshal(v1.Image{
		Platform: v1.Platform{Architecture: "amd64", OS: "linux"},
		RootFS:   v1.RootFS{Type: "layers", DiffIDs: diffIDs},
		Config:   v1.ImageConfig{Labels: map[string]string{"upstreamtest.nonce": randomHex(8)}},
	})
	if err != nil {
		panic(err) // cannot happen: plain structs
	}
	img.Config = r.AddBlob(repo, cfg)
	m.Config = v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: img.Config, Size: int64(len(cfg))}
	body, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	img.ManifestBody = body
	img.Manifest = r.AddManifest(repo, tag, img.MediaType, body)
	return img
}

// Count returns how many requests with method and kind (a Kind* constant)
// reached the servers since the last Reset, including those rejected with
// 401 or failed by fault injection.
func (r *Registry) Count(method, kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[countKey{method, kind}]
}

// CountAuthorized is like Count but only counts requests that passed
// authentication (in AuthNone mode: requests not failed by fault
// injection).
func (r *Registry) CountAuthorized(method, kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.authed[countKey{method, kind}]
}

// Requests returns a copy of the records of all requests since the last
// Reset, in arrival order.
func (r *Registry) Requests() []RequestRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]RequestRecord, len(r.records))
	for i, rec := range r.records {
		rec.Header = rec.Header.Clone()
		out[i] = rec
	}
	return out
}

// Reset zeroes the counters and forgets recorded requests. Content, tokens
// and fault settings are kept.
func (r *Registry) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.counts = map[countKey]int{}
	r.authed = map[countKey]int{}
	r.records = nil
	r.gen++
}

// SetThrottle limits blob (and CDN) bodies to bytesPerSec, written in small
// flushed chunks so clients see bytes early. 0 means unlimited.
func (r *Registry) SetThrottle(bytesPerSec int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.throttle = bytesPerSec
}

// SetCorrupt makes the registry serve wrong bytes of the same length for the
// blob or manifest with digest d (headers still carry the real digest).
func (r *Registry) SetCorrupt(d digest.Digest, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if on {
		r.corrupt[d] = true
	} else {
		delete(r.corrupt, d)
	}
}

// SetCutAfter makes the next `times` GETs of blob d (on the registry or the
// CDN, whichever serves the bytes) write n bytes of the response body and
// then cut the connection. n counts bytes of that response, not of the blob.
func (r *Registry) SetCutAfter(d digest.Digest, n int64, times int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if times <= 0 {
		delete(r.cuts, d)
		return
	}
	r.cuts[d] = &cut{after: n, times: times}
}

// SetDown makes every server (registry, token server, CDN) answer 503 while
// down is true, simulating an outage. Close stops the listeners instead.
func (r *Registry) SetDown(down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = down
}

// FailNext makes the next n requests to the registry server (not the token
// server or CDN) answer with status and an OCI error body.
func (r *Registry) FailNext(status, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failStatus, r.failCount = status, n
}

// SetRedirectBlobs makes blob GETs answer 307 to the CDN server, which
// serves the bytes (with Range, throttling, corruption and cuts) and records
// whether an Authorization header arrived.
func (r *Registry) SetRedirectBlobs(on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.redirect = on
}

// SetOmitDigestHeader makes manifest responses omit Docker-Content-Digest,
// like some registries do on HEAD.
func (r *Registry) SetOmitDigestHeader(on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.omitDigest = on
}

// ExpireTokens invalidates every issued token, so clients holding one get a
// 401 on their next request and must fetch a new token.
func (r *Registry) ExpireTokens() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tokens = map[string]token{}
}

// Tokens returns the currently valid issued tokens, so tests can assert that
// they never appear in errors or logs.
func (r *Registry) Tokens() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for t := range r.tokens {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// recordWriter captures the status of a response for its RequestRecord.
type recordWriter struct {
	http.ResponseWriter
	status int
}

func (w *recordWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recordWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach Flush on the real writer.
func (w *recordWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// begin counts and records a request; the returned function stores the
// final status (it runs even if the handler panics to cut the connection).
func (r *Registry) begin(w http.ResponseWriter, req *http.Request, kind string) (*recordWriter, func()) {
	r.mu.Lock()
	r.counts[countKey{req.Method, kind}]++
	idx, gen := len(r.records), r.gen
	r.records = append(r.records, RequestRecord{
		Method: req.Method,
		Host:   req.Host,
		Path:   req.URL.Path,
		Query:  req.URL.RawQuery,
		Kind:   kind,
		Auth:   authKind(req),
		Header: req.Header.Clone(),
	})
	r.mu.Unlock()
	rw := &recordWriter{ResponseWriter: w}
	return rw, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		// Reset may have dropped the records meanwhile.
		if gen == r.gen {
			r.records[idx].Status = rw.status
		}
	}
}

// authorized counts a request as having passed authentication.
func (r *Registry) authorized(req *http.Request, kind string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.authed[countKey{req.Method, kind}]++
}

func authKind(req *http.Request) string {
	h := req.Header.Get("Authorization")
	switch {
	case h == "":
		return "none"
	case len(h) > 6 && strings.EqualFold(h[:6], "basic "):
		return "basic"
	case len(h) > 7 && strings.EqualFold(h[:7], "bearer "):
		return "bearer"
	default:
		return "other"
	}
}

// writeError writes an OCI error body.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"errors": []map[string]string{{"code": code, "message": msg}},
	})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// basicOK reports whether req carries the configured Basic credentials.
func (r *Registry) basicOK(req *http.Request) bool {
	u, p, ok := req.BasicAuth()
	return ok && u == r.opts.Username && p == r.opts.Password
}

// serveToken is the Bearer token service: GET /token?service=&scope=...
func (r *Registry) serveToken(w http.ResponseWriter, req *http.Request) {
	rw, done := r.begin(w, req, KindToken)
	defer done()
	w = rw
	r.mu.Lock()
	down := r.down
	r.mu.Unlock()
	if down {
		writeError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "token service down")
		return
	}
	if req.URL.Path != "/token" || req.Method != http.MethodGet {
		http.NotFound(w, req)
		return
	}
	if req.URL.Query().Get("service") != Service {
		writeError(w, http.StatusBadRequest, "UNSUPPORTED", "unknown service")
		return
	}
	if r.opts.Username != "" || req.Header.Get("Authorization") != "" {
		// Credentials are required when configured, and wrong ones are
		// rejected even in anonymous setups (like Docker Hub).
		if !r.basicOK(req) {
			w.Header().Set("WWW-Authenticate", `Basic realm="upstreamtest token service"`)
			writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "incorrect username or password")
			return
		}
	}
	r.authorized(req, KindToken)
	tok := token{scopes: map[string]bool{}, expiry: time.Now().Add(r.opts.TokenTTL)}
	for _, s := range req.URL.Query()["scope"] {
		for _, one := range strings.Fields(s) {
			tok.scopes[one] = true
		}
	}
	value := base64.RawURLEncoding.EncodeToString([]byte(randomHex(24)))
	r.mu.Lock()
	r.tokens[value] = tok
	r.mu.Unlock()
	ttl := int((r.opts.TokenTTL + time.Second - 1) / time.Second)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"token":      value,
		"expires_in": ttl,
		"issued_at":  time.Now().UTC().Format(time.RFC3339),
	})
}

// checkAuth enforces the auth mode for a registry request about repo ("" for
// /v2/). It writes the 401 challenge and returns false when not authorized.
func (r *Registry) checkAuth(w http.ResponseWriter, req *http.Request, repo string) bool {
	switch r.opts.Auth {
	case AuthBasic:
		if r.basicOK(req) {
			return true
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="upstreamtest"`)
		writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
		return false
	case AuthBearer:
		scope := ""
		if repo != "" {
			scope = "repository:" + repo + ":pull"
		}
		h := req.Header.Get("Authorization")
		if authKind(req) == "bearer" {
			r.mu.Lock()
			tok, ok := r.tokens[h[7:]]
			r.mu.Unlock()
			if ok && time.Now().Before(tok.expiry) && (scope == "" || tok.scopes[scope]) {
				return true
			}
		}
		challenge := fmt.Sprintf(`Bearer realm="%s/token",service="%s"`, r.tokenSrv.URL, Service)
		if scope != "" {
			challenge += fmt.Sprintf(`,scope="%s"`, scope)
		}
		w.Header().Set("WWW-Authenticate", challenge)
		writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
		return false
	default:
		return true
	}
}

// parseV2 splits a /v2/<name>/<kind>/<rest> path.
func parseV2(path string) (repo, kind, rest string, ok bool) {
	p, found := strings.CutPrefix(path, "/v2/")
	if !found {
		return "", "", "", false
	}
	for _, k := range []string{"/manifests/", "/blobs/"} {
		if i := strings.LastIndex(p, k); i > 0 {
			return p[:i], strings.Trim(k, "/"), p[i+len(k):], true
		}
	}
	if name, ok := strings.CutSuffix(p, "/tags/list"); ok && name != "" {
		return name, KindTags, "", true
	}
	return "", "", "", false
}

// serveRegistry is the registry API handler.
func (r *Registry) serveRegistry(w http.ResponseWriter, req *http.Request) {
	kind, repo, rest := KindOther, "", ""
	if req.URL.Path == "/v2/" || req.URL.Path == "/v2" {
		kind = KindPing
	} else if name, k, rst, ok := parseV2(req.URL.Path); ok {
		repo, rest = name, rst
		switch k {
		case "manifests":
			kind = KindManifest
		case "blobs":
			kind = KindBlob
		default:
			kind = k
		}
	}
	rw, done := r.begin(w, req, kind)
	defer done()
	w = rw

	r.mu.Lock()
	down := r.down
	failStatus := 0
	if !down && r.failCount > 0 {
		r.failCount--
		failStatus = r.failStatus
	}
	r.mu.Unlock()
	switch {
	case down:
		writeError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "registry is down")
		return
	case failStatus != 0:
		writeError(w, failStatus, "INJECTED", "injected failure")
		return
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		writeError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "read-only registry")
		return
	}
	if kind == KindOther {
		writeError(w, http.StatusNotFound, "NOT_FOUND", "no such endpoint")
		return
	}
	if !r.checkAuth(w, req, repo) {
		return
	}
	r.authorized(req, kind)
	switch kind {
	case KindPing:
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
	case KindManifest:
		r.serveManifest(w, req, repo, rest)
	case KindBlob:
		r.serveBlob(w, req, repo, rest)
	case KindTags:
		r.serveTags(w, req, repo)
	}
}

// accepts reports whether the Accept header allows mediaType. Like real
// registries, a missing Accept header accepts anything.
func accepts(req *http.Request, mediaType string) bool {
	values := req.Header.Values("Accept")
	if len(values) == 0 {
		return true
	}
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			mt, _, _ := strings.Cut(part, ";")
			mt = strings.TrimSpace(mt)
			if mt == mediaType || mt == "*/*" {
				return true
			}
		}
	}
	return false
}

func (r *Registry) serveManifest(w http.ResponseWriter, req *http.Request, repo, ref string) {
	r.mu.Lock()
	var d digest.Digest
	if strings.Contains(ref, ":") {
		d = digest.Digest(ref)
	} else {
		d = r.tags[repo][ref]
	}
	m, ok := r.manifests[repo][d]
	corrupt, omit := r.corrupt[d], r.omitDigest
	_, known := r.manifests[repo]
	r.mu.Unlock()
	if !ok {
		if !known {
			writeError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository name not known to registry")
			return
		}
		writeError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest unknown")
		return
	}
	if !accepts(req, m.mediaType) {
		writeError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest media type "+m.mediaType+" not in Accept header")
		return
	}
	body := m.body
	if corrupt {
		body = corrupted(body)
	}
	w.Header().Set("Content-Type", m.mediaType)
	if !omit {
		w.Header().Set("Docker-Content-Digest", d.String())
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if req.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(body)
}

// corrupted returns a same-length copy of b with every byte flipped.
func corrupted(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		out[i] = ^c
	}
	return out
}

func (r *Registry) serveBlob(w http.ResponseWriter, req *http.Request, repo, ref string) {
	d := digest.Digest(ref)
	r.mu.Lock()
	content, ok := r.blobs[d]
	ok = ok && r.repoBlobs[repo][d]
	redirect := r.redirect
	r.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown to registry")
		return
	}
	if redirect && req.Method == http.MethodGet {
		// A pre-signed CDN URL: authorization travels in the query.
		target := fmt.Sprintf("%s/cdn/%s?sig=%s", r.cdn.URL, url.PathEscape(d.String()), r.cdnSignature)
		http.Redirect(w, req, target, http.StatusTemporaryRedirect)
		return
	}
	r.writeBlob(w, req, d, content)
}

// serveCDN serves redirected blob downloads.
func (r *Registry) serveCDN(w http.ResponseWriter, req *http.Request) {
	rw, done := r.begin(w, req, KindCDN)
	defer done()
	w = rw
	r.mu.Lock()
	down := r.down
	d := digest.Digest(strings.TrimPrefix(req.URL.Path, "/cdn/"))
	content, ok := r.blobs[d]
	r.mu.Unlock()
	switch {
	case down:
		writeError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "CDN down")
	case req.URL.Query().Get("sig") != r.cdnSignature:
		writeError(w, http.StatusForbidden, "DENIED", "bad signature")
	case !ok:
		writeError(w, http.StatusNotFound, "BLOB_UNKNOWN", "no such object")
	default:
		r.authorized(req, KindCDN)
		r.writeBlob(w, req, d, content)
	}
}

// writeBlob writes a blob response honouring Range, corruption, throttling
// and cuts. Range is implemented here (not with http.ServeContent) so that
// the fault injection applies to partial responses too.
func (r *Registry) writeBlob(w http.ResponseWriter, req *http.Request, d digest.Digest, content []byte) {
	size := int64(len(content))
	start, end := int64(0), size-1
	status := http.StatusOK
	if rng := req.Header.Get("Range"); rng != "" {
		s, e, ok := oci.ResolveRange(rng, size)
		if !ok {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			writeError(w, http.StatusRequestedRangeNotSatisfiable, "RANGE_INVALID", "invalid range")
			return
		}
		start, end, status = s, e, http.StatusPartialContent
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size))
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Accept-Ranges", "bytes")
	w.Header().Set("Content-Length", strconv.FormatInt(end-start+1, 10))
	w.WriteHeader(status)
	if req.Method == http.MethodHead {
		return
	}

	r.mu.Lock()
	body := content[start : end+1]
	if r.corrupt[d] {
		body = corrupted(content)[start : end+1]
	}
	cutAt := int64(-1)
	if c := r.cuts[d]; c != nil {
		cutAt = c.after
		if c.times--; c.times <= 0 {
			delete(r.cuts, d)
		}
	}
	throttle := r.throttle
	r.mu.Unlock()

	rc := http.NewResponseController(w)
	if cutAt >= 0 && cutAt < int64(len(body)) {
		r.writeThrottled(w, rc, req, body[:cutAt], throttle)
		_ = rc.Flush()
		// Abort: net/http closes the connection without finishing the
		// response, so the client sees an unexpected EOF.
		panic(http.ErrAbortHandler)
	}
	r.writeThrottled(w, rc, req, body, throttle)
}

// writeThrottled writes b in flushed chunks at bytesPerSec (0 = at once).
func (r *Registry) writeThrottled(w http.ResponseWriter, rc *http.ResponseController, req *http.Request, b []byte, bytesPerSec int64) {
	if bytesPerSec <= 0 {
		_, _ = w.Write(b)
		return
	}
	chunk := max(bytesPerSec/20, 1) // ~20 flushes per second
	for len(b) > 0 {
		n := min(chunk, int64(len(b)))
		if _, err := w.Write(b[:n]); err != nil {
			return
		}
		_ = rc.Flush()
		b = b[n:]
		if len(b) == 0 {
			return
		}
		t := time.NewTimer(time.Duration(n) * time.Second / time.Duration(bytesPerSec))
		select {
		case <-req.Context().Done():
			t.Stop()
			return
		case <-t.C:
		}
		// Re-read the rate so SetThrottle applies to streams in flight.
		r.mu.Lock()
		bytesPerSec = r.throttle
		r.mu.Unlock()
		if bytesPerSec <= 0 {
			_, _ = w.Write(b)
			return
		}
		chunk = max(bytesPerSec/20, 1)
	}
}

func (r *Registry) serveTags(w http.ResponseWriter, req *http.Request, repo string) {
	r.mu.Lock()
	tagMap, ok := r.tags[repo]
	_, hasManifests := r.manifests[repo]
	all := make([]string, 0, len(tagMap))
	for t := range tagMap {
		all = append(all, t)
	}
	r.mu.Unlock()
	if !ok && !hasManifests {
		writeError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository name not known to registry")
		return
	}
	sort.Strings(all)
	q := req.URL.Query()
	if last := q.Get("last"); last != "" {
		i := sort.SearchStrings(all, last)
		if i < len(all) && all[i] == last {
			i++
		}
		all = all[i:]
	}
	page := all
	if n, err := strconv.Atoi(q.Get("n")); err == nil && n >= 0 && n < len(all) {
		page = all[:n]
		if n > 0 {
			next := url.Values{"last": {page[n-1]}, "n": {strconv.Itoa(n)}}
			w.Header().Set("Link", fmt.Sprintf(`</v2/%s/tags/list?%s>; rel="next"`, repo, next.Encode()))
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"name": repo, "tags": page})
}
