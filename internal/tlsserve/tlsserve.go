// Package tlsserve is berth's TLS serving side: the server's certificate pair,
// re-read from its files when they change (cert-manager, certbot), and the
// tls.Config the API's listener uses.
package tlsserve

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Config names the files of the tls section of berth's configuration.
type Config struct {
	CertFile     string // PEM: the certificate, then its chain
	KeyFile      string // PEM: the private key
	ClientCAFile string // PEM: CAs a client certificate must chain to; "" asks for none
}

// KeyError is a problem with the file one configuration key names, such as
// "tls.key_file", so that start-up can say which key to fix.
type KeyError struct {
	Key string
	Err error
}

func (e *KeyError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *KeyError) Unwrap() error { return e.Err }

// DefaultInterval is how often Run looks at the files: a rotated pair is
// served within about this long.
const DefaultInterval = 2 * time.Second

// Reloader holds the certificate pair being served and replaces it when its
// files change and the new pair is valid. A pair that does not load (half
// written, a certificate and a key that do not match, expired) is refused
// with one error line, and the old one stays.
type Reloader struct {
	certFile, keyFile string
	log               zerolog.Logger
	cur               atomic.Pointer[tls.Certificate]
	reloads           *prometheus.CounterVec

	mu   sync.Mutex // one Check at a time
	seen [sha256.Size]byte
	// readErr is the last read failure logged, so that a missing file is
	// said once rather than every interval.
	readErr string
}

// NewReloader loads the pair in certFile and keyFile; an error is a
// *KeyError.
func NewReloader(certFile, keyFile string, log zerolog.Logger) (*Reloader, error) {
	r := &Reloader{certFile: certFile, keyFile: keyFile, log: log,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_tls_cert_reloads_total",
			Help: "Changes of the TLS certificate files seen: result ok (now served) or error (refused, the old pair stays)."},
			[]string{"result"})}
	certPEM, keyPEM, err := r.read()
	if err != nil {
		return nil, err
	}
	cert, err := parse(certPEM, keyPEM, time.Now())
	if err != nil {
		return nil, err
	}
	r.seen = digest(certPEM, keyPEM)
	r.cur.Store(cert)
	r.reloads.WithLabelValues("ok")
	r.reloads.WithLabelValues("error")
	return r, nil
}

// Collectors are r's metrics: berth_tls_cert_expiry_timestamp_seconds (alert
// on it some days ahead) and berth_tls_cert_reloads_total{result}.
func (r *Reloader) Collectors() []prometheus.Collector {
	return []prometheus.Collector{r.reloads, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "berth_tls_cert_expiry_timestamp_seconds",
		Help: "When the TLS certificate being served expires (Unix time).",
	}, func() float64 { return float64(r.cur.Load().Leaf.NotAfter.Unix()) })}
}

// GetCertificate is tls.Config's GetCertificate: the pair loaded last.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cur.Load(), nil
}

// Leaf is the certificate being served.
func (r *Reloader) Leaf() *x509.Certificate { return r.cur.Load().Leaf }

// Run checks the files every interval until ctx ends.
func (r *Reloader) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_, _ = r.Check()
		}
	}
}

// Check reads the files and, if they changed since the last check, loads
// them: changed says whether a new pair is now served. A pair refused once
// is not tried again until the files change again.
func (r *Reloader) Check() (changed bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	certPEM, keyPEM, err := r.read()
	if err != nil {
		if err.Error() != r.readErr {
			r.readErr = err.Error()
			r.log.Warn().Err(err).Msg("tls: cannot read the certificate files; still serving the old certificate")
		}
		return false, err
	}
	r.readErr = ""
	sum := digest(certPEM, keyPEM)
	if sum == r.seen {
		return false, nil
	}
	r.seen = sum
	cert, err := parse(certPEM, keyPEM, time.Now())
	if err != nil {
		r.reloads.WithLabelValues("error").Inc()
		r.log.Error().Err(err).Msg("tls: new certificate files refused; still serving the old certificate")
		return false, err
	}
	old := r.cur.Swap(cert)
	r.reloads.WithLabelValues("ok").Inc()
	r.log.Info().Str("subject", cert.Leaf.Subject.String()).Str("serial", Serial(cert.Leaf)).
		Time("not_after", cert.Leaf.NotAfter).Str("old_serial", Serial(old.Leaf)).
		Msg("tls: certificate reloaded")
	return true, nil
}

func (r *Reloader) read() (certPEM, keyPEM []byte, err error) {
	certPEM, err = os.ReadFile(r.certFile)
	if err != nil {
		return nil, nil, &KeyError{"tls.cert_file", err}
	}
	keyPEM, err = os.ReadFile(r.keyFile)
	if err != nil {
		return nil, nil, &KeyError{"tls.key_file", err}
	}
	return certPEM, keyPEM, nil
}

func digest(certPEM, keyPEM []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write(certPEM)
	h.Write([]byte{0})
	h.Write(keyPEM)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// parse loads a pair, saying which file is at fault. The key's own text
// never appears in an error.
func parse(certPEM, keyPEM []byte, now time.Time) (*tls.Certificate, error) {
	if !bytes.Contains(certPEM, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil, &KeyError{"tls.cert_file", errors.New("no PEM certificate in the file")}
	}
	if !bytes.Contains(keyPEM, []byte("PRIVATE KEY-----")) {
		return nil, &KeyError{"tls.key_file", errors.New("no PEM private key in the file")}
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// crypto/tls says which input it refused only in its messages.
		switch msg := err.Error(); {
		case strings.Contains(msg, "does not match"):
			return nil, &KeyError{"tls.key_file", errors.New("the private key does not match the certificate in tls.cert_file")}
		case strings.Contains(msg, "private key") || strings.Contains(msg, "key input"):
			return nil, &KeyError{"tls.key_file", fmt.Errorf("the private key does not load: %w", err)}
		}
		return nil, &KeyError{"tls.cert_file", fmt.Errorf("the certificate does not load: %w", err)}
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, &KeyError{"tls.cert_file", err}
		}
	}
	if now.After(cert.Leaf.NotAfter) {
		return nil, &KeyError{"tls.cert_file", fmt.Errorf("the certificate (serial %s) expired at %s", Serial(cert.Leaf), cert.Leaf.NotAfter.UTC().Format(time.RFC3339))}
	}
	return &cert, nil
}

// Serial is c's serial number as openssl prints it: upper-case hex, whole bytes.
func Serial(c *x509.Certificate) string {
	s := fmt.Sprintf("%X", c.SerialNumber)
	if len(s)%2 == 1 {
		s = "0" + s
	}
	return s
}

// ServerConfig is the tls.Config of berth's listener: TLS 1.2 or later,
// HTTP/2 offered before HTTP/1.1, the certificate from r, and with
// clientCAFile client certificates required and verified (mTLS).
func ServerConfig(r *Reloader, clientCAFile string) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.GetCertificate,
		NextProtos:     []string{"h2", "http/1.1"},
	}
	if clientCAFile != "" {
		b, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, &KeyError{"tls.client_ca_file", err}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, &KeyError{"tls.client_ca_file", errors.New("no PEM certificate in the file")}
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
