package route_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/internal/route"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// fakeUpstream is an upstream registry that answers only tag lists, which
// is all the router asks of one itself; every other call panics through
// the nil embedded interface. It records the names it was asked about.
type fakeUpstream struct {
	registry.ReadLister
	tags func(repo string) error // nil: every name exists

	mu    sync.Mutex
	asked map[string]int
}

func (f *fakeUpstream) Tags(_ context.Context, repo string, _ int, _ string) ([]string, string, error) {
	f.mu.Lock()
	if f.asked == nil {
		f.asked = map[string]int{}
	}
	f.asked[repo]++
	f.mu.Unlock()
	if f.tags != nil {
		if err := f.tags(repo); err != nil {
			return nil, "", err
		}
	}
	return []string{"latest"}, "", nil
}

func (f *fakeUpstream) askedAbout(repo string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked[repo]
}

func openStore(t *testing.T) *cache.Store {
	t.Helper()
	st, err := cache.Open(t.TempDir(), cache.Options{Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// hubTags is the default upstream's answer to "do you have this name?".
func hubTags(repo string) error {
	switch repo {
	case "hub/exists", "hub/asked-once", "library/exists":
		return nil
	case "hub/unreachable":
		return errors.New("dial tcp: connection refused")
	case "hub/private":
		return oci.Errorf(oci.CodeDenied, "requested access to the resource is denied")
	}
	return oci.Errorf(oci.CodeNameUnknown, "repository name not known to registry")
}

type fixture struct {
	rt    *route.Router
	store *cache.Store
	hub   *fakeUpstream
	ghcr  *fakeUpstream
}

// newFixture is a router with docker.io (the default, with its usual
// aliases) and ghcr.io upstreams, three local patterns, one pushed
// repository and one repository cached from docker.io.
func newFixture(t *testing.T, offline bool) *fixture {
	t.Helper()
	st := openStore(t)
	for _, r := range []struct{ name, origin string }{
		{"pushed/app", ""},
		{"docker.io/cachedorg/app", "docker.io"},
		{"docker.io/library/cached", "docker.io"},
	} {
		if err := st.EnsureRepository(r.name, r.origin); err != nil {
			t.Fatal(err)
		}
	}
	f := &fixture{store: st, hub: &fakeUpstream{tags: hubTags}, ghcr: &fakeUpstream{}}
	f.rt = route.New(route.Options{
		Local: cache.NewLocal(st),
		Store: st,
		Upstreams: []route.Upstream{
			{Name: "docker.io", Aliases: []string{"index.docker.io", "registry-1.docker.io"}, Default: true, Registry: f.hub},
			{Name: "ghcr.io", Registry: f.ghcr},
		},
		LocalPatterns: []string{"team/**", "ops/*", "exact/name"},
		Offline:       offline,
	})
	return f
}

func TestRoute(t *testing.T) {
	t.Parallel()
	online := newFixture(t, false)
	offline := newFixture(t, true)

	local := func(repo string) route.Target { return route.Target{Repo: repo} }
	hub := func(repo string) route.Target { return route.Target{Upstream: "docker.io", Repo: repo} }
	ghcr := func(repo string) route.Target { return route.Target{Upstream: "ghcr.io", Repo: repo} }

	tests := []struct {
		name    string
		offline bool
		ns      string
		repo    string
		write   bool
		want    route.Target
		denied  bool // want DENIED (and no target)
		asks    int  // how often the default upstream is asked about repo
	}{
		// 1. ?ns=HOST
		{name: "ns names upstream", ns: "ghcr.io", repo: "org/app", want: ghcr("org/app")},
		{name: "ns docker.io library rule", ns: "docker.io", repo: "busybox", want: hub("library/busybox")},
		{name: "ns docker.io qualified", ns: "docker.io", repo: "library/busybox", want: hub("library/busybox")},
		{name: "ns alias", ns: "index.docker.io", repo: "nginx", want: hub("library/nginx")},
		{name: "ns beats local pattern", ns: "ghcr.io", repo: "team/app", want: ghcr("team/app")},
		{name: "ns beats pushed repository", ns: "docker.io", repo: "pushed/app", want: hub("pushed/app")},
		{name: "ns write routed to upstream", ns: "ghcr.io", repo: "org/app", write: true, want: ghcr("org/app")},
		{name: "ns unconfigured", ns: "unknown.example", repo: "x/y", denied: true},
		{name: "ns unconfigured write", ns: "quay.io", repo: "team/app", write: true, denied: true},

		// 2. a first path element naming an upstream or alias
		{name: "host prefix", repo: "ghcr.io/org/app", want: ghcr("org/app")},
		{name: "host prefix deep", repo: "ghcr.io/org/sub/app", want: ghcr("org/sub/app")},
		{name: "host prefix one element, not docker.io", repo: "ghcr.io/app", want: ghcr("app")},
		{name: "host prefix docker.io library rule", repo: "docker.io/nginx", want: hub("library/nginx")},
		{name: "host prefix docker.io qualified", repo: "docker.io/bitnami/redis", want: hub("bitnami/redis")},
		{name: "alias prefix", repo: "index.docker.io/library/x", want: hub("library/x")},
		{name: "alias prefix library rule", repo: "index.docker.io/x", want: hub("library/x")},
		{name: "other alias prefix", repo: "registry-1.docker.io/org/x", want: hub("org/x")},
		{name: "host prefix beats local pattern", repo: "ghcr.io/team/app", want: ghcr("team/app")},
		{name: "host prefix write routed to upstream", repo: "ghcr.io/org/app", write: true, want: ghcr("org/app")},
		{name: "cached store name reads the upstream", repo: "docker.io/cachedorg/app", want: hub("cachedorg/app")},

		// 3. local patterns
		{name: "team/** base", repo: "team", want: local("team")},
		{name: "team/** read", repo: "team/app", want: local("team/app")},
		{name: "team/** write", repo: "team/app", write: true, want: local("team/app")},
		{name: "team/** deep write", repo: "team/a/b", write: true, want: local("team/a/b")},
		{name: "ops/* write", repo: "ops/app", write: true, want: local("ops/app")},
		{name: "ops/* is one level", repo: "ops/app/x", want: hub("ops/app/x")},
		{name: "exact name write", repo: "exact/name", write: true, want: local("exact/name")},
		{name: "exact name only", repo: "exact/name2", want: hub("exact/name2")},
		{name: "pattern prefix is not a match", repo: "teamx/app", want: hub("teamx/app")},

		// 4. implicit local rule
		{name: "pushed repository read", repo: "pushed/app", want: local("pushed/app")},
		{name: "pushed repository write", repo: "pushed/app", write: true, want: local("pushed/app")},

		// 4. default upstream for reads
		{name: "one element read", repo: "busybox", want: hub("library/busybox")},
		{name: "library read", repo: "library/busybox", want: hub("library/busybox")},
		{name: "two elements read", repo: "bitnami/redis", want: hub("bitnami/redis")},
		{name: "cached name read", repo: "cachedorg/app", want: hub("cachedorg/app")},
		{name: "unconfigured host read", repo: "unknown.example/x", denied: true},
		{name: "unconfigured dotted host deep read", repo: "registry.example.com/x/y", denied: true},

		// 4. writes to unqualified names
		{name: "library write refused", repo: "library/foo", write: true, denied: true},
		{name: "one element write is local", repo: "foo", write: true, want: local("foo")},
		{name: "one element write the upstream has is local", repo: "exists", write: true, want: local("exists")},
		{name: "one element write of a cached image is local", repo: "cached", write: true, want: local("cached")},
		{name: "cached name write refused", repo: "cachedorg/app", write: true, denied: true},
		{name: "cached official image write refused", repo: "library/cached", write: true, denied: true},
		{name: "upstream has name", repo: "hub/exists", write: true, denied: true, asks: 1},
		{name: "upstream NAME_UNKNOWN", repo: "hub/fresh", write: true, want: local("hub/fresh"), asks: 1},
		{name: "upstream DENIED", repo: "hub/private", write: true, want: local("hub/private"), asks: 1},
		{name: "upstream unreachable", repo: "hub/unreachable", write: true, want: local("hub/unreachable"), asks: 1},
		{name: "offline not asked", offline: true, repo: "hub/exists", write: true, want: local("hub/exists")},
		{name: "offline still refuses library", offline: true, repo: "library/foo", write: true, denied: true},
		{name: "offline one element write is local", offline: true, repo: "bar", write: true, want: local("bar")},
		{name: "offline still refuses cached", offline: true, repo: "cachedorg/app", write: true, denied: true},
		{name: "offline read", offline: true, repo: "busybox", want: hub("library/busybox")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := online
			if tt.offline {
				f = offline
			}
			info := &registry.RequestInfo{Host: tt.ns}
			ctx := registry.WithInfo(context.Background(), info)
			got, err := f.rt.Route(ctx, tt.repo, tt.write)
			if tt.denied {
				if !errors.Is(err, oci.ErrDenied) {
					t.Fatalf("Route(%q, write=%v) = %+v, %v; want DENIED", tt.repo, tt.write, got, err)
				}
				if info.Route != "" {
					t.Errorf("RequestInfo.Route = %q after a refusal, want empty", info.Route)
				}
			} else {
				if err != nil {
					t.Fatalf("Route(%q, write=%v): %v", tt.repo, tt.write, err)
				}
				if got != tt.want {
					t.Errorf("Route(%q, write=%v) = %+v, want %+v", tt.repo, tt.write, got, tt.want)
				}
				wantRoute := "local"
				if tt.want.Upstream != "" {
					wantRoute = tt.want.Upstream
				}
				if info.Route != wantRoute {
					t.Errorf("RequestInfo.Route = %q, want %q", info.Route, wantRoute)
				}
			}
			// Every name is in one case only, so the count is this case's.
			if n := f.hub.askedAbout(tt.repo); n != tt.asks {
				t.Errorf("default upstream asked about %q %d times, want %d", tt.repo, n, tt.asks)
			}
		})
	}
}

// The default upstream's answer is remembered: a second push to the same
// name does not ask again.
func TestRouteAsksUpstreamOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	for i := range 3 {
		if _, err := f.rt.Route(context.Background(), "hub/asked-once", true); !errors.Is(err, oci.ErrDenied) {
			t.Fatalf("push %d: %v, want DENIED", i, err)
		}
	}
	if n := f.hub.askedAbout("hub/asked-once"); n != 1 {
		t.Errorf("default upstream asked %d times, want 1", n)
	}
}

// registry:2's tutorial: a one-element name is pushed, pulled back from
// local storage, and listed; the default upstream is never asked, and
// mirror clients, which send library/NAME, still reach the upstream.
func TestRouteOneElementPushIsLocal(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	ctx := context.Background()
	const repo = "my-ubuntu-image"
	if got, err := f.rt.Route(ctx, repo, false); err != nil || got != (route.Target{Upstream: "docker.io", Repo: "library/" + repo}) {
		t.Fatalf("before the push: Route(%q) = %+v, %v; want docker.io library/%s", repo, got, err, repo)
	}
	content := []byte("a layer")
	d := digest.FromBytes(content)
	if _, err := f.rt.PushBlob(ctx, repo, registry.Descriptor{Digest: d, Size: int64(len(content))}, bytes.NewReader(content)); err != nil {
		t.Fatalf("PushBlob(%s): %v", repo, err)
	}
	for _, tt := range []struct {
		repo string
		want route.Target
	}{
		{repo, route.Target{Repo: repo}},
		{"library/" + repo, route.Target{Upstream: "docker.io", Repo: "library/" + repo}},
		{"other-image", route.Target{Upstream: "docker.io", Repo: "library/other-image"}},
	} {
		if got, err := f.rt.Route(ctx, tt.repo, false); err != nil || got != tt.want {
			t.Errorf("after the push: Route(%q) = %+v, %v; want %+v", tt.repo, got, err, tt.want)
		}
	}
	if _, err := f.rt.ResolveBlob(ctx, repo, d); err != nil {
		t.Errorf("ResolveBlob(%s) after the push: %v", repo, err)
	}
	if _, err := f.rt.Route(ctx, "library/"+repo, true); !errors.Is(err, oci.ErrDenied) {
		t.Errorf("push to library/%s: %v, want DENIED", repo, err)
	}
	for _, name := range []string{repo, "library/" + repo} {
		if n := f.hub.askedAbout(name); n != 0 {
			t.Errorf("default upstream asked about %q %d times, want 0", name, n)
		}
	}
}

// Without a default upstream every name that is not host-qualified is local.
func TestRouteNoDefault(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	rt := route.New(route.Options{Local: cache.NewLocal(st), Store: st,
		Upstreams: []route.Upstream{{Name: "ghcr.io", Registry: &fakeUpstream{}}}})
	for _, tt := range []struct {
		repo  string
		write bool
		want  route.Target
	}{
		{"busybox", true, route.Target{Repo: "busybox"}},
		{"library/busybox", true, route.Target{Repo: "library/busybox"}},
		{"ghcr.io/org/app", false, route.Target{Upstream: "ghcr.io", Repo: "org/app"}},
	} {
		got, err := rt.Route(context.Background(), tt.repo, tt.write)
		if err != nil || got != tt.want {
			t.Errorf("Route(%q, write=%v) = %+v, %v; want %+v", tt.repo, tt.write, got, err, tt.want)
		}
	}
}

// Mirrored repositories are read-only: the router routes a write there, and
// the registry it hands the write to refuses it.
func TestRouteMirroredWritesDenied(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	d := digest.FromString("layer")
	for _, tt := range []struct{ ns, repo, upstream string }{
		{"", "ghcr.io/org/app", "ghcr.io"},
		{"", "docker.io/library/busybox", "docker.io"},
		{"", "index.docker.io/org/app", "docker.io"},
		{"docker.io", "library/busybox", "docker.io"},
		{"ghcr.io", "team/app", "ghcr.io"},
	} {
		for _, op := range []struct {
			name string
			call func(ctx context.Context) error
		}{
			{"PushManifest", func(ctx context.Context) error {
				_, err := f.rt.PushManifest(ctx, tt.repo, "v1", &registry.Manifest{})
				return err
			}},
			{"StartUpload", func(ctx context.Context) error {
				_, err := f.rt.StartUpload(ctx, tt.repo)
				return err
			}},
			{"PushBlob", func(ctx context.Context) error {
				_, err := f.rt.PushBlob(ctx, tt.repo, registry.Descriptor{Digest: d, Size: 5}, bytes.NewReader([]byte("layer")))
				return err
			}},
			{"MountBlob", func(ctx context.Context) error {
				_, err := f.rt.MountBlob(ctx, "", tt.repo, d)
				return err
			}},
			{"DeleteTag", func(ctx context.Context) error { return f.rt.DeleteTag(ctx, tt.repo, "v1") }},
			{"DeleteManifest", func(ctx context.Context) error { return f.rt.DeleteManifest(ctx, tt.repo, d) }},
			{"DeleteBlob", func(ctx context.Context) error { return f.rt.DeleteBlob(ctx, tt.repo, d) }},
		} {
			t.Run(fmt.Sprintf("%s ns=%s %s", op.name, tt.ns, tt.repo), func(t *testing.T) {
				t.Parallel()
				info := &registry.RequestInfo{Host: tt.ns}
				err := op.call(registry.WithInfo(context.Background(), info))
				if !errors.Is(err, oci.ErrDenied) {
					t.Errorf("%v, want DENIED", err)
				}
				if info.Route != tt.upstream {
					t.Errorf("RequestInfo.Route = %q, want %q", info.Route, tt.upstream)
				}
			})
		}
	}

	// The same calls on a local name are served.
	info := &registry.RequestInfo{}
	ctx := registry.WithInfo(context.Background(), info)
	if u, err := f.rt.StartUpload(ctx, "team/app"); err != nil || u.ID == "" {
		t.Errorf("StartUpload(team/app) = %+v, %v; want an upload", u, err)
	}
	if info.Route != "local" {
		t.Errorf("RequestInfo.Route = %q, want local", info.Route)
	}
}

// Only a local repository is a mount source: naming a mirrored one (even
// by its store name, even when the blob is cached there) is BLOB_UNKNOWN,
// and the client uploads instead.
func TestRouteMountFromMirroredIsBlobUnknown(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	ctx := context.Background()
	content := []byte("a layer")
	d := digest.FromBytes(content)
	if _, err := f.rt.PushBlob(ctx, "team/src", registry.Descriptor{Digest: d, Size: int64(len(content))}, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	// The same blob, cached for a mirrored repository.
	if err := f.store.PutBlob("docker.io/library/cached", "docker.io", d, int64(len(content)), bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}

	for _, from := range []string{
		"ghcr.io/org/app",
		"docker.io/library/cached", // the store's name of a mirrored repository
		"index.docker.io/library/cached",
		"cached", // unqualified: docker.io's library/cached
		"library/cached",
		"unknown.example/x", // not configured
		"../team/src",       // not a valid name
	} {
		t.Run(from, func(t *testing.T) {
			info := &registry.RequestInfo{}
			_, err := f.rt.MountBlob(registry.WithInfo(ctx, info), from, "team/dst", d)
			if !errors.Is(err, oci.ErrBlobUnknown) {
				t.Errorf("MountBlob from %s: %v, want BLOB_UNKNOWN", from, err)
			}
			if info.Route != "local" {
				t.Errorf("RequestInfo.Route = %q, want local (the mount target's)", info.Route)
			}
			if ok, err := f.store.Linked("team/dst", d); err != nil || ok {
				t.Errorf("team/dst linked to the blob (%v, %v) after a refused mount", ok, err)
			}
		})
	}

	// From a local repository the mount works.
	info := &registry.RequestInfo{}
	desc, err := f.rt.MountBlob(registry.WithInfo(ctx, info), "team/src", "team/dst", d)
	if err != nil || desc.Digest != d {
		t.Fatalf("MountBlob from team/src = %+v, %v", desc, err)
	}
	if info.Route != "local" {
		t.Errorf("RequestInfo.Route = %q, want local", info.Route)
	}
}

func TestMatchPattern(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, repo string
		want          bool
	}{
		{"**", "a", true},
		{"**", "a/b", true},
		{"**", "a/b/c/d", true},

		{"team/**", "team", true},
		{"team/**", "team/a", true},
		{"team/**", "team/a/b", true},
		{"team/**", "team/a/b/c", true},
		{"team/**", "teamx/a", false},
		{"team/**", "teamx", false},
		{"team/**", "other", false},
		{"team/**", "other/team/a", false},
		{"team/**", "a/team", false},

		{"team/*", "team/a", true},
		{"team/*", "team", false},
		{"team/*", "team/a/b", false},
		{"team/*", "teamx/a", false},

		{"exact/name", "exact/name", true},
		{"exact/name", "exact/name/x", false},
		{"exact/name", "exact", false},
		{"exact/name", "exact/names", false},

		{"*/app/**", "x/app", true},
		{"*/app/**", "x/app/y", true},
		{"*/app/**", "x/app/y/z", true},
		{"*/app/**", "x/apps/y", false},
		{"*/app/**", "app/y", false},
		{"*/app/**", "x/y/app/z", false},
		{"*/app/**", "x", false},
	}
	for _, tt := range tests {
		if got := route.MatchPattern(tt.pattern, tt.repo); got != tt.want {
			t.Errorf("MatchPattern(%q, %q) = %v, want %v", tt.pattern, tt.repo, got, tt.want)
		}
	}
}

// remoteLocal is a Local kept elsewhere (route.Remote) that counts the
// round trips the router makes to it.
type remoteLocal struct {
	*cache.Local
	pushed map[string]bool
	asked  int
	fail   error
}

func (r *remoteLocal) Known(repo string) bool { return false }

func (r *remoteLocal) Pushed(_ context.Context, repo string) (bool, error) {
	r.asked++
	return r.pushed[repo], r.fail
}

// With a local kept in a bucket, a read of a name this replica mirrors
// costs no round trip (and works while the bucket is down); a name it has
// not seen is asked, and a push always is.
func TestRouteRemoteLocal(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	loc := &remoteLocal{Local: cache.NewLocal(st), pushed: map[string]bool{"team/app": true}}
	rt := route.New(route.Options{Local: loc, Store: st,
		Upstreams: []route.Upstream{{Name: "docker.io", Default: true, Registry: &fakeUpstream{tags: func(string) error { return oci.ErrNameUnknown }}}}})
	ctx := context.Background()
	if got, err := rt.Route(ctx, "team/app", false); err != nil || got != (route.Target{Repo: "team/app"}) {
		t.Fatalf("a pushed name: %+v, %v", got, err)
	}
	if got, err := rt.Route(ctx, "org/tool", false); err != nil || got.Upstream != "docker.io" {
		t.Fatalf("an unknown name: %+v, %v", got, err)
	}
	if loc.asked != 2 {
		t.Fatalf("asked the bucket %d times, want 2", loc.asked)
	}
	// Mirrored here now: reads no longer ask, even with the bucket down.
	if err := st.EnsureRepository("docker.io/org/tool", "docker.io"); err != nil {
		t.Fatal(err)
	}
	loc.fail = errors.New("bucket down")
	for range 3 {
		if got, err := rt.Route(ctx, "org/tool", false); err != nil || got.Upstream != "docker.io" {
			t.Fatalf("a mirrored name with the bucket down: %+v, %v", got, err)
		}
	}
	if loc.asked != 2 {
		t.Errorf("asked the bucket %d times for a mirrored name, want no more", loc.asked)
	}
	// A push is always checked against the bucket.
	if _, err := rt.Route(ctx, "org/tool", true); err == nil || loc.asked != 3 {
		t.Errorf("a push with the bucket down: %v (asked %d)", err, loc.asked)
	}
}
