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
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// MaxManifestSize is the largest manifest GetManifest accepts (4 MiB, the
// limit recommended by the distribution specification).
const MaxManifestSize = 4 << 20

// Media types of the Docker manifest formats (the OCI ones come from
// image-spec).
const (
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
)

// acceptManifests is the Accept header value for manifest requests, most
// preferred first. Artifact manifests use the OCI image manifest type.
const acceptManifests = v1.MediaTypeImageIndex + ", " +
	v1.MediaTypeImageManifest + ", " +
	MediaTypeDockerManifestList + ", " +
	MediaTypeDockerManifest

// ManifestMediaTypes returns the manifest media types the client accepts
// (sent in the Accept header of manifest requests), most preferred first.
func ManifestMediaTypes() []string {
	return strings.Split(acceptManifests, ", ")
}

// Descriptor is what the upstream says about a manifest or blob.
type Descriptor struct {
	MediaType string        // Content-Type without parameters
	Digest    digest.Digest // Docker-Content-Digest, or computed from the content
	Size      int64         // content length in bytes
}

var (
	// repoPattern is the distribution-spec repository name grammar.
	repoPattern = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	// tagPattern is the distribution-spec tag grammar.
	tagPattern = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// checkRepo validates a repository name; it is interpolated into URL paths,
// so this also guards against path manipulation.
func (c *Client) checkRepo(op, repo string) error {
	if len(repo) > 255 || !repoPattern.MatchString(repo) {
		return c.newError(op, ErrInvalidArgument, fmt.Sprintf("invalid repository name %q", repo), nil)
	}
	return nil
}

// checkRef validates a manifest reference and returns its digest if it is
// one ("" for a tag).
func (c *Client) checkRef(op, ref string) (digest.Digest, error) {
	if strings.Contains(ref, ":") {
		d, err := digest.Parse(ref)
		if err != nil {
			return "", c.newError(op, ErrInvalidArgument, fmt.Sprintf("invalid digest %q", ref), err)
		}
		return d, nil
	}
	if !tagPattern.MatchString(ref) {
		return "", c.newError(op, ErrInvalidArgument, fmt.Sprintf("invalid tag %q", ref), nil)
	}
	return "", nil
}

// pullScope is the token scope for reading repo.
func pullScope(repo string) string { return "repository:" + repo + ":pull" }

// manifestRequest builds the request for a manifest HEAD or GET.
func (c *Client) manifestRequest(method, repo, ref string) (*request, digest.Digest, error) {
	sep := ":"
	if strings.Contains(ref, ":") {
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
		header: http.Header{"Accept": {acceptManifests}},
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
	d, err := digest.Parse(hd)
	if err != nil {
		return Descriptor{}, c.newError(r.op, ErrUnexpectedResponse, "invalid Docker-Content-Digest header", err)
	}
	if want != "" && d != want {
		return Descriptor{}, c.newError(r.op, ErrDigestMismatch, "upstream reports digest "+d.String(), nil)
	}
	if resp.ContentLength > MaxManifestSize {
		return Descriptor{}, c.newError(r.op, ErrTooLarge, fmt.Sprintf("%d bytes", resp.ContentLength), nil)
	}
	return Descriptor{MediaType: mt, Digest: d, Size: resp.ContentLength}, nil
}

// GetManifest downloads a manifest (at most MaxManifestSize bytes) and
// verifies it: against ref when ref is a digest, and against the upstream's
// Docker-Content-Digest header when present. The returned descriptor's
// digest is the header's (or the computed one when the header is absent).
func (c *Client) GetManifest(ctx context.Context, repo, ref string) (Descriptor, []byte, error) {
	r, want, err := c.manifestRequest(http.MethodGet, repo, ref)
	if err != nil {
		return Descriptor{}, nil, err
	}
	resp, err := c.do(ctx, r)
	if err != nil {
		return Descriptor{}, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Descriptor{}, nil, &Error{Upstream: c.name, Op: r.op, Status: resp.StatusCode, Kind: ErrUnexpectedResponse}
	}
	if resp.ContentLength > MaxManifestSize {
		return Descriptor{}, nil, c.newError(r.op, ErrTooLarge, fmt.Sprintf("%d bytes", resp.ContentLength), nil)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxManifestSize+1))
	if err != nil {
		return Descriptor{}, nil, c.bodyError(ctx, r.op, err)
	}
	if len(body) > MaxManifestSize {
		return Descriptor{}, nil, c.newError(r.op, ErrTooLarge, fmt.Sprintf("more than %d bytes", MaxManifestSize), nil)
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
		if !d.Algorithm().Available() {
			return c.newError(op, ErrUnexpectedResponse, "unsupported digest algorithm "+string(d.Algorithm()), nil)
		}
		if got := d.Algorithm().FromBytes(body); got != d {
			return c.newError(op, ErrDigestMismatch, fmt.Sprintf("body has digest %s, %s is %s", got, what, d), nil)
		}
		return nil
	}
	var hd digest.Digest
	if header != "" {
		parsed, err := digest.Parse(header)
		if err != nil {
			return "", c.newError(op, ErrUnexpectedResponse, "invalid Docker-Content-Digest header", err)
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
