package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// local serves a request for a repository held in local storage.
func (h *Handler) local(w http.ResponseWriter, r *http.Request, req Request, t Target) error {
	switch req.Kind {
	case KindManifest:
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			return h.getManifest(w, r, t.StoreRepo, req.Reference)
		case http.MethodPut:
			return h.putManifest(w, r, req, t)
		case http.MethodDelete:
			return h.deleteManifest(w, r, req, t)
		}
	case KindBlob:
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			d, err := oci.ParseDigest(req.Reference)
			if err != nil {
				return err
			}
			return h.serveStoredBlob(w, r, t.StoreRepo, d)
		case http.MethodDelete:
			d, err := oci.ParseDigest(req.Reference)
			if err != nil {
				return err
			}
			if err := h.store.Unlink(t.StoreRepo, d); err != nil {
				return blobErr(err, d)
			}
			w.WriteHeader(http.StatusAccepted)
			return nil
		}
	case KindUploadStart:
		if r.Method == http.MethodPost {
			return h.startUpload(w, r, req, t)
		}
	case KindUpload:
		switch r.Method {
		case http.MethodGet:
			u, err := h.store.GetUpload(t.StoreRepo, req.Reference)
			if err != nil {
				return err
			}
			uploadHeaders(w, req.Repo, u)
			w.WriteHeader(http.StatusNoContent)
			return nil
		case http.MethodPatch:
			return h.patchUpload(w, r, req, t)
		case http.MethodPut:
			return h.finishUpload(w, r, req, t)
		case http.MethodDelete:
			if err := h.store.CancelUpload(t.StoreRepo, req.Reference); err != nil {
				return err
			}
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
	case KindTags:
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			return h.localTags(w, r, req, t)
		}
	case KindReferrers:
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			return h.referrers(w, r, t.StoreRepo, req.Reference)
		}
	}
	return errMethod
}

func blobErr(err error, d digest.Digest) error {
	if errors.Is(err, cache.ErrNotFound) {
		return oci.Errorf(oci.CodeBlobUnknown, "blob %s unknown to this repository", d)
	}
	return err
}

func manifestErr(err error, ref string) error {
	if errors.Is(err, cache.ErrNotFound) {
		return oci.Errorf(oci.CodeManifestUnknown, "manifest %s unknown", clip(ref))
	}
	return err
}

// serveStoredBlob answers a blob GET or HEAD from disk. http.ServeContent
// handles Range, conditional requests and HEAD; the copy is the kernel's.
func (h *Handler) serveStoredBlob(w http.ResponseWriter, r *http.Request, repo string, d digest.Digest) error {
	size, err := h.store.StatRepoBlob(repo, d)
	if err != nil {
		return blobErr(err, d)
	}
	hdr := w.Header()
	if rng := r.Header.Get("Range"); rng != "" && !validRangeHeader(rng) {
		hdr.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
		return &oci.Error{Code: oci.CodeRangeInvalid, Message: "invalid range", HTTPStatus: http.StatusRequestedRangeNotSatisfiable}
	}
	var content io.ReadSeeker
	if body, ok := h.store.SmallBlob(d, size); ok {
		content = bytes.NewReader(body)
	} else {
		f, err := h.store.OpenBlob(d)
		if err != nil {
			return blobErr(err, d)
		}
		defer f.Close()
		// The file is immutable and verified, so its size is the indexed
		// size; recorder.ReadFrom streams it through one pooled buffer.
		content = f
	}
	hdr.Set("Docker-Content-Digest", d.String())
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Etag", `"`+d.String()+`"`)
	hdr.Set("Cache-Control", "max-age=31536000")
	http.ServeContent(w, r, "", time.Time{}, content)
	return nil
}

// validRangeHeader accepts what http.ServeContent can parse, so that garbage
// gets a 416 rather than the whole body by accident.
func validRangeHeader(s string) bool {
	if len(s) < 7 || s[:6] != "bytes=" {
		return false
	}
	return true
}

func (h *Handler) getManifest(w http.ResponseWriter, r *http.Request, repo, ref string) error {
	d, err := h.resolve(repo, ref)
	if err != nil {
		return err
	}
	m, err := h.store.Manifest(repo, d)
	if err != nil {
		return manifestErr(err, ref)
	}
	body, err := h.store.ManifestBody(d)
	if err != nil {
		return manifestErr(err, ref)
	}
	writeManifest(w, r, m.MediaType, d, body)
	return nil
}

// resolve turns a tag or digest reference into a digest.
func (h *Handler) resolve(repo, ref string) (digest.Digest, error) {
	if oci.IsDigest(ref) {
		d, err := oci.ParseDigest(ref)
		if err != nil {
			return "", err
		}
		return d, nil
	}
	if !oci.ValidTag(ref) {
		return "", oci.Errorf(oci.CodeManifestInvalid, "invalid tag %q", clip(ref))
	}
	t, err := h.store.Tag(repo, ref)
	if err != nil {
		return "", manifestErr(err, ref)
	}
	return t.Digest, nil
}

func writeManifest(w http.ResponseWriter, r *http.Request, mediaType string, d digest.Digest, body []byte) {
	hdr := w.Header()
	hdr.Set("Content-Type", mediaType)
	hdr.Set("Docker-Content-Digest", d.String())
	hdr.Set("Etag", `"`+d.String()+`"`)
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	if match := r.Header.Get("If-None-Match"); match != "" && match == `"`+d.String()+`"` {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

func (h *Handler) putManifest(w http.ResponseWriter, r *http.Request, req Request, t Target) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxMan))
	if err != nil {
		if isBodyTooLarge(err) {
			return &oci.Error{Code: oci.CodeManifestInvalid, Message: fmt.Sprintf("manifest exceeds %d bytes", h.maxMan), HTTPStatus: http.StatusRequestEntityTooLarge}
		}
		return oci.Errorf(oci.CodeManifestInvalid, "reading manifest: %v", err)
	}
	d := digest.Canonical.FromBytes(body)
	tag := ""
	if oci.IsDigest(req.Reference) {
		want, err := oci.ParseDigest(req.Reference)
		if err != nil {
			return err
		}
		if want.Algorithm() != d.Algorithm() {
			d = want.Algorithm().FromBytes(body)
		}
		if d != want {
			return oci.Errorf(oci.CodeDigestInvalid, "manifest body hashes to %s, not %s", d, want)
		}
	} else {
		if !oci.ValidTag(req.Reference) {
			return oci.Errorf(oci.CodeManifestInvalid, "invalid tag %q", clip(req.Reference))
		}
		tag = req.Reference
	}
	m, mf, err := parseManifest(r.Header.Get("Content-Type"), body)
	if err != nil {
		return err
	}
	m.Digest, m.Size = d, int64(len(body))
	if err := h.checkReferences(t.StoreRepo, mf); err != nil {
		return err
	}
	if err := h.store.PutManifest(t.StoreRepo, "", m, body, tag, time.Now()); err != nil {
		return err
	}
	hdr := w.Header()
	hdr.Set("Location", location(req.Repo, "manifests", d.String()))
	hdr.Set("Docker-Content-Digest", d.String())
	if m.Subject != "" {
		hdr.Set("OCI-Subject", m.Subject.String())
	}
	w.WriteHeader(http.StatusCreated)
	return nil
}

// manifestFields is the union of the fields berth reads from any manifest kind.
type manifestFields struct {
	SchemaVersion int                  `json:"schemaVersion"`
	MediaType     string               `json:"mediaType"`
	ArtifactType  string               `json:"artifactType"`
	Config        *ocispec.Descriptor  `json:"config"`
	Layers        []ocispec.Descriptor `json:"layers"`
	Manifests     []ocispec.Descriptor `json:"manifests"`
	Subject       *ocispec.Descriptor  `json:"subject"`
	Annotations   map[string]string    `json:"annotations"`
	FSLayers      json.RawMessage      `json:"fsLayers"`
}

// blobs are the blobs a manifest needs in its repository: its config and
// its layers, except non-distributable ones (their bytes live elsewhere).
func (mf *manifestFields) blobs() []ocispec.Descriptor {
	var out []ocispec.Descriptor
	if mf.Config != nil {
		out = append(out, *mf.Config)
	}
	for _, l := range mf.Layers {
		if len(l.URLs) == 0 && !isNonDistributable(l.MediaType) {
			out = append(out, l)
		}
	}
	return out
}

// parseManifest validates a manifest body and extracts its record, and the
// fields it was read from.
func parseManifest(contentType string, body []byte) (cache.ManifestRecord, manifestFields, error) {
	var mf manifestFields
	if err := json.Unmarshal(body, &mf); err != nil {
		return cache.ManifestRecord{}, mf, oci.Errorf(oci.CodeManifestInvalid, "manifest is not valid JSON: %v", err)
	}
	mt, _, _ := strings.Cut(contentType, ";")
	if mt == "" || mt == "application/json" || mt == "application/octet-stream" {
		mt = mf.MediaType
	}
	switch {
	case mf.SchemaVersion == 1 || mt == oci.MediaTypeDockerSchema1 || mt == oci.MediaTypeDockerSchema1S || mf.FSLayers != nil:
		return cache.ManifestRecord{}, mf, oci.Errorf(oci.CodeManifestInvalid, "Docker schema1 manifests are deprecated and not accepted; push with a current client (schema2 or OCI)")
	case mf.SchemaVersion != 2:
		return cache.ManifestRecord{}, mf, oci.Errorf(oci.CodeManifestInvalid, "unsupported schemaVersion %d", mf.SchemaVersion)
	}
	if mt == "" {
		if mf.Manifests != nil {
			mt = oci.MediaTypeOCIIndex
		} else {
			mt = oci.MediaTypeOCIManifest
		}
	}
	if mf.MediaType != "" && mf.MediaType != mt {
		return cache.ManifestRecord{}, mf, oci.Errorf(oci.CodeManifestInvalid, "mediaType %q does not match Content-Type %q", mf.MediaType, mt)
	}
	m := cache.ManifestRecord{MediaType: mt, ArtifactType: mf.ArtifactType, Annotations: mf.Annotations}
	switch mt {
	case oci.MediaTypeOCIManifest, oci.MediaTypeDockerManifest:
		if mf.Config == nil {
			return m, mf, oci.Errorf(oci.CodeManifestInvalid, "image manifest has no config")
		}
		if m.ArtifactType == "" {
			m.ArtifactType = mf.Config.MediaType
		}
	case oci.MediaTypeOCIIndex, oci.MediaTypeDockerList:
	}
	if mf.Subject != nil {
		if err := mf.Subject.Digest.Validate(); err != nil {
			return m, mf, oci.Errorf(oci.CodeManifestInvalid, "invalid subject digest")
		}
		m.Subject = mf.Subject.Digest
	}
	return m, mf, nil
}

// checkReferences refuses a manifest whose blobs or child manifests are not
// in the repository. Non-distributable layers (with URLs) are exempt: by
// design their bytes live elsewhere.
func (h *Handler) checkReferences(repo string, mf manifestFields) error {
	refs := mf.blobs()
	for _, ref := range refs {
		if err := ref.Digest.Validate(); err != nil {
			return oci.Errorf(oci.CodeManifestInvalid, "invalid digest %q in manifest", clip(string(ref.Digest)))
		}
		size, err := h.store.StatRepoBlob(repo, ref.Digest)
		if errors.Is(err, cache.ErrNotFound) {
			return &oci.Error{Code: oci.CodeManifestBlobUnknown, Message: "manifest references a blob that is not in this repository", Detail: map[string]string{"digest": ref.Digest.String()}}
		}
		if err != nil {
			return err
		}
		if size != ref.Size {
			return oci.Errorf(oci.CodeManifestInvalid, "blob %s has size %d, manifest says %d", ref.Digest, size, ref.Size)
		}
	}
	for _, child := range mf.Manifests {
		if err := child.Digest.Validate(); err != nil {
			return oci.Errorf(oci.CodeManifestInvalid, "invalid digest %q in index", clip(string(child.Digest)))
		}
		if _, err := h.store.Manifest(repo, child.Digest); errors.Is(err, cache.ErrNotFound) {
			return &oci.Error{Code: oci.CodeManifestBlobUnknown, Message: "index references a manifest that is not in this repository", Detail: map[string]string{"digest": child.Digest.String()}}
		} else if err != nil {
			return err
		}
	}
	return nil
}

func isNonDistributable(mt string) bool {
	return mt == "application/vnd.oci.image.layer.nondistributable.v1.tar" ||
		mt == "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" ||
		mt == "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" ||
		mt == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
}

func (h *Handler) deleteManifest(w http.ResponseWriter, r *http.Request, req Request, t Target) error {
	if !oci.IsDigest(req.Reference) {
		if !oci.ValidTag(req.Reference) {
			return oci.Errorf(oci.CodeManifestInvalid, "invalid tag %q", clip(req.Reference))
		}
		if err := h.store.DeleteTag(t.StoreRepo, req.Reference); err != nil {
			return manifestErr(err, req.Reference)
		}
		w.WriteHeader(http.StatusAccepted)
		return nil
	}
	d, err := oci.ParseDigest(req.Reference)
	if err != nil {
		return err
	}
	if err := h.store.DeleteManifest(t.StoreRepo, d); err != nil {
		return manifestErr(err, req.Reference)
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}

func uploadHeaders(w http.ResponseWriter, repo string, u cache.Upload) {
	hdr := w.Header()
	hdr.Set("Location", location(repo, "blobs", "uploads", u.ID))
	hdr.Set("Docker-Upload-UUID", u.ID)
	end := u.Offset - 1
	if end < 0 {
		end = 0
	}
	hdr.Set("Range", fmt.Sprintf("0-%d", end))
	hdr.Set("Content-Length", "0")
}

func (h *Handler) startUpload(w http.ResponseWriter, r *http.Request, req Request, t Target) error {
	q := r.URL.Query()
	if mount := q.Get("mount"); mount != "" {
		d, err := oci.ParseDigest(mount)
		if err != nil {
			return err
		}
		if h.tryMount(t.StoreRepo, q.Get("from"), d, r) {
			w.Header().Set("Location", location(req.Repo, "blobs", d.String()))
			w.Header().Set("Docker-Content-Digest", d.String())
			w.WriteHeader(http.StatusCreated)
			return nil
		}
		// Not mountable: fall through to a normal upload, as the spec asks.
	}
	if dg := q.Get("digest"); dg != "" {
		d, err := oci.ParseDigest(dg)
		if err != nil {
			return err
		}
		// ContentLength is -1 when unknown: PutBlob then checks the digest only.
		if err := h.store.PutBlob(t.StoreRepo, "", d, r.ContentLength, clientBody{r.Body}); err != nil {
			return err
		}
		w.Header().Set("Location", location(req.Repo, "blobs", d.String()))
		w.Header().Set("Docker-Content-Digest", d.String())
		w.WriteHeader(http.StatusCreated)
		return nil
	}
	u, err := h.store.NewUpload(t.StoreRepo)
	if err != nil {
		return err
	}
	uploadHeaders(w, req.Repo, u)
	w.Header().Set("OCI-Chunk-Min-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// tryMount links blob d into repo if the caller may read it: from a named
// local repository that holds it, or (without from) from any local
// repository, since berth's local namespace is one trust domain.
func (h *Handler) tryMount(repo, from string, d digest.Digest, r *http.Request) bool {
	if from != "" {
		src, err := h.router.LocalStoreName(from, r)
		if err != nil {
			return false
		}
		if ok, _ := h.store.Linked(src, d); !ok {
			return false
		}
	} else if _, err := h.store.StatBlob(d); err != nil {
		return false
	}
	return h.store.Link(repo, "", d) == nil
}

// clientBody reads a request body. Its read errors are the client's (a body
// shorter than its Content-Length, a broken chunked encoding, a client gone
// mid-push): BLOB_UPLOAD_INVALID, not an internal error.
type clientBody struct{ r io.Reader }

func (b clientBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = oci.Errorf(oci.CodeBlobUploadInvalid, "reading request body: %v", err)
	}
	return n, err
}

func (h *Handler) patchUpload(w http.ResponseWriter, r *http.Request, req Request, t Target) error {
	start := int64(-1)
	if cr := r.Header.Get("Content-Range"); cr != "" {
		s, e, ok := oci.ParseRange(cr)
		if !ok {
			return &oci.Error{Code: oci.CodeBlobUploadInvalid, Message: "malformed Content-Range", HTTPStatus: http.StatusRequestedRangeNotSatisfiable}
		}
		if r.ContentLength >= 0 && e-s+1 != r.ContentLength {
			return &oci.Error{Code: oci.CodeBlobUploadInvalid, Message: "Content-Range does not match Content-Length", HTTPStatus: http.StatusRequestedRangeNotSatisfiable}
		}
		start = s
	}
	u, err := h.store.AppendUpload(t.StoreRepo, req.Reference, start, clientBody{r.Body})
	if errors.Is(err, cache.ErrOffset) {
		uploadHeaders(w, req.Repo, u)
		w.Header().Del("Content-Length")
		return &oci.Error{Code: oci.CodeBlobUploadInvalid, Message: err.Error(), HTTPStatus: http.StatusRequestedRangeNotSatisfiable}
	}
	if err != nil {
		return err
	}
	uploadHeaders(w, req.Repo, u)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

func (h *Handler) finishUpload(w http.ResponseWriter, r *http.Request, req Request, t Target) error {
	d, err := oci.ParseDigest(r.URL.Query().Get("digest"))
	if err != nil {
		return err
	}
	var body io.Reader
	if r.ContentLength != 0 {
		if cr := r.Header.Get("Content-Range"); cr != "" {
			u, err := h.store.GetUpload(t.StoreRepo, req.Reference)
			if err != nil {
				return err
			}
			if s, _, ok := oci.ParseRange(cr); !ok || s != u.Offset {
				return &oci.Error{Code: oci.CodeBlobUploadInvalid, Message: "Content-Range does not continue the upload", HTTPStatus: http.StatusRequestedRangeNotSatisfiable}
			}
		}
		body = clientBody{r.Body}
	}
	if _, err := h.store.CommitUpload(t.StoreRepo, req.Reference, d, body); err != nil {
		return err
	}
	w.Header().Set("Location", location(req.Repo, "blobs", d.String()))
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// pageParams reads n and last; n must be a non-negative integer.
func pageParams(r *http.Request) (n int, hasN bool, last string, err error) {
	q := r.URL.Query()
	last = q.Get("last")
	if s := q.Get("n"); s != "" {
		n, err = strconv.Atoi(s)
		if err != nil || n < 0 {
			return 0, false, "", oci.Errorf(oci.CodeUnsupported, "invalid n %q", clip(s)).WithStatus(http.StatusBadRequest)
		}
		hasN = true
	}
	return n, hasN, last, nil
}

func (h *Handler) localTags(w http.ResponseWriter, r *http.Request, req Request, t Target) error {
	n, hasN, last, err := pageParams(r)
	if err != nil {
		return err
	}
	return h.storedTags(w, r, req, t.StoreRepo, n, hasN, last, "repository "+req.Repo+" unknown")
}

// storedTags answers a tag list page from the index; unknown is the message
// for a repository it does not hold.
func (h *Handler) storedTags(w http.ResponseWriter, r *http.Request, req Request, repo string, n int, hasN bool, last, unknown string) error {
	if _, err := h.store.Repository(repo); err != nil {
		if errors.Is(err, cache.ErrNotFound) {
			return &oci.Error{Code: oci.CodeNameUnknown, Message: unknown}
		}
		return err
	}
	tags, more := []string{}, false
	if !hasN || n > 0 {
		var err error
		if tags, more, err = h.store.Tags(repo, n, last); err != nil {
			return err
		}
	}
	return writeTagList(w, r, req, tags, nextAfter(tags, more), n)
}

// nextAfter is the `last` of the page after tags, or "" if there is none.
func nextAfter(tags []string, more bool) string {
	if !more || len(tags) == 0 {
		return ""
	}
	return tags[len(tags)-1]
}

// writeTagList answers a tag list; next, if set, is the `last` of the
// following page, announced in a Link header with the client's n.
func writeTagList(w http.ResponseWriter, r *http.Request, req Request, tags []string, next string, n int) error {
	if next != "" {
		q := url.Values{"last": {next}}
		if n > 0 {
			q.Set("n", strconv.Itoa(n))
		}
		if ns := r.URL.Query().Get("ns"); ns != "" {
			q.Set("ns", ns)
		}
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, location(req.Repo, "tags", "list"), q.Encode()))
	}
	return writeJSON(w, r, "application/json", map[string]any{"name": req.Repo, "tags": tags})
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

func (h *Handler) referrers(w http.ResponseWriter, r *http.Request, repo, ref string) error {
	d, err := oci.ParseDigest(ref)
	if err != nil {
		return err
	}
	at := r.URL.Query().Get("artifactType")
	descs, err := h.store.Referrers(repo, d, at)
	if err != nil {
		return err
	}
	if at != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	return writeIndex(w, r, descs)
}

// writeIndex answers with an OCI image index of descs (the referrers API).
func writeIndex(w http.ResponseWriter, r *http.Request, descs []ocispec.Descriptor) error {
	idx := ocispec.Index{MediaType: oci.MediaTypeOCIIndex, Manifests: descs}
	idx.SchemaVersion = 2
	return writeJSON(w, r, oci.MediaTypeOCIIndex, idx)
}

func (h *Handler) catalog(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return errMethod
	}
	n, hasN, last, err := pageParams(r)
	if err != nil {
		return err
	}
	repos := []string{}
	more := false
	if !hasN || n > 0 {
		if repos, more, err = h.store.Repositories(n, last); err != nil {
			return err
		}
	}
	if more && len(repos) > 0 {
		q := url.Values{"n": {strconv.Itoa(n)}, "last": {repos[len(repos)-1]}}
		w.Header().Set("Link", fmt.Sprintf(`</v2/_catalog?%s>; rel="next"`, q.Encode()))
	}
	return writeJSON(w, r, "application/json", map[string]any{"repositories": repos})
}
