package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/mirror"
	"github.com/berth-dev/berth/internal/status"
	"github.com/berth-dev/berth/internal/testutil/pki"
	"github.com/berth-dev/berth/proxy"
	"github.com/rs/zerolog"
)

// The per-upstream TLS and credential keys are read as written, and a bad
// value stops start-up with one line naming the key and quoting no secret.
func TestConfigUpstreamSecurity(t *testing.T) { // not parallel: sets PATH
	dir := t.TempDir()
	ca, err := pki.NewCA("cfg CA")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Client("berth")
	if err != nil {
		t.Fatal(err)
	}
	put := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile, certFile, keyFile := put("ca.crt", string(ca.PEM)), put("c.crt", string(cli.CertPEM)), put("c.key", string(cli.KeyPEM))
	dockerCfg := put("config.json", `{"auths":{"p.io":{"auth":"c2VjcmV0LXVzZXI6c2VjcmV0LXB3"}}}`)
	broken := put("broken.json", `{"auths":{"p.io":{"auth":"c2VjcmV0LXVzZXI6c2VjcmV0LXB3"`)
	put("docker-credential-berthcfg", "#!/bin/sh\nexit 1\n")
	if err := os.Chmod(filepath.Join(dir, "docker-credential-berthcfg"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))

	file := writeFile(t, `upstreams:
  - name: p.io
    url: https://p.io
    ca_file: `+caFile+`
    client_cert_file: `+certFile+`
    client_key_file: `+keyFile+`
    insecure_skip_verify: no
    token_realms: [auth.p.io, "tokens.p.io:8443"]
    docker_config: `+dockerCfg+`
    serve_stale_on_denied: off
  - name: ecr.io
    url: https://ecr.io
    credential_helper: berthcfg
`)
	cfg, err := loadConfig([]string{"--config", file}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	off := false
	want := []UpstreamConfig{
		{Name: "p.io", URL: "https://p.io", TagTTL: defaultTagTTL, CAFile: caFile, ClientCertFile: certFile, ClientKeyFile: keyFile,
			TokenRealms: []string{"auth.p.io", "tokens.p.io:8443"}, DockerConfig: dockerCfg, ServeStaleOnDenied: &off},
		{Name: "ecr.io", URL: "https://ecr.io", TagTTL: defaultTagTTL, CredentialHelper: "berthcfg"},
	}
	if !reflect.DeepEqual(cfg.Upstreams, want) {
		t.Errorf("upstreams\n got %+v\nwant %+v", cfg.Upstreams, want)
	}
	if cfg.Upstreams[0].staleOnDenied() || !cfg.Upstreams[1].staleOnDenied() {
		t.Error("serve_stale_on_denied: off, or on by default, not applied")
	}

	// The built-in docker.io may send credentials to Docker's token service.
	cfg, err = loadConfig(nil, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Upstreams[0].TokenRealms; cfg.Upstreams[0].Name != "docker.io" || !reflect.DeepEqual(got, []string{"auth.docker.io"}) {
		t.Errorf("built-in %s token_realms = %v", cfg.Upstreams[0].Name, got)
	}

	// So does a docker.io listed in the file without token_realms; an
	// explicit empty list is kept.
	file = writeFile(t, "upstreams:\n  - name: docker.io\n    url: https://registry-1.docker.io\n  - name: hub.io\n    url: https://registry-1.docker.io\n    token_realms: []\n")
	cfg, err = loadConfig([]string{"--config", file}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Upstreams[0].TokenRealms; !reflect.DeepEqual(got, []string{"auth.docker.io"}) {
		t.Errorf("listed docker.io token_realms = %v, want [auth.docker.io]", got)
	}
	if got := cfg.Upstreams[1].TokenRealms; len(got) != 0 {
		t.Errorf("token_realms: [] became %v", got)
	}

	for _, tt := range []struct{ keys, want string }{
		{"ca_file: " + filepath.Join(dir, "none.crt"), "upstreams[0].ca_file: open "},
		{"ca_file: " + keyFile, "upstreams[0].ca_file: " + keyFile + " holds no PEM certificate"},
		{"client_cert_file: " + certFile, "upstreams[0].client_key_file: required with client_cert_file"},
		{"client_key_file: " + keyFile, "upstreams[0].client_cert_file: required with client_key_file"},
		{"client_cert_file: " + keyFile + "\n    client_key_file: " + keyFile, "upstreams[0].client_cert_file: with client_key_file:"},
		{"insecure_skip_verify: maybe", "upstreams[0].insecure_skip_verify: \"maybe\" is not a boolean"},
		{"token_realms: [https://auth.p.io/token]", "upstreams[0].token_realms: \"https://auth.p.io/token\" is not a host name"},
		{"docker_config: " + broken, "upstreams[0].docker_config: " + broken + " is not valid JSON"},
		{"docker_config: " + filepath.Join(dir, "none.json"), "upstreams[0].docker_config: open "},
		{"credential_helper: not-installed-here", "upstreams[0].credential_helper: docker-credential-not-installed-here is not on PATH"},
		{"credential_helper: /usr/bin/evil", "upstreams[0].credential_helper: \"/usr/bin/evil\" is not a credential helper name"},
		{"credential_helper: berthcfg\n    docker_config: " + dockerCfg, "upstreams[0]: username/password, docker_config and credential_helper exclude each other"},
		{"serve_stale_on_denied: sometimes", "upstreams[0].serve_stale_on_denied: \"sometimes\" is not a boolean"},
	} {
		file := writeFile(t, "upstreams:\n  - name: p.io\n    url: https://p.io\n    "+tt.keys+"\n")
		_, err := loadConfig([]string{"--config", file}, env(nil))
		if err == nil || !strings.Contains(err.Error(), "config key "+tt.want) {
			t.Errorf("%q: %v, want %q", tt.keys, err, tt.want)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, "\n") || strings.Contains(msg, "c2VjcmV0") || strings.Contains(msg, "BEGIN") {
			t.Errorf("%q: error is not one line or quotes a secret: %s", tt.keys, msg)
		}
	}
}

// insecure_skip_verify is said loudly, naming the upstream, every time a
// configuration is built: at start and at each reload.
func TestInsecureSkipVerifyWarned(t *testing.T) {
	t.Parallel()
	store, err := cache.Open(t.TempDir(), cache.Options{Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var logs bytes.Buffer
	a := &reloadable{log: zerolog.New(&logs), store: store, mirrorMet: mirror.NewMetrics(nil), httpMet: proxy.NewMetrics(nil),
		page: status.New(status.Options{Store: store}), readOnly: new(atomic.Bool)}
	cfg := defaultConfig()
	cfg.Upstreams = []UpstreamConfig{{Name: "lab.test", URL: "https://lab.test", InsecureSkipVerify: true}, {Name: "ok.test", URL: "https://ok.test"}}
	first, err := a.build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.current.Store(first)
	if err := a.reload(func() (Config, error) { return cfg, nil }); err != nil {
		t.Fatal(err)
	}
	a.stop()
	var warns int
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "insecure_skip_verify") {
			warns++
			if !strings.Contains(line, `"level":"warn"`) || !strings.Contains(line, `"upstream":"lab.test"`) {
				t.Errorf("warning line: %s", line)
			}
		}
	}
	if warns != 2 {
		t.Errorf("%d insecure_skip_verify warnings for a start and a reload, want 2:\n%s", warns, logs.String())
	}
}
