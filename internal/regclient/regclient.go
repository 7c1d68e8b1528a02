// Package regclient is a small client of a berth server's HTTP API, for
// berth's own commands (warm, export, import): manifests, blobs (streamed),
// tag and catalog lists with pagination, referrers, and berth's admin
// endpoints, with optional Basic credentials.
package regclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/berth-dev/berth/internal/imageref"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ErrNotFound matches an error whose response was 404.
var ErrNotFound = errors.New("not found")

// Error is a response berth refused, with the OCI error it sent, if any.
type Error struct {
	Op      string // "GET /v2/team/app/manifests/1"
	Status  int
	Code    string // the first OCI error code, if the body had one
	Message string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s: %d %s", e.Op, e.Status, http.StatusText(e.Status))
	if e.Code != "" {
		s += ": " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Is makes a 404 match ErrNotFound.
func (e *Error) Is(target error) bool {
	return target == ErrNotFound && e.Status == http.StatusNotFound
}

// Options configure a Client.
type Options struct {
	// Username and Password are sent as Basic credentials when Username is set.
	Username, Password string
	// HTTP is the client to use; nil is http.DefaultClient.
	HTTP *http.Client
	// UserAgent names the command; empty is "berth".
	UserAgent string
}

// Client talks to one berth server.
type Client struct {
	base *url.URL
	o    Options
}

// New returns a client of the berth at server (http://host:port).
func New(server string, o Options) (*Client, error) {
	if !strings.Contains(server, "://") {
		server = "http://" + server
	}
	u, err := url.Parse(strings.TrimRight(server, "/"))
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("server %q: want http://HOST:PORT or https://HOST", oci.Clip(server))
	}
	if o.HTTP == nil {
		o.HTTP = http.DefaultClient
	}
	if o.UserAgent == "" {
		o.UserAgent = "berth"
	}
	return &Client{base: u, o: o}, nil
}

// Host is the server's host[:port], as image references name it.
func (c *Client) Host() string { return c.base.Host }

// Name is the repository berth serves r under: <registry>/<repository>
// (berth routes a first element naming an upstream to it), or the bare
// repository when r names this berth itself (localhost:5000/team/app).
func (c *Client) Name(r imageref.Ref) string {
	if r.Registry == c.base.Host {
		return r.Repository
	}
	return r.Name()
}

// do sends a request to path (with query) and returns a 2xx response; any
// other status is an *Error.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, h http.Header, body io.Reader) (*http.Response, error) {
	return c.doSized(ctx, method, path, query, h, body, -1)
}

// doSized is do with the body's size (-1: unknown, or as net/http finds it).
func (c *Client) doSized(ctx context.Context, method, path string, query url.Values, h http.Header, body io.Reader, size int64) (*http.Response, error) {
	u := *c.base
	u.Path = c.base.Path + path
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	if size >= 0 && body != nil {
		req.ContentLength = size
		if size == 0 {
			req.Body = http.NoBody
		}
	}
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("User-Agent", c.o.UserAgent)
	if c.o.Username != "" {
		req.SetBasicAuth(c.o.Username, c.o.Password)
	}
	resp, err := c.o.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	e := &Error{Op: method + " " + path, Status: resp.StatusCode}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var oe struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Detail  any    `json:"detail"`
		} `json:"errors"`
	}
	if json.Unmarshal(b, &oe) == nil && len(oe.Errors) > 0 {
		e.Code, e.Message = oe.Errors[0].Code, oe.Errors[0].Message
		if d, ok := oe.Errors[0].Detail.(string); ok && d != "" {
			e.Message += " (" + d + ")"
		}
	} else if t := strings.TrimSpace(string(b)); t != "" && len(t) < 512 {
		e.Message = t
	}
	return nil, e
}

// maxManifest bounds a manifest read into memory.
const maxManifest = 16 << 20

// Manifest fetches manifest ref (a tag or a digest) of name, checking its
// digest, and returns its descriptor and body.
func (c *Client) Manifest(ctx context.Context, name, ref string) (ocispec.Descriptor, []byte, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v2/"+name+"/manifests/"+ref, nil, http.Header{"Accept": {oci.ManifestAccept}}, nil)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	if len(body) > maxManifest {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s:%s is larger than %d bytes", name, ref, maxManifest)
	}
	want := digest.Digest(resp.Header.Get("Docker-Content-Digest"))
	if oci.IsDigest(ref) {
		want = digest.Digest(ref)
	}
	d := digest.FromBytes(body)
	if want != "" {
		if err := want.Validate(); err != nil {
			return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s:%s: invalid digest %q", name, ref, oci.Clip(string(want)))
		}
		d = want.Algorithm().FromBytes(body)
		if d != want {
			return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s:%s: content hashes to %s, not %s", name, ref, d, want)
		}
	}
	mt, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
	return ocispec.Descriptor{MediaType: strings.TrimSpace(mt), Digest: d, Size: int64(len(body))}, body, nil
}

// HeadBlob returns the size of blob d of name and whether berth holds it
// (its X-Berth-Cache header says hit or local; a miss was only confirmed
// upstream); an error matching ErrNotFound if neither berth nor its
// upstream has it.
func (c *Client) HeadBlob(ctx context.Context, name string, d digest.Digest) (size int64, held bool, err error) {
	resp, err := c.do(ctx, http.MethodHead, "/v2/"+name+"/blobs/"+d.String(), nil, nil, nil)
	if err != nil {
		return 0, false, err
	}
	resp.Body.Close()
	h := resp.Header.Get("X-Berth-Cache")
	return resp.ContentLength, h == "hit" || h == "local", nil
}

// Blob streams blob d of name. The caller verifies what it reads (the
// bundle writer does) and closes the stream.
func (c *Client) Blob(ctx context.Context, name string, d digest.Digest) (io.ReadCloser, int64, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v2/"+name+"/blobs/"+d.String(), nil, nil, nil)
	if err != nil {
		return nil, 0, err
	}
	return resp.Body, resp.ContentLength, nil
}

// Tags lists every tag of name, page by page.
func (c *Client) Tags(ctx context.Context, name string) ([]string, error) {
	var out []string
	err := c.pages(ctx, "/v2/"+name+"/tags/list", func(b []byte) error {
		var page struct {
			Tags []string `json:"tags"`
		}
		err := json.Unmarshal(b, &page)
		out = append(out, page.Tags...)
		return err
	})
	return out, err
}

// Catalog lists every repository berth holds, page by page: mirrored ones
// as <upstream>/<name>, local ones bare.
func (c *Client) Catalog(ctx context.Context) ([]string, error) {
	var out []string
	err := c.pages(ctx, "/v2/_catalog", func(b []byte) error {
		var page struct {
			Repositories []string `json:"repositories"`
		}
		err := json.Unmarshal(b, &page)
		out = append(out, page.Repositories...)
		return err
	})
	return out, err
}

// pages GETs path and the pages its Link headers point to.
func (c *Client) pages(ctx context.Context, path string, page func([]byte) error) error {
	q := url.Values{"n": {"1000"}}
	for range 100000 {
		resp, err := c.do(ctx, http.MethodGet, path, q, nil, nil)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
		resp.Body.Close()
		if err != nil {
			return err
		}
		if err := page(b); err != nil {
			return fmt.Errorf("GET %s: %w", path, err)
		}
		next := nextLink(resp.Header.Get("Link"))
		if next == "" {
			return nil
		}
		u, err := url.Parse(next)
		if err != nil {
			return fmt.Errorf("GET %s: bad Link header: %w", path, err)
		}
		path, q = strings.TrimPrefix(u.Path, c.base.Path), u.Query()
	}
	return fmt.Errorf("GET %s: too many pages", path)
}

// nextLink is the target of a Link header's rel="next", or "".
func nextLink(h string) string {
	for _, part := range strings.Split(h, ",") {
		target, params, ok := strings.Cut(part, ";")
		if ok && strings.Contains(strings.ReplaceAll(params, " ", ""), `rel="next"`) {
			return strings.Trim(strings.TrimSpace(target), "<>")
		}
	}
	return ""
}

// Referrers lists the manifests whose subject is d in name.
func (c *Client) Referrers(ctx context.Context, name string, d digest.Digest) ([]ocispec.Descriptor, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v2/"+name+"/referrers/"+d.String(), nil, http.Header{"Accept": {ocispec.MediaTypeImageIndex}}, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var idx ocispec.Index
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxManifest)).Decode(&idx); err != nil {
		return nil, fmt.Errorf("referrers of %s@%s: %w", name, d, err)
	}
	return idx.Manifests, nil
}

// Post sends body to one of berth's own endpoints (/admin/...) and decodes
// its JSON answer into out.
//
// A body of known size (size >= 0) goes out with a Content-Length: from an
// *os.File over plain HTTP on Linux that is a sendfile, the bytes never
// passing through berth's memory. size < 0 sends it chunked.
func (c *Client) Post(ctx context.Context, path, contentType string, body io.Reader, size int64, out any) error {
	resp, err := c.doSized(ctx, http.MethodPost, path, nil, http.Header{"Content-Type": {contentType}}, body, size)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}

// Get GETs one of berth's own endpoints and decodes its JSON answer.
func (c *Client) Get(ctx context.Context, path string, query url.Values, out any) error {
	resp, err := c.do(ctx, http.MethodGet, path, query, nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out)
}

// Call sends a body-less request with method to one of berth's own
// endpoints (/admin/...) and decodes its JSON answer into out.
func (c *Client) Call(ctx context.Context, method, path string, query url.Values, out any) error {
	resp, err := c.do(ctx, method, path, query, nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out)
}
