package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// keyCase is one key read from each source: good must be accepted and
// give want, bad must be refused with an error containing why.
type keyCase struct {
	key  string
	good string
	get  func(Config) any
	want any
	bad  string
	why  string
	env  map[string]string // what the key needs besides itself
}

func keyCases(t *testing.T) []keyCase {
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("ci:$2y$05$abcdefghijklmnopqrstuu5kQ8Oj8Q7QxY2H5Kq9yq4wq5S2bH5W\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return []keyCase{
		{key: "addr", good: "127.0.0.1:6000", get: func(c Config) any { return c.Addr }, want: "127.0.0.1:6000",
			bad: "6000", why: `"6000" is not a listen address (host:port or :port)`},
		{key: "data", good: "/srv/berth", get: func(c Config) any { return c.Data }, want: "/srv/berth",
			bad: "", why: "must not be empty"},
		{key: "debug_addr", good: "127.0.0.1:6060", get: func(c Config) any { return c.DebugAddr }, want: "127.0.0.1:6060",
			bad: "localhost", why: `"localhost" is not a listen address`},
		{key: "log_level", good: "warn", get: func(c Config) any { return c.LogLevel }, want: "warn",
			bad: "loud", why: `"loud" is not debug, info, warn or error`},
		{key: "log_format", good: "console", get: func(c Config) any { return c.LogFormat }, want: "console",
			bad: "xml", why: `"xml" is not json or console`},
		{key: "offline", good: "yes", get: func(c Config) any { return c.Offline }, want: true,
			bad: "perhaps", why: `"perhaps" is not a boolean (true, false, yes, no, on, off, 1 or 0)`},
		{key: "read_only", good: "on", get: func(c Config) any { return c.ReadOnly }, want: true,
			bad: "sometimes", why: `"sometimes" is not a boolean`},
		{key: "local", good: "team/**,ci/*", get: func(c Config) any { return c.Local }, want: []string{"team/**", "ci/*"},
			bad: "../x", why: `"../x" is not a list of repository patterns`},
		{key: "prefetch", good: "-1", get: func(c Config) any { return c.Prefetch }, want: -1,
			bad: "-7", why: "-7 is out of range (-1 or more: 0 and -1 turn prefetching off)"},
		{key: "shutdown_timeout", good: "90", get: func(c Config) any { return c.ShutdownTimeout }, want: 90 * time.Second,
			bad: "10 minutes", why: `"10 minutes" is not a duration (a number of seconds, or Go syntax such as 90s, 10m, 1h30m, or days: 30d)`},
		{key: "max_manifest_bytes", good: "8MiB", get: func(c Config) any { return c.MaxManifestBytes }, want: int64(8 << 20),
			bad: "4 MB?", why: `"4 MB?" is not a size (bytes, or a number with KB, MB, GB, KiB, MiB, GiB...)`},
		{key: "max_cache_bytes", good: "1.5 TB", get: func(c Config) any { return c.MaxCacheBytes }, want: int64(1.5e12),
			bad: "-1GiB", why: `"-1GiB" is not a size`},
		{key: "disk_reserve", good: "1GiB", get: func(c Config) any { return c.DiskReserve }, want: int64(1 << 30),
			bad: "lots", why: `"lots" is not a size`},
		{key: "auth.htpasswd", good: htpasswd, get: func(c Config) any { return c.Auth.Htpasswd }, want: htpasswd,
			bad: htpasswd + ".missing", why: "no such file"},
		{key: "auth.anonymous_pull", good: "off", get: func(c Config) any { return *c.Auth.AnonymousPull }, want: false,
			bad: "nope", why: `"nope" is not a boolean`, env: map[string]string{"BERTH_AUTH_HTPASSWD": htpasswd}},
		{key: "storage.driver", good: "s3", get: func(c Config) any { return c.Storage.Driver }, want: "s3",
			bad: "nfs", why: `"nfs" is not filesystem or s3`, env: without(s3Env, "BERTH_STORAGE_DRIVER")},
		{key: "storage.bucket", good: "berth-ci", get: func(c Config) any { return c.Storage.Bucket }, want: "berth-ci",
			bad: "Berth_CI", why: `"Berth_CI" is not a bucket name`},
		{key: "storage.endpoint", good: "http://127.0.0.1:8333", get: func(c Config) any { return c.Storage.Endpoint }, want: "http://127.0.0.1:8333",
			bad: "s3.example.com", why: `"s3.example.com" is not a URL starting with http:// or https://`},
		{key: "storage.region", good: "eu-west-1", get: func(c Config) any { return c.Storage.Region }, want: "eu-west-1",
			bad: "", why: "must not be empty"},
		{key: "storage.prefix", good: "berth", get: func(c Config) any { return c.Storage.Prefix }, want: "berth/",
			bad: "a//b", why: `"a//b" is not a key prefix`},
		{key: "storage.access_key_env", good: "S3_KEY", get: func(c Config) any { return c.Storage.AccessKeyEnv }, want: "S3_KEY",
			bad: "S3 KEY", why: `"S3 KEY" is not an environment variable name`},
		{key: "storage.secret_key_env", good: "S3_SECRET", get: func(c Config) any { return c.Storage.SecretKey }, want: "s",
			bad: "", why: `"" is not an environment variable name`, env: with(s3Env, "S3_SECRET", "s")},
		{key: "storage.path_style", good: "true", get: func(c Config) any { return c.Storage.PathStyle }, want: true,
			bad: "maybe", why: `"maybe" is not a boolean`},
		{key: "cluster.self", good: "http://10.0.0.1:5000", get: func(c Config) any { return c.Cluster.Self }, want: "http://10.0.0.1:5000",
			bad: "10.0.0.1:5000", why: `"10.0.0.1:5000" is not a URL`, env: with(s3Env, "BERTH_CLUSTER_DNS", "http://berth:5000")},
		{key: "cluster.members", good: "http://10.0.0.1:5000,http://10.0.0.2:5000", get: func(c Config) any { return c.Cluster.Members },
			want: []string{"http://10.0.0.1:5000", "http://10.0.0.2:5000"},
			bad:  "10.0.0.2:5000", why: `"10.0.0.2:5000" is not a list of URLs`, env: with(s3Env, "BERTH_CLUSTER_SELF", "http://10.0.0.1:5000")},
		{key: "cluster.dns", good: "http://berth-headless:5000", get: func(c Config) any { return c.Cluster.DNS }, want: "http://berth-headless:5000",
			bad: "berth-headless", why: `"berth-headless" is not a URL`, env: with(s3Env, "BERTH_CLUSTER_SELF", "http://10.0.0.1:5000")},
		{key: "cluster.secret_env", good: "PEER_SECRET", get: func(c Config) any { return c.Cluster.Secret }, want: "p",
			bad: "PEER-SECRET", why: `"PEER-SECRET" is not an environment variable name`,
			env: with(with(with(s3Env, "BERTH_CLUSTER_SELF", "http://10.0.0.1:5000"), "BERTH_CLUSTER_DNS", "http://berth:5000"), "PEER_SECRET", "p")},
		// The files are only found here; serve loads them (see TestServeTLS).
		{key: "tls.cert_file", good: htpasswd, get: func(c Config) any { return c.TLS.CertFile }, want: htpasswd,
			bad: htpasswd + ".missing", why: "no such file", env: map[string]string{"BERTH_TLS_KEY_FILE": htpasswd}},
		{key: "tls.key_file", good: htpasswd, get: func(c Config) any { return c.TLS.KeyFile }, want: htpasswd,
			bad: htpasswd + ".missing", why: "no such file", env: map[string]string{"BERTH_TLS_CERT_FILE": htpasswd}},
		{key: "tls.client_ca_file", good: htpasswd, get: func(c Config) any { return c.TLS.ClientCAFile }, want: htpasswd,
			bad: htpasswd + ".missing", why: "no such file",
			env: map[string]string{"BERTH_TLS_CERT_FILE": htpasswd, "BERTH_TLS_KEY_FILE": htpasswd}},
		{key: "auth.ldap.url", good: "ldaps://dir.example", get: func(c Config) any { return c.Auth.LDAP.URL }, want: "ldaps://dir.example",
			bad: "http://dir.example", why: `"http://dir.example" is not a URL starting with ldap://, ldaps:// or ldap+starttls://`,
			env: map[string]string{"BERTH_AUTH_LDAP_USER_BASE": "ou=people"}},
		{key: "auth.ldap.bind_dn", good: "cn=berth,dc=example", get: func(c Config) any { return c.Auth.LDAP.BindDN }, want: "cn=berth,dc=example", bad: "", why: "must not be empty", env: ldapEnv},
		{key: "auth.ldap.bind_password_env", good: "LDAP_PW", get: func(c Config) any { return c.Auth.LDAP.bindPassword }, bad: "", why: "must not be empty", want: "s3cret",
			env: map[string]string{"BERTH_AUTH_LDAP_URL": "ldap://dir.example", "BERTH_AUTH_LDAP_USER_BASE": "ou=people", "LDAP_PW": "s3cret"}},
		{key: "auth.ldap.user_base", good: "ou=people,dc=example", get: func(c Config) any { return c.Auth.LDAP.UserBase }, bad: "", why: "must not be empty", want: "ou=people,dc=example",
			env: map[string]string{"BERTH_AUTH_LDAP_URL": "ldap://dir.example"}},
		{key: "auth.ldap.user_filter", good: "(sAMAccountName={user})", get: func(c Config) any { return c.Auth.LDAP.UserFilter }, want: "(sAMAccountName={user})", bad: "", why: "must not be empty", env: ldapEnv},
		{key: "auth.ldap.group_base", good: "ou=groups", get: func(c Config) any { return c.Auth.LDAP.GroupBase }, want: "ou=groups", bad: "", why: "must not be empty", env: ldapEnv},
		{key: "auth.ldap.group_filter", good: "(memberUid={user})", get: func(c Config) any { return c.Auth.LDAP.GroupFilter }, bad: "", why: "must not be empty", want: "(memberUid={user})",
			env: map[string]string{"BERTH_AUTH_LDAP_URL": "ldap://dir.example", "BERTH_AUTH_LDAP_USER_BASE": "ou=people", "BERTH_AUTH_LDAP_GROUP_BASE": "ou=groups"}},
		{key: "auth.token.enabled", good: "true", get: func(c Config) any { return c.Auth.Token.Enabled }, want: true,
			bad: "maybe", why: `"maybe" is not a boolean`, env: map[string]string{"BERTH_AUTH_HTPASSWD": htpasswd}},
		{key: "auth.token.realm", good: "https://registry.example/v2/token", get: func(c Config) any { return c.Auth.Token.Realm }, want: "https://registry.example/v2/token",
			bad: "/v2/token", why: `"/v2/token" is not an absolute URL`, env: map[string]string{"BERTH_AUTH_HTPASSWD": htpasswd}},
		{key: "auth.token.service", good: "registry.example", get: func(c Config) any { return c.Auth.Token.Service }, want: "registry.example",
			bad: "", why: "must not be empty", env: map[string]string{"BERTH_AUTH_HTPASSWD": htpasswd}},
		{key: "auth.token.key_file", good: htpasswd, get: func(c Config) any { return c.Auth.Token.KeyFile }, want: htpasswd,
			bad: htpasswd + ".missing", why: "no such file", env: map[string]string{"BERTH_AUTH_HTPASSWD": htpasswd}},
		{key: "auth.token.ttl", good: "10m", get: func(c Config) any { return c.Auth.Token.TTL }, want: 10 * time.Minute,
			bad: "500ms", why: "500ms is out of range (at least 1s)", env: map[string]string{"BERTH_AUTH_HTPASSWD": htpasswd}},
		{key: "gc.interval", good: "30d", get: func(c Config) any { return c.GC.Interval }, want: 30 * 24 * time.Hour,
			bad: "-1h", why: "-1h is out of range (0 or more: 0 runs the collector only on demand)"},
		{key: "gc.grace", good: "0", get: func(c Config) any { return c.GC.Grace }, want: time.Duration(0),
			bad: "soon", why: `"soon" is not a duration`},
		{key: "uploads.ttl", good: "15m", get: func(c Config) any { return c.Uploads.TTL }, want: 15 * time.Minute,
			bad: "0", why: "0 is out of range (at least 1s)"},
		{key: "uploads.max_sessions", good: "20", get: func(c Config) any { return c.Uploads.MaxSessions }, want: 20,
			bad: "-2", why: "-2 is out of range (0 or more)"},
		{key: "uploads.max_bytes", good: "2GiB", get: func(c Config) any { return c.Uploads.MaxBytes }, want: int64(2 << 30),
			bad: "lots", why: `"lots" is not a size`},
	}
}

// ldapEnv is what an auth.ldap key needs besides itself.
var ldapEnv = map[string]string{"BERTH_AUTH_LDAP_URL": "ldap://dir.example", "BERTH_AUTH_LDAP_USER_BASE": "ou=people"}

// s3Env is what an s3 driver needs besides its driver key.
var s3Env = map[string]string{"BERTH_STORAGE_DRIVER": "s3", "BERTH_STORAGE_BUCKET": "berth-ci",
	"BERTH_STORAGE_ENDPOINT": "http://127.0.0.1:8333", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}

// without is m less k, m unchanged.
func without(m map[string]string, k string) map[string]string {
	out := with(m, k, "")
	delete(out, k)
	return out
}

// with is m plus k=v, m unchanged.
func with(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for n, x := range m {
		out[n] = x
	}
	return out
}

// yamlFor is key: v as a file, nested for dotted keys.
func yamlFor(key, v string) string {
	parts := strings.Split(key, ".")
	var b strings.Builder
	for i, p := range parts[:len(parts)-1] {
		fmt.Fprintf(&b, "%s%s:\n", strings.Repeat("  ", i), p)
	}
	fmt.Fprintf(&b, "%s%s: %q\n", strings.Repeat("  ", len(parts)-1), parts[len(parts)-1], v)
	return b.String()
}

// Every key parses the same way from the file, the environment and a flag,
// and a bad value is refused with one line naming the key and the forms.
func TestConfigEveryKeyFromEverySource(t *testing.T) {
	t.Parallel()
	cases := keyCases(t)
	keys := defaultConfigKeys()
	if len(cases) != len(keys) {
		t.Fatalf("%d cases for %d keys: every key needs one", len(cases), len(keys))
	}
	for i, k := range keys {
		tc := cases[i]
		if tc.key != k.name {
			t.Fatalf("case %d is %s, key %s", i, tc.key, k.name)
		}
		sources := []struct {
			name   string
			source string // as the error names it
			load   func(v string) (Config, error)
		}{
			{"file", "", func(v string) (Config, error) {
				return loadConfig([]string{"--config", writeFile(t, yamlFor(k.name, v))}, env(tc.env))
			}},
			{"env", k.env[0], func(v string) (Config, error) {
				m := map[string]string{k.env[0]: v}
				for n, x := range tc.env {
					m[n] = x
				}
				if v == "" { // an empty variable is unset; say it as a flag would
					return loadConfig([]string{"--" + k.flag + "="}, env(tc.env))
				}
				return loadConfig(nil, env(m))
			}},
			{"flag", "--" + k.flag, func(v string) (Config, error) {
				return loadConfig([]string{"--" + k.flag + "=" + v}, env(tc.env))
			}},
		}
		for _, src := range sources {
			t.Run(k.name+"/"+src.name, func(t *testing.T) {
				t.Parallel()
				cfg, err := src.load(tc.good)
				if err != nil {
					t.Fatalf("%q refused: %v", tc.good, err)
				}
				if got := tc.get(cfg); !reflect.DeepEqual(got, tc.want) {
					t.Errorf("%q read as %v, want %v", tc.good, got, tc.want)
				}
				_, err = src.load(tc.bad)
				if err == nil {
					t.Fatalf("%q accepted", tc.bad)
				}
				where := src.source
				if where != "" {
					where = " (" + where + ")"
				}
				if src.name == "env" && tc.bad == "" {
					where = " (--" + k.flag + ")"
				}
				prefix := "config key " + k.name + where + ": "
				if msg := err.Error(); !strings.HasPrefix(msg, prefix) || !strings.Contains(msg, tc.why) || strings.Contains(msg, "\n") {
					t.Errorf("error %q, want one line %q...%q", msg, prefix, tc.why)
				}
			})
		}
	}
}

// The line the issue asked for, word for word.
func TestConfigErrorLine(t *testing.T) {
	t.Parallel()
	_, err := loadConfig([]string{"--config", writeFile(t, "max_manifest_bytes: 4 MB?\n")}, env(nil))
	want := `config key max_manifest_bytes: "4 MB?" is not a size (bytes, or a number with KB, MB, GB, KiB, MiB, GiB...)`
	if err == nil || err.Error() != want {
		t.Errorf("error %v\nwant  %s", err, want)
	}
}

// YAML's own types never reach the user: a list, a mapping or a number
// where another type is wanted is refused in the key's words.
func TestConfigFileShapes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		file, want string
	}{
		{"max_manifest_bytes: [1, 2]\n", `config key max_manifest_bytes: a list is not a size (bytes, or a number with KB`},
		{"offline: {a: b}\n", "config key offline: a mapping is not a boolean"},
		{"auth: yes\n", `config key auth: "yes" is not a mapping of htpasswd, anonymous_pull`},
		{"auth:\n  htpasswd2: x\n", "config key auth.htpasswd2: unknown key (known here: htpasswd, anonymous_pull, ldap, token)"},
		{"adress: \":5000\"\n", "config key adress: unknown key (known here: addr,"},
		{"addr: \":1\"\naddr: \":2\"\n", "config key addr: set twice (line 2)"},
		{"upstreams: docker.io\n", `config key upstreams: "docker.io" is not a list of upstreams`},
		{"upstreams:\n  - ghcr.io\n", `config key upstreams[0]: "ghcr.io" is not an upstream`},
		{"upstreams:\n  - {name: a.io, url: 'https://a.io', tag_ttl: 10 minutes}\n", `config key upstreams[0].tag_ttl: "10 minutes" is not a duration`},
		{"upstreams:\n  - {name: a.io, url: 'https://a.io', tag_ttl: -1s}\n", "config key upstreams[0].tag_ttl: -1s is out of range (0 or more"},
		{"upstreams:\n  - {name: a.io, url: 'https://a.io', default: maybe}\n", `config key upstreams[0].default: "maybe" is not a boolean`},
		{"upstreams:\n  - {name: a.io, url: 'https://a.io', timeout: [1]}\n", "config key upstreams[0].timeout: a list is not a duration"},
		{"upstreams:\n  - {name: a.io, url: 'https://a.io', ttl: 1}\n", "config key upstreams[0].ttl: unknown key (known here: name, url, default, tag_ttl"},
		{"upstreams:\n  - {name: a.io, url: 'https://a.io', aliases: [{x: y}]}\n", "config key upstreams[0].aliases: a mapping in the list is not a string"},
		{"local: [team/**, {a: b}]\n", "config key local: a mapping in the list is not a string"},
		{"- addr\n", "want a mapping of keys"},
		{"addr: [\n", "config file"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			t.Parallel()
			_, err := loadConfig([]string{"--config", writeFile(t, tc.file)}, env(nil))
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %v, want one line with %q", err, tc.want)
			}
		})
	}
}

// Upstream keys take the same forms as the top-level ones.
func TestConfigUpstreamValues(t *testing.T) {
	t.Parallel()
	file := writeFile(t, `upstreams:
  - name: a.io
    url: https://a.io
    default: yes
    tag_ttl: 90
    keep_on_not_found: on
    timeout: 1m30s
    aliases: [b.io, c.io]
  - name: d.io
    url: http://d.io
    aliases: ~
`)
	cfg, err := loadConfig([]string{"--config", file}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := []UpstreamConfig{
		{Name: "a.io", URL: "https://a.io", Default: true, TagTTL: 90 * time.Second, KeepOnNotFound: true,
			Timeout: 90 * time.Second, Aliases: []string{"b.io", "c.io"}},
		{Name: "d.io", URL: "http://d.io", TagTTL: defaultTagTTL},
	}
	if !reflect.DeepEqual(cfg.Upstreams, want) {
		t.Errorf("upstreams\n got %+v\nwant %+v", cfg.Upstreams, want)
	}
}

func TestParseValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{{"0", 0}, {"90", 90 * time.Second}, {"90s", 90 * time.Second}, {"10m", 10 * time.Minute}, {"1h30m", 90 * time.Minute}, {" 5s ", 5 * time.Second}} {
		if got, err := parseDuration(tc.in); err != nil || got != tc.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "10 minutes", "1.5", "ten", "99999999999999999"} {
		if _, err := parseDuration(in); err == nil {
			t.Errorf("parseDuration(%q) accepted", in)
		}
	}
	for in, want := range map[string]bool{"true": true, "YES": true, "on": true, "1": true, "False": false, "no": false, "off": false, "0": false} {
		if got, err := parseBool(in); err != nil || got != want {
			t.Errorf("parseBool(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "y", "2", "enabled"} {
		if _, err := parseBool(in); err == nil {
			t.Errorf("parseBool(%q) accepted", in)
		}
	}
	for in, want := range map[string]int64{"0": 0, "4096": 4096, "4MiB": 4 << 20, "4MB": 4e6, "50GiB": 50 << 30, "1.5 TB": 1.5e12, "500mb": 500e6, "2Ti": 2 << 40} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %v, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "4 MB?", "-1", "50 gigs", "MiB", "1e9"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

// Flags: a boolean flag alone is true, a value after = goes through the
// key's parser, and a stray argument is refused rather than ignored.
func TestConfigFlags(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig([]string{"--offline", "--read-only=no", "--prefetch", "0"}, env(map[string]string{"BERTH_READ_ONLY": "yes"}))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Offline || cfg.ReadOnly || cfg.Prefetch != 0 {
		t.Errorf("offline=%v read_only=%v prefetch=%d", cfg.Offline, cfg.ReadOnly, cfg.Prefetch)
	}
	for args, want := range map[string]string{
		"--read-only false": `unexpected argument "false"`,
		"--nope":            "flag provided but not defined: -nope (berth serve --help lists the flags)",
	} {
		if _, err := loadConfig(strings.Fields(args), env(nil)); err == nil || err.Error() != want && !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", args, err, want)
		}
	}
}

// --help and -h print the usage and succeed, for every command.
func TestHelp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--help"}, "--max-manifest-bytes SIZE"},
		{[]string{"serve", "-h"}, "BERTH_READ_ONLY"},
		{[]string{"serve", "--addr", ":1", "-help"}, "usage: berth serve"},
		{[]string{"help", "serve"}, "--read-only[=BOOL]"},
		{[]string{"htpasswd", "--help"}, "usage: berth htpasswd"},
		{[]string{"help", "htpasswd"}, "usage: berth htpasswd"},
		{[]string{"version", "-h"}, "usage: berth version"},
		{[]string{"--help"}, "commands:"},
		{[]string{"help"}, "commands:"},
	} {
		var out bytes.Buffer
		if err := run(tc.args, strings.NewReader(""), &out); err != nil {
			t.Errorf("%v: %v", tc.args, err)
		}
		if !strings.Contains(out.String(), tc.want) {
			t.Errorf("%v printed %q, want %q in it", tc.args, out.String(), tc.want)
		}
	}
}

// The sample file in deploy/ reads as it says.
func TestConfigSampleFile(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig([]string{"--config", "../../deploy/berth.yaml"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Upstreams) == 0 || cfg.Upstreams[0].Name != "docker.io" || !cfg.Upstreams[0].Default || cfg.Upstreams[0].TagTTL != 10*time.Minute {
		t.Errorf("upstreams %+v", cfg.Upstreams)
	}
}

// token: {} turns the token flow on; access rules are read in order, and a
// bad rule is refused naming its key.
func TestConfigAccessAndToken(t *testing.T) {
	t.Parallel()
	htpasswd := writeFile(t, "ci:$2y$05$abcdefghijklmnopqrstuu5kQ8Oj8Q7QxY2H5Kq9yq4wq5S2bH5W\n")
	cfg, err := loadConfig([]string{"--config", writeFile(t, `auth:
  htpasswd: `+htpasswd+`
  token: {}
access:
  - repos: ["team-a/**"]
    subjects: [alice, "group:team-a"]
    actions: [pull, push, delete]
  - repos: ["**"]
    subjects: [authenticated]
    actions: [pull]
`)}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Auth.Token.Enabled || cfg.Auth.Token.Service != "berth" || cfg.Auth.Token.TTL != 5*time.Minute {
		t.Errorf("token: %+v", cfg.Auth.Token)
	}
	if len(cfg.Access) != 2 || fmt.Sprint(cfg.Access[0]) != "{[team-a/**] [alice group:team-a] [pull push delete]}" {
		t.Errorf("access: %v", cfg.Access)
	}
	for _, tc := range []struct{ file, want string }{
		{"access:\n  - repos: [\"team-a/**x\"]\n    subjects: [a]\n    actions: [pull]\n", "config key access[0].repos: "},
		{"access:\n  - repos: [a]\n    subjects: [a]\n    actions: [pull, fly]\n", `config key access[0].actions: "fly" is not a list of actions`},
		{"access:\n  - repos: [a]\n    actions: [pull]\n", "config key access[0].subjects: at least one"},
		{"access:\n  - repos: [a]\n    subjects: [a]\n    who: [a]\n", "config key access[0].who: unknown key"},
		{"access: all\n", `config key access: "all" is not a list of rules`},
		{"auth:\n  token: {}\n", "config key auth.token: needs auth.htpasswd or auth.ldap"},
		{"auth:\n  htpasswd: " + htpasswd + "\n  token: yes\n", `config key auth.token: "yes" is not a mapping`},
		{"auth:\n  ldap:\n    url: ldap://x\n", "config key auth.ldap.user_base: required"},
		{"auth:\n  ldap:\n    user_base: ou=p\n", "config key auth.ldap.user_base: needs auth.ldap.url"},
		{"auth:\n  ldap:\n    url: ldap://x\n    user_base: ou=p\n    bind_password_env: NOPE_UNSET\n", "config key auth.ldap.bind_password_env: environment variable NOPE_UNSET is empty"},
	} {
		_, err := loadConfig([]string{"--config", writeFile(t, tc.file)}, env(nil))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error %v, want one line starting %q", tc.file, err, tc.want)
		}
	}
}
