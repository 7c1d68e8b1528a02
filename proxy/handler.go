// Package proxy is berth's HTTP face: it serves any registry.Interface as
// the OCI Distribution API. Request parsing, content negotiation, Range,
// Docker-Content-Digest, Location, pagination, client authentication,
// request logs, metrics and error writing live here, once; where content
// comes from (local storage, an upstream mirror, the router choosing
// between them) is the registry's business.
package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Options configure a Handler.
type Options struct {
	// Registry is what is served.
	Registry registry.Interface
	Logger   zerolog.Logger
	// Registerer receives the HTTP metrics; nil means none are registered.
	Registerer prometheus.Registerer
	// Metrics, if set, are counted instead of new series registered with
	// Registerer.
	Metrics *Metrics
	// MaxManifestSize bounds a manifest body; zero means 4 MiB.
	MaxManifestSize int64
	// Auth, if set, requires client credentials (for pushes at least).
	Auth *Auth
	// BodyIdleTimeout cuts a request body (a blob upload) that delivers
	// nothing for this long; zero means 30 s.
	BodyIdleTimeout time.Duration
	// OnRequest, if set, is told of every finished API request (the status
	// page counts the busiest repositories with it). It runs on the
	// request's goroutine: it must be quick.
	OnRequest func(Done)
}

// Done describes a finished API request.
type Done struct {
	Kind     Kind
	Method   string
	Repo     string // as the client named it
	Status   int
	Bytes    int64 // response body bytes
	Route    string
	Cache    string
	Source   string // of the body: cache, upstream or local ("" without one)
	Duration time.Duration
}

// Handler serves the OCI Distribution API over a registry.
type Handler struct {
	reg     registry.Interface
	log     zerolog.Logger
	metrics *metrics
	maxMan  int64
	auth    *Auth
	idle    time.Duration
	onDone  func(Done)
	bufs    sync.Pool // *[]byte, 256 KiB copy buffers for blob bodies
	states  sync.Pool // *state, one per request in flight
	ids     *requestIDs
}

// New returns the /v2/ handler.
func New(opts Options) *Handler {
	if opts.MaxManifestSize == 0 {
		opts.MaxManifestSize = 4 << 20
	}
	if opts.BodyIdleTimeout == 0 {
		opts.BodyIdleTimeout = 30 * time.Second
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(opts.Registerer)
	}
	h := &Handler{reg: opts.Registry, log: opts.Logger, metrics: opts.Metrics.m,
		maxMan: opts.MaxManifestSize, auth: opts.Auth, idle: opts.BodyIdleTimeout, onDone: opts.OnRequest,
		ids: newRequestIDs()}
	h.bufs.New = func() any { b := make([]byte, 256<<10); return &b }
	h.states.New = func() any { return new(state) }
	return h
}

// state is what one request carries through the handler: the response
// recorder, the parsed query, and the info the registry fills in for the
// log. Pooled: a warm GET allocates next to nothing of its own.
type state struct {
	recorder
	info    registry.RequestInfo
	query   url.Values
	req     Request
	bytesIn int64 // request body bytes read (uploads, manifest pushes)
	caller  caller
	// authEvent is what the auth step or the token endpoint counts in
	// berth_auth_events_total ("" for nothing).
	authEvent string
}

// errAbort asks ServeHTTP to cut the connection once the request is logged:
// a blob body broke off after its headers went out.
var errAbort = errors.New("response aborted")

// ServeHTTP implements http.Handler with request logging and metrics.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := h.states.Get().(*state)
	*st = state{recorder: recorder{ResponseWriter: w, status: http.StatusOK}}
	defer h.states.Put(st)
	w = &st.recorder
	hdr := w.Header()
	hdr["Docker-Distribution-Api-Version"] = apiVersion
	id := h.ids.requestID(r.Header["X-Request-Id"])
	hdr["X-Request-Id"] = id
	st.info.RequestID = id[0]
	if r.URL.RawQuery != "" {
		st.query = r.URL.Query()
		st.info.Host = st.query.Get("ns")
	}
	ctx := r.Context()
	if zerolog.Ctx(ctx).GetLevel() == zerolog.Disabled && h.log.GetLevel() != zerolog.Disabled {
		ctx = h.log.WithContext(ctx) // the server's BaseContext has none (tests, embedders)
	}
	ctx = registry.WithInfo(ctx, &st.info)
	req, err := ParseRequest(r.URL.Path)
	st.req = req
	if err == nil && h.auth != nil && req.Kind != KindToken {
		st.caller, err = h.auth.authorize(ctx, w, r, st)
		st.info.User = st.caller.id.User
	}
	if err == nil {
		err = h.serve(ctx, w, r, st)
	}
	if err == nil && st.status < 300 {
		h.auditWrite(ctx, r, st)
	}
	if st.authEvent != "" {
		h.metrics.auth.WithLabelValues(st.authEvent).Inc()
	}
	if err != nil && err != errAbort {
		h.writeError(ctx, w, r, err)
	}
	d := time.Since(start)
	src := source(&st.info, st.bytes)
	h.metrics.observe(req.Kind, r.Method, st.status, st.bytes, src, d)
	h.logRequest(r, st, d, err)
	if h.onDone != nil {
		h.onDone(Done{Kind: req.Kind, Method: r.Method, Repo: req.Repo, Status: st.status, Bytes: st.bytes,
			Route: st.info.Route, Cache: st.info.Cache, Source: src, Duration: d})
	}
	if err == errAbort {
		panic(http.ErrAbortHandler)
	}
}

var apiVersion = []string{"registry/2.0"}

// source is where a response's bytes came from: local (pushed content),
// upstream (streamed while a mirror fetched it) or cache (mirrored content
// on disk).
func source(info *registry.RequestInfo, bytes int64) string {
	switch {
	case bytes == 0:
		return ""
	case info.Route == "local":
		return "local"
	case info.Cache == "miss" || info.Cache == "joined":
		return "upstream"
	case info.Route != "":
		return "cache"
	}
	return ""
}

// logRequest writes the request's log line. Next to method, path, kind,
// repo, ref, ns (?ns=), digest, route (local or the upstream's name), status
// and bytes (of the response body) it carries:
//
//   - cache: how the request was answered, see cacheResult
//   - bytes_in: request body bytes read, on POST, PUT and PATCH
//   - duration_ms: milliseconds from the request's arrival to its last byte
//   - client: the peer's address as the server saw it (a reverse proxy in
//     front is the client: X-Forwarded-For is not trusted)
//   - user: the authenticated user, absent when anonymous
//   - user_agent: clipped to 200 bytes
//   - request_id: also sent as X-Request-Id
func (h *Handler) logRequest(r *http.Request, st *state, d time.Duration, err error) {
	var ev *zerolog.Event
	switch {
	case st.status >= 500 || err == errAbort:
		ev = h.log.Error()
	case st.req.Kind == KindBase:
		ev = h.log.Debug() // clients ping /v2/ before everything: keep it out of the info log
	default:
		ev = h.log.Info()
	}
	if ev == nil {
		return
	}
	ev = ev.Str("method", r.Method).Str("path", r.URL.Path).Str("kind", st.req.Kind.String()).Str("repo", st.req.Repo)
	if st.req.Reference != "" {
		ev = ev.Str("ref", st.req.Reference)
	}
	if st.info.Host != "" {
		ev = ev.Str("ns", st.info.Host)
	}
	// The content's digest, unless the reference already is it (a blob, a
	// manifest by digest): the line is written for every request, and
	// its bytes are most of what logging costs.
	if dg := st.Header()["Docker-Content-Digest"]; len(dg) > 0 && dg[0] != st.req.Reference {
		ev = ev.Str("digest", dg[0])
	}
	if st.info.Route != "" {
		ev = ev.Str("route", st.info.Route)
	}
	if c := cacheResult(r, st); c != "" {
		ev = ev.Str("cache", c)
	}
	if err == errAbort {
		ev = ev.Bool("aborted", true)
	}
	ev = ev.Int("status", st.status).Int64("bytes", st.bytes)
	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		ev = ev.Int64("bytes_in", st.bytesIn)
	}
	ev = ev.Float64("duration_ms", float64(d.Microseconds())/1000).Str("client", r.RemoteAddr)
	if st.info.User != "" {
		ev = ev.Str("user", st.info.User)
	}
	if ua := r.Header.Get("User-Agent"); ua != "" {
		ev = ev.Str("user_agent", clipUTF8(ua, maxUserAgent))
	}
	ev.Str("request_id", st.info.RequestID).Msg("request")
}

// cacheResult is the log's cache field. For a request a mirror answered it
// is the mirror's word (hit, miss, joined, stale, revalidated, negative); a
// read (GET or HEAD) that local storage answered with content (status below
// 400) is "local"; anything else (a push, a delete, a local 404, a request
// refused before it reached storage) has none.
func cacheResult(r *http.Request, st *state) string {
	if st.info.Cache != "" {
		return st.info.Cache
	}
	if st.info.Route == "local" && st.status < 400 && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		return "local"
	}
	return ""
}

const maxUserAgent = 200

// clipUTF8 cuts s to at most n bytes, at a character boundary.
func clipUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func (h *Handler) serve(ctx context.Context, w http.ResponseWriter, r *http.Request, st *state) error {
	req := st.req
	get := r.Method == http.MethodGet || r.Method == http.MethodHead
	switch req.Kind {
	case KindBase:
		if !get {
			return h.notAllowed(w, req.Kind)
		}
		hdr := w.Header()
		hdr["Content-Type"] = jsonType
		hdr["Content-Length"] = []string{"2"}
		if r.Method == http.MethodGet {
			_, _ = w.Write([]byte("{}"))
		}
		return nil
	case KindCatalog:
		if !get {
			return h.notAllowed(w, req.Kind)
		}
		return h.catalog(ctx, w, r, st)
	case KindManifest:
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			return h.getManifest(ctx, w, r, req)
		case http.MethodPut:
			return h.putManifest(ctx, w, r, st)
		case http.MethodDelete:
			return h.deleteManifest(ctx, w, req)
		}
	case KindBlob:
		d, err := oci.ParseDigest(req.Reference)
		if err != nil {
			return err
		}
		switch r.Method {
		case http.MethodGet:
			return h.getBlob(ctx, w, r, req.Repo, d)
		case http.MethodHead:
			return h.headBlob(ctx, w, r, req.Repo, d)
		case http.MethodDelete:
			if err := h.reg.DeleteBlob(ctx, req.Repo, d); err != nil {
				return err
			}
			w.WriteHeader(http.StatusAccepted)
			return nil
		}
	case KindUploadStart:
		if r.Method == http.MethodPost {
			return h.startUpload(ctx, w, r, st)
		}
	case KindUpload:
		switch r.Method {
		case http.MethodGet:
			u, err := h.reg.UploadStatus(ctx, req.Repo, req.Reference)
			if err != nil {
				return err
			}
			uploadHeaders(w, req.Repo, u)
			w.WriteHeader(http.StatusNoContent)
			return nil
		case http.MethodPatch:
			return h.patchUpload(ctx, w, r, st)
		case http.MethodPut:
			return h.finishUpload(ctx, w, r, st)
		case http.MethodDelete:
			if err := h.reg.CancelUpload(ctx, req.Repo, req.Reference); err != nil {
				return err
			}
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
	case KindTags:
		if get {
			return h.tags(ctx, w, r, st)
		}
	case KindReferrers:
		if get {
			return h.referrers(ctx, w, r, st)
		}
	case KindToken:
		if h.auth == nil || h.auth.tokens == nil {
			return errNotAPI
		}
		return h.auth.serveToken(ctx, w, r, st)
	}
	return h.notAllowed(w, req.Kind)
}

// allow is what each kind of endpoint answers (RFC 9110: a 405 names them).
var allow = [...]string{
	KindBase:        "GET, HEAD",
	KindCatalog:     "GET, HEAD",
	KindManifest:    "GET, HEAD, PUT, DELETE",
	KindBlob:        "GET, HEAD, DELETE",
	KindUploadStart: "POST",
	KindUpload:      "GET, PATCH, PUT, DELETE",
	KindTags:        "GET, HEAD",
	KindReferrers:   "GET, HEAD",
	KindToken:       "GET, POST",
}

func (h *Handler) notAllowed(w http.ResponseWriter, k Kind) error {
	w.Header().Set("Allow", allow[k])
	return errMethod
}

var (
	jsonType  = []string{"application/json"}
	octetType = []string{"application/octet-stream"}
	errMethod = &oci.Error{Code: oci.CodeUnsupported, Message: "method not allowed for this endpoint"}
)

// writeError is the one place an error becomes a response. Errors that are
// not OCI errors are internal: the client gets UNKNOWN, the log the detail.
func (h *Handler) writeError(ctx context.Context, w http.ResponseWriter, r *http.Request, err error) {
	var e *oci.Error
	var mb *http.MaxBytesError
	switch {
	case errors.As(err, &e):
	case errors.As(err, &mb):
		e = &oci.Error{Code: oci.CodeSizeInvalid, Message: "request body too large", HTTPStatus: http.StatusRequestEntityTooLarge}
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		e = &oci.Error{Code: oci.CodeUnavailable, Message: "request canceled", HTTPStatus: 499}
	case errors.Is(err, context.DeadlineExceeded):
		e = &oci.Error{Code: oci.CodeUnavailable, Message: "timed out", Cause: err}
	default:
		e = oci.Errorf(oci.CodeUnknown, "internal error")
	}
	// An upstream's failure is logged with its cause where it is
	// translated (mirror.upstreamErr): it is not an internal error.
	if e.Status() >= 500 && e.Upstream == "" {
		zerolog.Ctx(ctx).Error().Err(err).Str("path", r.URL.Path).Str("request_id", registry.InfoFrom(ctx).RequestID).Msg("internal error")
	}
	b := oci.Body(e)
	hdr := w.Header()
	hdr["Content-Type"] = jsonType
	hdr["Content-Length"] = []string{strconv.Itoa(len(b))}
	if e.RetryAfter > 0 {
		hdr.Set("Retry-After", strconv.FormatInt(int64((e.RetryAfter+time.Second-1)/time.Second), 10))
	}
	w.WriteHeader(e.Status())
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
}

// recorder remembers the status and byte count of a response.
type recorder struct {
	http.ResponseWriter
	status  int
	bytes   int64
	written bool
}

func (r *recorder) WriteHeader(s int) {
	if !r.written {
		r.status, r.written = s, true
	}
	r.ResponseWriter.WriteHeader(s)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.written = true
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// ReadFrom is net/http's: on a plain TCP connection a body from a file
// goes out with sendfile(2), the bytes never copied through berth.
func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	r.written = true
	rf, ok := r.ResponseWriter.(io.ReaderFrom)
	if !ok {
		n, err := io.Copy(writerOnly{r.ResponseWriter}, src)
		r.bytes += n
		return n, err
	}
	n, err := rf.ReadFrom(src)
	r.bytes += n
	return n, err
}

// writerOnly hides a writer's ReadFrom, so that io.Copy does not call it.
type writerOnly struct{ io.Writer }

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// auditWrite writes the audit line of a successful push (a manifest, or a
// blob's last request) or delete.
func (h *Handler) auditWrite(ctx context.Context, r *http.Request, st *state) {
	var event string
	switch {
	case r.Method == http.MethodDelete && (st.req.Kind == KindManifest || st.req.Kind == KindBlob):
		event = "delete"
	case r.Method == http.MethodPut && st.req.Kind == KindManifest, st.status == http.StatusCreated && (st.req.Kind == KindUpload || st.req.Kind == KindUploadStart):
		event = "push"
	default:
		return
	}
	repo := st.req.Repo
	if st.info.Host != "" {
		repo = st.info.Host + "/" + repo
	}
	dg := st.Header().Get("Docker-Content-Digest")
	if dg == "" && event == "delete" {
		dg = st.req.Reference
	}
	audit(ctx, r, event, st.info.User, event, repo, dg)
}

// isWrite reports whether a request pushes or deletes.
func isWrite(req Request, r *http.Request) bool {
	switch req.Kind {
	case KindUploadStart, KindUpload:
		return true
	}
	switch r.Method {
	case http.MethodPut, http.MethodPost, http.MethodPatch, http.MethodDelete:
		return true
	}
	return false
}

// location builds a /v2/ URL path for the client-visible repository name.
func location(repo string, parts ...string) string {
	n := len("/v2/") + len(repo)
	for _, p := range parts {
		n += 1 + len(p)
	}
	b := make([]byte, 0, n)
	b = append(append(b, "/v2/"...), repo...)
	for _, p := range parts {
		b = append(append(b, '/'), p...)
	}
	return string(b)
}
