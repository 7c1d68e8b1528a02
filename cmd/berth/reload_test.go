package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/access"
	"github.com/berth-dev/berth/internal/mirror"
	"github.com/berth-dev/berth/internal/status"
	"github.com/berth-dev/berth/proxy"
	"github.com/berth-dev/berth/upstream/upstreamtest"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// SIGHUP reloads the file: a new local pattern and read_only take effect,
// a request in flight finishes, a bad file is refused and the old
// configuration stays.
func TestServeReload(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	up.AddImage("team/app", "v1", 1, 16) // so a push of team/app would shadow it
	dir := t.TempDir()
	path := writeFile(t, "")
	base := fmt.Sprintf("data: %s\nlog_level: error\nlog_format: json\nupstreams:\n  - {name: fake.io, url: %q, default: true}\n", dir, up.URL())
	listen := "127.0.0.1:0"
	write := func(extra string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(base+"addr: "+listen+"\n"+extra), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	load := func() (Config, error) { return loadConfig([]string{"--config", path}, env(nil)) }
	cfg, err := load()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal, 1)
	reloaded := make(chan error)
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serveWith(ctx, cfg, hooks{ready: ready, reload: hup, load: load, reloaded: reloaded}) }()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	reload := func(extra string) error {
		t.Helper()
		write(extra)
		hup <- syscall.SIGHUP
		return <-reloaded
	}
	do := func(method, path string, body io.Reader) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+addr+path, body)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Location") + string(b)
	}
	blob := []byte("a layer of team/app")
	d := digest.FromBytes(blob)
	push := func() (int, string) {
		return do(http.MethodPost, "/v2/team/app/blobs/uploads/?digest="+d.String(), bytes.NewReader(blob))
	}

	if st, body := push(); st != http.StatusForbidden || !strings.Contains(body, "DENIED") {
		t.Fatalf("push of a name the default upstream has: %d %s", st, body)
	}
	if err := reload("local: [\"team/**\"]\n"); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if st, body := push(); st != http.StatusCreated {
		t.Fatalf("push under the new local pattern: %d %s", st, body)
	}

	// A chunked upload whose body is still arriving when the configuration
	// changes (addr too, which needs a restart and is kept) ends normally.
	st, loc := do(http.MethodPost, "/v2/team/app/blobs/uploads/", nil)
	if st != http.StatusAccepted {
		t.Fatalf("start upload: %d %s", st, loc)
	}
	pr, pw := io.Pipe()
	patched := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPatch, "http://"+addr+loc, pr)
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			patched <- 0
			return
		}
		resp.Body.Close()
		patched <- resp.StatusCode
	}()
	if _, err := pw.Write(blob[:5]); err != nil {
		t.Fatal(err)
	}
	listen = "127.0.0.1:1"
	if err := reload("local: [\"team/**\"]\n"); err != nil {
		t.Fatalf("reload with a new addr: %v", err)
	}
	if _, err := pw.Write(blob[5:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if st := <-patched; st != http.StatusAccepted {
		t.Fatalf("PATCH across a reload: %d", st)
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	if st, body := do(http.MethodPut, loc+sep+"digest="+d.String(), nil); st != http.StatusCreated {
		t.Fatalf("commit across a reload: %d %s", st, body)
	}

	if err := reload("local: [\"team/**\"]\nread_only: yes\n"); err != nil {
		t.Fatalf("reload: %v", err)
	}
	readOnly := func(when string) {
		t.Helper()
		st, body := push()
		var e struct{ Errors []struct{ Code string } }
		_ = json.Unmarshal([]byte(body), &e)
		if st != http.StatusMethodNotAllowed || len(e.Errors) != 1 || e.Errors[0].Code != "UNSUPPORTED" {
			t.Fatalf("push %s: %d %s", when, st, body)
		}
		if st, body := do(http.MethodGet, "/v2/team/app/blobs/"+d.String(), nil); st != http.StatusOK || body != string(blob) {
			t.Fatalf("pull %s: %d %s", when, st, body)
		}
	}
	readOnly("in read-only mode")

	err = reload("local: [\"team/**\"]\nread_only: no\nprefetch: -7\n")
	if err == nil || !strings.Contains(err.Error(), "config key prefetch") {
		t.Fatalf("bad file reloaded: %v", err)
	}
	readOnly("after a bad file")

	if err := reload("local: [\"team/**\"]\n"); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if st, body := push(); st != http.StatusCreated {
		t.Fatalf("push after read-only mode ended: %d %s", st, body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
}

// A reload logs one line for what changed, one for the keys that need a
// restart, the start-up warnings that are new, and for a bad configuration
// one error line; a retired generation is closed once its last request has
// ended.
func TestReloadLog(t *testing.T) {
	t.Parallel()
	store, err := cache.Open(t.TempDir(), cache.Options{Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var logs bytes.Buffer
	a := &reloadable{log: zerolog.New(&logs), store: store, mirrorMet: mirror.NewMetrics(nil), httpMet: proxy.NewMetrics(nil), page: status.New(status.Options{Store: store}),
		readOnly: new(atomic.Bool)}
	cfg := defaultConfig()
	cfg.Upstreams = defaultUpstreams()
	first, err := a.build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.current.Store(first)
	if !first.enter() { // a request running on the first generation
		t.Fatal("a current generation refused a request")
	}

	next := cfg
	next.Addr, next.LogLevel = ":6000", "debug"
	next.Local, next.ReadOnly = []string{"team/**"}, true
	if err := a.reload(func() (Config, error) { return next, nil }); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 3 ||
		!strings.Contains(lines[0], `"keys":["addr","log_level"]`) || !strings.Contains(lines[0], "need a restart") ||
		!strings.Contains(lines[1], `"changed":["read_only","local"]`) || !strings.Contains(lines[1], "configuration reloaded") ||
		!strings.Contains(lines[2], "read-only maintenance mode") {
		t.Errorf("log:\n%s", logs.String())
	}
	if g := a.current.Load(); g.cfg.Addr != cfg.Addr || g.cfg.LogLevel != cfg.LogLevel || !a.readOnly.Load() {
		t.Errorf("addr %q log_level %q read_only %v after the reload", g.cfg.Addr, g.cfg.LogLevel, a.readOnly.Load())
	}
	select {
	case <-first.idle:
		t.Fatal("the old generation went idle under a running request")
	default:
	}
	first.leave() // the request ends: the old generation is closed
	<-first.idle
	if first.enter() {
		t.Error("a closed generation took a request")
	}

	logs.Reset()
	err = a.reload(func() (Config, error) { return loadConfig([]string{"--prefetch", "-7"}, env(nil)) })
	if err == nil || strings.Count(logs.String(), "\n") != 1 || !strings.Contains(logs.String(), "config key prefetch (--prefetch)") ||
		!strings.Contains(logs.String(), `"level":"error"`) {
		t.Errorf("bad configuration: %v, log %s", err, logs.String())
	}
	if !a.readOnly.Load() || a.current.Load().cfg.Local == nil {
		t.Error("a bad configuration changed the running one")
	}
	a.stop()
}

func TestChangedKeys(t *testing.T) {
	t.Parallel()
	a := defaultConfig()
	b := a
	b.MaxCacheBytes, b.DebugAddr, b.Prefetch = 1, ":6060", -1
	b.Auth.AnonymousPull = new(bool)
	b.Auth.LDAP.URL = "ldap://x"
	b.Auth.Token.Enabled = true
	b.Upstreams = defaultUpstreams()
	b.TLS.CertFile = "/etc/berth/tls.crt"
	b.Access = []access.Rule{{Repos: []string{"**"}}}
	got := fmt.Sprint(changedKeys(a, b))
	if want := "[debug_addr upstreams prefetch auth.anonymous_pull auth.ldap auth.token max_cache_bytes access tls]"; got != want {
		t.Errorf("changed %s, want %s", got, want)
	}
	if got := changedKeys(a, a); len(got) != 0 {
		t.Errorf("changed %v between equal configurations", got)
	}
}

// The zero configuration says at start what a push of a new name tells the
// default upstream, and that anyone may push.
func TestAdvisories(t *testing.T) {
	t.Parallel()
	zero := defaultConfig()
	zero.Upstreams = defaultUpstreams()
	withLocal, offline, withAuth, noDefault := zero, zero, zero, zero
	withLocal.Local = []string{"team/**"}
	offline.Offline = true
	withAuth.Auth.Htpasswd = "/etc/berth/htpasswd"
	noDefault.Upstreams = []UpstreamConfig{{Name: "ghcr.io", URL: "https://ghcr.io"}}
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string
	}{
		{"zero", zero, []string{`asks the default upstream docker.io whether the name exists there`, "no client authentication: anyone who can reach berth can push"}},
		{"local patterns", withLocal, []string{"no client authentication"}},
		{"offline", offline, []string{"no client authentication"}},
		{"no default upstream", noDefault, []string{"no client authentication"}},
		{"auth", withAuth, []string{`local: ["team/**"] keeps a team's names from ever leaving the house`, "auth.token: {} gives both"}},
	} {
		got := advisories(tc.cfg)
		if len(got) != len(tc.want) {
			t.Errorf("%s: %q", tc.name, got)
			continue
		}
		for i := range got {
			if !strings.Contains(got[i], tc.want[i]) {
				t.Errorf("%s: %q, want %q in it", tc.name, got[i], tc.want[i])
			}
		}
	}
}

// With auth.token, the first generation makes the signing key in the data
// directory (0600); a reload that changes the rules keeps the key, so a
// token issued before it still verifies, and applies the new rules to new
// tokens.
func TestReloadTokenAuth(t *testing.T) {
	t.Parallel()
	store, err := cache.Open(t.TempDir(), cache.Options{Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	a := &reloadable{log: zerolog.Nop(), store: store, mirrorMet: mirror.NewMetrics(nil), httpMet: proxy.NewMetrics(nil),
		page: status.New(status.Options{Store: store}), readOnly: new(atomic.Bool)}
	line, err := htpasswdLine("bob", strings.NewReader("bob-pw\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := defaultConfig()
	cfg.Data = t.TempDir()
	cfg.Upstreams = []UpstreamConfig{}
	cfg.Auth.Htpasswd = writeFile(t, line+"\n")
	cfg.Auth.Token.Enabled = true
	cfg.Access = []access.Rule{{Repos: []string{"team-b/**"}, Subjects: []string{"bob"}, Actions: []access.Action{access.Pull, access.Push}}}
	first, err := a.build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.current.Store(first)
	fi, err := os.Stat(cfg.Data + "/token.key")
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token key: %v %v", fi, err)
	}
	ts := httptest.NewServer(a)
	defer ts.Close()
	srv := ts.URL
	grant := func(scope string) (tok, granted string) {
		req, _ := http.NewRequest("GET", srv+"/v2/token?service=berth&scope="+scope, nil)
		req.SetBasicAuth("bob", "bob-pw")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var tr struct{ Token, Scope string }
		if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
			t.Fatal(err)
		}
		return tr.Token, tr.Scope
	}
	tok, _ := grant("repository:team-b/x:pull")
	if _, got := grant("repository:team-a/x:push"); got != "" {
		t.Fatalf("bob granted %q before the reload", got)
	}
	next := cfg
	next.Access = append([]access.Rule{{Repos: []string{"team-a/**"}, Subjects: []string{"bob"}, Actions: []access.Action{access.Push}}}, cfg.Access...)
	if err := a.reload(func() (Config, error) { return next, nil }); err != nil {
		t.Fatal(err)
	}
	if _, got := grant("repository:team-a/x:push"); got != "repository:team-a/x:push" {
		t.Errorf("bob granted %q after the reload", got)
	}
	req, _ := http.NewRequest("GET", srv+"/v2/team-b/x/tags/list", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		t.Error("a token issued before the reload no longer verifies")
	}
	a.stop()
}
