package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
)

func uploadHeaders(w http.ResponseWriter, repo string, u registry.Upload) {
	hdr := w.Header()
	hdr.Set("Location", location(repo, "blobs", "uploads", u.ID))
	hdr.Set("Docker-Upload-UUID", u.ID)
	hdr.Set("Range", fmt.Sprintf("0-%d", max(u.Offset-1, 0)))
	hdr.Set("Content-Length", "0")
}

func blobCreated(w http.ResponseWriter, repo string, desc registry.Descriptor) {
	hdr := w.Header()
	hdr.Set("Location", location(repo, "blobs", desc.Digest.String()))
	hdr.Set("Docker-Content-Digest", desc.Digest.String())
	hdr.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

func (h *Handler) startUpload(ctx context.Context, w http.ResponseWriter, r *http.Request, st *state) error {
	repo, q := st.req.Repo, st.query
	if mount := q.Get("mount"); mount != "" {
		d, err := oci.ParseDigest(mount)
		if err != nil {
			return err
		}
		desc, err := h.reg.MountBlob(ctx, q.Get("from"), repo, d)
		if err == nil {
			blobCreated(w, repo, desc)
			return nil
		}
		if !errors.Is(err, oci.ErrBlobUnknown) {
			return err
		}
		// Not mountable: a normal upload, as the spec asks.
	}
	if dg := q.Get("digest"); dg != "" {
		d, err := oci.ParseDigest(dg)
		if err != nil {
			return err
		}
		// ContentLength is -1 when unknown: then the digest alone is checked.
		desc, err := h.reg.PushBlob(ctx, repo, registry.Descriptor{Digest: d, Size: r.ContentLength}, h.body(w, r, st))
		if err != nil {
			return err
		}
		blobCreated(w, repo, desc)
		return nil
	}
	u, err := h.reg.StartUpload(ctx, repo)
	if err != nil {
		return err
	}
	uploadHeaders(w, repo, u)
	w.Header().Set("OCI-Chunk-Min-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}

func (h *Handler) patchUpload(ctx context.Context, w http.ResponseWriter, r *http.Request, st *state) error {
	req := st.req
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
	u, err := h.reg.AppendUpload(ctx, req.Repo, req.Reference, start, h.body(w, r, st))
	if errors.Is(err, oci.ErrUploadOffset) {
		uploadHeaders(w, req.Repo, u)
		w.Header().Del("Content-Length")
		return err
	}
	if err != nil {
		return err
	}
	uploadHeaders(w, req.Repo, u)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

func (h *Handler) finishUpload(ctx context.Context, w http.ResponseWriter, r *http.Request, st *state) error {
	req := st.req
	d, err := oci.ParseDigest(st.query.Get("digest"))
	if err != nil {
		return err
	}
	var body io.Reader
	if r.ContentLength != 0 {
		if cr := r.Header.Get("Content-Range"); cr != "" {
			u, err := h.reg.UploadStatus(ctx, req.Repo, req.Reference)
			if err != nil {
				return err
			}
			if s, _, ok := oci.ParseRange(cr); !ok || s != u.Offset {
				return &oci.Error{Code: oci.CodeBlobUploadInvalid, Message: "Content-Range does not continue the upload", HTTPStatus: http.StatusRequestedRangeNotSatisfiable}
			}
		}
		body = h.body(w, r, st)
	}
	desc, err := h.reg.CommitUpload(ctx, req.Repo, req.Reference, d, body)
	if err != nil {
		return err
	}
	blobCreated(w, req.Repo, desc)
	return nil
}

// body is a request body as a registry reads it: a read that waits longer
// than the idle timeout for the client fails (a stalled upload holds
// nothing for long), and read errors are the client's (a body shorter than
// its Content-Length, a broken chunked encoding, a client gone mid-push):
// BLOB_UPLOAD_INVALID, not an internal error. The bytes read are counted
// in st for the request log.
func (h *Handler) body(w http.ResponseWriter, r *http.Request, st *state) io.Reader {
	return &clientBody{r: r.Body, rc: http.NewResponseController(w), idle: h.idle, n: &st.bytesIn}
}

type clientBody struct {
	r    io.Reader
	rc   *http.ResponseController
	idle time.Duration
	n    *int64
}

func (b *clientBody) Read(p []byte) (int, error) {
	_ = b.rc.SetReadDeadline(time.Now().Add(b.idle)) // unsupported (HTTP/2 in tests): the server's timeouts apply
	n, err := b.r.Read(p)
	*b.n += int64(n)
	if err != nil && err != io.EOF {
		err = oci.Errorf(oci.CodeBlobUploadInvalid, "reading request body: %v", err)
	}
	return n, err
}
