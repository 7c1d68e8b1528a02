package main

import (
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

	"github.com/berth-dev/berth/internal/testutil/pki"
	"github.com/opencontainers/go-digest"
)

// The TLS rows: the warm big blob over HTTPS, berth (tls.cert_file) against
// nginx with the same certificate and key sending the same file (berth's
// own blob file, so both read one page cache), with 1 and with warmClients
// clients, interleaved like the plain warm rows. Both speak HTTP/1.1 over
// TLS 1.3 with keep-alive; nginx with `ssl` on its listener (sendfile does
// not apply to TLS without kernel TLS), berth as it ships. A berth and an
// nginx of their own, so that the other measurements are untouched.
//
// The samples are filed under berth and nginx (their columns), with metrics
// of their own; the processes are named berth-tls and nginx-tls.
//
// A third row, without a target, is the single client over HTTP/2 (nginx's
// listener has `http2`), which Go clients such as crane and containerd use
// when a server offers it.
const (
	mTLSWarm1  = "tls_warm_blob_1_client_GBps"
	mTLSWarmN  = "tls_warm_blob_n_clients_GBps"
	mTLSWarmH2 = "tls_warm_blob_h2_1_client_GBps"
)

func (b *bench) measureTLS(ctx context.Context) error {
	dir := filepath.Join(b.tmp, "tls")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ca, err := pki.NewCA("berthbench CA")
	if err != nil {
		return err
	}
	pair, err := ca.Server("127.0.0.1", []string{"127.0.0.1", "localhost"}, ca.Cert.NotAfter)
	if err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := pair.Write(certFile, keyFile); err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	client := func(conns int) *http.Client {
		c := newClient(conns)
		c.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: pool}
		return c
	}
	h2Client := func() *http.Client {
		c := client(1)
		c.Transport.(*http.Transport).ForceAttemptHTTP2 = true
		return c
	}

	// The blob: the big one of the full run, or (with -only tls) one of the
	// same size made here.
	var big blob
	if b.content != nil {
		big = b.content.big.Layers[0]
	} else {
		big = (&planner{}).blob(b.o.bigSize)
		h := sha256.New()
		if _, err := io.CopyBuffer(h, big.reader(), make([]byte, 1<<20)); err != nil {
			return err
		}
		big.Digest = digest.NewDigest(digest.SHA256, h)
	}

	cfg := filepath.Join(dir, "berth.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("upstreams: []\noffline: true\nlocal: [\"**\"]\ntls:\n  cert_file: %s\n  key_file: %s\n",
		certFile, keyFile)), 0o644); err != nil {
		return err
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	data := filepath.Join(dir, "berth-data")
	bp, err := b.startProc("berth-tls", nil, b.o.berth, "serve", "--config", cfg, "--addr", addr,
		"--data", data, "--log-format", "json", "--log-level", "info")
	if err != nil {
		return err
	}
	defer bp.stop()
	if err := waitReady(ctx, bp, "https://"+addr+"/readyz"); err != nil {
		return err
	}
	berth := &server{name: srvBerth, base: "https://" + addr, proc: bp}
	const repo = "bench/tls"
	b.logf("tls: pushing the %s blob to berth over TLS", size(big.Size))
	if err := pushBlob(ctx, client(1), berth.base, repo, big); err != nil {
		return fmt.Errorf("push over TLS: %w", err)
	}
	servers := map[string]*server{srvBerth: berth}
	if b.o.nginx != "" {
		ng, err := b.startNginxTLS(ctx, dir, filepath.Join(data, "blobs"), certFile, keyFile)
		if err != nil {
			b.note("nginx over TLS skipped: %v", err)
		} else {
			defer ng.proc.stop()
			servers[srvNginx] = ng
		}
	}
	order := func(round int) []string {
		out := []string{srvBerth}
		if servers[srvNginx] != nil {
			out = append(out, srvNginx)
		}
		k := round % len(out)
		return append(out[k:], out[:k]...)
	}
	// Both must negotiate the same protocol and cipher, or the rows compare
	// ciphers rather than servers.
	negotiated := map[string]string{}
	for _, name := range order(0) {
		conn, err := tls.Dial("tcp", strings.TrimPrefix(servers[name].base, "https://"), &tls.Config{RootCAs: pool})
		if err != nil {
			return b.fail(name, "tls handshake", err)
		}
		cs := conn.ConnectionState()
		conn.Close()
		negotiated[name] = tls.VersionName(cs.Version) + " " + tls.CipherSuiteName(cs.CipherSuite)
		b.logf("tls: %-18s %s", serverLabels[name], negotiated[name])
	}
	if ng, ok := negotiated[srvNginx]; ok && ng != negotiated[srvBerth] {
		b.note("over TLS berth negotiated %s and nginx %s: the TLS rows compare different ciphers", negotiated[srvBerth], ng)
	}
	// Prime: one verified read from each, so both start from a warm page
	// cache; and each must speak HTTP/2 to the h2 client for that row.
	h2 := true
	for _, name := range order(0) {
		c := client(1)
		if _, err := fetch(ctx, c, tlsBlobURL(servers[name], repo, big.Digest), big, true); err != nil {
			return b.fail(name, "tls prime", err)
		}
		c.CloseIdleConnections()
		c = h2Client()
		resp, err := c.Get(servers[name].base + "/")
		if err != nil {
			return b.fail(name, "tls h2 probe", err)
		}
		drain(resp)
		c.CloseIdleConnections()
		if resp.ProtoMajor != 2 {
			b.note("%s answered the HTTP/2 client with %s: the HTTP/2 row is left out", serverLabels[name], resp.Proto)
			h2 = false
		}
	}
	for r := range b.o.rounds {
		for i, n := range []int{1, b.o.warmClients} {
			metric, reps := mTLSWarm1, b.o.warmReps
			if i == 1 {
				metric, reps = mTLSWarmN, 1
			}
			for rep := range reps {
				for _, name := range order(r + rep) {
					c := client(n)
					wall, _, err := pullManyWith(ctx, c, tlsBlobURL(servers[name], repo, big.Digest), big, n)
					c.CloseIdleConnections()
					if err != nil {
						return b.fail(name, "tls warm blob", err)
					}
					gbps := float64(big.Size) * float64(n) / wall.Seconds() / 1e9
					b.samples.add(metric, name, gbps)
					b.logf("  warm %s blob over TLS, %2d clients, %-18s %6.2f GB/s", size(big.Size), n, serverLabels[name], gbps)
				}
			}
		}
		for rep := range b.o.warmReps {
			if !h2 {
				break
			}
			for _, name := range order(r + rep) {
				c := h2Client()
				wall, _, err := pullManyWith(ctx, c, tlsBlobURL(servers[name], repo, big.Digest), big, 1)
				c.CloseIdleConnections()
				if err != nil {
					return b.fail(name, "tls warm blob over HTTP/2", err)
				}
				gbps := float64(big.Size) / wall.Seconds() / 1e9
				b.samples.add(mTLSWarmH2, name, gbps)
				b.logf("  warm %s blob over TLS, HTTP/2, 1 client, %-18s %6.2f GB/s", size(big.Size), serverLabels[name], gbps)
			}
		}
	}
	for name, s := range servers {
		if rss, err := peakRSS(s.proc.pid()); err == nil {
			b.logf("  peak RSS %-18s %6.1f MiB", serverLabels[name], float64(rss)/mib)
		}
	}
	return nil
}

// startNginxTLS starts nginx sending the files under root at /sha256/...
// over TLS with certFile and keyFile, logging as startNginx's does.
func (b *bench) startNginxTLS(ctx context.Context, dir, root, certFile, keyFile string) (*server, error) {
	dir = filepath.Join(dir, "nginx")
	for _, d := range []string{"", "body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	conf := nginxConfig(dir, fmt.Sprintf(`
    listen %s ssl http2;
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { root %s; }
`, addr, certFile, keyFile, root))
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	p, err := b.startProc("nginx-tls", nil, b.o.nginx, "-p", dir+"/", "-c", path, "-e", filepath.Join(dir, "error.log"))
	if err != nil {
		return nil, err
	}
	if err := waitReady(ctx, p, "https://"+addr+"/"); err != nil {
		p.stop()
		return nil, err
	}
	return &server{name: srvNginx, base: "https://" + addr, proc: p}, nil
}

// tlsBlobURL is the blob's URL on s: nginx sends berth's own blob file,
// <data>/blobs/sha256/<xx>/<hex> (blobURL's nginx form is distribution's
// layout, with /data at the end).
func tlsBlobURL(s *server, repo string, d digest.Digest) string {
	if s.name == srvNginx {
		return s.base + "/sha256/" + d.Encoded()[:2] + "/" + d.Encoded()
	}
	return s.blobURL(repo, d)
}
