package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/internal/oci"
	"gopkg.in/yaml.v3"
)

// Config is berth's configuration. Precedence: flag > environment > file > default.
type Config struct {
	Addr string `yaml:"addr"`
	// DebugAddr, when set, serves net/http/pprof there (keep it on loopback).
	DebugAddr string           `yaml:"debug_addr"`
	Data      string           `yaml:"data"`
	LogLevel  string           `yaml:"log_level"`
	LogFormat string           `yaml:"log_format"`
	Offline   bool             `yaml:"offline"`
	Local     []string         `yaml:"local"`
	Upstreams []UpstreamConfig `yaml:"upstreams"`
	// Prefetch bounds background blob fills after a manifest miss (-1 disables).
	Prefetch int `yaml:"prefetch"`
	// ShutdownTimeout bounds how long in-flight requests may finish on SIGTERM.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// Auth enables client authentication.
	Auth AuthConfig `yaml:"auth"`
	// MaxManifestBytes bounds a pushed or fetched manifest.
	MaxManifestBytes int64 `yaml:"max_manifest_bytes"`
	// MaxCacheBytes bounds the mirrored content kept on disk, as a byte
	// count or a size such as "50GiB"; "" or 0 is unbounded. Pushed content
	// is never evicted and does not count.
	MaxCacheBytes string `yaml:"max_cache_bytes"`
	maxCacheBytes int64  // MaxCacheBytes, parsed by validate
}

// AuthConfig is client authentication: an htpasswd file of bcrypt hashes.
type AuthConfig struct {
	Htpasswd string `yaml:"htpasswd"`
	// AnonymousPull lets clients without credentials pull (default true);
	// pushes and deletes always need credentials once Htpasswd is set.
	AnonymousPull *bool `yaml:"anonymous_pull"`
}

// UpstreamConfig is one upstream registry.
type UpstreamConfig struct {
	Name           string        `yaml:"name"`
	URL            string        `yaml:"url"`
	Default        bool          `yaml:"default"`
	TagTTL         *Duration     `yaml:"tag_ttl"`
	KeepOnNotFound bool          `yaml:"keep_on_not_found"`
	Username       string        `yaml:"username"`
	Password       string        `yaml:"password"`
	PasswordFile   string        `yaml:"password_file"`
	PasswordEnv    string        `yaml:"password_env"`
	Aliases        []string      `yaml:"aliases"`
	Timeout        time.Duration `yaml:"timeout"`
}

// Duration is a time.Duration that YAML reads as "10m".
type Duration struct{ time.Duration }

// UnmarshalYAML parses a Go duration string or a number of seconds.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if v, err := strconv.ParseInt(n.Value, 10, 64); err == nil {
		d.Duration = time.Duration(v) * time.Second
		return nil
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: invalid duration %q", n.Line, n.Value)
	}
	d.Duration = v
	return nil
}

// defaultUpstreams are the registries berth knows with no configuration.
func defaultUpstreams() []UpstreamConfig {
	ttl := &Duration{10 * time.Minute}
	return []UpstreamConfig{
		{Name: "docker.io", URL: "https://registry-1.docker.io", Default: true, TagTTL: ttl, Aliases: []string{"index.docker.io", "registry-1.docker.io"}},
		{Name: "ghcr.io", URL: "https://ghcr.io", TagTTL: ttl},
		{Name: "quay.io", URL: "https://quay.io", TagTTL: ttl},
		{Name: "registry.k8s.io", URL: "https://registry.k8s.io", TagTTL: ttl},
		{Name: "gcr.io", URL: "https://gcr.io", TagTTL: ttl},
		{Name: "mcr.microsoft.com", URL: "https://mcr.microsoft.com", TagTTL: ttl},
		{Name: "public.ecr.aws", URL: "https://public.ecr.aws", TagTTL: ttl},
	}
}

func defaultConfig() Config {
	return Config{Addr: ":5000", Data: "./data", LogLevel: "info", ShutdownTimeout: 30 * time.Second,
		MaxManifestBytes: 4 << 20}
}

// loadConfig reads file, environment and flags, in rising precedence.
func loadConfig(args []string, getenv func(string) string) (Config, error) {
	cfg := defaultConfig()
	fs := flag.NewFlagSet("berth serve", flag.ContinueOnError)
	configPath := fs.String("config", getenv("BERTH_CONFIG"), "YAML configuration file")
	addr := fs.String("addr", "", "listen address (default :5000)")
	data := fs.String("data", "", "data directory (default ./data)")
	level := fs.String("log-level", "", "log level: debug, info, warn, error")
	format := fs.String("log-format", "", "log format: json or console (default: console on a terminal)")
	offline := fs.Bool("offline", false, "never contact an upstream; serve the cache only")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if *configPath != "" {
		b, err := os.ReadFile(*configPath)
		if err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) { // an empty file is fine
			return cfg, fmt.Errorf("config %s: %s", *configPath, oneLine(err))
		}
	}
	// Environment.
	if v := getenv("REGISTRY_HTTP_ADDR"); v != "" {
		cfg.Addr = v
	}
	envStr := map[string]*string{"BERTH_ADDR": &cfg.Addr, "BERTH_DEBUG_ADDR": &cfg.DebugAddr, "BERTH_DATA": &cfg.Data,
		"BERTH_LOG_LEVEL": &cfg.LogLevel, "BERTH_AUTH_HTPASSWD": &cfg.Auth.Htpasswd, "BERTH_LOG_FORMAT": &cfg.LogFormat,
		"BERTH_MAX_CACHE_BYTES": &cfg.MaxCacheBytes}
	for k, p := range envStr {
		if v := getenv(k); v != "" {
			*p = v
		}
	}
	if v := getenv("BERTH_OFFLINE"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return cfg, fmt.Errorf("BERTH_OFFLINE: invalid boolean %q", v)
		}
		cfg.Offline = b
	}
	if v := getenv("BERTH_LOCAL"); v != "" {
		cfg.Local = strings.Split(v, ",")
	}
	// Flags.
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "addr":
			cfg.Addr = *addr
		case "data":
			cfg.Data = *data
		case "log-level":
			cfg.LogLevel = *level
		case "log-format":
			cfg.LogFormat = *format
		case "offline":
			cfg.Offline = *offline
		}
	})
	if cfg.Upstreams == nil {
		cfg.Upstreams = defaultUpstreams()
	}
	return cfg, cfg.validate(getenv)
}

// validate checks every key and resolves upstream passwords; the error
// names the key.
func (c *Config) validate(getenv func(string) string) error {
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("addr: invalid listen address %q (want host:port or :port)", c.Addr)
	}
	if c.DebugAddr != "" {
		if _, _, err := net.SplitHostPort(c.DebugAddr); err != nil {
			return fmt.Errorf("debug_addr: invalid listen address %q", c.DebugAddr)
		}
	}
	if c.Data == "" {
		return errors.New("data: must not be empty")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level: %q is not one of debug, info, warn, error", c.LogLevel)
	}
	switch c.LogFormat {
	case "", "json", "console":
	default:
		return fmt.Errorf("log_format: %q is not json or console", c.LogFormat)
	}
	for _, p := range c.Local {
		if strings.Trim(p, "/") == "" || strings.Contains(p, "..") {
			return fmt.Errorf("local: invalid pattern %q", p)
		}
	}
	if c.ShutdownTimeout <= 0 {
		return errors.New("shutdown_timeout: must be positive")
	}
	if c.MaxManifestBytes <= 0 {
		return errors.New("max_manifest_bytes: must be positive")
	}
	n, err := parseSize(c.MaxCacheBytes)
	if err != nil {
		return fmt.Errorf("max_cache_bytes: %w", err)
	}
	c.maxCacheBytes = n
	if c.Auth.Htpasswd != "" {
		if _, err := os.Stat(c.Auth.Htpasswd); err != nil {
			return fmt.Errorf("auth.htpasswd: %w", err)
		}
	} else if c.Auth.AnonymousPull != nil {
		return errors.New("auth.anonymous_pull: needs auth.htpasswd")
	}
	seen := map[string]bool{}
	defaults := 0
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		where := fmt.Sprintf("upstreams[%d]", i)
		if u.Name == "" {
			return fmt.Errorf("%s.name: required", where)
		}
		if !oci.ValidName(strings.ToLower(u.Name)) || strings.Contains(u.Name, "/") {
			return fmt.Errorf("%s.name: %q is not a host name", where, u.Name)
		}
		if seen[u.Name] {
			return fmt.Errorf("%s.name: %q configured twice", where, u.Name)
		}
		seen[u.Name] = true
		if u.URL == "" {
			return fmt.Errorf("%s.url: required", where)
		}
		if !strings.HasPrefix(u.URL, "http://") && !strings.HasPrefix(u.URL, "https://") {
			return fmt.Errorf("%s.url: %q must start with http:// or https://", where, u.URL)
		}
		if u.Default {
			defaults++
		}
		if u.TagTTL != nil && u.TagTTL.Duration < 0 {
			return fmt.Errorf("%s.tag_ttl: must not be negative", where)
		}
		if u.TagTTL == nil {
			u.TagTTL = &Duration{10 * time.Minute}
		}
		switch {
		case u.PasswordFile != "":
			b, err := os.ReadFile(u.PasswordFile)
			if err != nil {
				return fmt.Errorf("%s.password_file: %w", where, err)
			}
			u.Password = strings.TrimSpace(string(b))
		case u.PasswordEnv != "":
			u.Password = getenv(u.PasswordEnv)
			if u.Password == "" {
				return fmt.Errorf("%s.password_env: environment variable %s is empty", where, u.PasswordEnv)
			}
		}
		if u.Password != "" && u.Username == "" {
			return fmt.Errorf("%s.username: required when a password is set", where)
		}
	}
	if defaults > 1 {
		return errors.New("upstreams: more than one has default: true")
	}
	return nil
}

// sizeUnits are the suffixes parseSize accepts, lower-cased: decimal
// (KB = 1000) and binary (KiB = 1024), as in Kubernetes quantities.
var sizeUnits = map[string]float64{"": 1, "b": 1,
	"k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
	"ki": 1 << 10, "kib": 1 << 10, "mi": 1 << 20, "mib": 1 << 20, "gi": 1 << 30, "gib": 1 << 30, "ti": 1 << 40, "tib": 1 << 40}

// parseSize reads a byte count ("1073741824") or a size ("50GiB", "1.5 TB");
// "" is 0.
func parseSize(v string) (int64, error) {
	t := strings.TrimSpace(v)
	if t == "" {
		return 0, nil
	}
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(t)
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	mult, ok := sizeUnits[unit]
	f, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || num == "" {
		return 0, fmt.Errorf("invalid size %q (want bytes, or a number with B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)", v)
	}
	if n := f * mult; n < 1<<63 {
		return int64(n), nil
	}
	return 0, fmt.Errorf("size %q is too large", v)
}

// oneLine flattens yaml's multi-line errors so start-up fails with one line.
func oneLine(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n")
	fields := strings.Fields(strings.ReplaceAll(msg, "\n", "; "))
	return strings.Join(fields, " ")
}
