package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/access"
	"github.com/berth-dev/berth/internal/cluster"
	"github.com/berth-dev/berth/internal/ldapauth"
	"github.com/berth-dev/berth/internal/mirror"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/internal/route"
	"github.com/berth-dev/berth/internal/status"
	"github.com/berth-dev/berth/internal/token"
	"github.com/berth-dev/berth/proxy"
	"github.com/berth-dev/berth/upstream"
	"github.com/rs/zerolog"
)

// generation is what one configuration builds: upstream clients, their
// mirrors, the router and the API handler over them. A reload builds a new
// one and swaps it in; the old one is closed once the requests that started
// on it have ended.
type generation struct {
	cfg     Config
	api     http.Handler
	mirrors []*mirror.Mirror
	authSum [sha256.Size]byte // of the htpasswd file, to tell that it changed
	auth    *proxy.Auth       // nil: no client authentication
	// refs counts the requests running on this generation, plus one while
	// it is current; at zero it is closed and takes no more requests.
	refs atomic.Int64
	idle chan struct{} // closed when refs falls to zero
}

// enter counts a request in; false if the generation was retired and its
// last request has ended (the caller then takes the current one).
func (g *generation) enter() bool {
	for {
		n := g.refs.Load()
		if n == 0 {
			return false
		}
		if g.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (g *generation) leave() {
	if g.refs.Add(-1) == 0 {
		close(g.idle)
	}
}

// reloadable is the API handler whose configuration can change: what
// serve shares between generations: the store, metrics and the
// read-only switch live as long as the process, a generation as long as its
// configuration.
type reloadable struct {
	log       zerolog.Logger
	store     *cache.Store
	mirrorMet *mirror.Metrics
	httpMet   *proxy.Metrics
	readOnly  *atomic.Bool // registry.Maintenance's switch: read_only, applied at once
	page      *status.Status
	// local serves local repositories: the store itself, or the bucket.
	local route.Local
	// source, in a cluster, is where mirrors find the blobs they miss.
	source     mirror.BlobSource
	current    atomic.Pointer[generation]
	retirement sync.WaitGroup // goroutines closing retired generations
}

// ServeHTTP serves a request on the generation current when it arrives; a
// reload during the request does not change what serves it.
func (a *reloadable) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	for {
		g := a.current.Load()
		if g.enter() {
			defer g.leave()
			g.api.ServeHTTP(w, r)
			return
		}
	}
}

// build makes the generation of cfg; nothing of it runs until it is made
// current.
func (a *reloadable) build(cfg Config) (*generation, error) {
	auth, sum, err := loadAuth(cfg)
	if err != nil {
		return nil, err
	}
	g := &generation{cfg: cfg, authSum: sum, auth: auth, idle: make(chan struct{})}
	g.refs.Store(1)
	var ups []route.Upstream
	for _, u := range cfg.Upstreams {
		if u.InsecureSkipVerify {
			a.log.Warn().Str("upstream", u.Name).Str("key", "insecure_skip_verify").
				Msg("TLS CERTIFICATE VERIFICATION IS OFF for this upstream: anyone on the path can impersonate it and read its credentials")
		}
		c, err := upstream.New(upstream.Config{Name: u.Name, URL: u.URL, Username: u.Username, Password: u.Password,
			ResponseHeaderTimeout: u.Timeout, MaxManifestSize: cfg.MaxManifestBytes,
			Credentials: upstreamCredentials(u), CAFile: u.CAFile, ClientCertFile: u.ClientCertFile,
			ClientKeyFile: u.ClientKeyFile, InsecureSkipVerify: u.InsecureSkipVerify, TokenRealms: u.TokenRealms},
			upstream.WithLogger(a.log.With().Str("upstream", u.Name).Logger()),
			upstream.WithObserver(a.mirrorMet), upstream.WithObserver(a.page))
		if err != nil {
			g.close()
			return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
		}
		m := mirror.New(mirror.Options{Store: a.store, Client: c, TagTTL: u.TagTTL, KeepOnNotFound: u.KeepOnNotFound,
			StaleIfDenied: u.staleOnDenied(),
			Offline:       cfg.Offline, Prefetch: prefetch(cfg.Prefetch), Metrics: a.mirrorMet, Logger: a.log, Source: a.source})
		g.mirrors = append(g.mirrors, m)
		ups = append(ups, route.Upstream{Name: u.Name, Aliases: u.Aliases, Default: u.Default, Registry: m})
	}
	local := a.local
	if local == nil {
		local = cache.NewLocal(a.store)
	}
	router := route.New(route.Options{Local: local, Store: a.store, Upstreams: ups,
		LocalPatterns: cfg.Local, Offline: cfg.Offline})
	g.api = proxy.New(proxy.Options{Registry: registry.Maintenance(router, a.readOnly), Logger: a.log, Metrics: a.httpMet,
		MaxManifestSize: cfg.MaxManifestBytes, Auth: auth, OnRequest: a.page.Request})
	return g, nil
}

// peers serves the cluster's peer API on the current generation's mirrors.
func (a *reloadable) peers(cl *cluster.Cluster) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for {
			g := a.current.Load()
			if !g.enter() {
				continue
			}
			defer g.leave()
			cl.Handler(func(name string) cluster.BlobGetter {
				for _, m := range g.mirrors {
					if m.Name() == name {
						return m
					}
				}
				return nil
			}).ServeHTTP(w, r)
			return
		}
	})
}

// upstreamCredentials is u's credential source when it is not a fixed
// username and password: a credential helper, or a docker config file.
func upstreamCredentials(u UpstreamConfig) upstream.Credentials {
	switch {
	case u.CredentialHelper != "":
		return upstream.Helper(u.CredentialHelper, u.credentialHosts()[0], 0, 0)
	case u.DockerConfig != "":
		return upstream.DockerConfig(u.DockerConfig, u.credentialHosts(), 0, 0)
	}
	return nil
}

// close stops the generation's background work (its mirrors' prefetches).
func (g *generation) close() {
	for _, m := range g.mirrors {
		m.Close()
	}
}

// retire takes g out of service: it is closed, by a goroutine serve waits
// for, when its last request has ended.
func (a *reloadable) retire(g *generation) {
	a.retirement.Add(1)
	go func() {
		defer a.retirement.Done()
		<-g.idle
		g.close()
	}()
	g.leave()
}

// stop closes the current generation and waits for the retired ones. No
// request may be running.
func (a *reloadable) stop() {
	a.retire(a.current.Load())
	a.retirement.Wait()
}

// restartOnly are the keys a running berth cannot change: a reload keeps
// their old values and says so.
var restartOnly = []struct {
	name string
	keep func(next *Config, cur Config)
}{
	{"addr", func(n *Config, c Config) { n.Addr = c.Addr }},
	{"data", func(n *Config, c Config) { n.Data = c.Data }},
	{"debug_addr", func(n *Config, c Config) { n.DebugAddr = c.DebugAddr }},
	{"max_cache_bytes", func(n *Config, c Config) { n.MaxCacheBytes = c.MaxCacheBytes }},
	{"disk_reserve", func(n *Config, c Config) { n.DiskReserve = c.DiskReserve }},
	{"log_level", func(n *Config, c Config) { n.LogLevel = c.LogLevel }},
	{"log_format", func(n *Config, c Config) { n.LogFormat = c.LogFormat }},
	{"storage", func(n *Config, c Config) { n.Storage = c.Storage }},
	{"cluster", func(n *Config, c Config) { n.Cluster = c.Cluster }},
	{"tls", func(n *Config, c Config) { n.TLS = c.TLS }},
	{"uploads.ttl", func(n *Config, c Config) { n.Uploads.TTL = c.Uploads.TTL }},
	{"uploads.max_sessions", func(n *Config, c Config) { n.Uploads.MaxSessions = c.Uploads.MaxSessions }},
	{"uploads.max_bytes", func(n *Config, c Config) { n.Uploads.MaxBytes = c.Uploads.MaxBytes }},
}

// reload builds a generation from load's configuration and swaps it in.
// A configuration that does not load or build is refused with one line and
// the current one stays.
func (a *reloadable) reload(load func() (Config, error)) error {
	cur := a.current.Load()
	cfg, err := load()
	if err != nil {
		a.log.Error().Err(err).Msg("configuration not reloaded; the running one stays")
		return err
	}
	changed := changedKeys(cur.cfg, cfg)
	var restart []string
	for _, k := range restartOnly {
		if slices.Contains(changed, k.name) {
			k.keep(&cfg, cur.cfg)
			restart = append(restart, k.name)
		}
	}
	g, err := a.build(cfg)
	if err != nil {
		a.log.Error().Err(err).Msg("configuration not reloaded; the running one stays")
		return err
	}
	if len(restart) > 0 {
		a.log.Warn().Strs("keys", restart).Msg("configuration reloaded without these keys: they need a restart and keep their old values until then")
		changed = slices.DeleteFunc(changed, func(k string) bool { return slices.Contains(restart, k) })
	}
	if g.authSum != cur.authSum && !slices.Contains(changed, "auth.htpasswd") {
		changed = append(changed, "auth.htpasswd (file)")
	}
	a.readOnly.Store(cfg.ReadOnly)
	a.current.Store(g)
	a.retire(cur)
	a.page.SetUpstreams(upstreamNames(cfg))
	a.log.Info().Strs("changed", changed).Msg("configuration reloaded")
	for _, w := range advisories(cfg) {
		if !slices.Contains(advisories(cur.cfg), w) {
			a.log.Warn().Msg(w)
		}
	}
	return nil
}

// changedKeys names the keys whose values differ between a and b, as the
// file names them (ReadOnly is read_only, Auth.Htpasswd auth.htpasswd).
func changedKeys(a, b Config) []string {
	changed := []string{}
	var walk func(prefix string, x, y reflect.Value)
	walk = func(prefix string, x, y reflect.Value) {
		for i := range x.NumField() {
			f := x.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			name := prefix + snake(f.Name)
			if f.Type == reflect.TypeFor[AuthConfig]() || f.Type == reflect.TypeFor[GCConfig]() || f.Type == reflect.TypeFor[UploadsConfig]() {
				walk(name+".", x.Field(i), y.Field(i))
				continue
			}
			if !reflect.DeepEqual(x.Field(i).Interface(), y.Field(i).Interface()) {
				changed = append(changed, name)
			}
		}
	}
	walk("", reflect.ValueOf(a), reflect.ValueOf(b))
	return changed
}

// snake is a Go field name as a key: MaxCacheBytes is max_cache_bytes,
// LDAP ldap.
func snake(s string) string {
	var b strings.Builder
	prevUpper := false
	for i, r := range s {
		up := unicode.IsUpper(r)
		if up {
			if i > 0 && !prevUpper {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		prevUpper = up
		b.WriteRune(r)
	}
	return b.String()
}

// advisories are the warnings a configuration deserves at start: what it
// tells the world, and who may write.
func advisories(cfg Config) []string {
	var w []string
	if def := defaultUpstream(cfg); def != "" && !cfg.Offline && len(cfg.Local) == 0 {
		w = append(w, fmt.Sprintf("no local patterns: a push of a new unqualified name (team/app) asks the default upstream %s "+
			"whether the name exists there, which tells %s the name; local: [\"team/**\"] keeps a team's names from ever leaving the house", def, def))
	}
	if cfg.Auth.Htpasswd == "" && cfg.Auth.LDAP.URL == "" && len(cfg.Access) == 0 {
		w = append(w, "no client authentication: anyone who can reach berth can push (auth.htpasswd requires credentials)")
	}
	if (cfg.Auth.Htpasswd != "" || cfg.Auth.LDAP.URL != "") && !cfg.Auth.Token.Enabled && (cfg.Auth.AnonymousPull == nil || *cfg.Auth.AnonymousPull) {
		w = append(w, "Basic authentication with anonymous pulls: /v2/ lets anonymous clients in, so docker and podman pull without credentials "+
			"but also never send theirs to push (they only do when /v2/ challenges them); auth.token: {} gives both, or anonymous_pull: false keeps pushes working without tokens")
	}
	if cfg.ReadOnly {
		w = append(w, "read-only maintenance mode: pushes and deletes are refused, pulls go on")
	}
	return w
}

func defaultUpstream(cfg Config) string {
	for _, u := range cfg.Upstreams {
		if u.Default {
			return u.Name
		}
	}
	return ""
}

// loadAuth builds the client authentication and access control of cfg:
// the htpasswd file (and its hash, to tell on reload that it changed), the
// LDAP directory, the token issuer and the access rules. nil: none of them
// is configured, anyone may do anything.
func loadAuth(cfg Config) (*proxy.Auth, [sha256.Size]byte, error) {
	c := cfg.Auth
	var sum [sha256.Size]byte
	if c.Htpasswd == "" && c.LDAP.URL == "" && len(cfg.Access) == 0 {
		return nil, sum, nil
	}
	o := proxy.AuthOptions{Rules: cfg.Access, AnonymousPull: c.AnonymousPull == nil || *c.AnonymousPull}
	if c.Htpasswd != "" {
		b, err := os.ReadFile(c.Htpasswd)
		if err != nil {
			return nil, sum, keyError("auth.htpasswd", "", err)
		}
		sum = sha256.Sum256(b)
		o.Htpasswd = bytes.NewReader(b)
		// Parse now, so the error names the file.
		if _, err := proxy.ParseHtpasswd(bytes.NewReader(b), true); err != nil {
			return nil, sum, keyError("auth.htpasswd", "", fmt.Errorf("%s: %w", c.Htpasswd, err))
		}
	}
	if l := c.LDAP; l.URL != "" {
		d, err := ldapauth.New(ldapauth.Config{URL: l.URL, BindDN: l.BindDN, BindPassword: l.bindPassword, UserBase: l.UserBase,
			UserFilter: l.UserFilter, GroupBase: l.GroupBase, GroupFilter: l.GroupFilter})
		if err != nil {
			return nil, sum, keyError("auth.ldap", "", err)
		}
		o.Directory = ldapDirectory{d}
	}
	if t := c.Token; t.Enabled {
		path, create := t.KeyFile, false
		if path == "" {
			path, create = filepath.Join(cfg.Data, "token.key"), true
		}
		key, err := token.LoadKey(path, create)
		if err != nil {
			return nil, sum, keyError("auth.token.key_file", "", err)
		}
		if o.Tokens, err = token.New(token.Options{Key: key, Service: t.Service, TTL: t.TTL}); err != nil {
			return nil, sum, keyError("auth.token.key_file", "", err)
		}
		o.Realm = t.Realm
	}
	a, err := proxy.NewAuth(o)
	if err != nil {
		return nil, sum, keyError("access", "", err)
	}
	return a, sum, nil
}

// ldapDirectory is an LDAP directory as proxy.Auth's second identity
// source: its wrong-password error becomes proxy's.
type ldapDirectory struct{ d *ldapauth.Directory }

func (l ldapDirectory) Check(ctx context.Context, user, password string) (access.Identity, error) {
	return ldapErr(l.d.Check(ctx, user, password))
}

func (l ldapDirectory) Lookup(ctx context.Context, user string) (access.Identity, error) {
	return ldapErr(l.d.Lookup(ctx, user))
}

func ldapErr(id access.Identity, err error) (access.Identity, error) {
	if errors.Is(err, ldapauth.ErrInvalid) {
		return id, fmt.Errorf("%w (ldap)", proxy.ErrInvalidCredentials)
	}
	return id, err
}

// upstreamNames are the configured upstreams' names, for the status page.
func upstreamNames(cfg Config) []string {
	names := make([]string, 0, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		names = append(names, u.Name)
	}
	return names
}
