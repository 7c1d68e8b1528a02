package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/access"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/upstream"
	"gopkg.in/yaml.v3"
)

// Config is berth's configuration. Precedence: flag > environment > file >
// default. Every key is read by one parser per value type, whatever its
// source: keys lists them, with their environment variables and flags.
type Config struct {
	Addr string
	// DebugAddr, when set, serves net/http/pprof there (keep it on loopback).
	DebugAddr string
	Data      string
	LogLevel  string
	LogFormat string // "" picks console on a terminal, else json
	Offline   bool
	// ReadOnly is the maintenance mode: pushes and deletes are refused.
	ReadOnly  bool
	Local     []string
	Upstreams []UpstreamConfig
	// Prefetch bounds background blob fills after a manifest miss (0 or -1
	// disables).
	Prefetch int
	// ShutdownTimeout bounds how long in-flight requests may finish on SIGTERM.
	ShutdownTimeout time.Duration
	// Auth enables client authentication.
	Auth AuthConfig
	// MaxManifestBytes bounds a pushed or fetched manifest.
	MaxManifestBytes int64
	// MaxCacheBytes bounds the mirrored content kept on disk; 0 is
	// unbounded. Pushed content is never evicted and does not count.
	MaxCacheBytes int64
	// Access are the access rules (file only), first match wins.
	Access []access.Rule
	// Storage is where blobs and local repositories live.
	Storage StorageConfig
	// Cluster makes this process one replica of several on one bucket.
	Cluster ClusterConfig
	// TLS, when CertFile is set, serves the API over TLS on addr.
	TLS TLSConfig
	// DiskReserve is the free space kept on the data directory's
	// filesystem: writes past it are refused (507); 0 turns the check off.
	DiskReserve int64
	// GC is the collector of local content; Uploads bounds upload sessions.
	GC      GCConfig
	Uploads UploadsConfig
	// Retention rules, evaluated by the collector; the first matching a
	// local repository applies.
	Retention []RetentionConfig
}

// GCConfig schedules garbage collection of local repositories.
type GCConfig struct {
	// Interval between runs; 0: only on demand (berth gc).
	Interval time.Duration
	// Grace protects blobs uploaded or linked this recently.
	Grace time.Duration
}

// UploadsConfig bounds blob upload sessions.
type UploadsConfig struct {
	// TTL: a session idle this long is removed with its file.
	TTL time.Duration
	// MaxSessions and MaxBytes cap the sessions open at once and what they
	// hold; a new session past either is refused (0: no cap).
	MaxSessions int
	MaxBytes    int64
}

// RetentionConfig is one retention rule (see cache.RetentionRule).
type RetentionConfig struct {
	Repos         []string
	KeepLast      int
	KeepTags      []string
	UntaggedAfter time.Duration
	NotPulledFor  time.Duration
}

// TLSConfig is the tls section: the server's certificate pair (re-read
// when the files change) and, optionally, the CAs of client certificates.
type TLSConfig struct {
	CertFile     string
	KeyFile      string
	ClientCAFile string // set: clients must present a certificate it signed (mTLS)
}

// StorageConfig is the storage driver: the data directory alone
// (filesystem), or an S3-compatible bucket with the data directory as each
// replica's local cache.
type StorageConfig struct {
	Driver       string
	Bucket       string
	Endpoint     string
	Region       string
	Prefix       string
	AccessKeyEnv string
	SecretKeyEnv string
	PathStyle    bool
	// AccessKey and SecretKey are read from the environment variables
	// named above by validate; never from a file, never logged.
	AccessKey, SecretKey string
}

// ClusterConfig is the set of replicas this one belongs to.
type ClusterConfig struct {
	Self      string
	Members   []string
	DNS       string
	SecretEnv string
	// Secret is read from SecretEnv by validate.
	Secret string
}

// Enabled reports whether a cluster is configured.
func (c ClusterConfig) Enabled() bool { return c.Self != "" || len(c.Members) > 0 || c.DNS != "" }

// AuthConfig is client authentication: an htpasswd file of bcrypt hashes,
// an LDAP directory, and berth's own token endpoint.
type AuthConfig struct {
	Htpasswd string
	// AnonymousPull lets clients without credentials pull (default true);
	// pushes and deletes always need credentials once Htpasswd is set.
	AnonymousPull *bool
	LDAP          LDAPConfig
	Token         TokenConfig
}

// LDAPConfig is the LDAP directory users are also checked against.
type LDAPConfig struct {
	URL             string
	BindDN          string
	BindPasswordEnv string
	UserBase        string
	UserFilter      string
	GroupBase       string
	GroupFilter     string
	bindPassword    string // from BindPasswordEnv; never logged
}

// TokenConfig is berth's token endpoint (the Docker token flow).
type TokenConfig struct {
	// Enabled: `token:` is in the file (even as {}), or BERTH_AUTH_TOKEN.
	Enabled bool
	Realm   string // the token endpoint's URL in challenges; "": from the request
	Service string
	KeyFile string // "": <data>/token.key, made on first start
	TTL     time.Duration
}

// UpstreamConfig is one upstream registry.
type UpstreamConfig struct {
	Name           string
	URL            string
	Default        bool
	TagTTL         time.Duration
	KeepOnNotFound bool
	Username       string
	Password       string
	PasswordFile   string
	PasswordEnv    string
	Aliases        []string
	Timeout        time.Duration
	// CAFile, ClientCertFile/ClientKeyFile and InsecureSkipVerify are the
	// TLS settings for talking to this upstream.
	CAFile             string
	ClientCertFile     string
	ClientKeyFile      string
	InsecureSkipVerify bool
	// TokenRealms are the hosts besides the upstream's own that may receive
	// its credentials as a Bearer token realm.
	TokenRealms []string
	// DockerConfig is a docker config.json the credential is read from
	// (auths, credHelpers, credsStore); CredentialHelper names a
	// docker-credential-NAME program run for it instead.
	DockerConfig     string
	CredentialHelper string
	// ServeStaleOnDenied: keep serving cached tags when the upstream answers
	// 401/403; nil means true.
	ServeStaleOnDenied *bool
}

// staleOnDenied is serve_stale_on_denied, default true.
func (u *UpstreamConfig) staleOnDenied() bool {
	return u.ServeStaleOnDenied == nil || *u.ServeStaleOnDenied
}

// credentialHosts are the names a docker config or credential helper may
// know this upstream by: its URL's host, its name and its aliases.
func (u *UpstreamConfig) credentialHosts() []string {
	hosts := []string{}
	if parsed, err := url.Parse(u.URL); err == nil && parsed.Host != "" {
		hosts = append(hosts, parsed.Host)
	}
	return append(append(hosts, u.Name), u.Aliases...)
}

// defaultTagTTL is how long a cached tag is served before the upstream is asked.
const defaultTagTTL = 10 * time.Minute

// defaultUpstreams are the registries berth knows with no configuration.
func defaultUpstreams() []UpstreamConfig {
	return []UpstreamConfig{
		{Name: "docker.io", URL: "https://registry-1.docker.io", Default: true, TagTTL: defaultTagTTL, Aliases: []string{"index.docker.io", "registry-1.docker.io"},
			TokenRealms: []string{"auth.docker.io"}},
		{Name: "ghcr.io", URL: "https://ghcr.io", TagTTL: defaultTagTTL},
		{Name: "quay.io", URL: "https://quay.io", TagTTL: defaultTagTTL},
		{Name: "registry.k8s.io", URL: "https://registry.k8s.io", TagTTL: defaultTagTTL},
		{Name: "gcr.io", URL: "https://gcr.io", TagTTL: defaultTagTTL},
		{Name: "mcr.microsoft.com", URL: "https://mcr.microsoft.com", TagTTL: defaultTagTTL},
		{Name: "public.ecr.aws", URL: "https://public.ecr.aws", TagTTL: defaultTagTTL},
	}
}

func defaultConfig() Config {
	return Config{Addr: ":5000", Data: "./data", LogLevel: "info", ShutdownTimeout: 30 * time.Second,
		MaxManifestBytes: 4 << 20, Prefetch: 4, DiskReserve: cache.DefaultDiskReserve,
		Storage: StorageConfig{Driver: "filesystem", Region: "us-east-1", AccessKeyEnv: "AWS_ACCESS_KEY_ID", SecretKeyEnv: "AWS_SECRET_ACCESS_KEY"},
		Auth:    AuthConfig{Token: TokenConfig{Service: "berth", TTL: 5 * time.Minute}},
		GC:      GCConfig{Interval: time.Hour, Grace: time.Hour},
		Uploads: UploadsConfig{TTL: time.Hour, MaxSessions: 1000, MaxBytes: 16 << 30}}
}

// key is one configuration key: its name in the file (dotted when nested),
// its environment variables (the first one set wins) and flag, and its value.
type key struct {
	name  string
	env   []string
	flag  string
	usage string // for --help: what it does, and its default
	value
}

// value is how a key's text becomes part of a Config.
type value struct {
	// forms says what the value may look like: "a boolean (true, false, ...)".
	forms string
	// arg names the value in berth serve --help: "SIZE".
	arg string
	// isBool: a flag without a value means true.
	isBool bool
	// list: the file may give a YAML sequence; elsewhere, comma-separated.
	list bool
	// set parses s and stores it; its error is one line saying why s is
	// refused, with the accepted forms.
	set func(s string) error
}

// keys are c's keys that are not structured: all but upstreams. Setting
// one writes into c.
func (c *Config) keys() []key {
	return []key{
		{name: "addr", env: []string{"BERTH_ADDR", "REGISTRY_HTTP_ADDR"}, flag: "addr",
			usage: "listen address (default :5000)", value: addrValue(&c.Addr, false)},
		{name: "data", env: []string{"BERTH_DATA"}, flag: "data",
			usage: "data directory (default ./data)", value: dirValue(&c.Data)},
		{name: "debug_addr", env: []string{"BERTH_DEBUG_ADDR"}, flag: "debug-addr",
			usage: "serve Go's pprof there, e.g. 127.0.0.1:6060 (default: off)", value: addrValue(&c.DebugAddr, true)},
		{name: "log_level", env: []string{"BERTH_LOG_LEVEL"}, flag: "log-level",
			usage: "debug, info, warn or error (default info)", value: choiceValue(&c.LogLevel, "debug", "info", "warn", "error")},
		{name: "log_format", env: []string{"BERTH_LOG_FORMAT"}, flag: "log-format",
			usage: "json or console (default: console on a terminal, else json)", value: choiceValue(&c.LogFormat, "json", "console", "")},
		{name: "offline", env: []string{"BERTH_OFFLINE"}, flag: "offline",
			usage: "never contact an upstream; serve the cache only (default false)", value: boolValue(&c.Offline)},
		{name: "read_only", env: []string{"BERTH_READ_ONLY"}, flag: "read-only",
			usage: "maintenance mode: refuse pushes and deletes, serve pulls (default false)", value: boolValue(&c.ReadOnly)},
		{name: "local", env: []string{"BERTH_LOCAL"}, flag: "local",
			usage: "patterns of repositories always local, e.g. team/** (comma-separated)", value: patternsValue(&c.Local)},
		{name: "prefetch", env: []string{"BERTH_PREFETCH"}, flag: "prefetch",
			usage: "background layer fills after a manifest miss; 0 or -1: none (default 4)",
			value: intValue(&c.Prefetch, -1, "-1 or more: 0 and -1 turn prefetching off")},
		{name: "shutdown_timeout", env: []string{"BERTH_SHUTDOWN_TIMEOUT"}, flag: "shutdown-timeout",
			usage: "how long in-flight requests may finish on SIGTERM (default 30s)",
			value: durationValue(&c.ShutdownTimeout, time.Nanosecond, "more than 0")},
		{name: "max_manifest_bytes", env: []string{"BERTH_MAX_MANIFEST_BYTES"}, flag: "max-manifest-bytes",
			usage: "largest manifest pushed or fetched (default 4MiB)", value: sizeValue(&c.MaxManifestBytes, 1, "at least 1 byte")},
		{name: "max_cache_bytes", env: []string{"BERTH_MAX_CACHE_BYTES"}, flag: "max-cache-bytes",
			usage: "bound on mirrored content on disk, e.g. 50GiB; 0: unbounded (default 0)", value: sizeValue(&c.MaxCacheBytes, 0, "0 or more")},
		{name: "disk_reserve", env: []string{"BERTH_DISK_RESERVE"}, flag: "disk-reserve",
			usage: "free space kept on the data filesystem: pushes and fills past it are refused with 507; 0: no check (default 256MiB)",
			value: sizeValue(&c.DiskReserve, 0, "0 or more")},
		{name: "auth.htpasswd", env: []string{"BERTH_AUTH_HTPASSWD"}, flag: "auth-htpasswd",
			usage: "htpasswd file (bcrypt): pushes and deletes need credentials (default: none)", value: fileValue(&c.Auth.Htpasswd)},
		{name: "auth.anonymous_pull", env: []string{"BERTH_AUTH_ANONYMOUS_PULL"}, flag: "auth-anonymous-pull",
			usage: "with auth.htpasswd, pulls need no credentials (default true)", value: optionalBoolValue(&c.Auth.AnonymousPull)},
		{name: "storage.driver", env: []string{"BERTH_STORAGE_DRIVER"}, flag: "storage-driver",
			usage: "filesystem (the data directory) or s3 (a bucket; the data directory is a local cache) (default filesystem)",
			value: choiceValue(&c.Storage.Driver, "filesystem", "s3")},
		{name: "storage.bucket", env: []string{"BERTH_STORAGE_BUCKET"}, flag: "storage-bucket",
			usage: "with storage.driver s3: the bucket", value: bucketValue(&c.Storage.Bucket)},
		{name: "storage.endpoint", env: []string{"BERTH_STORAGE_ENDPOINT"}, flag: "storage-endpoint",
			usage: "with storage.driver s3: the S3 endpoint, e.g. https://s3.eu-west-1.amazonaws.com", value: urlValue(&c.Storage.Endpoint)},
		{name: "storage.region", env: []string{"BERTH_STORAGE_REGION"}, flag: "storage-region",
			usage: "with storage.driver s3: the region (default us-east-1)", value: stringValue(&c.Storage.Region, false)},
		{name: "storage.prefix", env: []string{"BERTH_STORAGE_PREFIX"}, flag: "storage-prefix",
			usage: "with storage.driver s3: key prefix inside the bucket, e.g. berth/ (default: none)", value: prefixValue(&c.Storage.Prefix)},
		{name: "storage.access_key_env", env: []string{"BERTH_STORAGE_ACCESS_KEY_ENV"}, flag: "storage-access-key-env",
			usage: "environment variable holding the S3 access key (default AWS_ACCESS_KEY_ID)", value: envNameValue(&c.Storage.AccessKeyEnv, false)},
		{name: "storage.secret_key_env", env: []string{"BERTH_STORAGE_SECRET_KEY_ENV"}, flag: "storage-secret-key-env",
			usage: "environment variable holding the S3 secret key (default AWS_SECRET_ACCESS_KEY)", value: envNameValue(&c.Storage.SecretKeyEnv, false)},
		{name: "storage.path_style", env: []string{"BERTH_STORAGE_PATH_STYLE"}, flag: "storage-path-style",
			usage: "path-style bucket URLs, as MinIO, SeaweedFS and Ceph want (default false)", value: boolValue(&c.Storage.PathStyle)},
		{name: "cluster.self", env: []string{"BERTH_CLUSTER_SELF"}, flag: "cluster-self",
			usage: "this replica's URL as its peers reach it, e.g. http://10.0.0.5:5000", value: urlValue(&c.Cluster.Self)},
		{name: "cluster.members", env: []string{"BERTH_CLUSTER_MEMBERS"}, flag: "cluster-members",
			usage: "the replicas' URLs, this one among them (comma-separated)", value: urlsValue(&c.Cluster.Members)},
		{name: "cluster.dns", env: []string{"BERTH_CLUSTER_DNS"}, flag: "cluster-dns",
			usage: "a URL whose host name resolves to every replica, e.g. a Kubernetes headless Service", value: urlValue(&c.Cluster.DNS)},
		{name: "cluster.secret_env", env: []string{"BERTH_CLUSTER_SECRET_ENV"}, flag: "cluster-secret-env",
			usage: "environment variable holding a secret the replicas authenticate each other with", value: envNameValue(&c.Cluster.SecretEnv, true)},
		{name: "tls.cert_file", env: []string{"BERTH_TLS_CERT_FILE"}, flag: "tls-cert-file",
			usage: "PEM certificate chain: serve TLS (HTTP/2) on addr; re-read when it changes (default: plain HTTP)", value: fileValue(&c.TLS.CertFile)},
		{name: "tls.key_file", env: []string{"BERTH_TLS_KEY_FILE"}, flag: "tls-key-file",
			usage: "PEM private key of tls.cert_file", value: fileValue(&c.TLS.KeyFile)},
		{name: "tls.client_ca_file", env: []string{"BERTH_TLS_CLIENT_CA_FILE"}, flag: "tls-client-ca-file",
			usage: "PEM CAs: require client certificates they signed (mTLS); re-read when it changes (default: none)", value: fileValue(&c.TLS.ClientCAFile)},
		{name: "auth.ldap.url", env: []string{"BERTH_AUTH_LDAP_URL"}, flag: "auth-ldap-url",
			usage: "LDAP directory users are also checked against: ldap://, ldaps:// or ldap+starttls:// (default: none)", value: ldapURLValue(&c.Auth.LDAP.URL)},
		{name: "auth.ldap.bind_dn", env: []string{"BERTH_AUTH_LDAP_BIND_DN"}, flag: "auth-ldap-bind-dn",
			usage: "DN berth searches the directory as (default: anonymous bind)", value: stringValue(&c.Auth.LDAP.BindDN, false)},
		{name: "auth.ldap.bind_password_env", env: []string{"BERTH_AUTH_LDAP_BIND_PASSWORD_ENV"}, flag: "auth-ldap-bind-password-env",
			usage: "environment variable holding bind_dn's password", value: stringValue(&c.Auth.LDAP.BindPasswordEnv, false)},
		{name: "auth.ldap.user_base", env: []string{"BERTH_AUTH_LDAP_USER_BASE"}, flag: "auth-ldap-user-base",
			usage: "where users are searched, e.g. ou=people,dc=example,dc=com", value: stringValue(&c.Auth.LDAP.UserBase, false)},
		{name: "auth.ldap.user_filter", env: []string{"BERTH_AUTH_LDAP_USER_FILTER"}, flag: "auth-ldap-user-filter",
			usage: "filter finding a user, {user} the escaped name (default (uid={user}))", value: stringValue(&c.Auth.LDAP.UserFilter, false)},
		{name: "auth.ldap.group_base", env: []string{"BERTH_AUTH_LDAP_GROUP_BASE"}, flag: "auth-ldap-group-base",
			usage: "where groups are searched; their cn become subjects group:CN (default: no groups)", value: stringValue(&c.Auth.LDAP.GroupBase, false)},
		{name: "auth.ldap.group_filter", env: []string{"BERTH_AUTH_LDAP_GROUP_FILTER"}, flag: "auth-ldap-group-filter",
			usage: "filter finding a user's groups, {dn} the user's DN (default (member={dn}))", value: stringValue(&c.Auth.LDAP.GroupFilter, false)},
		{name: "auth.token.enabled", env: []string{"BERTH_AUTH_TOKEN"}, flag: "auth-token",
			usage: "Bearer tokens from berth's own token endpoint, /v2/token (default: Basic on every request; token: {} in the file turns it on)",
			value: boolValue(&c.Auth.Token.Enabled)},
		{name: "auth.token.realm", env: []string{"BERTH_AUTH_TOKEN_REALM"}, flag: "auth-token-realm",
			usage: "the token endpoint's URL in challenges (default: the request's scheme and host + /v2/token)", value: realmValue(&c.Auth.Token.Realm)},
		{name: "auth.token.service", env: []string{"BERTH_AUTH_TOKEN_SERVICE"}, flag: "auth-token-service",
			usage: "the service name in challenges and tokens (default berth)", value: stringValue(&c.Auth.Token.Service, false)},
		{name: "auth.token.key_file", env: []string{"BERTH_AUTH_TOKEN_KEY_FILE"}, flag: "auth-token-key-file",
			usage: "the token signing key, 32+ random bytes in hex (default: DATA/token.key, made on first start)", value: fileValue(&c.Auth.Token.KeyFile)},
		{name: "auth.token.ttl", env: []string{"BERTH_AUTH_TOKEN_TTL"}, flag: "auth-token-ttl",
			usage: "how long an access token lives (default 5m)", value: durationValue(&c.Auth.Token.TTL, time.Second, "at least 1s")},
		{name: "gc.interval", env: []string{"BERTH_GC_INTERVAL"}, flag: "gc-interval",
			usage: "collect unreferenced local content this often; 0: only on demand (default 1h)",
			value: durationValue(&c.GC.Interval, 0, "0 or more: 0 runs the collector only on demand")},
		{name: "gc.grace", env: []string{"BERTH_GC_GRACE"}, flag: "gc-grace",
			usage: "the collector keeps blobs uploaded or linked this recently (default 1h)",
			value: durationValue(&c.GC.Grace, 0, "0 or more")},
		{name: "uploads.ttl", env: []string{"BERTH_UPLOADS_TTL"}, flag: "uploads-ttl",
			usage: "an upload session idle this long is removed with its data (default 1h)",
			value: durationValue(&c.Uploads.TTL, time.Second, "at least 1s")},
		{name: "uploads.max_sessions", env: []string{"BERTH_UPLOADS_MAX_SESSIONS"}, flag: "uploads-max-sessions",
			usage: "upload sessions open at once; past it new ones get 429 TOOMANYREQUESTS; 0: no cap (default 1000)",
			value: intValue(&c.Uploads.MaxSessions, 0, "0 or more")},
		{name: "uploads.max_bytes", env: []string{"BERTH_UPLOADS_MAX_BYTES"}, flag: "uploads-max-bytes",
			usage: "bytes open upload sessions may hold before new ones get 429 TOOMANYREQUESTS; 0: no cap (default 16GiB)",
			value: sizeValue(&c.Uploads.MaxBytes, 0, "0 or more")},
	}
}

// keys are the keys of one retention rule.
func (r *RetentionConfig) keys() []key {
	return []key{
		{name: "repos", value: patternsValue(&r.Repos)},
		{name: "keep_last", value: intValue(&r.KeepLast, 0, "0 or more: 0 is not set")},
		{name: "keep_tags", value: listValue(&r.KeepTags)},
		{name: "untagged_after", value: durationValue(&r.UntaggedAfter, 0, "0 or more: 0 keeps untagged manifests")},
		{name: "not_pulled_for", value: durationValue(&r.NotPulledFor, 0, "0 or more: 0 is not set")},
	}
}

// keys are the keys of one entry of upstreams.
func (u *UpstreamConfig) keys() []key {
	return []key{
		{name: "name", value: hostValue(&u.Name)},
		{name: "url", value: urlValue(&u.URL)},
		{name: "default", value: boolValue(&u.Default)},
		{name: "tag_ttl", value: durationValue(&u.TagTTL, 0, "0 or more: 0 asks the upstream every time")},
		{name: "keep_on_not_found", value: boolValue(&u.KeepOnNotFound)},
		{name: "username", value: stringValue(&u.Username, true)},
		{name: "password", value: stringValue(&u.Password, true)},
		{name: "password_file", value: stringValue(&u.PasswordFile, true)},
		{name: "password_env", value: stringValue(&u.PasswordEnv, true)},
		{name: "aliases", value: listValue(&u.Aliases)},
		{name: "timeout", value: durationValue(&u.Timeout, 0, "0 or more: 0 is the client's default")},
		{name: "ca_file", value: stringValue(&u.CAFile, true)},
		{name: "client_cert_file", value: stringValue(&u.ClientCertFile, true)},
		{name: "client_key_file", value: stringValue(&u.ClientKeyFile, true)},
		{name: "insecure_skip_verify", value: boolValue(&u.InsecureSkipVerify)},
		{name: "token_realms", value: listValue(&u.TokenRealms)},
		{name: "docker_config", value: stringValue(&u.DockerConfig, true)},
		{name: "credential_helper", value: helperValue(&u.CredentialHelper)},
		{name: "serve_stale_on_denied", value: optionalBoolValue(&u.ServeStaleOnDenied)},
	}
}

// The accepted forms of each value type, said in every error about one.
const (
	boolForms     = "a boolean (true, false, yes, no, on, off, 1 or 0)"
	durationForms = "a duration (a number of seconds, or Go syntax such as 90s, 10m, 1h30m, or days: 30d)"
	sizeForms     = "a size (bytes, or a number with KB, MB, GB, KiB, MiB, GiB...)"
	intForms      = "an integer"
)

// parseBool reads the booleans YAML 1.1, systemd and most shells agree on.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "yes", "on", "1":
		return true, nil
	case "false", "no", "off", "0":
		return false, nil
	}
	return false, fmt.Errorf("%q is not %s", s, boolForms)
}

// parseDuration reads Go's syntax ("90s", "10m", "1h30m") or a whole
// number of seconds.
func parseDuration(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		if d := time.Duration(n) * time.Second; d/time.Second == time.Duration(n) {
			return d, nil
		}
		return 0, fmt.Errorf("%q is too long for a duration", s)
	}
	if days, ok := strings.CutSuffix(t, "d"); ok {
		if n, err := strconv.ParseInt(days, 10, 64); err == nil && n >= 0 && n < 100000 {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(t)
	if err != nil {
		return 0, fmt.Errorf("%q is not %s", s, durationForms)
	}
	return d, nil
}

// sizeUnits are the suffixes parseSize accepts, lower-cased: decimal
// (KB = 1000) and binary (KiB = 1024), as in Kubernetes quantities.
var sizeUnits = map[string]float64{"": 1, "b": 1,
	"k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
	"ki": 1 << 10, "kib": 1 << 10, "mi": 1 << 20, "mib": 1 << 20, "gi": 1 << 30, "gib": 1 << 30, "ti": 1 << 40, "tib": 1 << 40}

// parseSize reads a byte count ("1073741824") or a size ("50GiB", "1.5 TB").
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(t)
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	mult, ok := sizeUnits[unit]
	f, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil {
		return 0, fmt.Errorf("%q is not %s", s, sizeForms)
	}
	if n := f * mult; n < 1<<63 {
		return int64(n), nil
	}
	return 0, fmt.Errorf("%q is too large for a size", s)
}

// parseInt reads a decimal integer.
func parseInt(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%q is not %s", s, intForms)
	}
	return n, nil
}

func outOfRange(s, want string) error {
	return fmt.Errorf("%s is out of range (%s)", strings.TrimSpace(s), want)
}

func boolValue(p *bool) value {
	return value{forms: boolForms, arg: "BOOL", isBool: true, set: func(s string) error {
		b, err := parseBool(s)
		if err == nil {
			*p = b
		}
		return err
	}}
}

// optionalBoolValue is a boolean whose absence means something else than false.
func optionalBoolValue(p **bool) value {
	return value{forms: boolForms, arg: "BOOL", isBool: true, set: func(s string) error {
		b, err := parseBool(s)
		if err == nil {
			*p = &b
		}
		return err
	}}
}

func durationValue(p *time.Duration, lowest time.Duration, want string) value {
	return boundedValue(p, lowest, want, durationForms, "DURATION", parseDuration)
}

func sizeValue(p *int64, lowest int64, want string) value {
	return boundedValue(p, lowest, want, sizeForms, "SIZE", parseSize)
}

func intValue(p *int, lowest int, want string) value {
	return boundedValue(p, lowest, want, intForms, "N", parseInt)
}

// boundedValue is a value parsed by parse and refused below lowest (want
// says what is accepted).
func boundedValue[T int | int64 | time.Duration](p *T, lowest T, want, forms, arg string, parse func(string) (T, error)) value {
	return value{forms: forms, arg: arg, set: func(s string) error {
		v, err := parse(s)
		switch {
		case err != nil:
			return err
		case v < lowest:
			return outOfRange(s, want)
		}
		*p = v
		return nil
	}}
}

// stringValue is any text; empty only if mayBeEmpty.
func stringValue(p *string, mayBeEmpty bool) value {
	return value{forms: "a string", arg: "TEXT", set: func(s string) error {
		if s == "" && !mayBeEmpty {
			return errors.New("must not be empty")
		}
		*p = s
		return nil
	}}
}

// dirValue is a directory name; it must not be empty.
func dirValue(p *string) value {
	v := stringValue(p, false)
	v.arg = "DIR"
	return v
}

// fileValue names a file that must exist; empty is none.
func fileValue(p *string) value {
	return value{forms: "a file name", arg: "FILE", set: func(s string) error {
		if s != "" {
			if _, err := os.Stat(s); err != nil {
				return err
			}
		}
		*p = s
		return nil
	}}
}

func choiceValue(p *string, choices ...string) value {
	forms := strings.Join(nonEmpty(choices), ", ")
	if i := strings.LastIndex(forms, ", "); i >= 0 {
		forms = forms[:i] + " or " + forms[i+2:]
	}
	return value{forms: forms, arg: "WORD", set: func(s string) error {
		for _, c := range choices {
			if s == c {
				*p = s
				return nil
			}
		}
		return fmt.Errorf("%q is not %s", s, forms)
	}}
}

func nonEmpty(list []string) []string {
	var out []string
	for _, s := range list {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// addrValue is a listen address; empty (off) only if optional.
func addrValue(p *string, optional bool) value {
	const forms = "a listen address (host:port or :port)"
	return value{forms: forms, arg: "HOST:PORT", set: func(s string) error {
		if s == "" && optional {
			*p = s
			return nil
		}
		if _, _, err := net.SplitHostPort(s); err != nil {
			return fmt.Errorf("%q is not %s", s, forms)
		}
		*p = s
		return nil
	}}
}

// patternsValue is a list of local repository patterns.
func patternsValue(p *[]string) value {
	const forms = "a list of repository patterns such as team/* or team/**"
	return value{forms: forms, arg: "PATTERNS", list: true, set: func(s string) error {
		list := splitList(s)
		for _, pat := range list {
			if strings.Trim(pat, "/") == "" || strings.Contains(pat, "..") {
				return fmt.Errorf("%q is not %s", pat, forms)
			}
		}
		*p = list
		return nil
	}}
}

func listValue(p *[]string) value {
	return value{forms: "a list of strings", list: true, set: func(s string) error {
		*p = splitList(s)
		return nil
	}}
}

// splitList splits a comma-separated list; "" is the empty list.
func splitList(s string) []string {
	list := []string{}
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			list = append(list, e)
		}
	}
	return list
}

func hostValue(p *string) value {
	const forms = "a registry host name such as ghcr.io"
	return value{forms: forms, set: func(s string) error {
		if !oci.ValidName(strings.ToLower(s)) || strings.Contains(s, "/") {
			return fmt.Errorf("%q is not %s", s, forms)
		}
		*p = s
		return nil
	}}
}

// bucketValue is an S3 bucket name: 3 to 63 lower-case letters, digits,
// dots and hyphens.
func bucketValue(p *string) value {
	const forms = "a bucket name (3 to 63 characters: a-z, 0-9, dots and hyphens)"
	return value{forms: forms, arg: "NAME", set: func(s string) error {
		ok := len(s) >= 3 && len(s) <= 63
		for _, r := range s {
			ok = ok && (r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-')
		}
		if !ok {
			return fmt.Errorf("%q is not %s", s, forms)
		}
		*p = s
		return nil
	}}
}

// ldapURLValue is an LDAP URL; empty is none.
func ldapURLValue(p *string) value {
	const forms = "a URL starting with ldap://, ldaps:// or ldap+starttls://"
	return value{forms: forms, arg: "URL", set: func(s string) error {
		if s != "" && !strings.HasPrefix(s, "ldap://") && !strings.HasPrefix(s, "ldaps://") && !strings.HasPrefix(s, "ldap+starttls://") {
			return fmt.Errorf("%q is not %s", s, forms)
		}
		*p = s
		return nil
	}}
}

// envNameValue names an environment variable.
func envNameValue(p *string, mayBeEmpty bool) value {
	const forms = "an environment variable name (letters, digits and _)"
	return value{forms: forms, arg: "NAME", set: func(s string) error {
		ok := s != "" || mayBeEmpty
		for i, r := range s {
			ok = ok && (r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9')
		}
		if !ok {
			return fmt.Errorf("%q is not %s", s, forms)
		}
		*p = s
		return nil
	}}
}

// realmValue is an absolute http(s) URL; empty is none.
func realmValue(p *string) value {
	const forms = "an absolute URL such as https://registry.example.com/v2/token"
	return value{forms: forms, arg: "URL", set: func(s string) error {
		if u, err := url.Parse(s); s != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
			return fmt.Errorf("%q is not %s", s, forms)
		}
		*p = s
		return nil
	}}
}

// urlsValue is a list of http(s) URLs.
func urlsValue(p *[]string) value {
	const forms = "a list of URLs starting with http:// or https://"
	return value{forms: forms, list: true, set: func(s string) error {
		list := splitList(s)
		for _, u := range list {
			if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
				return fmt.Errorf("%q is not %s", u, forms)
			}
		}
		*p = list
		return nil
	}}
}

// prefixValue is a key prefix in a bucket: "" or ending with "/".
func prefixValue(p *string) value {
	const forms = "a key prefix such as berth/"
	return value{forms: forms, arg: "PREFIX", set: func(s string) error {
		if strings.Contains(s, "//") || strings.Contains(s, "..") {
			return fmt.Errorf("%q is not %s", s, forms)
		}
		s = strings.TrimPrefix(s, "/")
		if s != "" && !strings.HasSuffix(s, "/") {
			s += "/"
		}
		*p = s
		return nil
	}}
}

func urlValue(p *string) value {
	const forms = "a URL starting with http:// or https://"
	return value{forms: forms, set: func(s string) error {
		if !strings.HasPrefix(s, "http://") && !strings.HasPrefix(s, "https://") {
			return fmt.Errorf("%q is not %s", s, forms)
		}
		*p = s
		return nil
	}}
}

// helperValue names a credential helper: NAME runs docker-credential-NAME.
func helperValue(p *string) value {
	const forms = "a credential helper name such as ecr-login (runs docker-credential-ecr-login)"
	return value{forms: forms, set: func(s string) error {
		if strings.ContainsAny(s, "/\\ \t") || strings.HasPrefix(s, "docker-credential-") {
			return fmt.Errorf("%q is not %s", s, forms)
		}
		*p = s
		return nil
	}}
}

// keyError is a refused value: "config key NAME (SOURCE): why".
func keyError(name, source string, err error) error {
	if source != "" {
		source = " (" + source + ")"
	}
	return fmt.Errorf("config key %s%s: %w", name, source, err)
}

// rawFlag holds a flag's text until it is parsed with the key's parser,
// like the same key from the file or the environment.
type rawFlag struct {
	v      string
	isBool bool
}

func (f *rawFlag) String() string     { return f.v }
func (f *rawFlag) Set(v string) error { f.v = v; return nil }
func (f *rawFlag) IsBoolFlag() bool   { return f.isBool }

// loadConfig reads file, environment and flags, in rising precedence. It
// returns flag.ErrHelp when the flags ask for help (see serveUsage).
func loadConfig(args []string, getenv func(string) string) (Config, error) {
	cfg := defaultConfig()
	keys := cfg.keys()
	fs := flag.NewFlagSet("berth serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; help is printed by run
	configPath := fs.String("config", getenv("BERTH_CONFIG"), "YAML configuration file")
	raw := make([]rawFlag, len(keys))
	for i, k := range keys {
		raw[i].isBool = k.isBool
		fs.Var(&raw[i], k.flag, k.usage)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, err
		}
		return cfg, fmt.Errorf("%w (berth serve --help lists the flags)", err)
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q: berth serve takes flags only (berth serve --help lists them)", fs.Arg(0))
	}
	if *configPath != "" {
		if err := cfg.readFile(*configPath, keys); err != nil {
			return cfg, err
		}
	}
	for _, k := range keys {
		for _, name := range k.env {
			if v := getenv(name); v != "" {
				if err := k.set(v); err != nil {
					return cfg, keyError(k.name, name, err)
				}
				break
			}
		}
	}
	var err error
	fs.Visit(func(f *flag.Flag) {
		for i, k := range keys {
			if k.flag == f.Name && err == nil {
				if e := k.set(raw[i].v); e != nil {
					err = keyError(k.name, "--"+k.flag, e)
				}
			}
		}
	})
	if err != nil {
		return cfg, err
	}
	if cfg.Upstreams == nil {
		cfg.Upstreams = defaultUpstreams()
	}
	return cfg, cfg.validate(getenv)
}

// readFile sets the keys the YAML file at path has. The file is read as
// text nodes and each value goes through its key's parser, so a value of
// the wrong type is refused in the same words as from the environment.
func (c *Config) readFile(path string, keys []key) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("config file %s: %s", path, oneLine(err))
	}
	if len(doc.Content) == 0 { // empty, or only comments
		return nil
	}
	root := deref(doc.Content[0])
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil
	}
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("config file %s: line %d: want a mapping of keys (addr: \":5000\", ...), not %s", path, root.Line, kindName(root))
	}
	return decodeMapping(root, "", keys, map[string]func(*yaml.Node) error{"upstreams": c.readUpstreams, "retention": c.readRetention,
		"access": c.readAccess, "auth.token": func(n *yaml.Node) error { return c.readToken(n, keys) }})
}

// readToken decodes auth.token: present (even as {} or null) turns the
// token flow on.
func (c *Config) readToken(n *yaml.Node, keys []key) error {
	c.Auth.Token.Enabled = true
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return keyError("auth.token", "", fmt.Errorf("%s is not a mapping of %s ({} for the defaults)", kindName(n), strings.Join(keysUnder(keys, "auth.token"), ", ")))
	}
	return decodeMapping(n, "auth.token.", keys, nil)
}

// readAccess decodes the access rules: a list of repos, subjects and
// actions, in order.
func (c *Config) readAccess(n *yaml.Node) error {
	const forms = "a list of rules (- repos: [\"team-a/**\"], subjects: [alice, \"group:team-a\"], actions: [pull, push, delete])"
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		return keyError("access", "", fmt.Errorf("%s is not %s", kindName(n), forms))
	}
	c.Access = make([]access.Rule, len(n.Content))
	for i, e := range n.Content {
		e = deref(e)
		where := fmt.Sprintf("access[%d]", i)
		if e.Kind != yaml.MappingNode {
			return keyError(where, "", fmt.Errorf("%s is not a rule (repos: [...], subjects: [...], actions: [...])", kindName(e)))
		}
		r := &c.Access[i]
		var actions []string
		keys := prefixed(where+".", []key{
			{name: "repos", value: globsValue(&r.Repos)},
			{name: "subjects", value: listValue(&r.Subjects)},
			{name: "actions", value: actionsValue(&actions)},
		})
		if err := decodeMapping(e, where+".", keys, nil); err != nil {
			return err
		}
		for _, a := range actions {
			acts, _ := access.ParseAction(a)
			r.Actions = append(r.Actions, acts...)
		}
		if err := r.Validate(); err != nil {
			field, _, _ := strings.Cut(err.Error(), ":")
			return keyError(where+"."+field, "", errors.New(strings.TrimSpace(strings.TrimPrefix(err.Error(), field+":"))))
		}
	}
	return nil
}

func globsValue(p *[]string) value {
	const forms = "a list of repository globs such as team-a/** or team-a/*"
	return value{forms: forms, list: true, set: func(s string) error {
		list := splitList(s)
		for _, g := range list {
			if err := access.ValidGlob(g); err != nil {
				return err
			}
		}
		*p = list
		return nil
	}}
}

func actionsValue(p *[]string) value {
	const forms = "a list of actions: pull, push, delete"
	return value{forms: forms, list: true, set: func(s string) error {
		list := splitList(s)
		for _, a := range list {
			if _, err := access.ParseAction(a); err != nil {
				return fmt.Errorf("%q is not %s", a, forms)
			}
		}
		*p = list
		return nil
	}}
}

// decodeMapping sets keys from mapping n, whose keys are named prefix+name.
// A name with keys under it ("auth" for auth.htpasswd) is a nested
// mapping; structured keys are decoded by their own function.
func decodeMapping(n *yaml.Node, prefix string, keys []key, structured map[string]func(*yaml.Node) error) error {
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := deref(n.Content[i]), deref(n.Content[i+1])
		name := prefix + kn.Value
		if kn.Kind != yaml.ScalarNode {
			return fmt.Errorf("config file: line %d: a key must be a name, not %s", kn.Line, kindName(kn))
		}
		if seen[name] {
			return keyError(name, "", fmt.Errorf("set twice (line %d)", kn.Line))
		}
		seen[name] = true
		if f := structured[name]; f != nil {
			if err := f(vn); err != nil {
				return err
			}
			continue
		}
		if k, ok := findKey(keys, name); ok {
			if err := setFromNode(k, vn); err != nil {
				return keyError(name, "", err)
			}
			continue
		}
		if hasKeysUnder(keys, name) {
			if isNull(vn) {
				continue
			}
			if vn.Kind != yaml.MappingNode {
				return keyError(name, "", fmt.Errorf("%s is not a mapping of %s", kindName(vn), strings.Join(keysUnder(keys, name), ", ")))
			}
			if err := decodeMapping(vn, name+".", keys, structured); err != nil {
				return err
			}
			continue
		}
		return keyError(name, "", fmt.Errorf("unknown key (known here: %s)", strings.Join(known(keys, prefix, structured), ", ")))
	}
	return nil
}

// setFromNode sets k from a YAML value: a scalar's text, or for a list key
// a sequence of scalars. An explicit null leaves the default.
func setFromNode(k key, n *yaml.Node) error {
	switch {
	case isNull(n):
		return nil
	case n.Kind == yaml.ScalarNode:
		return k.set(n.Value)
	case n.Kind == yaml.SequenceNode && k.list:
		items := make([]string, 0, len(n.Content))
		for _, e := range n.Content {
			e = deref(e)
			if e.Kind != yaml.ScalarNode {
				return fmt.Errorf("%s in the list is not a string (want %s)", kindName(e), k.forms)
			}
			if strings.Contains(e.Value, ",") {
				return fmt.Errorf("%q is not %s", e.Value, k.forms)
			}
			items = append(items, e.Value)
		}
		return k.set(strings.Join(items, ","))
	}
	return fmt.Errorf("%s is not %s", kindName(n), k.forms)
}

// readUpstreams decodes the upstreams list; it replaces the built-in one.
func (c *Config) readUpstreams(n *yaml.Node) error {
	const forms = "a list of upstreams (- name: ghcr.io, url: https://ghcr.io, ...)"
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		return keyError("upstreams", "", fmt.Errorf("%s is not %s", kindName(n), forms))
	}
	c.Upstreams = make([]UpstreamConfig, len(n.Content))
	for i, e := range n.Content {
		e = deref(e)
		where := fmt.Sprintf("upstreams[%d]", i)
		if e.Kind != yaml.MappingNode {
			return keyError(where, "", fmt.Errorf("%s is not an upstream (name: ghcr.io, url: https://ghcr.io, ...)", kindName(e)))
		}
		u := &c.Upstreams[i]
		u.TagTTL = defaultTagTTL
		if err := decodeMapping(e, where+".", prefixed(where+".", u.keys()), nil); err != nil {
			return err
		}
	}
	return nil
}

// readRetention decodes the retention rules.
func (c *Config) readRetention(n *yaml.Node) error {
	const forms = `a list of rules (- repos: ["ci/**"], keep_last: 20, ...)`
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		return keyError("retention", "", fmt.Errorf("%s is not %s", kindName(n), forms))
	}
	c.Retention = make([]RetentionConfig, len(n.Content))
	for i, e := range n.Content {
		e = deref(e)
		where := fmt.Sprintf("retention[%d]", i)
		if e.Kind != yaml.MappingNode {
			return keyError(where, "", fmt.Errorf("%s is not %s", kindName(e), forms))
		}
		r := &c.Retention[i]
		if err := decodeMapping(e, where+".", prefixed(where+".", r.keys()), nil); err != nil {
			return err
		}
		if len(r.Repos) == 0 {
			return keyError(where+".repos", "", errors.New(`required (patterns of local repositories, such as "ci/**")`))
		}
		for _, t := range r.KeepTags {
			if _, err := regexp.Compile(t); err != nil {
				return keyError(where+".keep_tags", "", fmt.Errorf("%q is not a regular expression: %v", t, err))
			}
		}
	}
	return nil
}

func prefixed(prefix string, keys []key) []key {
	for i := range keys {
		keys[i].name = prefix + keys[i].name
	}
	return keys
}

func findKey(keys []key, name string) (key, bool) {
	for _, k := range keys {
		if k.name == name {
			return k, true
		}
	}
	return key{}, false
}

func keysUnder(keys []key, section string) []string {
	var names []string
	for _, k := range keys {
		if rest, ok := strings.CutPrefix(k.name, section+"."); ok {
			names = append(names, rest)
		}
	}
	return names
}

// known lists the key names a mapping under prefix may have.
func known(keys []key, prefix string, structured map[string]func(*yaml.Node) error) []string {
	var names []string
	add := func(full string) {
		rest, ok := strings.CutPrefix(full, prefix)
		if !ok {
			return
		}
		rest, _, _ = strings.Cut(rest, ".")
		if !slices.Contains(names, rest) {
			names = append(names, rest)
		}
	}
	for _, k := range keys {
		add(k.name)
	}
	for name := range structured {
		add(name)
	}
	return names
}

func hasKeysUnder(keys []key, section string) bool { return len(keysUnder(keys, section)) > 0 }

// deref follows a YAML alias (*anchor) to its node.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	}
	return "this value"
}

// validate checks what no single key can: keys that need each other,
// upstreams as a whole, files and passwords, which it resolves.
func (c *Config) validate(getenv func(string) string) error {
	users := c.Auth.Htpasswd != "" || c.Auth.LDAP.URL != ""
	if !users && c.Auth.AnonymousPull != nil {
		return keyError("auth.anonymous_pull", "", errors.New("needs auth.htpasswd or auth.ldap"))
	}
	if !users && c.Auth.Token.Enabled {
		return keyError("auth.token", "", errors.New("needs auth.htpasswd or auth.ldap (who would log in?)"))
	}
	if err := c.Auth.LDAP.validate(getenv); err != nil {
		return err
	}
	switch {
	case c.TLS.CertFile != "" && c.TLS.KeyFile == "":
		return keyError("tls.key_file", "", errors.New("required with tls.cert_file"))
	case c.TLS.KeyFile != "" && c.TLS.CertFile == "":
		return keyError("tls.cert_file", "", errors.New("required with tls.key_file"))
	case c.TLS.ClientCAFile != "" && c.TLS.CertFile == "":
		return keyError("tls.client_ca_file", "", errors.New("needs tls.cert_file and tls.key_file"))
	}
	seen := map[string]bool{}
	defaults := 0
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		where := fmt.Sprintf("upstreams[%d]", i)
		if u.Name == "" {
			return keyError(where+".name", "", errors.New("required (the registry's host name, such as ghcr.io)"))
		}
		if seen[u.Name] {
			return keyError(where+".name", "", fmt.Errorf("%q configured twice", u.Name))
		}
		seen[u.Name] = true
		if u.URL == "" {
			return keyError(where+".url", "", errors.New("required (https://...)"))
		}
		if u.Default {
			defaults++
		}
		switch {
		case u.PasswordFile != "":
			b, err := os.ReadFile(u.PasswordFile)
			if err != nil {
				return keyError(where+".password_file", "", err)
			}
			u.Password = strings.TrimSpace(string(b))
		case u.PasswordEnv != "":
			u.Password = getenv(u.PasswordEnv)
			if u.Password == "" {
				return keyError(where+".password_env", "", fmt.Errorf("environment variable %s is empty", u.PasswordEnv))
			}
		}
		if u.Password != "" && u.Username == "" {
			return keyError(where+".username", "", errors.New("required when a password is set"))
		}
		if err := u.validateSecurity(where); err != nil {
			return err
		}
	}
	if defaults > 1 {
		return keyError("upstreams", "", errors.New("more than one has default: true"))
	}
	return c.validateStorage(getenv)
}

// validateStorage checks the storage and cluster keys, and reads their
// secrets from the environment.
func (c *Config) validateStorage(getenv func(string) string) error {
	s := &c.Storage
	if s.Driver == "s3" {
		if s.Bucket == "" {
			return keyError("storage.bucket", "", errors.New("required with storage.driver s3"))
		}
		if s.Endpoint == "" {
			return keyError("storage.endpoint", "", errors.New("required with storage.driver s3 (https://s3.REGION.amazonaws.com for AWS)"))
		}
		if s.AccessKey = getenv(s.AccessKeyEnv); s.AccessKey == "" {
			return keyError("storage.access_key_env", "", fmt.Errorf("environment variable %s is empty", s.AccessKeyEnv))
		}
		if s.SecretKey = getenv(s.SecretKeyEnv); s.SecretKey == "" {
			return keyError("storage.secret_key_env", "", fmt.Errorf("environment variable %s is empty", s.SecretKeyEnv))
		}
	}
	cl := &c.Cluster
	if !cl.Enabled() {
		if cl.SecretEnv != "" {
			return keyError("cluster.secret_env", "", errors.New("needs cluster.self and cluster.members or cluster.dns"))
		}
		return nil
	}
	if s.Driver != "s3" {
		return keyError("cluster", "", errors.New("needs storage.driver s3: the replicas share one bucket"))
	}
	if cl.Self == "" {
		return keyError("cluster.self", "", errors.New("required in a cluster (this replica's URL, e.g. http://10.0.0.5:5000)"))
	}
	if len(cl.Members) == 0 && cl.DNS == "" {
		return keyError("cluster.members", "", errors.New("required in a cluster, or cluster.dns"))
	}
	if len(cl.Members) > 0 && !slices.Contains(cl.Members, strings.TrimSuffix(cl.Self, "/")) && !slices.Contains(cl.Members, cl.Self) {
		return keyError("cluster.members", "", fmt.Errorf("must include cluster.self (%s)", cl.Self))
	}
	if cl.SecretEnv != "" {
		if cl.Secret = getenv(cl.SecretEnv); cl.Secret == "" {
			return keyError("cluster.secret_env", "", fmt.Errorf("environment variable %s is empty", cl.SecretEnv))
		}
	}
	return nil
}

// validateSecurity checks an upstream's TLS files, credential sources and
// token realms, with one-line errors naming the key. File contents never
// appear in an error.
func (u *UpstreamConfig) validateSecurity(where string) error {
	if u.CAFile != "" {
		b, err := os.ReadFile(u.CAFile)
		if err != nil {
			return keyError(where+".ca_file", "", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(b) {
			return keyError(where+".ca_file", "", fmt.Errorf("%s holds no PEM certificate", u.CAFile))
		}
	}
	switch {
	case u.ClientCertFile != "" && u.ClientKeyFile == "":
		return keyError(where+".client_key_file", "", errors.New("required with client_cert_file"))
	case u.ClientKeyFile != "" && u.ClientCertFile == "":
		return keyError(where+".client_cert_file", "", errors.New("required with client_key_file"))
	case u.ClientCertFile != "":
		if _, err := tls.LoadX509KeyPair(u.ClientCertFile, u.ClientKeyFile); err != nil {
			return keyError(where+".client_cert_file", "", fmt.Errorf("with client_key_file: %w", err))
		}
	}
	if u.TokenRealms == nil && strings.EqualFold(u.credentialHosts()[0], "registry-1.docker.io") {
		// Docker Hub's token service is on another host; a configuration
		// written before token_realms existed keeps working.
		u.TokenRealms = []string{"auth.docker.io"}
	}
	for _, r := range u.TokenRealms {
		if strings.Contains(r, "/") || r == "" {
			return keyError(where+".token_realms", "", fmt.Errorf("%q is not a host name (auth.docker.io, or host:port)", r))
		}
	}
	sources := 0
	for _, set := range []bool{u.Username != "", u.DockerConfig != "", u.CredentialHelper != ""} {
		if set {
			sources++
		}
	}
	if sources > 1 {
		return keyError(where, "", errors.New("username/password, docker_config and credential_helper exclude each other; set one"))
	}
	if u.DockerConfig != "" {
		if err := upstream.ReadDockerConfig(u.DockerConfig); err != nil {
			return keyError(where+".docker_config", "", err)
		}
	}
	if u.CredentialHelper != "" {
		if _, err := exec.LookPath("docker-credential-" + u.CredentialHelper); err != nil {
			return keyError(where+".credential_helper", "", fmt.Errorf("docker-credential-%s is not on PATH", u.CredentialHelper))
		}
	}
	return nil
}

// validate checks the LDAP keys and reads the bind password.
func (l *LDAPConfig) validate(getenv func(string) string) error {
	if l.URL == "" {
		for name, v := range map[string]string{"bind_dn": l.BindDN, "bind_password_env": l.BindPasswordEnv, "user_base": l.UserBase,
			"user_filter": l.UserFilter, "group_base": l.GroupBase, "group_filter": l.GroupFilter} {
			if v != "" {
				return keyError("auth.ldap."+name, "", errors.New("needs auth.ldap.url"))
			}
		}
		return nil
	}
	if l.UserBase == "" {
		return keyError("auth.ldap.user_base", "", errors.New("required with auth.ldap.url (ou=people,dc=example,dc=com)"))
	}
	if l.UserFilter != "" && !strings.Contains(l.UserFilter, "{user}") {
		return keyError("auth.ldap.user_filter", "", fmt.Errorf("%q must contain {user}", l.UserFilter))
	}
	if l.GroupFilter != "" && l.GroupBase == "" {
		return keyError("auth.ldap.group_base", "", errors.New("required with auth.ldap.group_filter"))
	}
	if l.BindPasswordEnv != "" {
		l.bindPassword = getenv(l.BindPasswordEnv)
		if l.bindPassword == "" {
			return keyError("auth.ldap.bind_password_env", "", fmt.Errorf("environment variable %s is empty", l.BindPasswordEnv))
		}
	}
	return nil
}

// serveUsage is berth serve --help: every flag with its environment
// variable, from the same table the parser uses.
func serveUsage(w io.Writer) {
	fmt.Fprint(w, `usage: berth serve [flags]

Runs the registry and mirror. Each setting is read from the configuration file,
then the environment, then a flag: the last one given wins. Booleans are true,
false, yes, no, on, off, 1 or 0; durations 90s, 10m, 1h30m or a number of
seconds; sizes bytes or 512KB, 4MiB, 50GiB. upstreams is set in the file only.
SIGHUP reloads the configuration; addr, data, debug_addr, max_cache_bytes,
disk_reserve, tls, storage, cluster and the log settings need a restart (the
tls files themselves are re-read when they change).

`)
	fmt.Fprintf(w, "  --config FILE  (BERTH_CONFIG)\n        the YAML configuration file\n")
	for _, k := range defaultConfigKeys() {
		arg := " " + k.arg
		if k.isBool {
			arg = "[=" + k.arg + "]"
		}
		fmt.Fprintf(w, "  --%s%s  (%s)\n        %s: %s\n", k.flag, arg, strings.Join(k.env, ", "), k.name, k.usage)
	}
}

func defaultConfigKeys() []key {
	c := defaultConfig()
	return c.keys()
}

// oneLine flattens yaml's multi-line errors so start-up fails with one line.
func oneLine(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n")
	fields := strings.Fields(strings.ReplaceAll(msg, "\n", "; "))
	return strings.Join(fields, " ")
}
