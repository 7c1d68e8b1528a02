package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/access"
	"github.com/berth-dev/berth/internal/bucket"
	"github.com/berth-dev/berth/internal/bundle"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/rs/zerolog"
)

// admin serves berth's own endpoints, on the API's port:
//
//	POST /admin/import         a bundle as the body; answers its Summary
//	GET  /admin/inventory?repo=NAME  the tags and manifests berth holds
//	                           in NAME (mirrored repositories too, without
//	                           asking their upstream), for export --all
//	GET  /admin/repos, /admin/tags?repo=NAME, /admin/du, POST /admin/gc,
//	DELETE /admin/ref, POST /admin/revalidate: the operator's (gc.go)
//
// With client authentication on, both need valid credentials (an import
// writes like a push); in read-only maintenance mode an import is refused.
type admin struct{ api *reloadable }

// inventory is what /admin/inventory answers: a repository's tags and
// every manifest it holds.
type inventory struct {
	Name      string                 `json:"name"`
	Tags      []string               `json:"tags"`
	Manifests []cache.ManifestRecord `json:"manifests"`
}

// codeBundleInvalid answers a bundle refused: tampered, truncated or incomplete.
const codeBundleInvalid oci.Code = "BUNDLE_INVALID"

func (a *admin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	err := a.serve(w, r)
	if err == nil {
		return
	}
	var oe *oci.Error
	if !errors.As(err, &oe) {
		zerolog.Ctx(r.Context()).Error().Err(err).Str("path", r.URL.Path).Msg("admin request failed")
		oe = &oci.Error{Code: oci.CodeUnknown, Message: err.Error()}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(oe.Status())
	_, _ = w.Write(oci.Body(oe))
}

func (a *admin) serve(w http.ResponseWriter, r *http.Request) error {
	g := a.api.current.Load()
	var id access.Identity
	if g.auth != nil {
		var err error
		if id, err = g.auth.Identify(w, r); err != nil {
			return err
		}
	}
	// With access rules, an import needs push on each local repository it
	// writes and pull on each mirrored one (it fills the cache as a pull
	// would); the inventory needs pull.
	admit := func(repo string, act access.Action) error {
		if g.auth == nil || len(g.cfg.Access) == 0 {
			return nil
		}
		return g.auth.Admit(w, r, id, repo, act)
	}
	switch {
	case r.URL.Path == "/admin/import" && r.Method == http.MethodPost:
		return a.importBundle(w, r, g.cfg, func(repo, origin string) error {
			if origin != "" {
				return admit(repo, access.Pull)
			}
			return admit(repo, access.Push)
		})
	case r.URL.Path == "/admin/inventory" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		repo := r.URL.Query().Get("repo")
		if !oci.ValidName(repo) {
			return oci.Errorf(oci.CodeNameInvalid, "repo=%q is not a repository name", oci.Clip(repo))
		}
		if err := admit(repo, access.Pull); err != nil {
			return err
		}
		if b, ok := a.api.local.(*bucket.Registry); ok {
			if pushed, err := b.Pushed(r.Context(), repo); err != nil {
				return err
			} else if pushed {
				tags, ms, err := b.Inventory(r.Context(), repo)
				if err != nil {
					return err
				}
				return writeJSON(w, inventory{Name: repo, Tags: tags, Manifests: ms})
			}
		}
		tags, _, err := a.api.store.Tags(repo, 0, "")
		if err != nil {
			return err
		}
		ms, err := a.api.store.Manifests(repo)
		if err != nil {
			return err
		}
		return writeJSON(w, inventory{Name: repo, Tags: tags, Manifests: ms})
	case r.URL.Path == "/admin/import" || r.URL.Path == "/admin/inventory":
		return oci.Errorf(oci.CodeUnsupported, "%s is not allowed on %s", r.Method, r.URL.Path).WithStatus(http.StatusMethodNotAllowed)
	}
	can := func(repo string, act access.Action) bool {
		return g.auth == nil || len(g.cfg.Access) == 0 || g.auth.Policy().Can(id, repo, act)
	}
	if handled, err := a.ops(w, r, g.cfg, admit, can); handled { // gc.go: ls, du, rm, gc
		return err
	}
	return oci.Errorf(oci.CodeNameUnknown, "no such endpoint").WithStatus(http.StatusNotFound)
}

// publishTo publishes imported local images to the bucket of a cluster.
func publishTo(b *bucket.Registry) func(ctx context.Context, repo, tag string, img bundle.Image, created time.Time) error {
	return func(ctx context.Context, repo, tag string, img bundle.Image, created time.Time) error {
		return b.ImportImage(ctx, repo, tag, img.Desc.Digest, img.Blobs, img.Manifests, created)
	}
}

func (a *admin) importBundle(w http.ResponseWriter, r *http.Request, cfg Config, allow func(repo, origin string) error) error {
	if a.api.readOnly.Load() {
		return oci.Errorf(oci.CodeUnsupported, "read-only maintenance mode: imports are refused")
	}
	log := zerolog.Ctx(r.Context())
	start := time.Now()
	body := &idleBody{r: r.Body, rc: http.NewResponseController(w)}
	opts := bundle.ImportOptions{Upstream: upstreamOf(cfg), Allow: allow}
	if b, ok := a.api.local.(*bucket.Registry); ok {
		opts.Publish = publishTo(b)
	}
	sum, err := bundle.Import(r.Context(), a.api.store, body, opts)
	if err != nil {
		log.Warn().Err(err).Msg("bundle refused; nothing of it was indexed")
		return bundleErr(err)
	}
	log.Info().Int("images", sum.Images).Int("blobs", sum.Blobs).Int64("bytes", sum.Bytes).Int("skipped", sum.Skipped).
		Int("tags", sum.Tags).Int("tags_kept", sum.TagsKept).Dur("took", time.Since(start)).Msg("bundle imported")
	return writeJSON(w, sum)
}

// bundleErr is how a refused bundle is answered: 400 naming the first bad or
// missing digest. Other errors (the disk) stay internal.
func bundleErr(err error) error {
	for _, target := range []error{bundle.ErrCorrupt, bundle.ErrMissing, bundle.ErrTruncated, bundle.ErrNotBundle} {
		if errors.Is(err, target) {
			e := &oci.Error{Code: codeBundleInvalid, Message: err.Error(), HTTPStatus: http.StatusBadRequest, Cause: err}
			var de *bundle.DigestError
			if errors.As(err, &de) {
				e.Detail = map[string]string{"digest": de.Digest.String()}
			}
			return e
		}
	}
	return err
}

// importIdle is how long an import's client may send nothing before the
// import is abandoned (and its staged blobs removed).
const importIdle = 60 * time.Second

// idleBody reads a request body with a deadline renewed on every read.
type idleBody struct {
	r  io.Reader
	rc *http.ResponseController
}

func (b *idleBody) Read(p []byte) (int, error) {
	_ = b.rc.SetReadDeadline(time.Now().Add(importIdle)) // unsupported: the server's timeouts apply
	return b.r.Read(p)
}

// upstreamOf maps a host to the configured upstream it names, by name or
// alias.
func upstreamOf(cfg Config) func(string) (string, bool) {
	return func(host string) (string, bool) {
		for _, u := range cfg.Upstreams {
			if strings.EqualFold(host, u.Name) {
				return u.Name, true
			}
			for _, al := range u.Aliases {
				if strings.EqualFold(host, al) {
					return u.Name, true
				}
			}
		}
		return "", false
	}
}

func writeJSON(w http.ResponseWriter, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(append(b, '\n'))
	return err
}
