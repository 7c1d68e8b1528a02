package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/berth-dev/berth/internal/testutil"
	"github.com/berth-dev/berth/internal/testutil/pki"
	"github.com/berth-dev/berth/internal/tlsserve"
)

// tlsFiles writes a CA's server pair for 127.0.0.1 and returns the files and
// a client that trusts the CA (HTTP/2 when h2, else HTTP/1.1 only).
func tlsFiles(t *testing.T) (certFile, keyFile string, ca *pki.CA, client func(h2 bool) *http.Client) {
	t.Helper()
	ca, err := pki.NewCA("berth test CA")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.Server("berth", []string{"127.0.0.1", "localhost"}, ca.Cert.NotAfter)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := p.Write(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	client = func(h2 bool) *http.Client {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr}
	}
	return certFile, keyFile, ca, client
}

// berth serve with tls: the API over HTTP/2 and HTTP/1.1 on addr, a blob
// pushed and pulled whole (the corked write path) over both, plain HTTP
// refused, the expiry gauge exported.
func TestServeTLS(t *testing.T) {
	t.Parallel()
	certFile, keyFile, ca, client := tlsFiles(t)
	cfg := testConfig(t, nil)
	cfg.TLS = TLSConfig{CertFile: certFile, KeyFile: keyFile}
	addr, _ := runServe(t, cfg)
	base := "https://" + addr

	blob := bytes.Repeat([]byte("berth over tls "), 100_000) // 1.5 MB: more than one write
	dgst := fmt.Sprintf("sha256:%x", sha256.Sum256(blob))
	resp, err := client(true).Post(base+"/v2/team/tls/blobs/uploads/?digest="+dgst, "application/octet-stream", bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || resp.Proto != "HTTP/2.0" {
		t.Fatalf("monolithic push: %s %s, want 201 over HTTP/2.0", resp.Proto, resp.Status)
	}
	// A chunked upload over HTTP/2 (the body's idle deadline is set through
	// http.ResponseController, which HTTP/2 supports too).
	h2 := client(true)
	resp, err = h2.Post(base+"/v2/team/chunked/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	for i, chunk := range [][]byte{blob[:1<<20], blob[1<<20:]} {
		req, _ := http.NewRequest(http.MethodPatch, base+loc, bytes.NewReader(chunk))
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", i<<20, i<<20+len(chunk)-1))
		resp, err = h2.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted || resp.Proto != "HTTP/2.0" {
			t.Fatalf("PATCH chunk %d: %s %s", i, resp.Proto, resp.Status)
		}
		loc = resp.Header.Get("Location")
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	req, _ := http.NewRequest(http.MethodPut, base+loc+sep+"digest="+dgst, nil)
	if resp, err = h2.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT closing the chunked upload: %s", resp.Status)
	}
	for _, h2 := range []bool{true, false} {
		resp, err := client(h2).Get(base + "/v2/team/chunked/blobs/" + dgst)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := map[bool]string{true: "HTTP/2.0", false: "HTTP/1.1"}[h2]
		if err != nil || resp.StatusCode != http.StatusOK || resp.Proto != want || !bytes.Equal(got, blob) {
			t.Fatalf("blob GET: %s %s, %d bytes (equal %v), %v; want 200 over %s", resp.Proto, resp.Status, len(got), bytes.Equal(got, blob), err, want)
		}
		if v := resp.TLS.Version; v < tls.VersionTLS12 {
			t.Fatalf("TLS version %x", v)
		}
	}
	if resp, err := http.Get("http://" + addr + "/v2/"); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain HTTP to the TLS port: %v %v, want net/http's 400", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, err = client(true).Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := fmt.Sprintf("berth_tls_cert_expiry_timestamp_seconds %g", float64(ca.Cert.NotAfter.Unix()))
	if !strings.Contains(string(metrics), want) {
		t.Fatalf("/metrics lacks %q", want)
	}
	// A TLS 1.1 client is refused.
	old := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11} //nolint:gosec // the point of the test
	if c, err := tls.Dial("tcp", addr, old); err == nil || !strings.Contains(err.Error(), "protocol version") {
		if c != nil {
			c.Close()
		}
		t.Fatalf("a TLS 1.1 handshake: %v, want the server's protocol version alert", err)
	}
}

// A pair that does not load stops start-up with one line naming the key.
func TestServeTLSStartErrors(t *testing.T) {
	t.Parallel()
	certFile, keyFile, ca, _ := tlsFiles(t)
	other, err := ca.Server("other", []string{"localhost"}, ca.Cert.NotAfter)
	if err != nil {
		t.Fatal(err)
	}
	otherKey := filepath.Join(t.TempDir(), "other.key")
	if err := os.WriteFile(otherKey, other.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		tls  TLSConfig
		want string
	}{
		{TLSConfig{CertFile: certFile, KeyFile: otherKey}, "config key tls.key_file: the private key does not match the certificate in tls.cert_file"},
		{TLSConfig{CertFile: keyFile, KeyFile: keyFile}, "config key tls.cert_file: no PEM certificate in the file"},
		{TLSConfig{CertFile: certFile, KeyFile: keyFile, ClientCAFile: keyFile}, "config key tls.client_ca_file: no PEM certificate in the file"},
	}
	for _, c := range cases {
		cfg := testConfig(t, nil)
		cfg.TLS = c.tls
		err := serve(t.Context(), cfg, nil)
		if err == nil || err.Error() != c.want || strings.Contains(err.Error(), "\n") {
			t.Errorf("serve with %+v: %v\nwant %s", c.tls, err, c.want)
		}
	}
	if _, err := loadConfig([]string{"--tls-cert-file", certFile}, func(string) string { return "" }); err == nil ||
		err.Error() != "config key tls.key_file: required with tls.cert_file" {
		t.Errorf("cert without key: %v", err)
	}
	if _, err := loadConfig([]string{"--tls-client-ca-file", certFile}, func(string) string { return "" }); err == nil ||
		!strings.HasPrefix(err.Error(), "config key tls.client_ca_file: needs tls.cert_file") {
		t.Errorf("client CA without a pair: %v", err)
	}
}

// SIGHUP re-reads the certificate files at once, without waiting for the
// poll: the next connection is shown the new certificate.
func TestServeTLSSighup(t *testing.T) {
	t.Parallel()
	certFile, keyFile, ca, client := tlsFiles(t)
	cfg := testConfig(t, nil)
	cfg.TLS = TLSConfig{CertFile: certFile, KeyFile: keyFile}
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal, 1)
	reloaded := make(chan error)
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serveWith(ctx, cfg, hooks{ready: ready, reload: hup, reloaded: reloaded,
			load: func() (Config, error) { return cfg, nil }})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	next, err := ca.Server("berth", []string{"127.0.0.1"}, ca.Cert.NotAfter)
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Write(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	hup <- syscall.SIGHUP
	if err := testutil.Recv(t, reloaded, "the reload"); err != nil {
		t.Fatal(err)
	}
	resp, err := client(false).Get("https://" + addr + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, want := tlsserve.Serial(resp.TLS.PeerCertificates[0]), tlsserve.Serial(next.Leaf); got != want {
		t.Fatalf("after SIGHUP the server shows serial %s, want the new %s", got, want)
	}
}

// berth warm, export and import reach a berth with tls.client_ca_file
// with --cacert, --cert and --key; without the certificate they are refused.
func TestClientCommandsMTLS(t *testing.T) {
	t.Parallel()
	certFile, keyFile, ca, _ := tlsFiles(t)
	dir := t.TempDir()
	caFile, clientCert, clientKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	if err := pki.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := ca.Client("ci")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(clientCert, clientKey); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, nil)
	cfg.TLS = TLSConfig{CertFile: certFile, KeyFile: keyFile, ClientCAFile: caFile}
	addr, _ := runServe(t, cfg)

	// An image, pushed with the client certificate.
	pair, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}}}
	put := func(method, path, ctype string, body []byte, want int) {
		t.Helper()
		req, _ := http.NewRequest(method, "https://"+addr+path, bytes.NewReader(body))
		req.Header.Set("Content-Type", ctype)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %s", method, path, resp.Status)
		}
	}
	layer, config := []byte("layer over mTLS"), []byte(`{"architecture":"amd64","os":"linux"}`)
	for _, b := range [][]byte{layer, config} {
		put(http.MethodPost, fmt.Sprintf("/v2/team/app/blobs/uploads/?digest=sha256:%x", sha256.Sum256(b)), "application/octet-stream", b, http.StatusCreated)
	}
	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%x","size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%x","size":%d}]}`,
		sha256.Sum256(config), len(config), sha256.Sum256(layer), len(layer))
	put(http.MethodPut, "/v2/team/app/manifests/1", "application/vnd.oci.image.manifest.v1+json", []byte(manifest), http.StatusCreated)

	image, server := addr+"/team/app:1", "https://"+addr
	if out, err := runCmd(t, "", "warm", "--server", server, "--cacert", caFile, "--cert", clientCert, "--key", clientKey, image); err != nil {
		t.Fatalf("warm with a client certificate: %v\n%s", err, out)
	}
	bundle := filepath.Join(dir, "app.tar")
	if out, err := runCmd(t, "", "export", "--server", server, "--cacert", caFile, "--cert", clientCert, "--key", clientKey, "--out", bundle, image); err != nil {
		t.Fatalf("export with a client certificate: %v\n%s", err, out)
	}
	// Refused in the handshake. With TLS 1.3 the client's side of the
	// handshake ends first, so the refusal reaches it as the server's
	// alert, a broken pipe under its request or an HTTP/2 connection that
	// could not be established, by timing: the error says why in each case.
	if out, err := runCmd(t, "", "warm", "--server", server, "--cacert", caFile, image); err == nil ||
		!strings.Contains(out, "the server asked for a client certificate: give one with --cert and --key") {
		t.Fatalf("warm without a client certificate: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "", "warm", "--server", server, "--cert", clientCert, image); err == nil || !strings.Contains(err.Error(), "--cert and --key") {
		t.Fatalf("--cert without --key: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "", "warm", "--server", server, "--cacert", clientKey, image); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("--cacert of a key: %v\n%s", err, out)
	}
}
