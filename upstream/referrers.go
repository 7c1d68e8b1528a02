package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxReferrersBody bounds a referrers index read into memory.
const maxReferrersBody = 4 << 20

// Referrers asks the OCI 1.1 referrers API for the manifests whose subject
// is d, filtered by artifactType when it is set. filtered reports whether
// the upstream applied that filter (OCI-Filters-Applied); if it did not,
// the caller filters. An upstream without the API (404) is asked for the
// spec's fallback tag instead, "<alg>-<hex>", an index of the referrers
// that clients such as oras push there; ErrNotFound if it has neither.
func (c *Client) Referrers(ctx context.Context, repo string, d digest.Digest, artifactType string) (descs []ocispec.Descriptor, filtered bool, err error) {
	descs, filtered, err = c.referrersAPI(ctx, repo, d, artifactType)
	if !errors.Is(err, ErrNotFound) {
		return descs, filtered, err
	}
	_, body, ferr := c.GetManifest(ctx, repo, d.Algorithm().String()+"-"+d.Encoded())
	if ferr != nil {
		return nil, false, err // the API's 404: neither way has referrers
	}
	var idx ocispec.Index
	if json.Unmarshal(body, &idx) != nil || idx.Manifests == nil {
		return []ocispec.Descriptor{}, false, nil
	}
	return idx.Manifests, false, nil
}

func (c *Client) referrersAPI(ctx context.Context, repo string, d digest.Digest, artifactType string) (descs []ocispec.Descriptor, filtered bool, err error) {
	op := "GET referrers " + repo + "@" + d.String()
	if err := c.checkRepo(op, repo); err != nil {
		return nil, false, err
	}
	if _, err := c.checkDigest(op, d.String()); err != nil {
		return nil, false, err
	}
	ctx, cancel := c.withOperationDeadline(ctx)
	defer cancel()
	q := url.Values{}
	if artifactType != "" {
		q.Set("artifactType", artifactType)
	}
	resp, err := c.do(ctx, &request{
		op:     op,
		method: http.MethodGet,
		path:   "/v2/" + repo + "/referrers/" + d.String(),
		query:  q,
		header: http.Header{"Accept": {ocispec.MediaTypeImageIndex}},
		scope:  pullScope(repo),
	})
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, false, &Error{Upstream: c.name, Op: op, Status: resp.StatusCode, Kind: ErrUnexpectedResponse}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReferrersBody))
	if err != nil {
		return nil, false, c.bodyError(ctx, op, err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(body, &idx); err != nil {
		return nil, false, c.newError(op, ErrUnexpectedResponse, "malformed referrers index", err)
	}
	if idx.Manifests == nil {
		idx.Manifests = []ocispec.Descriptor{}
	}
	return idx.Manifests, artifactType != "" && resp.Header.Get("OCI-Filters-Applied") != "", nil
}
