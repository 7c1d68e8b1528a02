package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/rs/zerolog"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "berth.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	file := writeFile(t, "addr: \":6000\"\ndata: /from/file\nlog_level: warn\n")
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		addr    string
		data    string
		level   string
		offline bool
	}{
		{"defaults", nil, nil, ":5000", "./data", "info", false},
		{"file", []string{"--config", file}, nil, ":6000", "/from/file", "warn", false},
		{"env over file", []string{"--config", file}, map[string]string{"BERTH_ADDR": ":7000", "BERTH_OFFLINE": "true"}, ":7000", "/from/file", "warn", true},
		{"registry:2 habit", nil, map[string]string{"REGISTRY_HTTP_ADDR": "0.0.0.0:5001"}, "0.0.0.0:5001", "./data", "info", false},
		{"flag over env", []string{"--config", file, "--addr", ":8000", "--data", "/flag", "--log-level", "debug"},
			map[string]string{"BERTH_ADDR": ":7000", "BERTH_DATA": "/env"}, ":8000", "/flag", "debug", false},
		{"config from env", nil, map[string]string{"BERTH_CONFIG": file}, ":6000", "/from/file", "warn", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := loadConfig(tc.args, env(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Addr != tc.addr || cfg.Data != tc.data || cfg.LogLevel != tc.level || cfg.Offline != tc.offline {
				t.Errorf("got addr=%q data=%q level=%q offline=%v", cfg.Addr, cfg.Data, cfg.LogLevel, cfg.Offline)
			}
		})
	}
}

func TestConfigDefaultsKnowTheBigRegistries(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(nil, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	defaults := 0
	for _, u := range cfg.Upstreams {
		names[u.Name] = true
		if u.Default {
			defaults++
			if u.Name != "docker.io" {
				t.Errorf("default upstream is %s", u.Name)
			}
		}
	}
	for _, n := range []string{"docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "gcr.io", "mcr.microsoft.com", "public.ecr.aws"} {
		if !names[n] {
			t.Errorf("no built-in upstream %s", n)
		}
	}
	if defaults != 1 {
		t.Errorf("%d default upstreams", defaults)
	}
}

// A bad value stops start-up with one line that names the key.
func TestConfigErrorsNameTheKey(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		file string
		want string
	}{
		{"addr", []string{"--addr", "nonsense"}, nil, "", "addr"},
		{"log level", []string{"--log-level", "loud"}, nil, "", "log_level"},
		{"log format", nil, map[string]string{"BERTH_LOG_FORMAT": "xml"}, "", "log_format"},
		{"offline env", nil, map[string]string{"BERTH_OFFLINE": "perhaps"}, "", "BERTH_OFFLINE"},
		{"unknown key", nil, nil, "adress: \":5000\"\n", "adress"},
		{"upstream url", nil, nil, "upstreams:\n  - name: ghcr.io\n    url: ftp://ghcr.io\n", "upstreams[0].url"},
		{"upstream name", nil, nil, "upstreams:\n  - url: https://ghcr.io\n", "upstreams[0].name"},
		{"two defaults", nil, nil, "upstreams:\n  - {name: a.io, url: 'https://a.io', default: true}\n  - {name: b.io, url: 'https://b.io', default: true}\n", "default"},
		{"ttl", nil, nil, "upstreams:\n  - {name: a.io, url: 'https://a.io', tag_ttl: soon}\n", "duration"},
		{"password env", nil, nil, "upstreams:\n  - {name: a.io, url: 'https://a.io', username: u, password_env: NOPE_UNSET}\n", "upstreams[0].password_env"},
		{"local pattern", nil, map[string]string{"BERTH_LOCAL": "../x"}, "", "local"},
		{"max cache bytes", nil, nil, "max_cache_bytes: 50 gigs\n", "max_cache_bytes"},
		{"max cache bytes env", nil, map[string]string{"BERTH_MAX_CACHE_BYTES": "-1GiB"}, "", "max_cache_bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.file != "" {
				args = append(args, "--config", writeFile(t, tc.file))
			}
			_, err := loadConfig(args, env(tc.env))
			if err == nil {
				t.Fatal("accepted")
			}
			if msg := err.Error(); !strings.Contains(msg, tc.want) || strings.Count(msg, "\n") > 0 {
				t.Errorf("error %q does not name %q on one line", msg, tc.want)
			}
		})
	}
}

func TestConfigMaxCacheBytes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		file string
		env  string
		want int64
	}{
		{"", "", 0},
		{"max_cache_bytes: 0\n", "", 0},
		{"max_cache_bytes: 1073741824\n", "", 1 << 30},
		{"max_cache_bytes: 50GiB\n", "", 50 << 30},
		{"max_cache_bytes: 1.5 TB\n", "", 1.5e12},
		{"max_cache_bytes: 500mb\n", "", 500e6},
		{"max_cache_bytes: 50GiB\n", "2Ti", 2 << 40}, // env over file
	} {
		t.Run(tc.file+tc.env, func(t *testing.T) {
			var args []string
			if tc.file != "" {
				args = []string{"--config", writeFile(t, tc.file)}
			}
			cfg, err := loadConfig(args, env(map[string]string{"BERTH_MAX_CACHE_BYTES": tc.env}))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.MaxCacheBytes != tc.want {
				t.Errorf("max_cache_bytes = %d, want %d", cfg.MaxCacheBytes, tc.want)
			}
		})
	}
}

// serve answers the API, health and metrics, and on cancellation stops and
// closes the index so that it can be opened again.
func TestServeLifecycle(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, ready) }()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	// In this order: /metrics shows request counts once /v2/ was asked.
	for _, pw := range [][2]string{{"/v2/", "{}"}, {"/healthz", "ok"}, {"/readyz", "ok"}, {"/metrics", "berth_http_requests_total"},
		{"/", `<strong id="version">` + version + `</strong>`}} {
		path, want := pw[0], pw[1]
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %d %.80s", path, resp.StatusCode, b)
		}
		if path == "/v2/" && resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
			t.Errorf("GET /v2/ without Docker-Distribution-API-Version")
		}
	}
	// Header memory is bounded: 100 KiB of headers is refused, not buffered.
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 100<<10))
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Errorf("oversized headers: %v", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("oversized headers: %d, want 431", resp.StatusCode)
		}
	}
	resp, err := http.Get("http://" + addr + "/nowhere")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nowhere: %s, want 404", resp.Status)
	}
	// /v2/ goes to the registry as it came, not through the mux's path
	// cleaning: a name with a dot-dot segment is refused by the name
	// grammar, and no /v2/ path reaches /metrics by a redirect.
	for path, want := range map[string]int{"/v2/a/../b/tags/list": http.StatusBadRequest, "/v2/../metrics": http.StatusNotFound} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		req.URL.Opaque = "//" + addr + path // as sent, uncleaned
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want || resp.Header.Get("Docker-Distribution-Api-Version") == "" {
			t.Errorf("GET %s: %s (API version %q), want %d from the registry", path, resp.Status, resp.Header.Get("Docker-Distribution-Api-Version"), want)
		}
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
	st, err := cache.Open(cfg.Data, cache.Options{Logger: zerolog.Nop()})
	if err != nil {
		t.Fatalf("index not closed cleanly: %v", err)
	}
	st.Close()
}

// testConfig is a configuration for serve in a test: a free loopback port, a
// fresh data directory, quiet JSON logs, ups as the upstreams.
func testConfig(t *testing.T, ups []UpstreamConfig) Config {
	cfg := defaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.Data = t.TempDir()
	cfg.LogLevel = "error"
	cfg.LogFormat = "json"
	cfg.Upstreams = ups
	return cfg
}
