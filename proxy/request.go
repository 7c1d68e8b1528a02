package proxy

import (
	"net/http"
	"strings"

	"github.com/berth-dev/berth/internal/oci"
)

// Kind is what a /v2/ request asks for.
type Kind int

// The kinds of request of the OCI Distribution API.
const (
	KindBase Kind = iota
	KindCatalog
	KindManifest
	KindBlob
	KindUploadStart // POST .../blobs/uploads/
	KindUpload      // .../blobs/uploads/<id>
	KindTags
	KindReferrers
	KindToken // berth's token endpoint, /v2/token
)

var kindNames = [...]string{"base", "catalog", "manifest", "blob", "upload", "upload", "tags", "referrers", "token"}

func (k Kind) String() string { return kindNames[k] }

// Request is a /v2/ request parsed once: its kind and the names it carries.
// Repo is the name as the client sent it; routing decides which store or
// upstream it belongs to.
type Request struct {
	Kind      Kind
	Repo      string
	Reference string // manifest tag or digest, blob digest, referrers subject, upload id
}

// ParseRequest parses the path of a /v2/ request. It returns a NAME_INVALID
// error for a malformed repository name and NAME_UNKNOWN-style 404 for paths
// that are not part of the API.
func ParseRequest(path string) (Request, error) {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		if path == "/v2" {
			return Request{Kind: KindBase}, nil
		}
		return Request{}, errNotAPI
	}
	if rest == "" {
		return Request{Kind: KindBase}, nil
	}
	if rest == "_catalog" {
		return Request{Kind: KindCatalog}, nil
	}
	if path == TokenPath {
		return Request{Kind: KindToken}, nil
	}
	var req Request
	switch {
	case strings.HasSuffix(rest, "/tags/list"):
		req = Request{Kind: KindTags, Repo: strings.TrimSuffix(rest, "/tags/list")}
	case strings.HasSuffix(rest, "/blobs/uploads/") || strings.HasSuffix(rest, "/blobs/uploads"):
		req = Request{Kind: KindUploadStart, Repo: rest[:strings.LastIndex(rest, "/blobs/uploads")]}
	default:
		i := strings.LastIndexByte(rest, '/')
		if i < 0 {
			return Request{}, errNotAPI
		}
		ref := rest[i+1:]
		head := rest[:i]
		j := strings.LastIndexByte(head, '/')
		if j < 0 {
			return Request{}, errNotAPI
		}
		switch head[j+1:] {
		case "manifests":
			req = Request{Kind: KindManifest, Repo: head[:j], Reference: ref}
		case "blobs":
			req = Request{Kind: KindBlob, Repo: head[:j], Reference: ref}
		case "referrers":
			req = Request{Kind: KindReferrers, Repo: head[:j], Reference: ref}
		case "uploads":
			if !strings.HasSuffix(head[:j], "/blobs") {
				return Request{}, errNotAPI
			}
			req = Request{Kind: KindUpload, Repo: strings.TrimSuffix(head[:j], "/blobs"), Reference: ref}
		default:
			return Request{}, errNotAPI
		}
		if ref == "" {
			return Request{}, errNotAPI
		}
	}
	if !oci.ValidName(req.Repo) {
		return Request{}, oci.Errorf(oci.CodeNameInvalid, "invalid repository name %q", clip(req.Repo))
	}
	return req, nil
}

var errNotAPI = &oci.Error{Code: oci.CodeNameUnknown, Message: "no such API endpoint", HTTPStatus: http.StatusNotFound}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
