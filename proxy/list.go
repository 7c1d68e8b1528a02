package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/berth-dev/berth/internal/access"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// pageParams reads n and last; n must be a non-negative integer. n is -1
// when the client gave none.
func pageParams(q url.Values) (n int, last string, err error) {
	n = -1
	last = q.Get("last")
	if s := q.Get("n"); s != "" {
		n, err = strconv.Atoi(s)
		if err != nil || n < 0 {
			return 0, "", oci.Errorf(oci.CodeUnsupported, "invalid n %q", oci.Clip(s)).WithStatus(http.StatusBadRequest)
		}
	}
	return n, last, nil
}

// nextLink announces the following page; next is its `last`, kept with the
// client's n (and ns, for a containerd mirror).
func nextLink(w http.ResponseWriter, path, next string, n int, ns string) {
	if next == "" {
		return
	}
	q := url.Values{"last": {next}}
	if n > 0 {
		q.Set("n", strconv.Itoa(n))
	}
	if ns != "" {
		q.Set("ns", ns)
	}
	w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, path, q.Encode()))
}

func (h *Handler) tags(ctx context.Context, w http.ResponseWriter, r *http.Request, st *state) error {
	n, last, err := pageParams(st.query)
	if err != nil {
		return err
	}
	tags, next, err := h.reg.Tags(ctx, st.req.Repo, n, last)
	if err != nil {
		return err
	}
	if tags == nil {
		tags = []string{}
	}
	nextLink(w, location(st.req.Repo, "tags", "list"), next, n, st.info.Host)
	return writeJSON(w, r, "application/json", struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{st.req.Repo, tags})
}

func (h *Handler) catalog(ctx context.Context, w http.ResponseWriter, r *http.Request, st *state) error {
	n, last, err := pageParams(st.query)
	if err != nil {
		return err
	}
	repos, next, err := h.reg.Repositories(ctx, n, last)
	if err != nil {
		return err
	}
	if h.auth != nil {
		// Only what the caller may pull (a page may come out shorter than
		// n; next still continues after the last name read).
		pol := h.auth.policy
		repos = slices.DeleteFunc(repos, func(name string) bool { return !pol.Can(st.caller.id, name, access.Pull) })
	}
	if repos == nil {
		repos = []string{}
	}
	nextLink(w, "/v2/_catalog", next, n, "")
	return writeJSON(w, r, "application/json", struct {
		Repositories []string `json:"repositories"`
	}{repos})
}

func (h *Handler) referrers(ctx context.Context, w http.ResponseWriter, r *http.Request, st *state) error {
	d, err := oci.ParseDigest(st.req.Reference)
	if err != nil {
		return err
	}
	at := st.query.Get("artifactType")
	descs, filtered, err := h.reg.Referrers(ctx, st.req.Repo, d, at)
	if err != nil {
		return err
	}
	if descs == nil {
		descs = []registry.Descriptor{}
	}
	if filtered && at != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	idx := ocispec.Index{MediaType: oci.MediaTypeOCIIndex, Manifests: descs}
	idx.SchemaVersion = 2
	return writeJSON(w, r, oci.MediaTypeOCIIndex, idx)
}

func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
	return nil
}
