package upstream

import (
	"context"
	_ "crypto/sha256" // register digest algorithms used by go-digest
	_ "crypto/sha512"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/berth-dev/berth/internal/oci"
)

// MaxManifestSize is the default for Config.MaxManifestSize: 4 MiB, the
// limit recommended by the distribution specification.
const MaxManifestSize = 4 << 20

// Descriptor is what the upstream says about a manifest or blob.
type Descriptor struct {
	MediaType string        // Content-Type without parameters
	Digest    digest.Digest // Docker-Content-Digest, or computed from the content
	Size      int64         // content length in bytes
}

// checkRepo validates a repository name; it is interpolated into URL paths,
// so this also guards against path manipulation.
func (c *Client) checkRepo(op, repo string) error {
	if !oci.ValidName(repo) {
		return c.newError(op, ErrInvalidArgument, fmt.Sprintf("invalid repository name %q", repo), nil)
	}
	return nil
}

// checkRef validates a manifest reference and returns its digest if it is
// one ("" for a tag).
func (c *Client) checkRef(op, ref string) (digest.Digest, error) {
	if oci.IsDigest(ref) {
		return c.checkDigest(op, ref)
	}
	if !oci.ValidTag(ref) {
		return "", c.newError(op, ErrInvalidArgument, fmt.Sprintf("invalid tag %q", ref), nil)
	}
	return "", nil
}

// checkDigest validates a digest the caller passed.
func (c *Client) checkDigest(op, s string) (digest.Digest, error) {
	d, ok := parseDigest(s)
	if !ok {
		return "", c.newError(op, ErrInvalidArgument, fmt.Sprintf("invalid digest %q", s), nil)
	}
	return d, nil
}

// parseDigest parses a digest with internal/oci's rules. The *oci.Error it
// fails with is dropped on purpose: in an upstream error chain it would
// read as the berth client's own mistake (DIGEST_INVALID) to a caller that
// maps errors with errors.As.
func parseDigest(s string) (digest.Digest, bool) {
	d, err := oci.ParseDigest(s)
	return d, err == nil
}

// pullScope is the token scope for reading repo.
func pullScope(repo string) string { return "repository:" + repo + ":pull" }

// manifestRequest builds the request for a manifest HEAD or GET.
func (c *Client) manifestRequest(method, repo, ref string) (*request, digest.Digest, error) {
	sep := ":"
	if oci.IsDigest(ref) {
		sep = "@"
	}
	op := method + " manifest " + repo + sep + ref
	if err := c.checkRepo(op, repo); err != nil {
		return nil, "", err
	}
	want, err := c.checkRef(op, ref)
	if err != nil {
		return nil, "", err
	}
	return &request{
		op:     op,
		method: method,
		path:   "/v2/" + repo + "/manifests/" + ref,
		header: http.Header{"Accept": {oci.ManifestAccept}},
		scope:  pullScope(repo),
	}, want, nil
}

// HeadManifest returns the descriptor of a manifest without downloading it.
// If the upstream's HEAD answer lacks Docker-Content-Digest (or a length or
// type), it falls back to GetManifest.
func (c *Client) HeadManifest(ctx context.Context, repo, ref string) (Descriptor, error) {
	r, want, err := c.manifestRequest(http.MethodHead, repo, ref)
	if err != nil {
		return Descriptor{}, err
	}
	ctx, cancel := c.withOperationDeadline(ctx)
	defer cancel()
	resp, err := c.do(ctx, r)
	if err != nil {
		return Descriptor{}, err
	}
	_ = resp.Body.Close()
	hd := resp.Header.Get("Docker-Content-Digest")
	mt := mediaType(resp.Header)
	if resp.StatusCode != http.StatusOK || hd == "" || mt == "" || resp.ContentLength < 0 {
		desc, _, err := c.GetManifest(ctx, repo, ref)
		return desc, err
	}
	d, ok := parseDigest(hd)
	if !ok {
		return Descriptor{}, c.newError(r.op, ErrUnexpectedResponse, "invalid Docker-Content-Digest header "+sanitize(hd), nil)
	}
	if want != "" && d != want {
		return Descriptor{}, c.newError(r.op, ErrDigestMismatch, "upstream reports digest "+d.String(), nil)
	}
	if resp.ContentLength > c.maxManifest {
		return Descriptor{}, c.newError(r.op, ErrTooLarge, fmt.Sprintf("%d bytes, limit %d", resp.ContentLength, c.maxManifest), nil)
	}
	return Descriptor{MediaType: mt, Digest: d, Size: resp.ContentLength}, nil
}

// GetManifest downloads a manifest (at most Config.MaxManifestSize bytes) and
// verifies it: against ref when ref is a digest, and against the upstream's
// Docker-Content-Digest header when present. The returned descriptor's
// digest is the header's (or the computed one when the header is absent).
func (c *Client) GetManifest(ctx context.Context, repo, ref string) (Descriptor, []byte, error) {
	r, want, err := c.manifestRequest(http.MethodGet, repo, ref)
	if err != nil {
		return Descriptor{}, nil, err
	}
	ctx, cancel := c.withOperationDeadline(ctx)
	defer cancel()
	resp, err := c.do(ctx, r)
	if err != nil {
		return Descriptor{}, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Descriptor{}, nil, &Error{Upstream: c.name, Op: r.op, Status: resp.StatusCode, Kind: ErrUnexpectedResponse}
	}
	if resp.ContentLength > c.maxManifest {
		return Descriptor{}, nil, c.newError(r.op, ErrTooLarge, fmt.Sprintf("%d bytes, limit %d", resp.ContentLength, c.maxManifest), nil)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.maxManifest+1))
	if err != nil {
		return Descriptor{}, nil, c.bodyError(ctx, r.op, err)
	}
	if int64(len(body)) > c.maxManifest {
		return Descriptor{}, nil, c.newError(r.op, ErrTooLarge, fmt.Sprintf("more than %d bytes", c.maxManifest), nil)
	}
	if resp.ContentLength >= 0 && int64(len(body)) != resp.ContentLength {
		return Descriptor{}, nil, c.newError(r.op, ErrUnavailable, "truncated manifest body", nil)
	}

	d, err := c.verifyManifest(r.op, resp.Header.Get("Docker-Content-Digest"), want, body)
	if err != nil {
		return Descriptor{}, nil, err
	}
	mt := mediaType(resp.Header)
	if mt == "" || mt == "application/json" || mt == "text/plain" {
		// Some registries serve manifests with a generic type; the
		// manifest's own mediaType field is then the best information.
		var probe struct {
			MediaType string `json:"mediaType"`
		}
		if json.Unmarshal(body, &probe) == nil && probe.MediaType != "" {
			mt = probe.MediaType
		}
	}
	return Descriptor{MediaType: mt, Digest: d, Size: int64(len(body))}, body, nil
}

// verifyManifest checks body against the requested digest (want, "" for a
// tag) and the upstream's header digest, and returns the manifest's digest.
func (c *Client) verifyManifest(op, header string, want digest.Digest, body []byte) (digest.Digest, error) {
	check := func(d digest.Digest, what string) error {
		if got := d.Algorithm().FromBytes(body); got != d {
			return c.newError(op, ErrDigestMismatch, fmt.Sprintf("body has digest %s, %s is %s", got, what, d), nil)
		}
		return nil
	}
	var hd digest.Digest
	if header != "" {
		parsed, ok := parseDigest(header)
		if !ok {
			return "", c.newError(op, ErrUnexpectedResponse, "invalid Docker-Content-Digest header "+sanitize(header), nil)
		}
		hd = parsed
	}
	switch {
	case want != "":
		if err := check(want, "requested digest"); err != nil {
			return "", err
		}
		if hd != "" && hd.Algorithm() == want.Algorithm() && hd != want {
			return "", c.newError(op, ErrDigestMismatch, "upstream reports digest "+hd.String(), nil)
		}
		return want, nil
	case hd != "":
		if err := check(hd, "Docker-Content-Digest"); err != nil {
			return "", err
		}
		return hd, nil
	default:
		return digest.FromBytes(body), nil
	}
}

// mediaType returns the Content-Type's media type without parameters.
func mediaType(h http.Header) string {
	ct := strings.TrimSpace(h.Get("Content-Type"))
	if ct == "" {
		return ""
	}
	if mt, _, err := mime.ParseMediaType(ct); err == nil {
		return mt
	}
	return ct
}
