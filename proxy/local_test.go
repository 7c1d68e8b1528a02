package proxy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// regSrv is a berth serving only local repositories, over a real socket.
type regSrv struct {
	st  *cache.Store
	srv *httptest.Server
}

func newRegSrv(t *testing.T) *regSrv {
	t.Helper()
	st, srv := startServer(t, cache.Options{}, localOnly)
	return &regSrv{st: st, srv: srv}
}

// do sends one request and returns the response with its body read. hdr is
// name, value pairs. Every response must carry the API version header and
// none may be a server error.
func (s *regSrv) do(t *testing.T, method, path string, body []byte, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, s.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := s.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	if resp.StatusCode >= 500 {
		t.Errorf("%s %s: server error %d: %s", method, path, resp.StatusCode, b)
	}
	if v := resp.Header.Get("Docker-Distribution-API-Version"); v != "registry/2.0" {
		t.Errorf("%s %s: Docker-Distribution-API-Version = %q", method, path, v)
	}
	return resp, b
}

// expect asserts a status and, for a non-HEAD error, the OCI error code of
// the JSON body.
func expect(t *testing.T, resp *http.Response, body []byte, status int, code oci.Code) {
	t.Helper()
	what := resp.Request.Method + " " + resp.Request.URL.Path
	if resp.StatusCode != status {
		t.Fatalf("%s: status %d, want %d; body %s", what, resp.StatusCode, status, body)
	}
	if code == "" {
		return
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: error Content-Type %q", what, ct)
	}
	if resp.Request.Method == http.MethodHead {
		if len(body) != 0 {
			t.Errorf("%s: HEAD with a body", what)
		}
		return
	}
	var eb struct {
		Errors []struct {
			Code    oci.Code `json:"code"`
			Message string   `json:"message"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &eb); err != nil {
		t.Fatalf("%s: error body %q is not JSON: %v", what, body, err)
	}
	if len(eb.Errors) != 1 || eb.Errors[0].Code != code {
		t.Fatalf("%s: errors %+v, want one %s", what, eb.Errors, code)
	}
	if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
		t.Errorf("%s: Content-Length %q for a %d-byte body", what, cl, len(body))
	}
}

func expectHeaders(t *testing.T, resp *http.Response, kv ...string) {
	t.Helper()
	for i := 0; i+1 < len(kv); i += 2 {
		if got := resp.Header.Get(kv[i]); got != kv[i+1] {
			t.Errorf("%s %s: %s = %q, want %q", resp.Request.Method, resp.Request.URL.Path, kv[i], got, kv[i+1])
		}
	}
}

func desc(mediaType string, b []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func imageManifest(t *testing.T, config ocispec.Descriptor, layers []ocispec.Descriptor, subject *ocispec.Descriptor, artifactType string) []byte {
	t.Helper()
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: config, Layers: layers,
		Subject: subject, ArtifactType: artifactType}
	m.SchemaVersion = 2
	return mustJSON(t, m)
}

// pushBlob uploads b monolithically to repo.
func (s *regSrv) pushBlob(t *testing.T, repo string, b []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	resp, body := s.do(t, http.MethodPost, "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), b)
	expect(t, resp, body, http.StatusCreated, "")
	return d
}

// startUpload opens an upload and returns its Location path.
func (s *regSrv) startUpload(t *testing.T, repo string) string {
	t.Helper()
	resp, body := s.do(t, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", nil)
	expect(t, resp, body, http.StatusAccepted, "")
	return resp.Header.Get("Location")
}

func withQuery(loc, q string) string {
	if strings.Contains(loc, "?") {
		return loc + "&" + q
	}
	return loc + "?" + q
}

func TestLocalPushPull(t *testing.T) {
	t.Parallel()
	s := newRegSrv(t)
	const repo = "team/app"
	config := []byte(`{"architecture":"amd64","os":"linux"}`)
	layer := bytes.Repeat([]byte("berth layer bytes "), 1000)
	layerD := digest.FromBytes(layer)
	n := len(layer)

	t.Log("base")
	resp, body := s.do(t, http.MethodGet, "/v2/", nil)
	expect(t, resp, body, http.StatusOK, "")
	expectHeaders(t, resp, "Content-Type", "application/json", "Content-Length", "2")
	if string(body) != "{}" {
		t.Errorf("base body %q", body)
	}

	t.Log("monolithic upload")
	configD := digest.FromBytes(config)
	resp, body = s.do(t, http.MethodPost, "/v2/"+repo+"/blobs/uploads/?digest="+configD.String(), config)
	expect(t, resp, body, http.StatusCreated, "")
	expectHeaders(t, resp, "Location", "/v2/"+repo+"/blobs/"+configD.String(), "Docker-Content-Digest", configD.String())

	t.Log("chunked upload")
	resp, body = s.do(t, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", nil)
	expect(t, resp, body, http.StatusAccepted, "")
	loc := resp.Header.Get("Location")
	id := resp.Header.Get("Docker-Upload-UUID")
	if id == "" || loc != "/v2/"+repo+"/blobs/uploads/"+id {
		t.Fatalf("upload Location %q, UUID %q", loc, id)
	}
	expectHeaders(t, resp, "Range", "0-0", "Content-Length", "0", "OCI-Chunk-Min-Length", "0")
	chunks := [][2]int{{0, 1000}, {1000, 7000}, {7000, n - 10}}
	for _, c := range chunks {
		resp, body = s.do(t, http.MethodPatch, loc, layer[c[0]:c[1]],
			"Content-Type", "application/octet-stream", "Content-Range", fmt.Sprintf("%d-%d", c[0], c[1]-1))
		expect(t, resp, body, http.StatusAccepted, "")
		expectHeaders(t, resp, "Location", loc, "Docker-Upload-UUID", id, "Range", fmt.Sprintf("0-%d", c[1]-1))
		loc = resp.Header.Get("Location")
	}
	resp, body = s.do(t, http.MethodGet, loc, nil)
	expect(t, resp, body, http.StatusNoContent, "")
	expectHeaders(t, resp, "Range", fmt.Sprintf("0-%d", n-11), "Docker-Upload-UUID", id, "Location", loc)
	resp, body = s.do(t, http.MethodPut, withQuery(loc, "digest="+layerD.String()), layer[n-10:],
		"Content-Range", fmt.Sprintf("%d-%d", n-10, n-1))
	expect(t, resp, body, http.StatusCreated, "")
	expectHeaders(t, resp, "Location", "/v2/"+repo+"/blobs/"+layerD.String(), "Docker-Content-Digest", layerD.String(), "Content-Length", "0")
	resp, body = s.do(t, http.MethodGet, loc, nil)
	expect(t, resp, body, http.StatusNotFound, oci.CodeBlobUploadUnknown)

	t.Log("streamed upload, then an empty PUT")
	other := []byte("streamed without Content-Range")
	otherD := digest.FromBytes(other)
	loc = s.startUpload(t, repo)
	resp, body = s.do(t, http.MethodPatch, loc, other)
	expect(t, resp, body, http.StatusAccepted, "")
	expectHeaders(t, resp, "Range", fmt.Sprintf("0-%d", len(other)-1))
	resp, body = s.do(t, http.MethodPut, withQuery(resp.Header.Get("Location"), "digest="+otherD.String()), nil)
	expect(t, resp, body, http.StatusCreated, "")

	t.Log("cancelled upload")
	loc = s.startUpload(t, repo)
	resp, body = s.do(t, http.MethodDelete, loc, nil)
	expect(t, resp, body, http.StatusNoContent, "")
	resp, body = s.do(t, http.MethodGet, loc, nil)
	expect(t, resp, body, http.StatusNotFound, oci.CodeBlobUploadUnknown)

	t.Log("blob HEAD and GET")
	blobURL := "/v2/" + repo + "/blobs/" + layerD.String()
	resp, body = s.do(t, http.MethodHead, blobURL, nil)
	expect(t, resp, body, http.StatusOK, "")
	expectHeaders(t, resp, "Content-Length", strconv.Itoa(n), "Docker-Content-Digest", layerD.String(),
		"Content-Type", "application/octet-stream", "Etag", `"`+layerD.String()+`"`)
	if len(body) != 0 {
		t.Errorf("HEAD body of %d bytes", len(body))
	}
	resp, body = s.do(t, http.MethodGet, blobURL, nil)
	expect(t, resp, body, http.StatusOK, "")
	expectHeaders(t, resp, "Content-Length", strconv.Itoa(n), "Docker-Content-Digest", layerD.String(), "Content-Type", "application/octet-stream")
	if !bytes.Equal(body, layer) {
		t.Errorf("GET blob returned %d bytes, not the pushed ones", len(body))
	}

	t.Log("ranges")
	resp, body = s.do(t, http.MethodGet, blobURL, nil, "Range", "bytes=2-5")
	expect(t, resp, body, http.StatusPartialContent, "")
	expectHeaders(t, resp, "Content-Range", fmt.Sprintf("bytes 2-5/%d", n), "Content-Length", "4", "Docker-Content-Digest", layerD.String())
	if !bytes.Equal(body, layer[2:6]) {
		t.Errorf("range body %q, want %q", body, layer[2:6])
	}
	resp, body = s.do(t, http.MethodGet, blobURL, nil, "Range", fmt.Sprintf("bytes=%d-", n-3))
	expect(t, resp, body, http.StatusPartialContent, "")
	expectHeaders(t, resp, "Content-Range", fmt.Sprintf("bytes %d-%d/%d", n-3, n-1, n))
	if !bytes.Equal(body, layer[n-3:]) {
		t.Errorf("open range body %q", body)
	}
	for _, rng := range []string{fmt.Sprintf("bytes=%d-", n), fmt.Sprintf("bytes=%d-%d", n+10, n+20)} {
		resp, body = s.do(t, http.MethodGet, blobURL, nil, "Range", rng)
		expect(t, resp, body, http.StatusRequestedRangeNotSatisfiable, "")
		expectHeaders(t, resp, "Content-Range", fmt.Sprintf("bytes */%d", n))
	}

	t.Log("isolation and mounts")
	resp, body = s.do(t, http.MethodHead, "/v2/other/app/blobs/"+layerD.String(), nil)
	expect(t, resp, body, http.StatusNotFound, oci.CodeBlobUnknown)
	resp, body = s.do(t, http.MethodGet, "/v2/other/app/blobs/"+layerD.String(), nil)
	expect(t, resp, body, http.StatusNotFound, oci.CodeBlobUnknown)
	resp, body = s.do(t, http.MethodPost, "/v2/other/app/blobs/uploads/?mount="+layerD.String()+"&from="+repo, nil)
	expect(t, resp, body, http.StatusCreated, "")
	expectHeaders(t, resp, "Location", "/v2/other/app/blobs/"+layerD.String(), "Docker-Content-Digest", layerD.String())
	resp, body = s.do(t, http.MethodGet, "/v2/other/app/blobs/"+layerD.String(), nil)
	expect(t, resp, body, http.StatusOK, "")
	if !bytes.Equal(body, layer) {
		t.Error("mounted blob differs")
	}
	resp, body = s.do(t, http.MethodPost, "/v2/third/blobs/uploads/?mount="+configD.String(), nil)
	expect(t, resp, body, http.StatusCreated, "")
	expectHeaders(t, resp, "Location", "/v2/third/blobs/"+configD.String())
	resp, body = s.do(t, http.MethodHead, "/v2/third/blobs/"+configD.String(), nil)
	expect(t, resp, body, http.StatusOK, "")
	// A mount that cannot be done falls back to an ordinary upload.
	for _, q := range []string{
		"mount=" + digest.FromString("nowhere").String(),
		"mount=" + digest.FromString("nowhere").String() + "&from=" + repo,
		"mount=" + otherD.String() + "&from=third",
		"mount=" + otherD.String() + "&from=Bad..Name",
	} {
		resp, body = s.do(t, http.MethodPost, "/v2/fourth/blobs/uploads/?"+q, nil)
		expect(t, resp, body, http.StatusAccepted, "")
		if !strings.HasPrefix(resp.Header.Get("Location"), "/v2/fourth/blobs/uploads/") {
			t.Errorf("fallback Location %q", resp.Header.Get("Location"))
		}
	}
	resp, body = s.do(t, http.MethodHead, "/v2/fourth/blobs/"+otherD.String(), nil)
	expect(t, resp, body, http.StatusNotFound, oci.CodeBlobUnknown)

	t.Log("manifests")
	manifest := imageManifest(t, desc("application/vnd.oci.image.config.v1+json", config),
		[]ocispec.Descriptor{desc("application/vnd.oci.image.layer.v1.tar", layer)}, nil, "")
	md := digest.FromBytes(manifest)
	resp, body = s.do(t, http.MethodPut, "/v2/"+repo+"/manifests/v1", manifest, "Content-Type", oci.MediaTypeOCIManifest)
	expect(t, resp, body, http.StatusCreated, "")
	expectHeaders(t, resp, "Location", "/v2/"+repo+"/manifests/"+md.String(), "Docker-Content-Digest", md.String(), "OCI-Subject", "")
	resp, body = s.do(t, http.MethodPut, "/v2/"+repo+"/manifests/"+md.String(), manifest, "Content-Type", oci.MediaTypeOCIManifest)
	expect(t, resp, body, http.StatusCreated, "")
	expectHeaders(t, resp, "Location", "/v2/"+repo+"/manifests/"+md.String(), "Docker-Content-Digest", md.String())
	for _, ref := range []string{"v1", md.String()} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp, body = s.do(t, method, "/v2/"+repo+"/manifests/"+ref, nil, "Accept", oci.ManifestAccept)
			expect(t, resp, body, http.StatusOK, "")
			expectHeaders(t, resp, "Content-Type", oci.MediaTypeOCIManifest, "Docker-Content-Digest", md.String(),
				"Content-Length", strconv.Itoa(len(manifest)), "Etag", `"`+md.String()+`"`)
			want := manifest
			if method == http.MethodHead {
				want = nil
			}
			if !bytes.Equal(body, want) {
				t.Errorf("%s manifest %s body = %q", method, ref, body)
			}
		}
	}
	resp, body = s.do(t, http.MethodGet, "/v2/"+repo+"/manifests/v1", nil, "If-None-Match", `"`+md.String()+`"`)
	expect(t, resp, body, http.StatusNotModified, "")
	resp, body = s.do(t, http.MethodGet, "/v2/other/app/manifests/"+md.String(), nil)
	expect(t, resp, body, http.StatusNotFound, oci.CodeManifestUnknown)
	// The manifest is also a blob of its repository.
	resp, body = s.do(t, http.MethodGet, "/v2/"+repo+"/blobs/"+md.String(), nil)
	expect(t, resp, body, http.StatusOK, "")
	if !bytes.Equal(body, manifest) {
		t.Error("manifest blob differs")
	}

	t.Log("index")
	index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{desc(oci.MediaTypeOCIManifest, manifest)}}
	index.SchemaVersion = 2
	indexBody := mustJSON(t, index)
	indexD := digest.FromBytes(indexBody)
	resp, body = s.do(t, http.MethodPut, "/v2/"+repo+"/manifests/multi", indexBody, "Content-Type", oci.MediaTypeOCIIndex)
	expect(t, resp, body, http.StatusCreated, "")
	resp, body = s.do(t, http.MethodHead, "/v2/"+repo+"/manifests/multi", nil)
	expect(t, resp, body, http.StatusOK, "")
	expectHeaders(t, resp, "Content-Type", oci.MediaTypeOCIIndex, "Docker-Content-Digest", indexD.String())

	t.Log("tags")
	for _, tag := range []string{"v2", "v3", "latest"} {
		resp, body = s.do(t, http.MethodPut, "/v2/"+repo+"/manifests/"+tag, manifest, "Content-Type", oci.MediaTypeOCIManifest)
		expect(t, resp, body, http.StatusCreated, "")
	}
	allTags := []string{"latest", "multi", "v1", "v2", "v3"}
	tagPages := [][]string{{"latest", "multi"}, {"v1", "v2"}, {"v3"}}
	checkList(t, s, "/v2/"+repo+"/tags/list", "tags", allTags, "")
	next := "/v2/" + repo + "/tags/list?n=2"
	for i, page := range tagPages {
		wantLink := ""
		if i < len(tagPages)-1 {
			wantLink = fmt.Sprintf(`</v2/%s/tags/list?last=%s&n=2>; rel="next"`, repo, page[1])
		}
		next = checkList(t, s, next, "tags", page, wantLink)
	}
	checkList(t, s, "/v2/"+repo+"/tags/list?n=0", "tags", []string{}, "")
	checkList(t, s, "/v2/"+repo+"/tags/list?n=5", "tags", allTags, "")
	checkList(t, s, "/v2/"+repo+"/tags/list?last=v2", "tags", []string{"v3"}, "")
	resp, body = s.do(t, http.MethodGet, "/v2/nobody/tags/list", nil)
	expect(t, resp, body, http.StatusNotFound, oci.CodeNameUnknown)

	t.Log("catalog")
	// "fourth" only has uploads in progress: not a repository yet.
	allRepos := []string{"other/app", "team/app", "third"}
	checkList(t, s, "/v2/_catalog", "repositories", allRepos, "")
	next = "/v2/_catalog?n=1"
	for i, r := range allRepos {
		wantLink := ""
		if i < len(allRepos)-1 {
			wantLink = `</v2/_catalog?last=` + strings.ReplaceAll(r, "/", "%2F") + `&n=1>; rel="next"`
		}
		next = checkList(t, s, next, "repositories", []string{r}, wantLink)
	}
	checkList(t, s, "/v2/_catalog?n=0", "repositories", []string{}, "")

	t.Log("referrers")
	sig := []byte("signature")
	s.pushBlob(t, repo, sig)
	emptyCfg := []byte("{}")
	s.pushBlob(t, repo, emptyCfg)
	subject := desc(oci.MediaTypeOCIManifest, manifest)
	sigManifest := imageManifest(t, desc(oci.MediaTypeEmptyJSON, emptyCfg), []ocispec.Descriptor{desc("application/octet-stream", sig)}, &subject, "application/vnd.example.sig")
	sbomManifest := imageManifest(t, desc("application/vnd.example.sbom", emptyCfg), []ocispec.Descriptor{desc("application/octet-stream", sig)}, &subject, "")
	for _, m := range [][]byte{sigManifest, sbomManifest} {
		d := digest.FromBytes(m)
		resp, body = s.do(t, http.MethodPut, "/v2/"+repo+"/manifests/"+d.String(), m, "Content-Type", oci.MediaTypeOCIManifest)
		expect(t, resp, body, http.StatusCreated, "")
		expectHeaders(t, resp, "OCI-Subject", md.String(), "Docker-Content-Digest", d.String())
	}
	sigD, sbomD := digest.FromBytes(sigManifest), digest.FromBytes(sbomManifest)
	tests := []struct {
		query    string
		want     map[digest.Digest]string // digest -> artifactType
		filtered bool
	}{
		{"", map[digest.Digest]string{sigD: "application/vnd.example.sig", sbomD: "application/vnd.example.sbom"}, false},
		{"?artifactType=application/vnd.example.sig", map[digest.Digest]string{sigD: "application/vnd.example.sig"}, true},
		{"?artifactType=application/vnd.example.sbom", map[digest.Digest]string{sbomD: "application/vnd.example.sbom"}, true},
		{"?artifactType=application/none", map[digest.Digest]string{}, true},
	}
	for _, tt := range tests {
		resp, body = s.do(t, http.MethodGet, "/v2/"+repo+"/referrers/"+md.String()+tt.query, nil)
		expect(t, resp, body, http.StatusOK, "")
		wantFilter := ""
		if tt.filtered {
			wantFilter = "artifactType"
		}
		expectHeaders(t, resp, "Content-Type", oci.MediaTypeOCIIndex, "OCI-Filters-Applied", wantFilter, "Content-Length", strconv.Itoa(len(body)))
		got := checkReferrers(t, body)
		if len(got) != len(tt.want) {
			t.Errorf("referrers%s = %v, want %v", tt.query, got, tt.want)
		}
		for d, at := range tt.want {
			if got[d] != at {
				t.Errorf("referrers%s: %s has artifactType %q, want %q", tt.query, d, got[d], at)
			}
		}
	}
	resp, body = s.do(t, http.MethodGet, "/v2/"+repo+"/referrers/"+digest.FromString("none").String(), nil)
	expect(t, resp, body, http.StatusOK, "")
	if got := checkReferrers(t, body); len(got) != 0 {
		t.Errorf("referrers of an unknown subject = %v", got)
	}

	t.Log("deletes")
	resp, body = s.do(t, http.MethodDelete, "/v2/"+repo+"/manifests/latest", nil)
	expect(t, resp, body, http.StatusAccepted, "")
	resp, body = s.do(t, http.MethodGet, "/v2/"+repo+"/manifests/latest", nil)
	expect(t, resp, body, http.StatusNotFound, oci.CodeManifestUnknown)
	resp, body = s.do(t, http.MethodGet, "/v2/"+repo+"/manifests/v1", nil)
	expect(t, resp, body, http.StatusOK, "")
	resp, body = s.do(t, http.MethodDelete, "/v2/"+repo+"/manifests/"+sigD.String(), nil)
	expect(t, resp, body, http.StatusAccepted, "")
	resp, body = s.do(t, http.MethodGet, "/v2/"+repo+"/referrers/"+md.String(), nil)
	expect(t, resp, body, http.StatusOK, "")
	if got := checkReferrers(t, body); len(got) != 1 || got[sbomD] == "" {
		t.Errorf("referrers after deleting one = %v", got)
	}
	resp, body = s.do(t, http.MethodDelete, "/v2/"+repo+"/manifests/"+md.String(), nil)
	expect(t, resp, body, http.StatusAccepted, "")
	for _, ref := range []string{md.String(), "v1", "v2", "v3"} {
		resp, body = s.do(t, http.MethodGet, "/v2/"+repo+"/manifests/"+ref, nil)
		expect(t, resp, body, http.StatusNotFound, oci.CodeManifestUnknown)
	}
	checkList(t, s, "/v2/"+repo+"/tags/list", "tags", []string{"multi"}, "")
	resp, body = s.do(t, http.MethodDelete, "/v2/"+repo+"/manifests/"+md.String(), nil)
	expect(t, resp, body, http.StatusNotFound, oci.CodeManifestUnknown)
	resp, body = s.do(t, http.MethodDelete, blobURL, nil)
	expect(t, resp, body, http.StatusAccepted, "")
	resp, body = s.do(t, http.MethodHead, blobURL, nil)
	expect(t, resp, body, http.StatusNotFound, oci.CodeBlobUnknown)
	resp, body = s.do(t, http.MethodDelete, blobURL, nil)
	expect(t, resp, body, http.StatusNotFound, oci.CodeBlobUnknown)
	// Other repositories keep their link.
	resp, body = s.do(t, http.MethodHead, "/v2/other/app/blobs/"+layerD.String(), nil)
	expect(t, resp, body, http.StatusOK, "")
}

// checkList GETs a tag list or catalog page, checks its entries and Link
// header, and returns the next page's path.
func checkList(t *testing.T, s *regSrv, path, field string, want []string, wantLink string) string {
	t.Helper()
	resp, body := s.do(t, http.MethodGet, path, nil)
	expect(t, resp, body, http.StatusOK, "")
	expectHeaders(t, resp, "Content-Type", "application/json", "Link", wantLink, "Content-Length", strconv.Itoa(len(body)))
	var v map[string]json.RawMessage
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	var got []string
	if err := json.Unmarshal(v[field], &got); err != nil || got == nil {
		t.Fatalf("GET %s: %s = %s, want a list", path, field, v[field])
	}
	if !slices.Equal(got, want) {
		t.Errorf("GET %s: %s = %q, want %q", path, field, got, want)
	}
	if field == "tags" {
		var name string
		_ = json.Unmarshal(v["name"], &name)
		if !strings.HasPrefix(path, "/v2/"+name+"/tags/list") {
			t.Errorf("GET %s: name %q", path, name)
		}
	}
	if wantLink == "" {
		return ""
	}
	link := resp.Header.Get("Link")
	end := strings.Index(link, ">")
	if !strings.HasPrefix(link, "<") || end < 0 {
		t.Fatalf("GET %s: Link %q", path, link)
	}
	return link[1:end]
}

func checkReferrers(t *testing.T, body []byte) map[digest.Digest]string {
	t.Helper()
	var idx struct {
		SchemaVersion int                  `json:"schemaVersion"`
		MediaType     string               `json:"mediaType"`
		Manifests     []ocispec.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(body, &idx); err != nil {
		t.Fatalf("referrers body %q: %v", body, err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != oci.MediaTypeOCIIndex || idx.Manifests == nil {
		t.Errorf("referrers index = %s", body)
	}
	got := map[digest.Digest]string{}
	for _, d := range idx.Manifests {
		if d.MediaType != oci.MediaTypeOCIManifest || d.Size <= 0 {
			t.Errorf("referrer descriptor %+v", d)
		}
		got[d.Digest] = d.ArtifactType
	}
	return got
}

func TestLocalBadInput(t *testing.T) {
	t.Parallel()
	s := newRegSrv(t)
	config := []byte(`{"os":"linux"}`)
	layer := []byte("layer")
	onlyInB := []byte("only in b")
	s.pushBlob(t, "a", config)
	s.pushBlob(t, "a", layer)
	s.pushBlob(t, "b", onlyInB)
	cfgDesc := desc("application/vnd.oci.image.config.v1+json", config)
	layerDesc := desc("application/vnd.oci.image.layer.v1.tar", layer)
	good := imageManifest(t, cfgDesc, []ocispec.Descriptor{layerDesc}, nil, "")
	resp, body := s.do(t, http.MethodPut, "/v2/a/manifests/v1", good, "Content-Type", oci.MediaTypeOCIManifest)
	expect(t, resp, body, http.StatusCreated, "")

	const maxManifest = 4 << 20
	tooBig := append(bytes.Clone(good), bytes.Repeat([]byte(" "), maxManifest+1-len(good))...)
	justFits := tooBig[:maxManifest]
	missing := desc("application/vnd.oci.image.layer.v1.tar", []byte("never pushed"))
	wrongSize := cfgDesc
	wrongSize.Size++
	badLayer := layerDesc
	badLayer.Digest = "sha256:nothex"
	badSubject := &ocispec.Descriptor{MediaType: oci.MediaTypeOCIManifest, Digest: "sha256:1234", Size: 1}
	missingIndex := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{missing}}
	missingIndex.SchemaVersion = 2
	noConfig := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`)
	schema1 := []byte(`{"schemaVersion":1,"name":"a","tag":"v1","architecture":"amd64","fsLayers":[{"blobSum":"` + layerDesc.Digest.String() + `"}],"history":[]}`)
	manifestCT := []string{"Content-Type", oci.MediaTypeOCIManifest}

	md5 := "md5:d41d8cd98f00b204e9800998ecf8427e"
	badHex := "sha256:" + strings.Repeat("z", 64)
	unknownID := strings.Repeat("ab", 16)
	long := strings.Repeat("a", 256)
	layerD := layerDesc.Digest.String()
	someD := digest.FromString("something").String()

	tests := []struct {
		name   string
		method string
		path   string // {upload}: a fresh upload of repo a holding 5 bytes; {id}: its id
		body   []byte
		hdr    []string
		status int
		code   oci.Code
	}{
		// Names.
		{"upper-case name", "GET", "/v2/Alpine/manifests/latest", nil, nil, 400, oci.CodeNameInvalid},
		{"upper-case name push", "POST", "/v2/team/App/blobs/uploads/", nil, nil, 400, oci.CodeNameInvalid},
		{"dot-dot name", "GET", "/v2/a/../b/tags/list", nil, nil, 400, oci.CodeNameInvalid},
		{"escaped dot-dot name", "GET", "/v2/%2e%2e/etc/tags/list", nil, nil, 400, oci.CodeNameInvalid},
		{"escaped slash dot-dot name", "GET", "/v2/a%2F..%2Fb/manifests/v1", nil, nil, 400, oci.CodeNameInvalid},
		{"dot-dot outside v2", "GET", "/v2/../../etc/passwd", nil, nil, 404, oci.CodeNameUnknown},
		{"empty element", "GET", "/v2/a//b/tags/list", nil, nil, 400, oci.CodeNameInvalid},
		{"leading slash", "GET", "/v2//a/manifests/v1", nil, nil, 400, oci.CodeNameInvalid},
		{"256-char name", "GET", "/v2/" + long + "/tags/list", nil, nil, 400, oci.CodeNameInvalid},
		{"256-char name push", "POST", "/v2/" + long + "/blobs/uploads/", nil, nil, 400, oci.CodeNameInvalid},
		{"255-char unknown name", "GET", "/v2/" + long[1:] + "/tags/list", nil, nil, 404, oci.CodeNameUnknown},
		{"unknown repository tags", "GET", "/v2/nobody/tags/list", nil, nil, 404, oci.CodeNameUnknown},

		// Blob digests.
		{"blob md5", "GET", "/v2/a/blobs/" + md5, nil, nil, 400, oci.CodeDigestInvalid},
		{"blob bad hex", "GET", "/v2/a/blobs/" + badHex, nil, nil, 400, oci.CodeDigestInvalid},
		{"blob HEAD bad hex", "HEAD", "/v2/a/blobs/" + badHex, nil, nil, 400, oci.CodeDigestInvalid},
		{"blob short digest", "GET", "/v2/a/blobs/" + layerD[:40], nil, nil, 400, oci.CodeDigestInvalid},
		{"blob tag as digest", "GET", "/v2/a/blobs/latest", nil, nil, 400, oci.CodeDigestInvalid},
		{"blob unknown", "GET", "/v2/a/blobs/" + someD, nil, nil, 404, oci.CodeBlobUnknown},
		{"blob HEAD unknown", "HEAD", "/v2/a/blobs/" + someD, nil, nil, 404, oci.CodeBlobUnknown},
		{"blob unknown sha512", "GET", "/v2/a/blobs/" + digest.SHA512.FromString("x").String(), nil, nil, 404, oci.CodeBlobUnknown},
		{"blob of another repository", "GET", "/v2/a/blobs/" + digest.FromBytes(onlyInB).String(), nil, nil, 404, oci.CodeBlobUnknown},
		{"blob delete bad digest", "DELETE", "/v2/a/blobs/" + md5, nil, nil, 400, oci.CodeDigestInvalid},
		{"blob garbage range", "GET", "/v2/a/blobs/" + layerD, nil, []string{"Range", "items=0-1"}, 416, oci.CodeRangeInvalid},
		{"blob malformed range", "GET", "/v2/a/blobs/" + layerD, nil, []string{"Range", "bytes=x-y"}, 416, ""},

		// Uploads.
		{"monolithic md5", "POST", "/v2/a/blobs/uploads/?digest=" + md5, layer, nil, 400, oci.CodeDigestInvalid},
		{"monolithic bad hex", "POST", "/v2/a/blobs/uploads/?digest=" + badHex, layer, nil, 400, oci.CodeDigestInvalid},
		{"monolithic digest mismatch", "POST", "/v2/a/blobs/uploads/?digest=" + someD, layer, nil, 400, oci.CodeDigestInvalid},
		{"mount md5", "POST", "/v2/a/blobs/uploads/?mount=" + md5, nil, nil, 400, oci.CodeDigestInvalid},
		{"put md5", "PUT", "{upload}?digest=" + md5, nil, nil, 400, oci.CodeDigestInvalid},
		{"put bad hex", "PUT", "{upload}?digest=" + badHex, nil, nil, 400, oci.CodeDigestInvalid},
		{"put without digest", "PUT", "{upload}", nil, nil, 400, oci.CodeDigestInvalid},
		{"put digest mismatch", "PUT", "{upload}?digest=" + someD, []byte("more"), nil, 400, oci.CodeDigestInvalid},
		{"put range does not continue", "PUT", "{upload}?digest=" + someD, []byte("01234"), []string{"Content-Range", "0-4"}, 416, oci.CodeBlobUploadInvalid},
		{"patch out of order", "PATCH", "{upload}", []byte("56789"), []string{"Content-Range", "10-14"}, 416, oci.CodeBlobUploadInvalid},
		{"patch replayed chunk", "PATCH", "{upload}", []byte("01234"), []string{"Content-Range", "0-4"}, 416, oci.CodeBlobUploadInvalid},
		{"patch malformed range", "PATCH", "{upload}", []byte("56789"), []string{"Content-Range", "five-nine"}, 416, oci.CodeBlobUploadInvalid},
		{"patch open range", "PATCH", "{upload}", []byte("56789"), []string{"Content-Range", "5-"}, 416, oci.CodeBlobUploadInvalid},
		{"patch range size mismatch", "PATCH", "{upload}", []byte("56789"), []string{"Content-Range", "5-100"}, 416, oci.CodeBlobUploadInvalid},
		{"upload unknown id GET", "GET", "/v2/a/blobs/uploads/" + unknownID, nil, nil, 404, oci.CodeBlobUploadUnknown},
		{"upload unknown id PATCH", "PATCH", "/v2/a/blobs/uploads/" + unknownID, layer, nil, 404, oci.CodeBlobUploadUnknown},
		{"upload unknown id PUT", "PUT", "/v2/a/blobs/uploads/" + unknownID + "?digest=" + layerD, layer, nil, 404, oci.CodeBlobUploadUnknown},
		{"upload unknown id DELETE", "DELETE", "/v2/a/blobs/uploads/" + unknownID, nil, nil, 404, oci.CodeBlobUploadUnknown},
		{"upload id not hex", "GET", "/v2/a/blobs/uploads/not-an-id", nil, nil, 404, oci.CodeBlobUploadUnknown},
		{"upload id dot-dot", "PATCH", "/v2/a/blobs/uploads/..", layer, nil, 404, oci.CodeBlobUploadUnknown},
		{"upload id traversal", "PATCH", "/v2/a/blobs/uploads/../../etc", layer, nil, 404, oci.CodeNameUnknown},
		{"upload id escaped traversal", "PUT", "/v2/a/blobs/uploads/..%2F..%2Fetc?digest=" + layerD, layer, nil, 404, oci.CodeNameUnknown},
		{"upload of another repository", "PATCH", "/v2/b/blobs/uploads/{id}", layer, nil, 404, oci.CodeBlobUploadUnknown},

		// Manifests.
		{"manifest not JSON", "PUT", "/v2/a/manifests/bad", []byte("not json"), manifestCT, 400, oci.CodeManifestInvalid},
		{"manifest empty", "PUT", "/v2/a/manifests/bad", []byte{}, manifestCT, 400, oci.CodeManifestInvalid},
		{"manifest JSON array", "PUT", "/v2/a/manifests/bad", []byte("[]"), manifestCT, 400, oci.CodeManifestInvalid},
		{"manifest too large", "PUT", "/v2/a/manifests/big", tooBig, manifestCT, 413, oci.CodeManifestInvalid},
		{"manifest at the size limit", "PUT", "/v2/a/manifests/big", justFits, manifestCT, 201, ""},
		{"manifest blob unknown", "PUT", "/v2/a/manifests/bad", imageManifest(t, cfgDesc, []ocispec.Descriptor{missing}, nil, ""), manifestCT, 400, oci.CodeManifestBlobUnknown},
		{"manifest blob in another repository", "PUT", "/v2/a/manifests/bad", imageManifest(t, cfgDesc, []ocispec.Descriptor{desc("x", onlyInB)}, nil, ""), manifestCT, 400, oci.CodeManifestBlobUnknown},
		{"manifest config unknown", "PUT", "/v2/a/manifests/bad", imageManifest(t, missing, nil, nil, ""), manifestCT, 400, oci.CodeManifestBlobUnknown},
		{"manifest blob size mismatch", "PUT", "/v2/a/manifests/bad", imageManifest(t, wrongSize, nil, nil, ""), manifestCT, 400, oci.CodeManifestInvalid},
		{"manifest layer bad digest", "PUT", "/v2/a/manifests/bad", imageManifest(t, cfgDesc, []ocispec.Descriptor{badLayer}, nil, ""), manifestCT, 400, oci.CodeManifestInvalid},
		{"manifest subject bad digest", "PUT", "/v2/a/manifests/bad", imageManifest(t, cfgDesc, nil, badSubject, ""), manifestCT, 400, oci.CodeManifestInvalid},
		{"manifest without config", "PUT", "/v2/a/manifests/bad", noConfig, manifestCT, 400, oci.CodeManifestInvalid},
		{"index child unknown", "PUT", "/v2/a/manifests/bad", mustJSON(t, missingIndex), []string{"Content-Type", oci.MediaTypeOCIIndex}, 400, oci.CodeManifestBlobUnknown},
		{"schema1 manifest", "PUT", "/v2/a/manifests/old", schema1, []string{"Content-Type", oci.MediaTypeDockerSchema1S}, 400, oci.CodeManifestInvalid},
		{"schema1 body as JSON", "PUT", "/v2/a/manifests/old", schema1, []string{"Content-Type", "application/json"}, 400, oci.CodeManifestInvalid},
		{"schema1 content type", "PUT", "/v2/a/manifests/old", good, []string{"Content-Type", oci.MediaTypeDockerSchema1}, 400, oci.CodeManifestInvalid},
		{"schemaVersion 3", "PUT", "/v2/a/manifests/bad", bytes.Replace(good, []byte(`"schemaVersion":2`), []byte(`"schemaVersion":3`), 1), manifestCT, 400, oci.CodeManifestInvalid},
		{"mediaType mismatch", "PUT", "/v2/a/manifests/bad", good, []string{"Content-Type", oci.MediaTypeDockerManifest}, 400, oci.CodeManifestInvalid},
		{"manifest digest mismatch", "PUT", "/v2/a/manifests/" + someD, good, manifestCT, 400, oci.CodeDigestInvalid},
		{"manifest md5 reference", "PUT", "/v2/a/manifests/" + md5, good, manifestCT, 400, oci.CodeDigestInvalid},
		{"manifest invalid tag", "PUT", "/v2/a/manifests/-bad", good, manifestCT, 400, oci.CodeManifestInvalid},
		{"manifest unknown tag", "GET", "/v2/a/manifests/nope", nil, nil, 404, oci.CodeManifestUnknown},
		{"manifest unknown digest", "GET", "/v2/a/manifests/" + someD, nil, nil, 404, oci.CodeManifestUnknown},
		{"manifest HEAD unknown", "HEAD", "/v2/a/manifests/nope", nil, nil, 404, oci.CodeManifestUnknown},
		{"manifest bad digest", "GET", "/v2/a/manifests/" + badHex, nil, nil, 400, oci.CodeDigestInvalid},
		{"manifest of another repository", "GET", "/v2/b/manifests/v1", nil, nil, 404, oci.CodeManifestUnknown},
		{"manifest delete unknown tag", "DELETE", "/v2/a/manifests/nope", nil, nil, 404, oci.CodeManifestUnknown},
		{"manifest delete bad digest", "DELETE", "/v2/a/manifests/" + md5, nil, nil, 400, oci.CodeDigestInvalid},

		// Lists and referrers.
		{"tags negative n", "GET", "/v2/a/tags/list?n=-1", nil, nil, 400, oci.CodeUnsupported},
		{"tags non-numeric n", "GET", "/v2/a/tags/list?n=ten", nil, nil, 400, oci.CodeUnsupported},
		{"catalog negative n", "GET", "/v2/_catalog?n=-1", nil, nil, 400, oci.CodeUnsupported},
		{"referrers bad digest", "GET", "/v2/a/referrers/" + badHex, nil, nil, 400, oci.CodeDigestInvalid},
		{"referrers by tag", "GET", "/v2/a/referrers/v1", nil, nil, 400, oci.CodeDigestInvalid},

		// Endpoints and methods.
		{"unknown endpoint", "GET", "/v2/a/foo/bar", nil, nil, 404, oci.CodeNameUnknown},
		{"not v2", "GET", "/v1/_ping", nil, nil, 404, oci.CodeNameUnknown},
		{"root", "GET", "/", nil, nil, 404, oci.CodeNameUnknown},
		{"POST manifest", "POST", "/v2/a/manifests/v1", good, nil, 405, oci.CodeUnsupported},
		{"PATCH blob", "PATCH", "/v2/a/blobs/" + layerD, layer, nil, 405, oci.CodeUnsupported},
		{"PUT blob", "PUT", "/v2/a/blobs/" + layerD, layer, nil, 405, oci.CodeUnsupported},
		{"GET upload start", "GET", "/v2/a/blobs/uploads/", nil, nil, 405, oci.CodeUnsupported},
		{"DELETE tags", "DELETE", "/v2/a/tags/list", nil, nil, 405, oci.CodeUnsupported},
		{"DELETE base", "DELETE", "/v2/", nil, nil, 405, oci.CodeUnsupported},
		{"PUT catalog", "PUT", "/v2/_catalog", nil, nil, 405, oci.CodeUnsupported},
		{"POST referrers", "POST", "/v2/a/referrers/" + layerD, nil, nil, 405, oci.CodeUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := tt.path
			var loc string
			if strings.Contains(path, "{upload}") || strings.Contains(path, "{id}") {
				loc = s.startUpload(t, "a")
				resp, body := s.do(t, http.MethodPatch, loc, []byte("01234"), "Content-Range", "0-4")
				expect(t, resp, body, http.StatusAccepted, "")
				path = strings.ReplaceAll(path, "{upload}", loc)
				path = strings.ReplaceAll(path, "{id}", loc[strings.LastIndexByte(loc, '/')+1:])
			}
			resp, body := s.do(t, tt.method, path, tt.body, tt.hdr...)
			expect(t, resp, body, tt.status, tt.code)
			if loc == "" {
				return
			}
			// A refused request leaves the upload open where it was; a PUT
			// whose digest does not match keeps the final chunk, so the
			// client can still correct the digest.
			want := "0-4"
			if tt.name == "put digest mismatch" {
				want = "0-8"
			}
			resp, body = s.do(t, http.MethodGet, loc, nil)
			expect(t, resp, body, http.StatusNoContent, "")
			expectHeaders(t, resp, "Range", want)
		})
	}
}

// TestLocalTruncatedBody sends bodies shorter than their Content-Length
// (a client that went away mid-push): that is the client's error, never a
// 5xx, and nothing of it is kept.
func TestLocalTruncatedBody(t *testing.T) {
	t.Parallel()
	s := newRegSrv(t)
	full := []byte("0123456789")
	d := digest.FromBytes(full).String()
	tests := []struct {
		name   string
		method string
		path   string // {upload}: a fresh upload of repo a
		hdr    string
		code   oci.Code
	}{
		{"monolithic", "POST", "/v2/a/blobs/uploads/?digest=" + d, "", oci.CodeBlobUploadInvalid},
		{"chunk", "PATCH", "{upload}", "", oci.CodeBlobUploadInvalid},
		{"chunk with range", "PATCH", "{upload}", "Content-Range: 0-19\r\n", oci.CodeBlobUploadInvalid},
		{"final chunk", "PUT", "{upload}?digest=" + d, "", oci.CodeBlobUploadInvalid},
		{"manifest", "PUT", "/v2/a/manifests/v1", "Content-Type: " + oci.MediaTypeOCIManifest + "\r\n", oci.CodeManifestInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path, loc := tt.path, ""
			if strings.Contains(path, "{upload}") {
				loc = s.startUpload(t, "a")
				path = strings.ReplaceAll(path, "{upload}", loc)
			}
			c, err := net.Dial("tcp", s.srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: berth\r\n%sContent-Length: 20\r\n\r\n%s", tt.method, path, tt.hdr, full)
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			resp.Request, _ = http.NewRequest(tt.method, path, nil)
			expect(t, resp, body, http.StatusBadRequest, tt.code)
			if loc != "" {
				resp, body = s.do(t, http.MethodGet, loc, nil)
				expect(t, resp, body, http.StatusNoContent, "")
				expectHeaders(t, resp, "Range", "0-0")
			}
			resp, body = s.do(t, http.MethodHead, "/v2/a/blobs/"+d, nil)
			expect(t, resp, body, http.StatusNotFound, oci.CodeBlobUnknown)
		})
	}
}

// A stored blob past the small-blob cache goes out of its file with
// sendfile on a plain TCP connection: whole, from a Range's offset, and,
// if the file on disk ends before its indexed size, as a cut connection,
// never a clean end of a short body.
func TestLocalBlobFromFile(t *testing.T) {
	t.Parallel()
	s := newRegSrv(t)
	b := make([]byte, 3*cache.MaxSmallBlob+17)
	for i := range b {
		b[i] = byte(i*31 + i/7)
	}
	d := s.pushBlob(t, "a", b)
	resp, body := s.do(t, http.MethodGet, "/v2/a/blobs/"+d.String(), nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, b) {
		t.Fatalf("GET: %d, %d bytes, equal %v", resp.StatusCode, len(body), bytes.Equal(body, b))
	}
	for _, r := range []struct {
		hdr        string
		start, end int
	}{{"bytes=0-0", 0, 0}, {"bytes=1000-", 1000, len(b) - 1}, {"bytes=70000-140000", 70000, 140000}, {"bytes=-5", len(b) - 5, len(b) - 1}} {
		resp, body := s.do(t, http.MethodGet, "/v2/a/blobs/"+d.String(), nil, "Range", r.hdr)
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, b[r.start:r.end+1]) {
			t.Errorf("Range %s: %d, %d bytes, equal %v", r.hdr, resp.StatusCode, len(body), bytes.Equal(body, b[r.start:r.end+1]))
		}
	}

	// The file loses its tail under berth (a disk fault): the client must
	// see the connection cut.
	f, err := s.st.OpenBlob(d)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Truncate(f.Name(), int64(len(b)/2)); err != nil {
		t.Fatal(err)
	}
	resp, err = s.srv.Client().Get(s.srv.URL + "/v2/a/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("a blob file that ends early was sent as a clean %d-byte body (status %d)", len(got), resp.StatusCode)
	}
}
