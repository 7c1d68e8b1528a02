package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/upstream"
	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"
)

// Upstream is what the proxy needs of a remote registry client
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

// Mirror is one configured upstream and how berth caches it.
type Mirror struct {
	Client Upstream
	// Default marks the upstream that unqualified names go to.
	Default bool
	// TagTTL is how long a tag is served without asking the upstream; zero
	// means a HEAD on every request.
	TagTTL time.Duration
	// KeepOnNotFound keeps serving a cached tag the upstream no longer has.
	KeepOnNotFound bool
	// Aliases are other host names clients use for this upstream
	// (index.docker.io for docker.io, say).
	Aliases []string
}

// Router decides who owns a repository: local storage or one upstream.
type Router struct {
	// Mirrors are the configured upstreams; berth contacts no other host.
	Mirrors []*Mirror
	// Local are path.Match-style patterns ("team/*", "team/**") of
	// repositories always served from local storage, pushes allowed.
	Local []string
	// Offline forbids any upstream contact: the cache alone answers.
	Offline bool
	// Store resolves the implicit rule for unqualified names.
	Store *cache.Store

	claimOnce sync.Once
	claims    *expirable.LRU[string, bool] // does the default upstream have this name?
}

// Target is where a request goes.
type Target struct {
	// Upstream is nil for a local repository.
	Upstream *Mirror
	// Repo is the repository name at the upstream (library/ applied).
	Repo string
	// StoreRepo is the name under which the repository is stored:
	// the local name, or "<upstream>/<repo>" for mirrored content.
	StoreRepo string
}

func (t Target) String() string {
	if t.Upstream == nil {
		if t.StoreRepo == "" {
			return ""
		}
		return "local"
	}
	return t.Upstream.Client.Name()
}

func (rt *Router) byName(host string) *Mirror {
	for _, m := range rt.Mirrors {
		if m.Client.Name() == host {
			return m
		}
		for _, a := range m.Aliases {
			if a == host {
				return m
			}
		}
	}
	return nil
}

func (rt *Router) defaultMirror() *Mirror {
	for _, m := range rt.Mirrors {
		if m.Default {
			return m
		}
	}
	return nil
}

func mirrored(m *Mirror, repo string) Target {
	if m.Client.Name() == "docker.io" && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	return Target{Upstream: m, Repo: repo, StoreRepo: m.Client.Name() + "/" + repo}
}

// Route decides the target of a parsed request (see the package README for
// the rules, in order: ns=, host prefix, local patterns, implicit local,
// default upstream).
func (rt *Router) Route(req Request, r *http.Request) (Target, error) {
	if req.Repo == "" {
		return Target{}, nil
	}
	write := isWrite(req, r)
	if ns := r.URL.Query().Get("ns"); ns != "" {
		m := rt.byName(ns)
		if m == nil {
			return Target{}, oci.Errorf(oci.CodeDenied, "upstream %q is not configured on this mirror", clip(ns))
		}
		return rt.checkWrite(mirrored(m, req.Repo), write)
	}
	first, rest, qualified := strings.Cut(req.Repo, "/")
	if qualified {
		if m := rt.byName(first); m != nil {
			return rt.checkWrite(mirrored(m, rest), write)
		}
	}
	if rt.isLocal(req.Repo) {
		return Target{Repo: req.Repo, StoreRepo: req.Repo}, nil
	}
	def := rt.defaultMirror()
	if def == nil {
		return Target{Repo: req.Repo, StoreRepo: req.Repo}, nil
	}
	// Implicit local: a repository that was pushed here stays here; a new
	// one is created by a push unless that would shadow mirrored content.
	if rec, err := rt.Store.Repository(req.Repo); err == nil && rec.Origin == "" {
		return Target{Repo: req.Repo, StoreRepo: req.Repo}, nil
	}
	t := mirrored(def, req.Repo)
	if write {
		if t.Repo != req.Repo || strings.HasPrefix(req.Repo, "library/") {
			return Target{}, oci.Errorf(oci.CodeDenied, "%s is a %s official image name and cannot be pushed here; push under a namespace such as team/%s", req.Repo, def.Client.Name(), req.Repo)
		}
		if _, err := rt.Store.Repository(t.StoreRepo); err == nil {
			return Target{}, oci.Errorf(oci.CodeDenied, "%s is mirrored from %s; a push would shadow it", req.Repo, def.Client.Name())
		}
		if err := rt.claimable(r, def, req.Repo); err != nil {
			return Target{}, err
		}
		return Target{Repo: req.Repo, StoreRepo: req.Repo}, nil
	}
	if strings.Contains(first, ".") && qualified {
		return Target{}, oci.Errorf(oci.CodeDenied, "upstream %q is not configured on this mirror", clip(first))
	}
	return t, nil
}

// claimable refuses a push that would create a local repository under a
// name the default upstream serves: every mirror client asking for that
// image would get the pushed one instead. The upstream is asked once (a tag
// list of one), and the answer remembered for a while. An unreachable
// upstream (air gap, offline) cannot be shadowed now, so the push goes on.
func (rt *Router) claimable(r *http.Request, def *Mirror, repo string) error {
	if rt.Offline {
		return nil
	}
	rt.claimOnce.Do(func() { rt.claims = expirable.NewLRU[string, bool](4096, nil, 10*time.Minute) })
	exists, known := rt.claims.Get(repo)
	if !known {
		_, _, err := def.Client.Tags(r.Context(), repo, 1, "")
		switch {
		case err == nil:
			exists = true
		case errors.Is(err, upstream.ErrNotFound), errors.Is(err, upstream.ErrDenied):
			exists = false
		default:
			zerolog.Ctx(r.Context()).Warn().Err(err).Str("repo", repo).
				Msg("cannot ask the default upstream whether a pushed name exists there; allowing the push")
			exists = false // and remembered, so one push is not slowed down request after request
		}
		rt.claims.Add(repo, exists)
	}
	if exists {
		return oci.Errorf(oci.CodeDenied, "%s exists on %s; a push here would shadow it for every mirror client. Push under a local namespace (see the local setting)", repo, def.Client.Name())
	}
	return nil
}

// LocalStoreName resolves a client-visible repository name (a mount's from=)
// to a local store name; mirrored repositories are not mount sources.
func (rt *Router) LocalStoreName(name string, r *http.Request) (string, error) {
	if !oci.ValidName(name) {
		return "", oci.Errorf(oci.CodeNameInvalid, "invalid repository name")
	}
	req := Request{Kind: KindManifest, Repo: name}
	t, err := rt.Route(req, r)
	if err != nil {
		return "", err
	}
	if t.Upstream != nil {
		return "", oci.Errorf(oci.CodeDenied, "mount source is mirrored")
	}
	return t.StoreRepo, nil
}

func (rt *Router) checkWrite(t Target, write bool) (Target, error) {
	if write {
		return Target{}, oci.Errorf(oci.CodeDenied, "%s is mirrored from %s and read-only; push to a local namespace instead", t.Repo, t.Upstream.Client.Name())
	}
	return t, nil
}

func (rt *Router) isLocal(repo string) bool {
	for _, p := range rt.Local {
		if matchPattern(p, repo) {
			return true
		}
	}
	return false
}

// matchPattern matches a repository against a pattern where "**" as the
// last element matches any number of elements and other elements follow
// path.Match.
func matchPattern(pattern, repo string) bool {
	if base, ok := strings.CutSuffix(pattern, "/**"); ok {
		if ok, _ := path.Match(base, repo); ok {
			return true
		}
		pe := strings.Count(base, "/") + 1
		parts := strings.Split(repo, "/")
		if len(parts) <= pe {
			return false
		}
		ok, _ := path.Match(base, strings.Join(parts[:pe], "/"))
		return ok
	}
	if pattern == "**" {
		return true
	}
	ok, _ := path.Match(pattern, repo)
	return ok
}

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
