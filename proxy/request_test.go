package proxy_test

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/proxy"
)

const reqTestDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseRequest(t *testing.T) {
	t.Parallel()
	type want struct {
		kind proxy.Kind
		repo string
		ref  string
	}
	long := strings.Repeat("a", oci.MaxNameLength)
	tests := []struct {
		path string
		want want
		code oci.Code // "" for success
	}{
		{"/v2/", want{kind: proxy.KindBase}, ""},
		{"/v2", want{kind: proxy.KindBase}, ""},
		{"/v2/_catalog", want{kind: proxy.KindCatalog}, ""},
		{"/v2/alpine/manifests/latest", want{proxy.KindManifest, "alpine", "latest"}, ""},
		{"/v2/a/b/c/manifests/" + reqTestDigest, want{proxy.KindManifest, "a/b/c", reqTestDigest}, ""},
		{"/v2/alpine/blobs/" + reqTestDigest, want{proxy.KindBlob, "alpine", reqTestDigest}, ""},
		{"/v2/alpine/blobs/uploads/", want{proxy.KindUploadStart, "alpine", ""}, ""},
		{"/v2/alpine/blobs/uploads", want{proxy.KindUploadStart, "alpine", ""}, ""},
		{"/v2/a/b/blobs/uploads/0123abcd", want{proxy.KindUpload, "a/b", "0123abcd"}, ""},
		{"/v2/alpine/tags/list", want{proxy.KindTags, "alpine", ""}, ""},
		{"/v2/a/b/tags/list", want{proxy.KindTags, "a/b", ""}, ""},
		{"/v2/alpine/referrers/" + reqTestDigest, want{proxy.KindReferrers, "alpine", reqTestDigest}, ""},
		{"/v2/" + long + "/manifests/x", want{proxy.KindManifest, long, "x"}, ""},

		// Names whose components are endpoint words.
		{"/v2/a/blobs/b/manifests/latest", want{proxy.KindManifest, "a/blobs/b", "latest"}, ""},
		{"/v2/a/manifests/b/blobs/" + reqTestDigest, want{proxy.KindBlob, "a/manifests/b", reqTestDigest}, ""},
		{"/v2/blobs/manifests/latest", want{proxy.KindManifest, "blobs", "latest"}, ""},
		{"/v2/manifests/manifests/latest", want{proxy.KindManifest, "manifests", "latest"}, ""},
		{"/v2/blobs/blobs/" + reqTestDigest, want{proxy.KindBlob, "blobs", reqTestDigest}, ""},
		{"/v2/blobs/blobs/uploads/", want{proxy.KindUploadStart, "blobs", ""}, ""},
		{"/v2/blobs/blobs/uploads/id1", want{proxy.KindUpload, "blobs", "id1"}, ""},
		{"/v2/a/blobs/uploads/blobs/uploads/", want{proxy.KindUploadStart, "a/blobs/uploads", ""}, ""},
		{"/v2/a/blobs/uploads/manifests/latest", want{proxy.KindManifest, "a/blobs/uploads", "latest"}, ""},
		{"/v2/a/tags/list/tags/list", want{proxy.KindTags, "a/tags/list", ""}, ""},
		{"/v2/tags/tags/list", want{proxy.KindTags, "tags", ""}, ""},
		{"/v2/a/referrers/manifests/latest", want{proxy.KindManifest, "a/referrers", "latest"}, ""},
		{"/v2/x/uploads/blobs/" + reqTestDigest, want{proxy.KindBlob, "x/uploads", reqTestDigest}, ""},
		{"/v2/_catalog/manifests/x", want{}, oci.CodeNameInvalid},

		// The reference is not validated here; handlers do.
		{"/v2/a/manifests/..", want{proxy.KindManifest, "a", ".."}, ""},
		{"/v2/a/blobs/uploads/..", want{proxy.KindUpload, "a", ".."}, ""},

		// Invalid names.
		{"/v2/Alpine/manifests/latest", want{}, oci.CodeNameInvalid},
		{"/v2/../x/manifests/a", want{}, oci.CodeNameInvalid},
		{"/v2/a/../manifests/a", want{}, oci.CodeNameInvalid},
		{"/v2/a//b/manifests/a", want{}, oci.CodeNameInvalid},
		{"/v2//a/manifests/a", want{}, oci.CodeNameInvalid},
		{"/v2/a/./b/blobs/" + reqTestDigest, want{}, oci.CodeNameInvalid},
		{"/v2/" + long + "a/manifests/x", want{}, oci.CodeNameInvalid},
		{"/v2//tags/list", want{}, oci.CodeNameInvalid},
		{"/v2//blobs/uploads/", want{}, oci.CodeNameInvalid},
		{"/v2//manifests/latest", want{}, oci.CodeNameInvalid},
		{"/v2/a b/tags/list", want{}, oci.CodeNameInvalid},
		{"/v2/a\x00b/tags/list", want{}, oci.CodeNameInvalid},

		// Not API endpoints.
		{"/", want{}, oci.CodeNameUnknown},
		{"", want{}, oci.CodeNameUnknown},
		{"/v1/_ping", want{}, oci.CodeNameUnknown},
		{"/v2x/a/manifests/b", want{}, oci.CodeNameUnknown},
		{"/v2/a", want{}, oci.CodeNameUnknown},
		{"/v2/a/foo/bar", want{}, oci.CodeNameUnknown},
		{"/v2/a/manifests/", want{}, oci.CodeNameUnknown},
		{"/v2/a/blobs/", want{}, oci.CodeNameUnknown},
		{"/v2/a/referrers/", want{}, oci.CodeNameUnknown},
		{"/v2/a/blobs/uploads/x/", want{}, oci.CodeNameUnknown},
		{"/v2/a/uploads/x", want{}, oci.CodeNameUnknown},
		{"/v2/blobs/uploads/", want{}, oci.CodeNameUnknown},
		{"/v2/blobs/uploads/x", want{}, oci.CodeNameUnknown},
		{"/v2/manifests/latest", want{}, oci.CodeNameUnknown},
		{"/v2/tags/list", want{}, oci.CodeNameUnknown},
		{"/v2/a/blobs/uploads/../../etc", want{}, oci.CodeNameUnknown},
		{"/v2/_catalog/", want{}, oci.CodeNameUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			req, err := proxy.ParseRequest(tt.path)
			if tt.code != "" {
				var e *oci.Error
				if !errors.As(err, &e) {
					t.Fatalf("ParseRequest(%q) = %+v, %v; want %s", tt.path, req, err, tt.code)
				}
				if e.Code != tt.code {
					t.Fatalf("ParseRequest(%q) code = %s, want %s", tt.path, e.Code, tt.code)
				}
				wantStatus := http.StatusBadRequest
				if tt.code == oci.CodeNameUnknown {
					wantStatus = http.StatusNotFound
				}
				if e.Status() != wantStatus {
					t.Errorf("ParseRequest(%q) status = %d, want %d", tt.path, e.Status(), wantStatus)
				}
				if req != (proxy.Request{}) {
					t.Errorf("ParseRequest(%q) returned %+v with an error", tt.path, req)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRequest(%q): %v", tt.path, err)
			}
			got := want{req.Kind, req.Repo, req.Reference}
			if got != tt.want {
				t.Errorf("ParseRequest(%q) = %+v, want %+v", tt.path, got, tt.want)
			}
		})
	}
}

func TestKindString(t *testing.T) {
	t.Parallel()
	want := map[proxy.Kind]string{
		proxy.KindBase: "base", proxy.KindCatalog: "catalog", proxy.KindManifest: "manifest",
		proxy.KindBlob: "blob", proxy.KindUploadStart: "upload", proxy.KindUpload: "upload",
		proxy.KindTags: "tags", proxy.KindReferrers: "referrers",
	}
	for k, s := range want {
		if k.String() != s {
			t.Errorf("Kind(%d).String() = %q, want %q", k, k.String(), s)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"/v2/", "/v2", "/v2/_catalog", "/v2/a/manifests/latest", "/v2/a/b/blobs/" + reqTestDigest,
		"/v2/a/blobs/uploads/", "/v2/a/blobs/uploads/0123", "/v2/a/tags/list", "/v2/a/referrers/" + reqTestDigest,
		"/v2/a/blobs/b/manifests/latest", "/v2/../x/manifests/a", "/v2/%2e%2e/x/manifests/a",
		"/v2/a/%2e%2e/manifests/a", "/v2/a/blobs/uploads/../../etc", "/v2//tags/list", "/v2/A/tags/list",
		"/v2/a//b/manifests/x", "/v2/blobs/uploads/", "/v2/a/blobs/uploads/..%2f..%2fetc",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		// Try the string both as the decoded path and, like net/http does,
		// decoded from its escaped form.
		paths := []string{raw}
		if u, err := url.Parse(raw); err == nil {
			paths = append(paths, u.Path)
		}
		for _, p := range paths {
			req, err := proxy.ParseRequest(p)
			if err != nil {
				var e *oci.Error
				if !errors.As(err, &e) || e.Status() >= 500 {
					t.Fatalf("ParseRequest(%q) error %v is not a client OCI error", p, err)
				}
				continue
			}
			switch req.Kind {
			case proxy.KindBase, proxy.KindCatalog:
				if req.Repo != "" || req.Reference != "" {
					t.Fatalf("ParseRequest(%q) = %+v: base/catalog with a name", p, req)
				}
				continue
			case proxy.KindManifest, proxy.KindBlob, proxy.KindUpload, proxy.KindReferrers:
				if req.Reference == "" {
					t.Fatalf("ParseRequest(%q) = %+v: empty reference", p, req)
				}
				if strings.Contains(req.Reference, "/") {
					t.Fatalf("ParseRequest(%q) = %+v: reference contains '/'", p, req)
				}
			}
			if !oci.ValidName(req.Repo) {
				t.Fatalf("ParseRequest(%q) = %+v: repository fails ValidName", p, req)
			}
			for _, c := range strings.Split(req.Repo, "/") {
				if c == ".." || c == "." || c == "" {
					t.Fatalf("ParseRequest(%q) = %+v: repository has component %q", p, req, c)
				}
			}
			if !strings.HasPrefix(p, "/v2/"+req.Repo+"/") {
				t.Fatalf("ParseRequest(%q) = %+v: repository is not the path's prefix", p, req)
			}
		}
	})
}
