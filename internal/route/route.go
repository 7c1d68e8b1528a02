// Package route is the registry that decides who owns a repository (local
// storage or one configured upstream) and hands each call to it, by the
// README's rules, in order: ?ns=, a host prefix, local patterns, the
// implicit local rule, the default upstream. It is a registry.Interface
// wrapping others; berth never contacts a host that is not configured.
package route

import (
	"context"
	"errors"
	"io"
	"path"
	"strings"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/internal/ttl"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// Upstream is one configured upstream registry, as the router sees it.
type Upstream struct {
	// Name is what clients say: ns=NAME, /v2/NAME/..., and the prefix of
	// the upstream's cached repositories.
	Name string
	// Aliases are other host names clients use for it (index.docker.io).
	Aliases []string
	// Default marks the upstream that unqualified names go to.
	Default bool
	// Registry serves its repositories, under the upstream's own names
	// ("library/busybox"); the router makes it read-only.
	Registry registry.ReadLister
}

// Local is the registry of local repositories (cache.Local on one node,
// bucket.Registry in a cluster).
type Local interface {
	registry.Interface
	// Pushed reports whether repo is a local repository (the implicit
	// local rule: an unqualified name pushed here stays here).
	Pushed(ctx context.Context, repo string) (bool, error)
}

// Router is a registry.Interface over local storage and the upstreams.
type Router struct {
	local     Local
	store     *cache.Store
	upstreams []*upstreamEntry
	def       *upstreamEntry
	patterns  []string
	offline   bool
	claims    *ttl.Cache[string, bool] // does the default upstream have this name?
}

type upstreamEntry struct {
	Upstream
	ro registry.Interface
}

// Options configure a Router.
type Options struct {
	// Local serves local repositories and answers the implicit local rule
	// (was this unqualified name pushed here?); Store knows what is
	// mirrored.
	Local Local
	Store *cache.Store
	// Upstreams are the configured upstreams, at most one of them Default.
	Upstreams []Upstream
	// LocalPatterns are path.Match-style patterns ("team/*", "team/**") of
	// repositories always served from local storage, pushes allowed.
	LocalPatterns []string
	// Offline: no upstream is asked whether a pushed name exists there.
	Offline bool
}

// New returns the router of o.
func New(o Options) *Router {
	rt := &Router{local: o.Local, store: o.Store, patterns: o.LocalPatterns, offline: o.Offline,
		claims: ttl.New[string, bool](4096, 10*time.Minute)}
	for _, u := range o.Upstreams {
		e := &upstreamEntry{Upstream: u, ro: registry.ReadOnly(u.Registry,
			"repositories mirrored from "+u.Name+" are read-only; push to a local namespace instead")}
		rt.upstreams = append(rt.upstreams, e)
		if u.Default && rt.def == nil {
			rt.def = e
		}
	}
	return rt
}

var _ registry.Interface = (*Router)(nil)

func (rt *Router) byName(host string) *upstreamEntry {
	for _, u := range rt.upstreams {
		if u.Name == host {
			return u
		}
		for _, a := range u.Aliases {
			if a == host {
				return u
			}
		}
	}
	return nil
}

// mirrored is the upstream's name for repo, with Docker's rule that
// "busybox" means "library/busybox".
func mirrored(u *upstreamEntry, repo string) string {
	if u.Name == "docker.io" && !strings.Contains(repo, "/") {
		return "library/" + repo
	}
	return repo
}

// Target is where a repository's requests go.
type Target struct {
	// Upstream is "" for local storage.
	Upstream string
	// Repo is the repository name there: the local name, or the upstream's
	// (with library/ applied).
	Repo string
}

// Route decides the target of a request for repo; write is true for
// pushes, deletes and mounts. ctx carries the ?ns= host, if any.
func (rt *Router) Route(ctx context.Context, repo string, write bool) (Target, error) {
	_, t, err := rt.route(ctx, repo, write)
	return t, err
}

func (rt *Router) route(ctx context.Context, repo string, write bool) (registry.Interface, Target, error) {
	info := registry.InfoFrom(ctx)
	if ns := info.Host; ns != "" {
		u := rt.byName(ns)
		if u == nil {
			return nil, Target{}, oci.Errorf(oci.CodeDenied, "upstream %q is not configured on this mirror", oci.Clip(ns))
		}
		return rt.upstream(info, u, mirrored(u, repo))
	}
	first, rest, qualified := strings.Cut(repo, "/")
	if qualified {
		if u := rt.byName(first); u != nil {
			return rt.upstream(info, u, mirrored(u, rest))
		}
	}
	if rt.isLocal(repo) || rt.def == nil {
		return rt.localTarget(info, repo)
	}
	// Implicit local: a repository that was pushed here stays here; a new
	// one is created by a push unless that would shadow mirrored content.
	if pushed, err := rt.local.Pushed(ctx, repo); err != nil {
		return nil, Target{}, err
	} else if pushed {
		return rt.localTarget(info, repo)
	}
	up := mirrored(rt.def, repo)
	if write {
		if up != repo {
			// A one-element name under Docker's library rule: as with
			// registry:2, a push makes it local. It cannot shadow mirror
			// traffic, since dockerd, containerd and podman mirroring
			// docker.io always send library/NAME, which stays refused; so
			// the upstream is not asked.
			return rt.localTarget(info, repo)
		}
		if strings.HasPrefix(repo, "library/") {
			return nil, Target{}, oci.Errorf(oci.CodeDenied, "%s is a %s official image name and cannot be pushed here; push under a namespace such as team/%s", repo, rt.def.Name, strings.TrimPrefix(repo, "library/"))
		}
		if _, err := rt.store.Repository(rt.def.Name + "/" + up); err == nil {
			return nil, Target{}, oci.Errorf(oci.CodeDenied, "%s is mirrored from %s; a push would shadow it", repo, rt.def.Name)
		}
		if err := rt.claimable(ctx, repo); err != nil {
			return nil, Target{}, err
		}
		return rt.localTarget(info, repo)
	}
	if qualified && strings.Contains(first, ".") {
		return nil, Target{}, oci.Errorf(oci.CodeDenied, "upstream %q is not configured on this mirror", oci.Clip(first))
	}
	return rt.upstream(info, rt.def, up)
}

func (rt *Router) localTarget(info *registry.RequestInfo, repo string) (registry.Interface, Target, error) {
	info.Route = "local"
	return rt.local, Target{Repo: repo}, nil
}

func (rt *Router) upstream(info *registry.RequestInfo, u *upstreamEntry, repo string) (registry.Interface, Target, error) {
	info.Route = u.Name
	return u.ro, Target{Upstream: u.Name, Repo: repo}, nil
}

// claimable refuses a push that would create a local repository under a
// name the default upstream serves: every mirror client asking for that
// image would get the pushed one instead. The upstream is asked once (a tag
// list of one), and the answer remembered for a while. An unreachable
// upstream (air gap, offline) cannot be shadowed now, so the push goes on.
func (rt *Router) claimable(ctx context.Context, repo string) error {
	if rt.offline {
		return nil
	}
	exists, known := rt.claims.Get(repo)
	if !known {
		_, _, err := rt.def.Registry.Tags(ctx, mirrored(rt.def, repo), 1, "")
		switch {
		case err == nil:
			exists = true
		case errors.Is(err, oci.ErrNameUnknown), errors.Is(err, oci.ErrDenied):
			exists = false
		default:
			zerolog.Ctx(ctx).Warn().Err(err).Str("repo", repo).Str("request_id", registry.InfoFrom(ctx).RequestID).
				Msg("cannot ask the default upstream whether a pushed name exists there; allowing the push")
		}
		rt.claims.Add(repo, exists)
	}
	if exists {
		return oci.Errorf(oci.CodeDenied, "%s exists on %s; a push here would shadow it for every mirror client. Push under a local namespace (see the local setting)", repo, rt.def.Name)
	}
	return nil
}

func (rt *Router) isLocal(repo string) bool {
	for _, p := range rt.patterns {
		if MatchPattern(p, repo) {
			return true
		}
	}
	return false
}

// MatchPattern matches a repository against a pattern where "**" as the
// last element matches one or more further elements (and the base itself)
// and other elements follow path.Match.
func MatchPattern(pattern, repo string) bool {
	if pattern == "**" {
		return true
	}
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
	ok, _ := path.Match(pattern, repo)
	return ok
}

// --- registry.Interface: route, then delegate ---------------------------------

func (rt *Router) read(ctx context.Context, repo string) (registry.Interface, string, error) {
	r, t, err := rt.route(ctx, repo, false)
	return r, t.Repo, err
}

func (rt *Router) write(ctx context.Context, repo string) (registry.Interface, string, error) {
	r, t, err := rt.route(ctx, repo, true)
	return r, t.Repo, err
}

// GetBlob implements registry.Reader.
func (rt *Router) GetBlob(ctx context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	r, name, err := rt.read(ctx, repo)
	if err != nil {
		return nil, err
	}
	return r.GetBlob(ctx, name, d)
}

// ResolveBlob implements registry.Reader.
func (rt *Router) ResolveBlob(ctx context.Context, repo string, d digest.Digest) (registry.Descriptor, error) {
	r, name, err := rt.read(ctx, repo)
	if err != nil {
		return registry.Descriptor{}, err
	}
	return r.ResolveBlob(ctx, name, d)
}

// GetManifest implements registry.Reader.
func (rt *Router) GetManifest(ctx context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	r, name, err := rt.read(ctx, repo)
	if err != nil {
		return nil, err
	}
	return r.GetManifest(ctx, name, d)
}

// GetTag implements registry.Reader.
func (rt *Router) GetTag(ctx context.Context, repo, tag string) (registry.BlobReader, error) {
	r, name, err := rt.read(ctx, repo)
	if err != nil {
		return nil, err
	}
	return r.GetTag(ctx, name, tag)
}

// ResolveManifest implements registry.Reader.
func (rt *Router) ResolveManifest(ctx context.Context, repo string, d digest.Digest) (registry.Descriptor, error) {
	r, name, err := rt.read(ctx, repo)
	if err != nil {
		return registry.Descriptor{}, err
	}
	return r.ResolveManifest(ctx, name, d)
}

// ResolveTag implements registry.Reader.
func (rt *Router) ResolveTag(ctx context.Context, repo, tag string) (registry.Descriptor, error) {
	r, name, err := rt.read(ctx, repo)
	if err != nil {
		return registry.Descriptor{}, err
	}
	return r.ResolveTag(ctx, name, tag)
}

// PushBlob implements registry.Writer.
func (rt *Router) PushBlob(ctx context.Context, repo string, desc registry.Descriptor, rd io.Reader) (registry.Descriptor, error) {
	r, name, err := rt.write(ctx, repo)
	if err != nil {
		return registry.Descriptor{}, err
	}
	return r.PushBlob(ctx, name, desc, rd)
}

// StartUpload implements registry.Writer.
func (rt *Router) StartUpload(ctx context.Context, repo string) (registry.Upload, error) {
	r, name, err := rt.write(ctx, repo)
	if err != nil {
		return registry.Upload{}, err
	}
	return r.StartUpload(ctx, name)
}

// UploadStatus implements registry.Writer.
func (rt *Router) UploadStatus(ctx context.Context, repo, id string) (registry.Upload, error) {
	r, name, err := rt.write(ctx, repo)
	if err != nil {
		return registry.Upload{}, err
	}
	return r.UploadStatus(ctx, name, id)
}

// AppendUpload implements registry.Writer.
func (rt *Router) AppendUpload(ctx context.Context, repo, id string, start int64, rd io.Reader) (registry.Upload, error) {
	r, name, err := rt.write(ctx, repo)
	if err != nil {
		return registry.Upload{}, err
	}
	return r.AppendUpload(ctx, name, id, start, rd)
}

// CommitUpload implements registry.Writer.
func (rt *Router) CommitUpload(ctx context.Context, repo, id string, d digest.Digest, rd io.Reader) (registry.Descriptor, error) {
	r, name, err := rt.write(ctx, repo)
	if err != nil {
		return registry.Descriptor{}, err
	}
	return r.CommitUpload(ctx, name, id, d, rd)
}

// CancelUpload implements registry.Writer.
func (rt *Router) CancelUpload(ctx context.Context, repo, id string) error {
	r, name, err := rt.write(ctx, repo)
	if err != nil {
		return err
	}
	return r.CancelUpload(ctx, name, id)
}

// MountBlob implements registry.Writer. Only a local repository is a mount
// source; for any other from the answer is BLOB_UNKNOWN, and the client
// uploads the blob instead.
func (rt *Router) MountBlob(ctx context.Context, from, repo string, d digest.Digest) (registry.Descriptor, error) {
	r, name, err := rt.write(ctx, repo)
	if err != nil {
		return registry.Descriptor{}, err
	}
	src := ""
	if from != "" {
		route := registry.InfoFrom(ctx).Route
		_, t, err := rt.route(ctx, from, false)
		registry.InfoFrom(ctx).Route = route
		if err != nil || t.Upstream != "" || !oci.ValidName(from) {
			return registry.Descriptor{}, oci.Errorf(oci.CodeBlobUnknown, "mount source %s is not a local repository", oci.Clip(from))
		}
		src = t.Repo
	}
	return r.MountBlob(ctx, src, name, d)
}

// PushManifest implements registry.Writer.
func (rt *Router) PushManifest(ctx context.Context, repo, tag string, m *registry.Manifest) (registry.Descriptor, error) {
	r, name, err := rt.write(ctx, repo)
	if err != nil {
		return registry.Descriptor{}, err
	}
	return r.PushManifest(ctx, name, tag, m)
}

// DeleteBlob implements registry.Deleter.
func (rt *Router) DeleteBlob(ctx context.Context, repo string, d digest.Digest) error {
	r, name, err := rt.write(ctx, repo)
	if err != nil {
		return err
	}
	return r.DeleteBlob(ctx, name, d)
}

// DeleteManifest implements registry.Deleter.
func (rt *Router) DeleteManifest(ctx context.Context, repo string, d digest.Digest) error {
	r, name, err := rt.write(ctx, repo)
	if err != nil {
		return err
	}
	return r.DeleteManifest(ctx, name, d)
}

// DeleteTag implements registry.Deleter.
func (rt *Router) DeleteTag(ctx context.Context, repo, tag string) error {
	r, name, err := rt.write(ctx, repo)
	if err != nil {
		return err
	}
	return r.DeleteTag(ctx, name, tag)
}

// Repositories implements registry.Lister: the store's catalog, mirrored
// repositories under their "<upstream>/" prefix.
func (rt *Router) Repositories(ctx context.Context, n int, last string) ([]string, string, error) {
	return rt.local.Repositories(ctx, n, last)
}

// Tags implements registry.Lister.
func (rt *Router) Tags(ctx context.Context, repo string, n int, last string) ([]string, string, error) {
	r, name, err := rt.read(ctx, repo)
	if err != nil {
		return nil, "", err
	}
	return r.Tags(ctx, name, n, last)
}

// Referrers implements registry.Lister.
func (rt *Router) Referrers(ctx context.Context, repo string, d digest.Digest, artifactType string) ([]registry.Descriptor, bool, error) {
	r, name, err := rt.read(ctx, repo)
	if err != nil {
		return nil, false, err
	}
	return r.Referrers(ctx, name, d, artifactType)
}
