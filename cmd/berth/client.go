package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"github.com/berth-dev/berth/internal/regclient"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// stdio is what a client command reads and writes; tests give their own.
type stdio struct {
	in       io.Reader
	out, err io.Writer
	getenv   func(string) string
	tty      bool // err is a terminal: progress bars, else log lines
}

// defaultServer is the berth the client commands talk to without --server
// or BERTH_SERVER.
const defaultServer = "http://127.0.0.1:5000"

// clientFlags are the flags every client command has.
type clientFlags struct {
	server        string
	username      string
	passwordStdin bool
	// An https server's CA (beyond the system's) and a client certificate
	// for a berth with tls.client_ca_file.
	cacert, cert, key string
}

// clientTLSUsage is the usage of the TLS flags, in every client command's.
const clientTLSUsage = `  --cacert FILE       trust this CA (PEM) for an https:// server, besides the
                      system's roots (or SSL_CERT_FILE)
  --cert FILE --key FILE
                      a client certificate and its key, for a berth with
                      tls.client_ca_file`

func (c *clientFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	def := getenv("BERTH_SERVER")
	if def == "" {
		def = defaultServer
	}
	fs.StringVar(&c.server, "server", def, "")
	fs.StringVar(&c.username, "username", "", "")
	fs.BoolVar(&c.passwordStdin, "password-stdin", false, "")
	fs.StringVar(&c.cacert, "cacert", "", "")
	fs.StringVar(&c.cert, "cert", "", "")
	fs.StringVar(&c.key, "key", "", "")
}

// httpClient is the HTTP client of the TLS flags. Without --cert, a server
// that asks for a client certificate (a berth with tls.client_ca_file)
// refuses the handshake, and what reaches the client then depends on
// timing (the server's alert, a broken pipe under the request, an HTTP/2
// connection that could not be established): its errors then say why.
func (c *clientFlags) httpClient() (*http.Client, error) {
	if (c.cert == "") != (c.key == "") {
		return nil, errors.New("--cert and --key go together")
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.cacert != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		b, err := os.ReadFile(c.cacert)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %w", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--cacert %s: no PEM certificate in the file", c.cacert)
		}
		conf.RootCAs = pool
	}
	if c.cert != "" {
		pair, err := tls.LoadX509KeyPair(c.cert, c.key)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = conf
	if c.cert != "" {
		return &http.Client{Transport: tr}, nil
	}
	rt := &certAsked{next: tr}
	conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		rt.asked.Store(true)
		return &tls.Certificate{}, nil // none: the handshake goes on, and the server decides
	}
	return &http.Client{Transport: rt}, nil
}

// certAsked adds to a failed request's error that the server asked for a
// client certificate none was given for.
type certAsked struct {
	next  http.RoundTripper
	asked atomic.Bool
}

func (c *certAsked) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	if err != nil && c.asked.Load() {
		err = fmt.Errorf("%w (the server asked for a client certificate: give one with --cert and --key)", err)
	}
	return resp, err
}

// client is the regclient of the flags: credentials from --username and
// the first line of stdin, else from the docker config's auths for the
// server's host, else none.
func (c *clientFlags) client(s stdio) (*regclient.Client, error) {
	if c.passwordStdin && c.username == "" {
		return nil, errors.New("--password-stdin needs --username")
	}
	if c.username != "" && !c.passwordStdin {
		return nil, errors.New("--username needs --password-stdin (the password is read from stdin)")
	}
	hc, err := c.httpClient()
	if err != nil {
		return nil, err
	}
	o := regclient.Options{UserAgent: "berth/" + version, HTTP: hc}
	if c.username != "" {
		pw, _ := bufio.NewReader(s.in).ReadString('\n')
		if pw = strings.TrimRight(pw, "\r\n"); pw == "" {
			return nil, errors.New("--password-stdin: no password on stdin")
		}
		o.Username, o.Password = c.username, pw
	}
	cl, err := regclient.New(c.server, o)
	if err != nil || c.username != "" {
		return cl, err
	}
	user, pass, ok, err := regclient.DockerCredentials(cl.Host(), s.getenv)
	if err != nil {
		return nil, err
	}
	if ok {
		o.Username, o.Password = user, pass
		return regclient.New(c.server, o)
	}
	return cl, nil
}

// parseArgs parses flags and positional arguments in any order (berth warm
// busybox --platform linux/amd64); "--" ends the flags.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// withList adds the images of -f LIST (if given) to those named on the
// command line. LIST "-" is stdin, which --password-stdin cannot share.
func withList(images []string, list string, s stdio, cf clientFlags) ([]string, error) {
	if list == "" {
		return images, nil
	}
	if list == "-" && cf.passwordStdin {
		return nil, errors.New("-f - and --password-stdin both read stdin")
	}
	more, err := readList(list, s.in)
	if err != nil {
		return nil, err
	}
	return append(images, more...), nil
}

// readList reads image references from a file (- is stdin): one a line,
// blank lines and # comments skipped.
func readList(name string, stdin io.Reader) ([]string, error) {
	r := stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		t := strings.TrimSpace(sc.Text())
		if i := strings.Index(t, "#"); i >= 0 {
			t = strings.TrimSpace(t[:i])
		}
		if t != "" {
			out = append(out, t)
		}
	}
	return out, sc.Err()
}

// platforms parses --platform: os/arch[/variant],...
func parsePlatforms(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	var out []string
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		parts := strings.Split(p, "/")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
			return nil, fmt.Errorf("--platform %q: want os/arch or os/arch/variant, comma-separated", p)
		}
		out = append(out, p)
	}
	return out, nil
}

// platformKept reports whether an index child of platform p is kept.
func platformKept(keep []string, p *ocispec.Platform) bool {
	if len(keep) == 0 {
		return true
	}
	if p == nil {
		return false
	}
	for _, k := range keep {
		parts := strings.Split(k, "/")
		if parts[0] == p.OS && parts[1] == p.Architecture && (len(parts) == 2 || parts[2] == p.Variant) {
			return true
		}
	}
	return false
}

// remoteImage is an image as berth serves it, walked: its manifests
// (children before their index, referrers after what they refer to), the
// blobs they need, and its referrers.
type remoteImage struct {
	Name      string // the repository berth serves it under
	Top       ocispec.Descriptor
	Manifests []remoteManifest
	Blobs     []ocispec.Descriptor // each once
	Referrers []ocispec.Descriptor // top-level entries of their own
	Listed    []digest.Digest      // every child its indexes list, kept or not
	bytes     int64                // of Blobs and Manifests
}

type remoteManifest struct {
	Desc ocispec.Descriptor
	Body []byte
}

// maxReferrerDepth bounds referrers of referrers (a signature of an SBOM).
const maxReferrerDepth = 3

// walkImage fetches name's manifest ref and everything under it: the
// children of an index of the kept platforms, and every manifest's
// referrers (a berth without the API, 404, has none).
func walkImage(ctx context.Context, c *regclient.Client, name, ref string, keep []string) (*remoteImage, error) {
	desc, body, err := c.Manifest(ctx, name, ref)
	if err != nil {
		return nil, err
	}
	img := &remoteImage{Name: name, Top: desc}
	seen := map[digest.Digest]bool{}
	var walk func(desc ocispec.Descriptor, body []byte, depth int) error
	walk = func(desc ocispec.Descriptor, body []byte, depth int) error {
		if seen[desc.Digest] {
			return nil
		}
		seen[desc.Digest] = true
		m, err := registry.ParseManifest(desc.MediaType, body, desc.Digest)
		if err != nil {
			return fmt.Errorf("manifest %s: %w", desc.Digest, err)
		}
		desc.MediaType = m.Desc.MediaType
		for _, ch := range m.Children {
			img.Listed = append(img.Listed, ch.Digest)
			if !platformKept(keep, ch.Platform) {
				continue
			}
			cd, cb, err := c.Manifest(ctx, name, ch.Digest.String())
			if err != nil {
				return err
			}
			if err := walk(cd, cb, depth); err != nil {
				return err
			}
		}
		for _, b := range m.Blobs {
			if !seen[b.Digest] {
				seen[b.Digest] = true
				img.Blobs = append(img.Blobs, b)
				img.bytes += b.Size
			}
		}
		img.Manifests = append(img.Manifests, remoteManifest{desc, body})
		img.bytes += desc.Size
		if depth >= maxReferrerDepth {
			return nil
		}
		refs, err := c.Referrers(ctx, name, desc.Digest)
		if errors.Is(err, regclient.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, r := range refs {
			if seen[r.Digest] {
				continue
			}
			rd, rb, err := c.Manifest(ctx, name, r.Digest.String())
			if err != nil {
				return fmt.Errorf("referrer %s of %s: %w", r.Digest, desc.Digest, err)
			}
			rd.ArtifactType, rd.Annotations = r.ArtifactType, r.Annotations
			if err := walk(rd, rb, depth+1); err != nil {
				return err
			}
			img.Referrers = append(img.Referrers, rd)
		}
		return nil
	}
	if err := walk(desc, body, 0); err != nil {
		return nil, err
	}
	for _, m := range img.Manifests {
		if m.Desc.Digest == img.Top.Digest {
			img.Top.MediaType = m.Desc.MediaType
		}
	}
	return img, nil
}
