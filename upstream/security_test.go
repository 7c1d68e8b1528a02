package upstream

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/testutil/pki"
)

const testManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`

// miniRegistry serves one manifest (app:1) behind Basic auth, or behind
// Bearer auth with a token endpoint on its own host that takes Basic
// credentials or an identity token; the password can change under it.
type miniRegistry struct {
	bearer   bool
	user     string
	pass     atomic.Value // string
	idToken  string
	requests atomic.Int64 // every request, token requests included
	// status, when non-zero, answers every registry request with it once
	// (with Retry-After retryAfter).
	mu         sync.Mutex
	status     int
	retryAfter string
}

func (m *miniRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.requests.Add(1)
	m.mu.Lock()
	status, ra := m.status, m.retryAfter
	m.status = 0
	m.mu.Unlock()
	if status != 0 {
		if ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		w.WriteHeader(status)
		fmt.Fprint(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`)
		return
	}
	if r.URL.Path == "/token" {
		m.serveToken(w, r)
		return
	}
	authz := r.Header.Get("Authorization")
	ok := false
	if m.bearer {
		ok = authz == "Bearer token-for-"+m.user
		if !ok {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="https://%s/token",service="mini",scope="repository:app:pull"`, r.Host))
		}
	} else {
		u, p, basic := r.BasicAuth()
		ok = basic && u == m.user && p == m.pass.Load().(string)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="mini"`)
		}
	}
	if !ok {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
		return
	}
	if r.URL.Path != "/v2/app/manifests/1" {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	_, _ = w.Write([]byte(testManifest))
}

func (m *miniRegistry) serveToken(w http.ResponseWriter, r *http.Request) {
	if m.idToken != "" {
		if r.Method != http.MethodPost || r.FormValue("grant_type") != "refresh_token" || r.FormValue("refresh_token") != m.idToken {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
	} else if u, p, ok := r.BasicAuth(); !ok || u != m.user || p != m.pass.Load().(string) {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	fmt.Fprintf(w, `{"access_token":"token-for-%s","expires_in":300}`, m.user)
}

// tlsRegistry starts m over TLS with a certificate of a fresh private CA;
// clientCAs, if set, makes the server require a client certificate signed
// by it. It returns the server and the CA's PEM written to a file.
func tlsRegistry(t *testing.T, m http.Handler, ca *pki.CA, requireClient bool) (*httptest.Server, string) {
	t.Helper()
	pair, err := ca.Server("127.0.0.1", []string{"127.0.0.1"}, time.Now().Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pair.TLS()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(m)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshakes tests make fail on purpose
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	if requireClient {
		pool := x509.NewCertPool()
		pool.AddCert(ca.Cert)
		srv.TLS.ClientAuth, srv.TLS.ClientCAs = tls.RequireAndVerifyClientCert, pool
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return srv, caFile
}

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// logBuffer is a debug-level logger writing into a buffer safe for the
// goroutines of a client.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() zerolog.Logger { return zerolog.New(l).Level(zerolog.DebugLevel) }

// An upstream behind a private CA with Basic auth: trusted with ca_file;
// without it the failure is a TLS error, described to clients without the
// upstream's address.
func TestPrivateCAWithBasicAuth(t *testing.T) {
	t.Parallel()
	reg := &miniRegistry{user: "robot"}
	reg.pass.Store("pw-basic-1")
	srv, caFile := tlsRegistry(t, reg, newCA(t), false)

	c := newTLSClient(t, Config{Name: "private.test", URL: srv.URL, CAFile: caFile, Username: "robot", Password: "pw-basic-1"})
	if _, body, err := c.GetManifest(t.Context(), "app", "1"); err != nil || string(body) != testManifest {
		t.Fatalf("with ca_file: %v", err)
	}

	c = newTLSClient(t, Config{Name: "private.test", URL: srv.URL, Username: "robot", Password: "pw-basic-1"})
	_, _, err := c.GetManifest(t.Context(), "app", "1")
	if !IsTLS(err) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("without ca_file: %v, want a TLS error of kind ErrUnavailable", err)
	}
	pub, ok := Public(err)
	host := strings.TrimPrefix(srv.URL, "https://")
	if !ok || !strings.Contains(pub, "private.test") || !strings.Contains(pub, "ca_file") || strings.Contains(pub, host) {
		t.Errorf("Public = %q, want the upstream's name and ca_file, not %s", pub, host)
	}

	// insecure_skip_verify: no verification at all.
	c = newTLSClient(t, Config{Name: "private.test", URL: srv.URL, InsecureSkipVerify: true, Username: "robot", Password: "pw-basic-1"})
	if _, _, err := c.GetManifest(t.Context(), "app", "1"); err != nil {
		t.Fatalf("insecure_skip_verify: %v", err)
	}
}

// Mutual TLS: the client certificate is presented when configured.
func TestClientCertificate(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	reg := &miniRegistry{user: "robot"}
	reg.pass.Store("pw")
	srv, caFile := tlsRegistry(t, reg, ca, true)
	pair, err := ca.Client("berth")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
	if err := os.WriteFile(certFile, pair.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pair.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	c := newTLSClient(t, Config{Name: "mtls.test", URL: srv.URL, CAFile: caFile, ClientCertFile: certFile, ClientKeyFile: keyFile,
		Username: "robot", Password: "pw"})
	if _, _, err := c.GetManifest(t.Context(), "app", "1"); err != nil {
		t.Fatalf("with a client certificate: %v", err)
	}
	c = newTLSClient(t, Config{Name: "mtls.test", URL: srv.URL, CAFile: caFile, Username: "robot", Password: "pw"})
	if _, _, err := c.GetManifest(t.Context(), "app", "1"); !IsTLS(err) {
		t.Fatalf("without a client certificate: %v, want a TLS error", err)
	}
	for _, cfg := range []Config{
		{URL: srv.URL, CAFile: filepath.Join(dir, "missing.crt")},
		{URL: srv.URL, CAFile: keyFile}, // no certificate in it
		{URL: srv.URL, ClientCertFile: certFile},
		{URL: srv.URL, ClientCertFile: keyFile, ClientKeyFile: keyFile},
	} {
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "Config.C") {
			t.Errorf("New(%+v) = %v, want an error naming the field", cfg, err)
		}
	}
}

func newTLSClient(t *testing.T, cfg Config, opts ...Option) *Client {
	t.Helper()
	cfg.Retries = 1
	c, err := New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// countingListener counts the connections it accepts (and closes them).
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func listenCounting(t *testing.T, addr string) *countingListener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	cl := &countingListener{Listener: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			cl.n.Add(1)
			conn.Close()
		}
	}()
	return cl
}

// A token realm on a host that is not configured (another loopback
// address) is refused: no connection reaches it, the refusal is logged at
// warn with the reason, and the error is ErrMisconfigured, not "not found".
func TestRealmOnUnconfiguredHostNeverContacted(t *testing.T) {
	t.Parallel()
	realm := listenCounting(t, "127.0.0.2:0")
	const password = "pw-never-leaves"
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="x"`, realm.Addr()))
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(reg.Close)

	var logs logBuffer
	c := mustNew(t, Config{Name: "evil.test", URL: reg.URL, Username: "robot", Password: password}, WithLogger(logs.logger()))
	_, _, err := c.GetManifest(t.Context(), "app", "1")
	if !errors.Is(err, ErrMisconfigured) || errors.Is(err, ErrNotFound) {
		t.Fatalf("GetManifest = %v, want ErrMisconfigured", err)
	}
	if n := realm.n.Load(); n != 0 {
		t.Errorf("the unconfigured realm saw %d connections, want 0", n)
	}
	out := logs.String()
	if !strings.Contains(out, `"level":"warn"`) || !strings.Contains(out, realm.Addr().String()) || !strings.Contains(out, "evil.test") {
		t.Errorf("no warn line naming the upstream and the refused realm: %s", out)
	}
	if pub, _ := Public(err); strings.Contains(pub, "127.0.0.2") || !strings.Contains(pub, "evil.test") {
		t.Errorf("Public = %q: names the realm's address or not the upstream", pub)
	}
	if strings.Contains(out, password) || strings.Contains(err.Error(), password) {
		t.Error("the password reached a log or an error")
	}

	// Listed in token_realms, the same realm is contacted.
	c = mustNew(t, Config{Name: "evil.test", URL: reg.URL, Username: "robot", Password: password,
		TokenRealms: []string{realm.Addr().String()}})
	_, _, _ = c.GetManifest(t.Context(), "app", "1")
	deadline := time.Now().Add(10 * time.Second)
	for realm.n.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling the counter the accept loop bumps
	}
	if realm.n.Load() == 0 {
		t.Error("a realm listed in token_realms was never contacted")
	}
}

func mustNew(t *testing.T, cfg Config, opts ...Option) *Client {
	t.Helper()
	c, err := New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	c.backoff = time.Millisecond
	return c
}

// fakeHelper writes docker-credential-NAME into a directory put first on
// PATH: it counts its runs in DIR/runs, reads the host from stdin, and
// answers with username robot and the secret in DIR/secret; with DIR/fail
// present it prints the secret and fails; with DIR/slow it hangs.
func fakeHelper(t *testing.T, name string) string {
	t.Helper()
	dir := t.TempDir()
	script := `#!/bin/sh
d=$(dirname "$0")
echo run >>"$d/runs"
[ "$1" = get ] || exit 1
read host
[ -e "$d/slow" ] && exec sleep 30
if [ -e "$d/fail" ]; then cat "$d/secret"; exit 1; fi
printf '{"ServerURL":"%s","Username":"robot","Secret":"%s"}' "$host" "$(cat "$d/secret")"
`
	if err := os.WriteFile(filepath.Join(dir, "docker-credential-"+name), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return dir
}

func helperRuns(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "runs"))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "run")
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A credential helper is run once and its answer cached; when the upstream
// rejects it, it is asked again and the request goes on with the fresh
// credential. Its output reaches no log and no error.
func TestCredentialHelper(t *testing.T) { // not parallel: sets PATH
	for _, bearer := range []bool{false, true} {
		t.Run(fmt.Sprintf("bearer=%v", bearer), func(t *testing.T) {
			dir := fakeHelper(t, "berthtest")
			writeFile(t, filepath.Join(dir, "secret"), "helper-secret-1")
			reg := &miniRegistry{user: "robot", bearer: bearer}
			reg.pass.Store("helper-secret-1")
			srv, caFile := tlsRegistry(t, reg, newCA(t), false)
			var logs logBuffer
			c := newTLSClient(t, Config{Name: "ecr.test", URL: srv.URL, CAFile: caFile,
				Credentials: Helper("berthtest", "ecr.test", 5*time.Second, time.Hour)}, WithLogger(logs.logger()))
			for range 3 {
				if _, _, err := c.GetManifest(t.Context(), "app", "1"); err != nil {
					t.Fatal(err)
				}
			}
			if n := helperRuns(t, dir); n != 1 {
				t.Errorf("helper ran %d times for three pulls, want 1 (cached)", n)
			}
			// The upstream's password rotates (an expired ECR token): the
			// rejected credential is asked for again, once.
			reg.pass.Store("helper-secret-2")
			writeFile(t, filepath.Join(dir, "secret"), "helper-secret-2")
			c.auth.mu.Lock()
			c.auth.tokens.Purge() // the bearer token would still be accepted by the fake
			c.auth.mu.Unlock()
			if _, _, err := c.GetManifest(t.Context(), "app", "1"); err != nil {
				t.Fatalf("after rotation: %v", err)
			}
			if n := helperRuns(t, dir); n != 2 {
				t.Errorf("helper ran %d times, want 2 (asked again after a 401)", n)
			}
			// Rejected even fresh: denied, and the helper is not run in a loop.
			reg.pass.Store("something-else")
			c.auth.mu.Lock()
			c.auth.tokens.Purge()
			c.auth.mu.Unlock()
			if _, _, err := c.GetManifest(t.Context(), "app", "1"); !errors.Is(err, ErrDenied) {
				t.Fatalf("with rejected credentials: %v, want ErrDenied", err)
			}
			if n := helperRuns(t, dir); n != 3 {
				t.Errorf("helper ran %d times, want 3", n)
			}
			for _, s := range []string{"helper-secret-1", "helper-secret-2"} {
				if strings.Contains(logs.String(), s) {
					t.Errorf("helper output %q in the log", s)
				}
			}
		})
	}
}

// A failing or hanging helper is an ErrMisconfigured error that quotes
// nothing it printed.
func TestCredentialHelperFailures(t *testing.T) { // not parallel: sets PATH
	dir := fakeHelper(t, "berthfail")
	writeFile(t, filepath.Join(dir, "secret"), "printed-secret")
	reg := &miniRegistry{user: "robot"}
	reg.pass.Store("printed-secret")
	srv := httptest.NewServer(reg)
	t.Cleanup(srv.Close)

	writeFile(t, filepath.Join(dir, "fail"), "")
	c := mustNew(t, Config{Name: "h.test", URL: srv.URL, Credentials: Helper("berthfail", "h.test", 5*time.Second, time.Hour)})
	_, _, err := c.GetManifest(t.Context(), "app", "1")
	if !errors.Is(err, ErrMisconfigured) || strings.Contains(err.Error(), "printed-secret") {
		t.Fatalf("failing helper: %v, want ErrMisconfigured without its output", err)
	}
	if pub, _ := Public(err); strings.Contains(pub, "printed-secret") {
		t.Errorf("Public quotes the helper: %q", pub)
	}

	if err := os.Remove(filepath.Join(dir, "fail")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "slow"), "")
	c = mustNew(t, Config{Name: "h.test", URL: srv.URL, Credentials: Helper("berthfail", "h.test", 200*time.Millisecond, time.Hour)})
	_, _, err = c.GetManifest(t.Context(), "app", "1")
	if !errors.Is(err, ErrMisconfigured) || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("hanging helper: %v, want ErrMisconfigured naming the timeout", err)
	}

	c = mustNew(t, Config{Name: "h.test", URL: srv.URL, Credentials: Helper("not-installed-anywhere", "h.test", 0, 0)})
	if _, _, err := c.GetManifest(t.Context(), "app", "1"); !errors.Is(err, ErrMisconfigured) {
		t.Fatalf("missing helper: %v, want ErrMisconfigured", err)
	}
}

// A docker config.json: auths (auth, username/password, identitytoken)
// and credHelpers, looked up under the upstream's names in order.
func TestDockerConfig(t *testing.T) { // not parallel: sets PATH
	dir := fakeHelper(t, "berthcfg")
	writeFile(t, filepath.Join(dir, "secret"), "from-helper")
	b64 := base64.StdEncoding.EncodeToString([]byte("robot:from-auth"))
	for _, tt := range []struct {
		name, config, pass, idToken string
		bearer                      bool
	}{
		{"auth", `{"auths":{"https://reg.test/v1/":{"auth":"` + b64 + `"}}}`, "from-auth", "", false},
		{"username", `{"auths":{"alias.test":{"username":"robot","password":"from-fields"}}}`, "from-fields", "", false},
		{"credHelpers", `{"auths":{"other.test":{"auth":"` + b64 + `"}},"credHelpers":{"reg.test":"berthcfg"}}`, "from-helper", "", false},
		{"credsStore", `{"credsStore":"berthcfg"}`, "from-helper", "", false},
		{"identitytoken", `{"auths":{"reg.test":{"identitytoken":"id-tok"}}}`, "", "id-tok", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reg := &miniRegistry{user: "robot", bearer: tt.bearer, idToken: tt.idToken}
			reg.pass.Store(tt.pass)
			srv, caFile := tlsRegistry(t, reg, newCA(t), false)
			path := filepath.Join(t.TempDir(), "config.json")
			writeFile(t, path, tt.config)
			c := newTLSClient(t, Config{Name: "reg.test", URL: srv.URL, CAFile: caFile,
				Credentials: DockerConfig(path, []string{"reg.test", "alias.test"}, 5*time.Second, time.Hour)})
			if _, _, err := c.GetManifest(t.Context(), "app", "1"); err != nil {
				t.Fatal(err)
			}
		})
	}
	path := filepath.Join(t.TempDir(), "config.json")
	writeFile(t, path, `{"auths": {"reg.test": {"auth": "c2VjcmV0LWluLWpzb24"`)
	if err := ReadDockerConfig(path); err == nil || strings.Contains(err.Error(), "c2VjcmV0") {
		t.Errorf("ReadDockerConfig of a broken file = %v, want an error that quotes nothing", err)
	}
}

// An upstream 429 with Retry-After: the wait is passed on, and no request
// is sent during it, however many callers ask; after it, requests go on.
func TestRateLimitWindow(t *testing.T) {
	t.Parallel()
	reg := &miniRegistry{user: "robot"}
	reg.pass.Store("pw")
	srv := httptest.NewServer(reg)
	t.Cleanup(srv.Close)
	clock := newFakeClock()
	c := mustNew(t, Config{Name: "hub.test", URL: srv.URL, Username: "robot", Password: "pw"})
	c.now = clock.Now
	if _, _, err := c.GetManifest(t.Context(), "app", "1"); err != nil {
		t.Fatal(err)
	}
	reg.mu.Lock()
	reg.status, reg.retryAfter = http.StatusTooManyRequests, "30"
	reg.mu.Unlock()
	before := reg.requests.Load()
	_, _, err := c.GetManifest(t.Context(), "app", "1")
	var ue *Error
	if !errors.As(err, &ue) || !errors.Is(err, ErrRateLimited) || ue.RetryAfter != 30*time.Second {
		t.Fatalf("429: %v, want ErrRateLimited with RetryAfter 30s", err)
	}
	clock.Advance(10 * time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			_, _, err := c.GetManifest(context.Background(), "app", "1")
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.As(err, &ue) || !errors.Is(err, ErrRateLimited) || ue.RetryAfter != 20*time.Second {
			t.Fatalf("during the window: %v, want ErrRateLimited with 20s left", err)
		}
	}
	if got := reg.requests.Load() - before; got != 1 {
		t.Errorf("%d upstream requests during the rate limit, want 1 (the 429 itself)", got)
	}
	clock.Advance(21 * time.Second)
	if _, _, err := c.GetManifest(t.Context(), "app", "1"); err != nil {
		t.Fatalf("after the window: %v", err)
	}
}

func TestRetryAfterForms(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	for _, tt := range []struct {
		in   string
		want time.Duration
	}{
		{"120", 2 * time.Minute},
		{" 5 ", 5 * time.Second},
		{clock.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat), 90 * time.Second},
		{"", DefaultRetryAfter},
		{"soon", DefaultRetryAfter},
		{"-3", DefaultRetryAfter},
		{clock.Now().Add(-time.Minute).UTC().Format(http.TimeFormat), DefaultRetryAfter},
		{"999999", maxRetryAfter},
	} {
		c := mustNew(t, Config{URL: "https://r.test"})
		c.now = clock.Now
		if got := c.limit(tt.in); got != tt.want {
			t.Errorf("limit(%q) = %s, want %s", tt.in, got, tt.want)
		}
		if err := c.rateLimited("op"); err == nil {
			t.Errorf("after %q: not rate limited", tt.in)
		}
	}
}

// Public never passes on an upstream's URL, address or message text.
func TestPublicDescriptions(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close() // connection refused from now on
	c := mustNew(t, Config{Name: "gone.test", URL: "http://" + addr, Retries: 1})
	_, _, err := c.GetManifest(t.Context(), "app", "1")
	pub, ok := Public(err)
	if !ok || pub != "upstream gone.test: connection refused" {
		t.Errorf("Public(refused) = %q, %v", pub, ok)
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("the log's error should keep the address: %v", err)
	}
	e := &Error{Upstream: "u", Status: 503, Code: "UNAVAILABLE", Message: "internal host db-7.corp failed", Kind: ErrUnavailable}
	if pub, _ := Public(e); pub != "upstream u: answered HTTP 503 UNAVAILABLE" {
		t.Errorf("Public(503) = %q", pub)
	}
	if _, ok := Public(oci.ErrBlobUnknown); ok {
		t.Error("Public of a non-upstream error reports ok")
	}
}
