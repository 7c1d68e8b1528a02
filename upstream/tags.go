package upstream

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// maxTagsBody bounds a tag list page read into memory.
const maxTagsBody = 16 << 20

// Tags lists one page of repo's tags. n <= 0 sends no n parameter (the
// upstream's default page size); last == "" starts from the beginning. next
// is the last value for the following page, taken from the upstream's
// Link rel="next" header, or "" when there are no more pages.
func (c *Client) Tags(ctx context.Context, repo string, n int, last string) (tags []string, next string, err error) {
	op := "GET tags " + repo
	if err := c.checkRepo(op, repo); err != nil {
		return nil, "", err
	}
	ctx, cancel := c.withOperationDeadline(ctx)
	defer cancel()
	q := url.Values{}
	if n > 0 {
		q.Set("n", strconv.Itoa(n))
	}
	if last != "" {
		q.Set("last", last)
	}
	resp, err := c.do(ctx, &request{
		op:     op,
		method: http.MethodGet,
		path:   "/v2/" + repo + "/tags/list",
		query:  q,
		scope:  pullScope(repo),
	})
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", &Error{Upstream: c.name, Op: op, Status: resp.StatusCode, Kind: ErrUnexpectedResponse}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTagsBody))
	if err != nil {
		return nil, "", c.bodyError(ctx, op, err)
	}
	var list struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, "", c.newError(op, ErrUnexpectedResponse, "malformed tag list", err)
	}
	if list.Tags == nil {
		list.Tags = []string{}
	}
	return list.Tags, nextLast(resp.Header.Values("Link")), nil
}

// nextLast extracts the "last" query parameter of the rel="next" target in
// Link headers such as `</v2/foo/tags/list?last=b&n=2>; rel="next"`.
func nextLast(links []string) string {
	for _, v := range links {
		for rest := v; rest != ""; {
			lt := strings.IndexByte(rest, '<')
			if lt < 0 {
				break
			}
			gt := strings.IndexByte(rest[lt:], '>')
			if gt < 0 {
				break
			}
			target := rest[lt+1 : lt+gt]
			rest = rest[lt+gt+1:]
			// Parameters run until the next link (a comma outside quotes
			// is good enough: rel values do not contain '<').
			params := rest
			if i := strings.IndexByte(params, '<'); i >= 0 {
				params = params[:i]
			}
			if !hasRelNext(params) {
				continue
			}
			u, err := url.Parse(target)
			if err != nil {
				return ""
			}
			return u.Query().Get("last")
		}
	}
	return ""
}

// hasRelNext reports whether Link parameters contain rel="next" (rel may
// hold several space-separated relation types).
func hasRelNext(params string) bool {
	for _, p := range strings.Split(params, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "rel") {
			continue
		}
		v = strings.Trim(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), ",")), `"`)
		for _, rel := range strings.Fields(v) {
			if strings.EqualFold(rel, "next") {
				return true
			}
		}
	}
	return false
}

// Ping checks that the upstream speaks the registry API (GET /v2/) and that
// authentication works (performing the auth dance if challenged).
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := c.withOperationDeadline(ctx)
	defer cancel()
	resp, err := c.do(ctx, &request{op: "GET /v2/", method: http.MethodGet, path: "/v2/"})
	if err != nil {
		return err
	}
	drain(resp)
	if resp.StatusCode != http.StatusOK {
		return &Error{Upstream: c.name, Op: "GET /v2/", Status: resp.StatusCode, Kind: ErrUnexpectedResponse}
	}
	return nil
}
