package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/internal/registry/regmem"
	"github.com/berth-dev/berth/proxy"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"
)

// These tests pin the HTTP layer alone: proxy serving the in-memory
// registry, so every status, header and error code below is proxy's doing.

func httpServer(t *testing.T, reg registry.Interface) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(proxy.New(proxy.Options{Registry: reg, Logger: zerolog.Nop()}))
	t.Cleanup(srv.Close)
	return srv
}

// httpStep is one request and the response it must get.
type httpStep struct {
	name   string
	method string
	path   string   // {name} is replaced by a Location saved earlier
	body   string   // request body
	header []string // request headers: name, value pairs
	status int
	// want are exact response headers; "" means absent, a leading "~"
	// makes the rest a regular expression.
	want map[string]string
	code oci.Code // the one error code of the body
	// wantBody, when not empty, is the exact response body.
	wantBody string
	save     string // keep the Location header under this name
}

var placeholder = regexp.MustCompile(`\{[a-z]+\}`)

// runHTTP runs steps in order against srv, each as a subtest.
func runHTTP(t *testing.T, srv *httptest.Server, steps []httpStep) {
	t.Helper()
	saved := map[string]string{}
	expand := func(s string) string {
		return placeholder.ReplaceAllStringFunc(s, func(p string) string { return saved[p[1:len(p)-1]] })
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			var hdr []string
			for _, h := range s.header {
				hdr = append(hdr, expand(h))
			}
			resp, body := httpDo(t, srv, s.method, expand(s.path), s.body, hdr...)
			if s.save != "" {
				saved[s.save] = resp.Header.Get("Location")
			}
			if resp.StatusCode != s.status {
				t.Fatalf("status %d, want %d; body %s", resp.StatusCode, s.status, body)
			}
			for k, v := range s.want {
				got, present := resp.Header[http.CanonicalHeaderKey(k)]
				switch v = expand(v); {
				case v == "":
					if present {
						t.Errorf("%s: %q, want none", k, got)
					}
				case strings.HasPrefix(v, "~"):
					if !present || !regexp.MustCompile(v[1:]).MatchString(got[0]) {
						t.Errorf("%s: %q, want a match of %s", k, got, v[1:])
					}
				case len(got) != 1 || got[0] != v:
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			if s.code != "" {
				checkErrorBody(t, resp, body, s.code)
			}
			if s.wantBody != "" && string(body) != s.wantBody {
				t.Errorf("body %q, want %q", body, s.wantBody)
			}
		})
	}
}

// httpDo sends one request and reads the whole response. Every answer must
// name the API version, and a HEAD's must have no body.
func httpDo(t *testing.T, srv *httptest.Server, method, path, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == "" {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	if v := resp.Header.Get("Docker-Distribution-API-Version"); v != "registry/2.0" {
		t.Errorf("Docker-Distribution-API-Version = %q", v)
	}
	if method == http.MethodHead && len(b) != 0 {
		t.Errorf("HEAD answered with a body: %q", b)
	}
	return resp, b
}

// checkErrorBody asserts a JSON error body holding exactly one error, with
// code (for HEAD, which has no body, only the Content-Type).
func checkErrorBody(t *testing.T, resp *http.Response, body []byte, code oci.Code) {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error Content-Type %q", ct)
	}
	if resp.Request.Method == http.MethodHead {
		return
	}
	if cl := resp.Header.Get("Content-Length"); cl != fmt.Sprint(len(body)) {
		t.Errorf("error Content-Length %q for %d bytes", cl, len(body))
	}
	var eb struct {
		Errors []struct {
			Code    oci.Code `json:"code"`
			Message string   `json:"message"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &eb); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	if len(eb.Errors) != 1 || eb.Errors[0].Code != code {
		t.Fatalf("errors %+v, want one %s", eb.Errors, code)
	}
}

// httpFixture is content for the tests: a config, a 20-byte layer and an
// image manifest of them.
type httpFixture struct {
	config, layer         []byte
	configD, layerD       digest.Digest
	manifest              []byte
	manifestD             digest.Digest
	configPath, layerPath string
}

func newHTTPFixture(t *testing.T, repo string) httpFixture {
	t.Helper()
	f := httpFixture{config: []byte(`{"architecture":"amd64","os":"linux"}`), layer: []byte("0123456789abcdefghij")}
	f.configD, f.layerD = digest.FromBytes(f.config), digest.FromBytes(f.layer)
	f.manifest = imageManifest(t, desc(ocispec.MediaTypeImageConfig, f.config), []ocispec.Descriptor{desc(ocispec.MediaTypeImageLayer, f.layer)}, nil, "")
	f.manifestD = digest.FromBytes(f.manifest)
	f.configPath, f.layerPath = "/v2/"+repo+"/blobs/"+f.configD.String(), "/v2/"+repo+"/blobs/"+f.layerD.String()
	return f
}

// store puts f's blobs (and its manifest, under tag, unless tag is "") in
// repo through the Go API.
func (f httpFixture) store(t *testing.T, reg registry.Interface, repo, tag string) {
	t.Helper()
	ctx := t.Context()
	for _, b := range [][]byte{f.config, f.layer} {
		if _, err := reg.PushBlob(ctx, repo, registry.Descriptor{Digest: digest.FromBytes(b), Size: int64(len(b))}, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	if tag == "" {
		return
	}
	pushManifest(t, reg, repo, tag, f.manifest)
}

func pushManifest(t *testing.T, reg registry.Interface, repo, tag string, body []byte) *registry.Manifest {
	t.Helper()
	m, err := registry.ParseManifest(ocispec.MediaTypeImageManifest, body, digest.FromBytes(body))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.PushManifest(t.Context(), repo, tag, m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestHTTPBlobPush(t *testing.T) {
	t.Parallel()
	const repo = "team/app"
	f := newHTTPFixture(t, repo)
	srv := httpServer(t, regmem.New())
	uploadLoc := `~^/v2/team/app/blobs/uploads/[^/?]+$`
	octet := []string{"Content-Type", "application/octet-stream"}
	wrong := digest.FromString("wrong")
	runHTTP(t, srv, []httpStep{
		{name: "monolithic", method: http.MethodPost, path: "/v2/team/app/blobs/uploads/?digest=" + f.configD.String(), body: string(f.config), header: octet,
			status: http.StatusCreated, want: map[string]string{"Location": f.configPath, "Docker-Content-Digest": f.configD.String(), "Content-Length": "0"}},
		{name: "HEAD the monolithic blob", method: http.MethodHead, path: f.configPath, status: http.StatusOK,
			want: map[string]string{"Content-Length": fmt.Sprint(len(f.config)), "Docker-Content-Digest": f.configD.String(), "Content-Type": "application/octet-stream"}},
		{name: "monolithic with a wrong digest", method: http.MethodPost, path: "/v2/team/app/blobs/uploads/?digest=" + wrong.String(), body: "not wrong",
			status: http.StatusBadRequest, code: oci.CodeDigestInvalid},
		{name: "monolithic with an invalid digest", method: http.MethodPost, path: "/v2/team/app/blobs/uploads/?digest=sha256:xyz", body: "x",
			status: http.StatusBadRequest, code: oci.CodeDigestInvalid},

		{name: "start a chunked upload", method: http.MethodPost, path: "/v2/team/app/blobs/uploads/", status: http.StatusAccepted, save: "up",
			want: map[string]string{"Location": uploadLoc, "Range": "0-0", "Content-Length": "0", "OCI-Chunk-Min-Length": "0", "Docker-Upload-UUID": `~^[^/]+$`}},
		{name: "first chunk", method: http.MethodPatch, path: "{up}", body: string(f.layer[:10]), header: []string{"Content-Type", "application/octet-stream", "Content-Range", "0-9"},
			status: http.StatusAccepted, want: map[string]string{"Location": "{up}", "Range": "0-9", "Content-Length": "0"}},
		{name: "chunk that does not continue", method: http.MethodPatch, path: "{up}", body: string(f.layer[5:10]), header: []string{"Content-Range", "5-9"},
			status: http.StatusRequestedRangeNotSatisfiable, code: oci.CodeBlobUploadInvalid, want: map[string]string{"Location": "{up}", "Range": "0-9"}},
		{name: "Content-Range that disagrees with the body", method: http.MethodPatch, path: "{up}", body: "abc", header: []string{"Content-Range", "10-19"},
			status: http.StatusRequestedRangeNotSatisfiable, code: oci.CodeBlobUploadInvalid},
		{name: "status", method: http.MethodGet, path: "{up}", status: http.StatusNoContent,
			want: map[string]string{"Location": "{up}", "Range": "0-9", "Content-Length": ""}}, // net/http drops it from a 204
		{name: "second chunk, streamed", method: http.MethodPatch, path: "{up}", body: string(f.layer[10:15]),
			status: http.StatusAccepted, want: map[string]string{"Location": "{up}", "Range": "0-14"}},
		{name: "close with a wrong digest", method: http.MethodPut, path: "{up}?digest=" + wrong.String(),
			status: http.StatusBadRequest, code: oci.CodeDigestInvalid},
		{name: "close with a final chunk that does not continue", method: http.MethodPut, path: "{up}?digest=" + f.layerD.String(), body: string(f.layer[15:]), header: []string{"Content-Range", "16-20"},
			status: http.StatusRequestedRangeNotSatisfiable, code: oci.CodeBlobUploadInvalid},
		{name: "close with the final chunk", method: http.MethodPut, path: "{up}?digest=" + f.layerD.String(), body: string(f.layer[15:]), header: []string{"Content-Range", "15-19"},
			status: http.StatusCreated, want: map[string]string{"Location": f.layerPath, "Docker-Content-Digest": f.layerD.String(), "Content-Length": "0"}},
		{name: "the upload is gone", method: http.MethodGet, path: "{up}", status: http.StatusNotFound, code: oci.CodeBlobUploadUnknown},
		{name: "GET the chunked blob", method: http.MethodGet, path: f.layerPath, status: http.StatusOK, wantBody: string(f.layer),
			want: map[string]string{"Content-Length": "20", "Docker-Content-Digest": f.layerD.String(), "Content-Type": "application/octet-stream"}},

		{name: "cancel an upload: start", method: http.MethodPost, path: "/v2/team/app/blobs/uploads", status: http.StatusAccepted, save: "cancel"},
		{name: "cancel an upload", method: http.MethodDelete, path: "{cancel}", status: http.StatusNoContent},
		{name: "cancel an upload: it is gone", method: http.MethodPatch, path: "{cancel}", body: "x", status: http.StatusNotFound, code: oci.CodeBlobUploadUnknown},
		{name: "an upload of another repository", method: http.MethodGet, path: "/v2/other/blobs/uploads/nope", status: http.StatusNotFound, code: oci.CodeBlobUploadUnknown},

		{name: "mount", method: http.MethodPost, path: "/v2/other/blobs/uploads/?mount=" + f.layerD.String() + "&from=team/app", status: http.StatusCreated,
			want: map[string]string{"Location": "/v2/other/blobs/" + f.layerD.String(), "Docker-Content-Digest": f.layerD.String()}},
		{name: "HEAD the mounted blob", method: http.MethodHead, path: "/v2/other/blobs/" + f.layerD.String(), status: http.StatusOK,
			want: map[string]string{"Content-Length": "20"}},
		{name: "mount of an unknown blob falls back to an upload", method: http.MethodPost, path: "/v2/other/blobs/uploads/?mount=" + wrong.String() + "&from=team/app",
			status: http.StatusAccepted, want: map[string]string{"Location": `~^/v2/other/blobs/uploads/[^/?]+$`, "Docker-Content-Digest": ""}},

		{name: "delete a blob", method: http.MethodDelete, path: f.layerPath, status: http.StatusAccepted},
		{name: "the deleted blob is gone", method: http.MethodGet, path: f.layerPath, status: http.StatusNotFound, code: oci.CodeBlobUnknown},
		{name: "HEAD the deleted blob", method: http.MethodHead, path: f.layerPath, status: http.StatusNotFound, code: oci.CodeBlobUnknown},
		{name: "delete it again", method: http.MethodDelete, path: f.layerPath, status: http.StatusNotFound, code: oci.CodeBlobUnknown},
		{name: "still mounted elsewhere", method: http.MethodHead, path: "/v2/other/blobs/" + f.layerD.String(), status: http.StatusOK},
	})
}

func TestHTTPManifests(t *testing.T) {
	t.Parallel()
	const repo = "team/app"
	f := newHTTPFixture(t, repo)
	reg := regmem.New()
	f.store(t, reg, repo, "")
	srv := httpServer(t, reg)
	mt := ocispec.MediaTypeImageManifest
	ctype := []string{"Content-Type", mt}
	md := f.manifestD.String()
	byDigest := "/v2/team/app/manifests/" + md
	etag := `"` + md + `"`
	headers := map[string]string{"Content-Type": mt, "Docker-Content-Digest": md, "Etag": etag, "Content-Length": fmt.Sprint(len(f.manifest))}
	missing := imageManifest(t, desc(ocispec.MediaTypeImageConfig, f.config), []ocispec.Descriptor{desc(ocispec.MediaTypeImageLayer, []byte("absent"))}, nil, "")
	subject := ocispec.Descriptor{MediaType: mt, Digest: f.manifestD, Size: int64(len(f.manifest))}
	sbom := imageManifest(t, desc(ocispec.MediaTypeImageConfig, f.config), nil, &subject, "application/spdx+json")
	sbomD := digest.FromBytes(sbom)
	runHTTP(t, srv, []httpStep{
		{name: "push by tag", method: http.MethodPut, path: "/v2/team/app/manifests/v1", body: string(f.manifest), header: ctype,
			status: http.StatusCreated, want: map[string]string{"Location": byDigest, "Docker-Content-Digest": md, "OCI-Subject": ""}},
		{name: "push by digest", method: http.MethodPut, path: byDigest, body: string(f.manifest), header: ctype,
			status: http.StatusCreated, want: map[string]string{"Location": byDigest, "Docker-Content-Digest": md}},
		{name: "push by a digest it does not have", method: http.MethodPut, path: "/v2/team/app/manifests/" + f.layerD.String(), body: string(f.manifest), header: ctype,
			status: http.StatusBadRequest, code: oci.CodeDigestInvalid},
		{name: "push with a blob not in the repository", method: http.MethodPut, path: "/v2/team/app/manifests/v2", body: string(missing), header: ctype,
			status: http.StatusBadRequest, code: oci.CodeManifestBlobUnknown},
		{name: "push to another repository, without its blobs", method: http.MethodPut, path: "/v2/other/manifests/v1", body: string(f.manifest), header: ctype,
			status: http.StatusBadRequest, code: oci.CodeManifestBlobUnknown},
		{name: "push something that is not JSON", method: http.MethodPut, path: "/v2/team/app/manifests/v2", body: "{", header: ctype,
			status: http.StatusBadRequest, code: oci.CodeManifestInvalid},
		{name: "push a referrer", method: http.MethodPut, path: "/v2/team/app/manifests/" + sbomD.String(), body: string(sbom), header: ctype,
			status: http.StatusCreated, want: map[string]string{"OCI-Subject": md, "Docker-Content-Digest": sbomD.String()}},

		{name: "GET by tag", method: http.MethodGet, path: "/v2/team/app/manifests/v1", status: http.StatusOK, want: headers, wantBody: string(f.manifest)},
		{name: "GET by digest", method: http.MethodGet, path: byDigest, status: http.StatusOK, want: headers, wantBody: string(f.manifest)},
		{name: "HEAD by tag", method: http.MethodHead, path: "/v2/team/app/manifests/v1", status: http.StatusOK, want: headers},
		{name: "HEAD by digest", method: http.MethodHead, path: byDigest, status: http.StatusOK, want: headers},
		{name: "GET by tag, If-None-Match", method: http.MethodGet, path: "/v2/team/app/manifests/v1", header: []string{"If-None-Match", etag},
			status: http.StatusNotModified, want: map[string]string{"Docker-Content-Digest": md, "Etag": etag}},
		{name: "GET by digest, If-None-Match", method: http.MethodGet, path: byDigest, header: []string{"If-None-Match", etag},
			status: http.StatusNotModified, want: map[string]string{"Docker-Content-Digest": md, "Etag": etag}},
		{name: "HEAD by tag, If-None-Match", method: http.MethodHead, path: "/v2/team/app/manifests/v1", header: []string{"If-None-Match", etag},
			status: http.StatusNotModified, want: map[string]string{"Docker-Content-Digest": md, "Etag": etag}},
		{name: "HEAD by digest, If-None-Match", method: http.MethodHead, path: byDigest, header: []string{"If-None-Match", etag},
			status: http.StatusNotModified, want: map[string]string{"Docker-Content-Digest": md}},
		{name: "GET, If-None-Match of another digest", method: http.MethodGet, path: byDigest, header: []string{"If-None-Match", `"` + sbomD.String() + `"`},
			status: http.StatusOK, wantBody: string(f.manifest)},
		{name: "GET an unknown tag", method: http.MethodGet, path: "/v2/team/app/manifests/v9", status: http.StatusNotFound, code: oci.CodeManifestUnknown},
		{name: "HEAD an unknown tag", method: http.MethodHead, path: "/v2/team/app/manifests/v9", status: http.StatusNotFound, code: oci.CodeManifestUnknown},
		{name: "GET an unknown digest", method: http.MethodGet, path: "/v2/team/app/manifests/" + f.layerD.String(), status: http.StatusNotFound, code: oci.CodeManifestUnknown},
		{name: "GET an invalid digest", method: http.MethodGet, path: "/v2/team/app/manifests/sha256:xyz", status: http.StatusBadRequest, code: oci.CodeDigestInvalid},

		{name: "delete the tag", method: http.MethodDelete, path: "/v2/team/app/manifests/v1", status: http.StatusAccepted},
		{name: "the tag is gone", method: http.MethodGet, path: "/v2/team/app/manifests/v1", status: http.StatusNotFound, code: oci.CodeManifestUnknown},
		{name: "the manifest is not", method: http.MethodHead, path: byDigest, status: http.StatusOK},
		{name: "delete the tag again", method: http.MethodDelete, path: "/v2/team/app/manifests/v1", status: http.StatusNotFound, code: oci.CodeManifestUnknown},
		{name: "delete the manifest", method: http.MethodDelete, path: byDigest, status: http.StatusAccepted},
		{name: "the manifest is gone", method: http.MethodGet, path: byDigest, status: http.StatusNotFound, code: oci.CodeManifestUnknown},
		{name: "delete the manifest again", method: http.MethodDelete, path: byDigest, status: http.StatusNotFound, code: oci.CodeManifestUnknown},
	})
}

func TestHTTPBlobRange(t *testing.T) {
	t.Parallel()
	const repo = "team/app"
	f := newHTTPFixture(t, repo)
	reg := regmem.New()
	f.store(t, reg, repo, "")
	srv := httpServer(t, reg)
	dg := f.layerD.String()
	rng := func(name, spec string, status int, contentRange, length, body string) httpStep {
		s := httpStep{name: name, method: http.MethodGet, path: f.layerPath, header: []string{"Range", spec}, status: status,
			want: map[string]string{"Content-Range": contentRange, "Content-Length": length, "Docker-Content-Digest": dg}, wantBody: body}
		if status == http.StatusRequestedRangeNotSatisfiable {
			s.code, s.want["Content-Type"] = oci.CodeRangeInvalid, "application/json"
			delete(s.want, "Content-Length") // the error body's, checked with it
			s.want["Cache-Control"] = ""
		} else {
			s.want["Content-Type"], s.want["Cache-Control"] = "application/octet-stream", "max-age=31536000"
		}
		return s
	}
	unsatisfiable := http.StatusRequestedRangeNotSatisfiable
	runHTTP(t, srv, []httpStep{
		{name: "whole blob", method: http.MethodGet, path: f.layerPath, status: http.StatusOK, wantBody: string(f.layer),
			want: map[string]string{"Content-Length": "20", "Content-Range": "", "Accept-Ranges": "bytes", "Etag": `"` + dg + `"`, "Docker-Content-Digest": dg}},
		{name: "If-None-Match", method: http.MethodGet, path: f.layerPath, header: []string{"If-None-Match", `"` + dg + `"`}, status: http.StatusNotModified,
			want: map[string]string{"Etag": `"` + dg + `"`}},
		{name: "HEAD, If-None-Match", method: http.MethodHead, path: f.layerPath, header: []string{"If-None-Match", `"` + dg + `"`}, status: http.StatusNotModified,
			want: map[string]string{"Etag": `"` + dg + `"`}},
		{name: "If-None-Match list, weak", method: http.MethodGet, path: f.layerPath, header: []string{"If-None-Match", `"sha256:other", W/"` + dg + `"`}, status: http.StatusNotModified},
		{name: "If-None-Match *", method: http.MethodGet, path: f.layerPath, header: []string{"If-None-Match", `*`}, status: http.StatusNotModified},
		{name: "If-None-Match of another", method: http.MethodGet, path: f.layerPath, header: []string{"If-None-Match", `"sha256:other"`}, status: http.StatusOK, wantBody: string(f.layer)},
		rng("first ten bytes", "bytes=0-9", http.StatusPartialContent, "bytes 0-9/20", "10", "0123456789"),
		rng("from 5 on", "bytes=5-", http.StatusPartialContent, "bytes 5-19/20", "15", "56789abcdefghij"),
		rng("last three", "bytes=-3", http.StatusPartialContent, "bytes 17-19/20", "3", "hij"),
		rng("end past the size", "bytes=15-99", http.StatusPartialContent, "bytes 15-19/20", "5", "fghij"),
		rng("suffix longer than the blob", "bytes=-50", http.StatusPartialContent, "bytes 0-19/20", "20", string(f.layer)),
		rng("start past the end", "bytes=20-25", unsatisfiable, "bytes */20", "", ""),
		rng("empty suffix", "bytes=-0", unsatisfiable, "bytes */20", "", ""),
		rng("end before start", "bytes=9-5", unsatisfiable, "bytes */20", "", ""),
		rng("multi-range", "bytes=0-1,4-5", unsatisfiable, "bytes */20", "", ""),
		rng("another unit", "items=0-1", unsatisfiable, "bytes */20", "", ""),
	})
}

func TestHTTPLists(t *testing.T) {
	t.Parallel()
	const repo = "team/app"
	f := newHTTPFixture(t, repo)
	reg := regmem.New()
	for _, tag := range []string{"v3", "v1", "v5", "v2", "v4"} {
		f.store(t, reg, repo, tag)
	}
	f.store(t, reg, "alpha", "")
	f.store(t, reg, "zeta/one", "")
	subject := &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: f.manifestD, Size: int64(len(f.manifest))}
	config := desc(ocispec.MediaTypeImageConfig, f.config)
	sbom := pushManifest(t, reg, repo, "", imageManifest(t, config, nil, subject, "application/spdx+json"))
	sig := pushManifest(t, reg, repo, "", imageManifest(t, config, nil, subject, "application/vnd.dev.cosign"))
	srv := httpServer(t, reg)

	index := func(ms ...*registry.Manifest) string {
		idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}}
		idx.SchemaVersion = 2
		for _, m := range ms {
			idx.Manifests = append(idx.Manifests, m.Desc)
		}
		if len(ms) == 2 && ms[0].Desc.Digest > ms[1].Desc.Digest {
			idx.Manifests[0], idx.Manifests[1] = idx.Manifests[1], idx.Manifests[0]
		}
		return string(mustJSON(t, idx))
	}
	tagList := func(tags ...string) string {
		return string(mustJSON(t, map[string]any{"name": repo, "tags": append([]string{}, tags...)}))
	}
	plain := map[string]string{"Content-Type": "application/json", "Link": ""}
	link := func(l string) map[string]string {
		return map[string]string{"Content-Type": "application/json", "Link": l}
	}
	referrers := "/v2/team/app/referrers/" + f.manifestD.String()
	indexType := map[string]string{"Content-Type": ocispec.MediaTypeImageIndex, "OCI-Filters-Applied": ""}
	runHTTP(t, srv, []httpStep{
		{name: "all tags", method: http.MethodGet, path: "/v2/team/app/tags/list", status: http.StatusOK, want: plain, wantBody: tagList("v1", "v2", "v3", "v4", "v5")},
		{name: "first page", method: http.MethodGet, path: "/v2/team/app/tags/list?n=2", status: http.StatusOK,
			want: link(`</v2/team/app/tags/list?last=v2&n=2>; rel="next"`), wantBody: tagList("v1", "v2")},
		{name: "second page", method: http.MethodGet, path: "/v2/team/app/tags/list?n=2&last=v2", status: http.StatusOK,
			want: link(`</v2/team/app/tags/list?last=v4&n=2>; rel="next"`), wantBody: tagList("v3", "v4")},
		{name: "last page", method: http.MethodGet, path: "/v2/team/app/tags/list?n=2&last=v4", status: http.StatusOK, want: plain, wantBody: tagList("v5")},
		{name: "n=0", method: http.MethodGet, path: "/v2/team/app/tags/list?n=0", status: http.StatusOK, want: plain, wantBody: tagList()},
		{name: "a page of a containerd mirror keeps ns", method: http.MethodGet, path: "/v2/team/app/tags/list?n=4&ns=example.com", status: http.StatusOK,
			want: link(`</v2/team/app/tags/list?last=v4&n=4&ns=example.com>; rel="next"`), wantBody: tagList("v1", "v2", "v3", "v4")},
		{name: "HEAD", method: http.MethodHead, path: "/v2/team/app/tags/list", status: http.StatusOK, want: plain},
		{name: "negative n", method: http.MethodGet, path: "/v2/team/app/tags/list?n=-1", status: http.StatusBadRequest, code: oci.CodeUnsupported},
		{name: "tags of an unknown repository", method: http.MethodGet, path: "/v2/nope/tags/list", status: http.StatusNotFound, code: oci.CodeNameUnknown},

		{name: "catalog", method: http.MethodGet, path: "/v2/_catalog", status: http.StatusOK, want: plain,
			wantBody: `{"repositories":["alpha","team/app","zeta/one"]}`},
		{name: "catalog, first page", method: http.MethodGet, path: "/v2/_catalog?n=1", status: http.StatusOK,
			want: link(`</v2/_catalog?last=alpha&n=1>; rel="next"`), wantBody: `{"repositories":["alpha"]}`},
		{name: "catalog, next page", method: http.MethodGet, path: "/v2/_catalog?n=1&last=alpha", status: http.StatusOK,
			want: link(`</v2/_catalog?last=team%2Fapp&n=1>; rel="next"`), wantBody: `{"repositories":["team/app"]}`},
		{name: "catalog, last page", method: http.MethodGet, path: "/v2/_catalog?n=5&last=team/app", status: http.StatusOK, want: plain,
			wantBody: `{"repositories":["zeta/one"]}`},

		{name: "referrers", method: http.MethodGet, path: referrers, status: http.StatusOK, want: indexType, wantBody: index(sbom, sig)},
		{name: "referrers by artifactType", method: http.MethodGet, path: referrers + "?artifactType=application/spdx%2Bjson", status: http.StatusOK,
			want: map[string]string{"Content-Type": ocispec.MediaTypeImageIndex, "OCI-Filters-Applied": "artifactType"}, wantBody: index(sbom)},
		{name: "referrers of an artifactType nobody has", method: http.MethodGet, path: referrers + "?artifactType=text/plain", status: http.StatusOK,
			want: map[string]string{"OCI-Filters-Applied": "artifactType"}, wantBody: index()},
		{name: "referrers of a manifest without any", method: http.MethodGet, path: "/v2/team/app/referrers/" + sbom.Desc.Digest.String(), status: http.StatusOK,
			want: indexType, wantBody: index()},
		{name: "referrers of an invalid digest", method: http.MethodGet, path: "/v2/team/app/referrers/latest", status: http.StatusBadRequest, code: oci.CodeDigestInvalid},
	})
}

func TestHTTPUnsupportedMethods(t *testing.T) {
	t.Parallel()
	srv := httpServer(t, regmem.New())
	d := digest.FromString("x").String()
	var steps []httpStep
	for _, c := range []struct{ method, path string }{
		{http.MethodPost, "/v2/"},
		{http.MethodDelete, "/v2/"},
		{http.MethodPut, "/v2/_catalog"},
		{http.MethodPost, "/v2/r/manifests/v1"},
		{http.MethodPatch, "/v2/r/manifests/v1"},
		{http.MethodPut, "/v2/r/blobs/" + d},
		{http.MethodPatch, "/v2/r/blobs/" + d},
		{http.MethodPost, "/v2/r/blobs/" + d},
		{http.MethodGet, "/v2/r/blobs/uploads/"},
		{http.MethodPut, "/v2/r/blobs/uploads/"},
		{http.MethodPost, "/v2/r/blobs/uploads/some-id"},
		{http.MethodDelete, "/v2/r/tags/list"},
		{http.MethodPut, "/v2/r/referrers/" + d},
	} {
		want := "GET, HEAD" // the base, the catalog, tags, referrers
		switch {
		case strings.Contains(c.path, "/uploads/some-id"):
			want = "GET, PATCH, PUT, DELETE"
		case strings.HasSuffix(c.path, "/uploads/"):
			want = "POST"
		case strings.Contains(c.path, "/manifests/"):
			want = "GET, HEAD, PUT, DELETE"
		case strings.Contains(c.path, "/blobs/"):
			want = "GET, HEAD, DELETE"
		}
		steps = append(steps, httpStep{name: c.method + " " + c.path, method: c.method, path: c.path,
			status: http.StatusMethodNotAllowed, code: oci.CodeUnsupported, want: map[string]string{"Allow": want}})
	}
	runHTTP(t, srv, steps)
}

func TestHTTPReadOnly(t *testing.T) {
	t.Parallel()
	const repo = "team/app"
	f := newHTTPFixture(t, repo)
	mem := regmem.New()
	f.store(t, mem, repo, "v1")
	srv := httpServer(t, registry.ReadOnly(mem, "a read-only mirror"))
	byDigest := "/v2/team/app/manifests/" + f.manifestD.String()
	denied := func(name, method, path, body string) httpStep {
		return httpStep{name: name, method: method, path: path, body: body, status: http.StatusForbidden, code: oci.CodeDenied}
	}
	runHTTP(t, srv, []httpStep{
		{name: "pull by tag", method: http.MethodGet, path: "/v2/team/app/manifests/v1", status: http.StatusOK, wantBody: string(f.manifest)},
		{name: "pull a blob", method: http.MethodGet, path: f.layerPath, status: http.StatusOK, wantBody: string(f.layer)},
		{name: "tags", method: http.MethodGet, path: "/v2/team/app/tags/list", status: http.StatusOK},
		denied("start an upload", http.MethodPost, "/v2/team/app/blobs/uploads/", ""),
		denied("monolithic push", http.MethodPost, "/v2/team/app/blobs/uploads/?digest="+f.configD.String(), string(f.config)),
		denied("mount", http.MethodPost, "/v2/other/blobs/uploads/?mount="+f.layerD.String()+"&from=team/app", ""),
		denied("chunk", http.MethodPatch, "/v2/team/app/blobs/uploads/some-id", "x"),
		denied("upload status", http.MethodGet, "/v2/team/app/blobs/uploads/some-id", ""),
		denied("close an upload", http.MethodPut, "/v2/team/app/blobs/uploads/some-id?digest="+f.layerD.String(), ""),
		denied("cancel an upload", http.MethodDelete, "/v2/team/app/blobs/uploads/some-id", ""),
		denied("push a manifest", http.MethodPut, "/v2/team/app/manifests/v2", string(f.manifest)),
		denied("delete a tag", http.MethodDelete, "/v2/team/app/manifests/v1", ""),
		denied("delete a manifest", http.MethodDelete, byDigest, ""),
		denied("delete a blob", http.MethodDelete, f.layerPath, ""),
		{name: "still there", method: http.MethodHead, path: "/v2/team/app/manifests/v1", status: http.StatusOK},
	})
}

// failing is regmem whose GetBlob and GetTag fail with err: fault injection
// by embedding.
type failing struct {
	*regmem.Registry
	err error
}

func (f failing) GetBlob(context.Context, string, digest.Digest) (registry.BlobReader, error) {
	return nil, f.err
}

func (f failing) GetTag(context.Context, string, string) (registry.BlobReader, error) {
	return nil, f.err
}

// The HTTP layer tells internal errors from OCI ones: an internal error is
// UNKNOWN with nothing of its text, a deadline is UNAVAILABLE, and an OCI
// error wrapped on its way up keeps its code.
func TestHTTPRegistryErrors(t *testing.T) {
	t.Parallel()
	secret := errors.New("badger: open /var/lib/berth/index/000042.vlog: permission denied")
	d := digest.FromString("x").String()
	for _, tc := range []struct {
		name     string
		err      error
		status   int
		code     oci.Code
		wantBody string
	}{
		{"internal error", secret, http.StatusInternalServerError, oci.CodeUnknown, `{"errors":[{"code":"UNKNOWN","message":"internal error"}]}`},
		{"wrapped internal error", fmt.Errorf("reading index: %w", secret), http.StatusInternalServerError, oci.CodeUnknown, `{"errors":[{"code":"UNKNOWN","message":"internal error"}]}`},
		{"deadline", context.DeadlineExceeded, http.StatusServiceUnavailable, oci.CodeUnavailable, `{"errors":[{"code":"UNAVAILABLE","message":"timed out"}]}`},
		{"wrapped deadline", fmt.Errorf("upstream: %w", context.DeadlineExceeded), http.StatusServiceUnavailable, oci.CodeUnavailable, ""},
		{"wrapped OCI error", fmt.Errorf("upstream: %w", oci.Errorf(oci.CodeTooManyRequests, "slow down")), http.StatusTooManyRequests, oci.CodeTooManyRequests, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httpServer(t, failing{regmem.New(), tc.err})
			var steps []httpStep
			for _, path := range []string{"/v2/r/blobs/" + d, "/v2/r/manifests/latest"} {
				steps = append(steps, httpStep{name: path, method: http.MethodGet, path: path,
					status: tc.status, code: tc.code, wantBody: tc.wantBody})
			}
			runHTTP(t, srv, steps)
		})
	}
}

// brokenBlob is regmem whose blob bodies break off halfway with an error
// (an upstream fill that failed verification, say).
type brokenBlob struct{ *regmem.Registry }

func (b brokenBlob) GetBlob(ctx context.Context, repo string, d digest.Digest) (registry.BlobReader, error) {
	rd, err := b.Registry.GetBlob(ctx, repo, d)
	if err != nil {
		return nil, err
	}
	half := rd.Descriptor().Size / 2
	return &breakingReader{Reader: io.MultiReader(io.LimitReader(rd, half), errReader{}), desc: rd.Descriptor()}, nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("digest mismatch") }

// breakingReader is neither a Bytes nor a Seeker: the HTTP layer streams it.
type breakingReader struct {
	io.Reader
	desc registry.Descriptor
}

func (r *breakingReader) Descriptor() registry.Descriptor { return r.desc }
func (r *breakingReader) Close() error                    { return nil }

// A blob body that breaks off must reach the client as a broken response,
// never as a clean end of a short body.
func TestHTTPBrokenBlobBody(t *testing.T) {
	t.Parallel()
	const repo = "team/app"
	f := newHTTPFixture(t, repo)
	mem := regmem.New()
	big := bytes.Repeat([]byte("berth "), 200_000) // larger than one copy buffer
	for _, b := range [][]byte{f.layer, big} {
		if _, err := mem.PushBlob(t.Context(), repo, registry.Descriptor{Digest: digest.FromBytes(b), Size: int64(len(b))}, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	srv := httpServer(t, brokenBlob{mem})
	for _, tc := range []struct {
		name string
		blob []byte
		rng  string
	}{
		{"small", f.layer, ""},
		{"large", big, ""},
		{"range ignored without a seeker", big, "bytes=0-99"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/v2/team/app/blobs/"+digest.FromBytes(tc.blob).String(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.rng != "" {
				req.Header.Set("Range", tc.rng)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				// Cut before the headers were flushed (a small blob): as broken as it gets.
				t.Logf("request: %v", err)
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(tc.blob)) {
				t.Fatalf("status %d, Content-Length %d; want 200, %d", resp.StatusCode, resp.ContentLength, len(tc.blob))
			}
			b, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Fatalf("read %d of %d bytes and a clean end", len(b), len(tc.blob))
			}
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Logf("body error: %v", err)
			}
			if !bytes.Equal(b, tc.blob[:len(b)]) || len(b) > len(tc.blob)/2 {
				t.Errorf("read %d bytes before the break, of which the blob has %d", len(b), len(tc.blob)/2)
			}
		})
	}
}
