// Package tlsserve is berth's TLS serving side: the server's certificate pair
// and the client CAs of mTLS, re-read from their files when they change
// (cert-manager, certbot), the tls.Config the API's listener uses, and the
// metrics an operator watches (expiry, rotations, failed handshakes).
package tlsserve

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	stdlog "log"
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

// Reloader holds the certificate pair being served (and the client CAs,
// with mTLS) and replaces them when their files change and load. Files that
// do not load (half written, a certificate and a key that do not match, an
// expired certificate, a CA file without a certificate) are refused with one
// error line, and the old ones stay.
type Reloader struct {
	files   Config
	log     zerolog.Logger
	cur     atomic.Pointer[state]
	reloads *prometheus.CounterVec
	// handshakeErrors counts failed handshakes (see ErrorLog).
	handshakeErrors prometheus.Counter

	mu   sync.Mutex // one Check at a time
	seen [sha256.Size]byte
	// readErr is the last read failure logged, so that a missing file is
	// said once rather than every interval.
	readErr string
}

// state is what one set of files loaded into.
type state struct {
	cert *tls.Certificate
	// conf is what a handshake uses when client certificates are required
	// (GetConfigForClient): the client CAs live in a tls.Config, so a new
	// pool is a new config. nil without ClientCAFile.
	conf *tls.Config
	cas  int // certificates in the client CA file
}

// NewReloader loads the files c names (CertFile and KeyFile are required);
// an error is a *KeyError.
func NewReloader(c Config, log zerolog.Logger) (*Reloader, error) {
	r := &Reloader{files: c, log: log,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_tls_cert_reloads_total",
			Help: "Changes of the TLS files (certificate, key, client CAs) seen: result ok (now served) or error (refused, the old ones stay)."},
			[]string{"result"}),
		handshakeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_tls_handshake_errors_total",
			Help: "TLS handshakes that failed: clients that do not trust the certificate, lack a client certificate (mTLS), offer only TLS 1.1, or hang up."})}
	pems, err := r.read()
	if err != nil {
		return nil, err
	}
	st, err := r.load(pems, time.Now())
	if err != nil {
		return nil, err
	}
	r.seen = digest(pems)
	r.cur.Store(st)
	r.reloads.WithLabelValues("ok")
	r.reloads.WithLabelValues("error")
	return r, nil
}

// Collectors are r's metrics: berth_tls_cert_expiry_timestamp_seconds (alert
// on it some days ahead), berth_tls_cert_reloads_total{result} and
// berth_tls_handshake_errors_total.
func (r *Reloader) Collectors() []prometheus.Collector {
	return []prometheus.Collector{r.reloads, r.handshakeErrors, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "berth_tls_cert_expiry_timestamp_seconds",
		Help: "When the TLS certificate being served expires (Unix time).",
	}, func() float64 { return float64(r.Leaf().NotAfter.Unix()) })}
}

// GetCertificate is tls.Config's GetCertificate: the pair loaded last.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cur.Load().cert, nil
}

// getConfigForClient is tls.Config's GetConfigForClient with mTLS: the
// client CAs loaded last.
func (r *Reloader) getConfigForClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	return r.cur.Load().conf, nil
}

// Leaf is the certificate being served.
func (r *Reloader) Leaf() *x509.Certificate { return r.cur.Load().cert.Leaf }

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
// them: changed says whether new ones are now served. Files refused once
// are not tried again until they change again.
func (r *Reloader) Check() (changed bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pems, err := r.read()
	if err != nil {
		if err.Error() != r.readErr {
			r.readErr = err.Error()
			r.log.Warn().Err(err).Msg("tls: cannot read the certificate files; still serving the old certificate")
		}
		return false, err
	}
	r.readErr = ""
	sum := digest(pems)
	if sum == r.seen {
		return false, nil
	}
	r.seen = sum
	st, err := r.load(pems, time.Now())
	if err != nil {
		r.reloads.WithLabelValues("error").Inc()
		r.log.Error().Err(err).Msg("tls: new certificate files refused; still serving the old certificate")
		return false, err
	}
	old := r.cur.Swap(st)
	r.reloads.WithLabelValues("ok").Inc()
	ev := r.log.Info().Str("subject", st.cert.Leaf.Subject.String()).Str("serial", Serial(st.cert.Leaf)).
		Time("not_after", st.cert.Leaf.NotAfter).Str("old_serial", Serial(old.cert.Leaf))
	if st.conf != nil {
		ev = ev.Int("client_cas", st.cas)
	}
	ev.Msg("tls: certificate reloaded")
	return true, nil
}

// read returns the files' contents: certificate, key and, with mTLS, client CAs.
func (r *Reloader) read() ([][]byte, error) {
	files := []struct{ key, name string }{{"tls.cert_file", r.files.CertFile}, {"tls.key_file", r.files.KeyFile}}
	if r.files.ClientCAFile != "" {
		files = append(files, struct{ key, name string }{"tls.client_ca_file", r.files.ClientCAFile})
	}
	pems := make([][]byte, len(files))
	for i, f := range files {
		b, err := os.ReadFile(f.name)
		if err != nil {
			return nil, &KeyError{f.key, err}
		}
		pems[i] = b
	}
	return pems, nil
}

// load parses what read returned.
func (r *Reloader) load(pems [][]byte, now time.Time) (*state, error) {
	cert, err := parse(pems[0], pems[1], now)
	if err != nil {
		return nil, err
	}
	st := &state{cert: cert}
	if len(pems) > 2 {
		pool := x509.NewCertPool()
		for rest := pems[2]; ; {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			if c, err := x509.ParseCertificate(b.Bytes); b.Type == "CERTIFICATE" && err == nil {
				pool.AddCert(c)
				st.cas++
			}
		}
		if st.cas == 0 {
			return nil, &KeyError{"tls.client_ca_file", errors.New("no PEM certificate in the file")}
		}
		st.conf = r.base()
		st.conf.ClientCAs = pool
		st.conf.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return st, nil
}

// base is the part of the server's tls.Config that never changes.
func (r *Reloader) base() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.GetCertificate,
		NextProtos:     []string{"h2", "http/1.1"},
	}
}

func digest(pems [][]byte) [sha256.Size]byte {
	h := sha256.New()
	for _, b := range pems {
		h.Write(b)
		h.Write([]byte{0})
	}
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

// ErrorLog is the http.Server's ErrorLog for a TLS listener: net/http says
// that a handshake failed only there, so each "TLS handshake error" line is
// counted in berth_tls_handshake_errors_total and logged at debug with the
// client's address and the reason. Other lines are dropped (net/http's own
// noise about broken connections).
func (r *Reloader) ErrorLog() *stdlog.Logger { return stdlog.New(handshakeLog{r}, "", 0) }

type handshakeLog struct{ r *Reloader }

func (h handshakeLog) Write(p []byte) (int, error) {
	if msg, ok := strings.CutPrefix(string(p), "http: TLS handshake error from "); ok {
		h.r.handshakeErrors.Inc()
		addr, reason, _ := strings.Cut(strings.TrimSpace(msg), ": ")
		h.r.log.Debug().Str("client", addr).Str("reason", reason).Msg("tls: handshake failed")
	}
	return len(p), nil
}

// ServerConfig is the tls.Config of berth's listener: TLS 1.2 or later,
// HTTP/2 offered before HTTP/1.1, the certificate from r and, when r has
// client CAs, client certificates required and verified against them (mTLS).
func ServerConfig(r *Reloader) *tls.Config {
	cfg := r.base()
	if st := r.cur.Load(); st.conf != nil {
		cfg.ClientCAs, cfg.ClientAuth = st.conf.ClientCAs, tls.RequireAndVerifyClientCert
		cfg.GetConfigForClient = r.getConfigForClient
	}
	return cfg
}
