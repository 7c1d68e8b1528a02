package tlsserve

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/testutil"
	"github.com/berth-dev/berth/internal/testutil/pki"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

type fixture struct {
	ca                *pki.CA
	certFile, keyFile string
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	ca, err := pki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	return fixture{ca: ca, certFile: filepath.Join(dir, "tls.crt"), keyFile: filepath.Join(dir, "tls.key")}
}

func (f fixture) pair(t *testing.T) pki.Pair {
	t.Helper()
	p, err := f.ca.Server("berth", []string{"127.0.0.1", "localhost"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (f fixture) write(t *testing.T, name string, b []byte) {
	t.Helper()
	if err := pki.WriteFile(name, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func serialOf(r *Reloader) string { return Serial(r.Leaf()) }

func TestRotationPickedUp(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a, b := f.pair(t), f.pair(t)
	if err := a.Write(f.certFile, f.keyFile); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r, err := NewReloader(Config{CertFile: f.certFile, KeyFile: f.keyFile}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(r.Collectors()...)
	if got := serialOf(r); got != Serial(a.Leaf) {
		t.Fatalf("serving %s, want %s", got, Serial(a.Leaf))
	}
	if changed, err := r.Check(); changed || err != nil {
		t.Fatalf("unchanged files: Check = %v, %v", changed, err)
	}
	if err := b.Write(f.certFile, f.keyFile); err != nil {
		t.Fatal(err)
	}
	if changed, err := r.Check(); !changed || err != nil {
		t.Fatalf("rotated files: Check = %v, %v", changed, err)
	}
	if got := serialOf(r); got != Serial(b.Leaf) {
		t.Fatalf("serving %s after rotation, want %s", got, Serial(b.Leaf))
	}
	if got := testutil.Value(t, reg, "berth_tls_cert_expiry_timestamp_seconds", nil); got != float64(b.Leaf.NotAfter.Unix()) {
		t.Fatalf("expiry gauge %v, want %v", got, b.Leaf.NotAfter.Unix())
	}
	if got := testutil.Value(t, reg, "berth_tls_cert_reloads_total", map[string]string{"result": "ok"}); got != 1 {
		t.Fatalf("reloads ok = %v, want 1", got)
	}
}

// A rotation written file by file passes through states that do not load:
// each is refused and the old pair stays, until the pair is whole.
func TestInvalidNewPairKeepsOld(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a, b := f.pair(t), f.pair(t)
	if err := a.Write(f.certFile, f.keyFile); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r, err := NewReloader(Config{CertFile: f.certFile, KeyFile: f.keyFile}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(r.Collectors()...)
	steps := []struct {
		name     string
		cert     []byte
		key      []byte
		wantKey  string
		wantText string
	}{
		{"half-written certificate", b.CertPEM[:len(b.CertPEM)/2], a.KeyPEM, "tls.cert_file", ""},
		{"new certificate, old key", b.CertPEM, a.KeyPEM, "tls.key_file", "does not match"},
		{"empty key", b.CertPEM, nil, "tls.key_file", "no PEM private key"},
		{"garbage certificate", []byte("not a certificate"), b.KeyPEM, "tls.cert_file", "no PEM certificate"},
	}
	for i, s := range steps {
		f.write(t, f.certFile, s.cert)
		f.write(t, f.keyFile, s.key)
		changed, err := r.Check()
		var ke *KeyError
		if changed || !errors.As(err, &ke) || ke.Key != s.wantKey || !strings.Contains(err.Error(), s.wantText) {
			t.Fatalf("%s: Check = %v, %v; want a %s error containing %q", s.name, changed, err, s.wantKey, s.wantText)
		}
		if got := serialOf(r); got != Serial(a.Leaf) {
			t.Fatalf("%s: serving %s, want the old %s", s.name, got, Serial(a.Leaf))
		}
		if strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Fatalf("%s: the error shows key material: %v", s.name, err)
		}
		if got := testutil.Value(t, reg, "berth_tls_cert_reloads_total", map[string]string{"result": "error"}); got != float64(i+1) {
			t.Fatalf("%s: reloads error = %v, want %d", s.name, got, i+1)
		}
		// The same refused files are not tried (nor logged) again.
		if changed, err := r.Check(); changed || err != nil {
			t.Fatalf("%s, unchanged: Check = %v, %v", s.name, changed, err)
		}
	}
	if err := b.Write(f.certFile, f.keyFile); err != nil {
		t.Fatal(err)
	}
	if changed, err := r.Check(); !changed || err != nil || serialOf(r) != Serial(b.Leaf) {
		t.Fatalf("whole new pair: Check = %v, %v, serving %s; want %s", changed, err, serialOf(r), Serial(b.Leaf))
	}
}

func TestMissingFileKeepsOld(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a := f.pair(t)
	if err := a.Write(f.certFile, f.keyFile); err != nil {
		t.Fatal(err)
	}
	r, err := NewReloader(Config{CertFile: f.certFile, KeyFile: f.keyFile}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(f.keyFile); err != nil {
		t.Fatal(err)
	}
	var ke *KeyError
	if _, err := r.Check(); !errors.As(err, &ke) || ke.Key != "tls.key_file" || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("key removed: Check error %v, want tls.key_file not found", err)
	}
	if serialOf(r) != Serial(a.Leaf) {
		t.Fatal("the old pair was dropped when its key file went")
	}
}

func TestStartErrorsNameTheKey(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a, b := f.pair(t), f.pair(t)
	expired, err := f.ca.Server("old", []string{"localhost"}, time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name      string
		cert, key []byte
		wantKey   string
	}{
		{"mismatched pair", a.CertPEM, b.KeyPEM, "tls.key_file"},
		{"key in the cert file", a.KeyPEM, a.KeyPEM, "tls.cert_file"},
		{"cert in the key file", a.CertPEM, a.CertPEM, "tls.key_file"},
		{"expired", expired.CertPEM, expired.KeyPEM, "tls.cert_file"},
		{"a key that does not parse", a.CertPEM, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), "tls.key_file"},
		{"a certificate that does not parse", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), a.KeyPEM, "tls.cert_file"},
	}
	for _, c := range cases {
		f.write(t, f.certFile, c.cert)
		f.write(t, f.keyFile, c.key)
		_, err := NewReloader(Config{CertFile: f.certFile, KeyFile: f.keyFile}, zerolog.Nop())
		var ke *KeyError
		if !errors.As(err, &ke) || ke.Key != c.wantKey {
			t.Errorf("%s: error %v, want one about %s", c.name, err, c.wantKey)
		}
	}
	_, err = NewReloader(Config{CertFile: filepath.Join(t.TempDir(), "none.crt"), KeyFile: f.keyFile}, zerolog.Nop())
	var ke *KeyError
	if !errors.As(err, &ke) || ke.Key != "tls.cert_file" || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing cert file: %v", err)
	}
}

// Over a real listener: HTTP/2 is negotiated, a rotation is served to new
// connections while a connection made before it keeps working, and Run
// finds the new files on its own.
func TestServeRotateHTTP2(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a, b := f.pair(t), f.pair(t)
	if err := a.Write(f.certFile, f.keyFile); err != nil {
		t.Fatal(err)
	}
	r, err := NewReloader(Config{CertFile: f.certFile, KeyFile: f.keyFile}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, 10*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	srv := serveTLS(t, ServerConfig(r), http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.WriteString(w, req.Proto)
	}), r.ErrorLog())

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.ca.PEM)
	newClient := func() *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	}
	get := func(c *http.Client) (proto, serial string) {
		t.Helper()
		resp, err := c.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body), Serial(resp.TLS.PeerCertificates[0])
	}
	before := newClient()
	if proto, serial := get(before); proto != "HTTP/2.0" || serial != Serial(a.Leaf) {
		t.Fatalf("got %s with serial %s, want HTTP/2.0 with %s", proto, serial, Serial(a.Leaf))
	}
	if err := b.Write(f.certFile, f.keyFile); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c := newClient()
		_, serial := get(c)
		c.CloseIdleConnections()
		if serial == Serial(b.Leaf) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still serving %s after rotating to %s", serial, Serial(b.Leaf))
		}
		time.Sleep(10 * time.Millisecond) // a poll interval, not a synchronisation
	}
	if _, serial := get(before); serial != Serial(a.Leaf) {
		t.Fatalf("the connection made before the rotation now shows %s: it was re-made", serial)
	}
}

// mTLS: no certificate, or one of another CA, is refused in the handshake;
// the client CA file is re-read like the pair, so a new CA takes over.
func TestClientCertificateRequired(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	if err := f.pair(t).Write(f.certFile, f.keyFile); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "clients.crt")
	f.write(t, caFile, f.ca.PEM)
	r, err := NewReloader(Config{CertFile: f.certFile, KeyFile: f.keyFile, ClientCAFile: caFile}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(r.Collectors()...)
	srv := serveTLS(t, ServerConfig(r), http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.WriteString(w, req.TLS.PeerCertificates[0].Subject.CommonName)
	}), r.ErrorLog())
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.ca.PEM)
	get := func(h2 bool, certs ...tls.Certificate) (string, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs}, ForceAttemptHTTP2: h2}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get(srv.URL)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.Proto + " " + string(body), err
	}
	clientOf := func(ca *pki.CA, name string) tls.Certificate {
		p, err := ca.Client(name)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	other, err := pki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	alice, mallory := clientOf(f.ca, "alice"), clientOf(other, "mallory")
	for i, h2 := range []bool{true, false} {
		if got, err := get(h2); err == nil {
			t.Fatalf("a client without a certificate got %q", got)
		}
		if got, err := get(h2, mallory); err == nil {
			t.Fatalf("a client certificate of another CA got %q", got)
		}
		// The server logs each refusal after the client has seen it.
		refused := float64(2 * (i + 1))
		for deadline := time.Now().Add(30 * time.Second); testutil.Value(t, reg, "berth_tls_handshake_errors_total", nil) < refused; {
			if time.Now().After(deadline) {
				t.Fatalf("berth_tls_handshake_errors_total = %v, want %v", testutil.Value(t, reg, "berth_tls_handshake_errors_total", nil), refused)
			}
			time.Sleep(10 * time.Millisecond) // a poll interval
		}
		want := map[bool]string{true: "HTTP/2.0 alice", false: "HTTP/1.1 alice"}[h2]
		if got, err := get(h2, alice); err != nil || got != want {
			t.Fatalf("alice: %q, %v; want %q", got, err, want)
		}
	}
	// The other CA replaces the first.
	f.write(t, caFile, other.PEM)
	if changed, err := r.Check(); !changed || err != nil {
		t.Fatalf("new client CA file: Check = %v, %v", changed, err)
	}
	if got, err := get(true, mallory); err != nil || got != "HTTP/2.0 mallory" {
		t.Fatalf("after the CA rotation mallory got %q, %v", got, err)
	}
	if got, err := get(true, alice); err == nil {
		t.Fatalf("after the CA rotation alice (old CA) got %q", got)
	}
	// A CA file without a certificate is refused; the CAs stay.
	f.write(t, caFile, []byte("nothing here"))
	var ke *KeyError
	if _, err := r.Check(); !errors.As(err, &ke) || ke.Key != "tls.client_ca_file" {
		t.Fatalf("empty CA file: %v", err)
	}
	if got, err := get(true, mallory); err != nil || got != "HTTP/2.0 mallory" {
		t.Fatalf("after a refused CA file mallory got %q, %v", got, err)
	}
	for _, bad := range []string{filepath.Join(t.TempDir(), "none"), f.keyFile} {
		if _, err := NewReloader(Config{CertFile: f.certFile, KeyFile: f.keyFile, ClientCAFile: bad}, zerolog.Nop()); !errors.As(err, &ke) || ke.Key != "tls.client_ca_file" {
			t.Errorf("client_ca_file %s: %v", bad, err)
		}
	}
}

type server struct{ URL string }

// serveTLS serves h as berth does: http.Server.ServeTLS with cfg (which
// adds h2 and wraps the listener).
func serveTLS(t *testing.T, cfg *tls.Config, h http.Handler, errLog *log.Logger) server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: cfg, ErrorLog: errLog}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Error(err)
		}
	})
	return server{URL: "https://" + ln.Addr().String()}
}
