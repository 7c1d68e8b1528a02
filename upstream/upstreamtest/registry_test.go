package upstreamtest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// get performs a raw request against the fake and returns status, headers
// and body.
func get(t *testing.T, method, rawURL string, hdr map[string]string) (int, http.Header, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	// Do not follow redirects: tests look at them.
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body, err
}

func fetchToken(t *testing.T, r *Registry, scope string, hdr map[string]string) (int, string) {
	t.Helper()
	q := url.Values{"service": {Service}}
	if scope != "" {
		q.Set("scope", scope)
	}
	status, _, body, err := get(t, "GET", r.TokenURL()+"/token?"+q.Encode(), hdr)
	if err != nil {
		t.Fatal(err)
	}
	var tr struct {
		Token     string `json:"token"`
		ExpiresIn int    `json:"expires_in"`
	}
	_ = json.Unmarshal(body, &tr)
	if status == http.StatusOK && (tr.Token == "" || tr.ExpiresIn <= 0) {
		t.Fatalf("token response %s lacks token or expires_in", body)
	}
	return status, tr.Token
}

func TestBearerScopeEnforced(t *testing.T) {
	t.Parallel()
	r := New(t, Options{Auth: AuthBearer})
	a := r.AddImage("team/a", "v1", 1, 10)
	r.AddImage("team/b", "v1", 1, 10)

	status, hdr, body, _ := get(t, "GET", r.URL()+"/v2/team/a/manifests/v1", nil)
	if status != http.StatusUnauthorized {
		t.Fatalf("unauthenticated status = %d", status)
	}
	want := `Bearer realm="` + r.TokenURL() + `/token",service="upstreamtest",scope="repository:team/a:pull"`
	if got := hdr.Get("WWW-Authenticate"); got != want {
		t.Errorf("challenge = %q, want %q", got, want)
	}
	if !bytes.Contains(body, []byte("UNAUTHORIZED")) {
		t.Errorf("401 body %s lacks OCI error code", body)
	}

	_, tok := fetchToken(t, r, "repository:team/a:pull", nil)
	auth := map[string]string{"Authorization": "Bearer " + tok, "Accept": a.MediaType}
	if status, _, _, _ := get(t, "GET", r.URL()+"/v2/team/a/manifests/v1", auth); status != http.StatusOK {
		t.Errorf("right scope: status %d, want 200", status)
	}
	if status, _, _, _ := get(t, "GET", r.URL()+"/v2/team/b/manifests/v1", auth); status != http.StatusUnauthorized {
		t.Errorf("wrong scope: status %d, want 401", status)
	}
	if status, _, _, _ := get(t, "GET", r.URL()+"/v2/", auth); status != http.StatusOK {
		t.Errorf("ping with any valid token: status %d, want 200", status)
	}
	r.ExpireTokens()
	if status, _, _, _ := get(t, "GET", r.URL()+"/v2/team/a/manifests/v1", auth); status != http.StatusUnauthorized {
		t.Errorf("expired token: status %d, want 401", status)
	}
	if got, authed := r.Count("GET", KindManifest), r.CountAuthorized("GET", KindManifest); got != 4 || authed != 1 {
		t.Errorf("Count = %d, CountAuthorized = %d; want 4, 1", got, authed)
	}
	r.Reset()
	if r.Count("GET", KindManifest) != 0 || len(r.Requests()) != 0 {
		t.Errorf("Reset did not clear counters")
	}
}

func TestTokenServerCredentials(t *testing.T) {
	t.Parallel()
	r := New(t, Options{Auth: AuthBearer, Username: "u", Password: "p"})
	basic := func(u, p string) map[string]string {
		req, _ := http.NewRequest("GET", "http://x", nil)
		req.SetBasicAuth(u, p)
		return map[string]string{"Authorization": req.Header.Get("Authorization")}
	}
	tests := []struct {
		name string
		hdr  map[string]string
		want int
	}{
		{"anonymous", nil, http.StatusUnauthorized},
		{"wrong", basic("u", "x"), http.StatusUnauthorized},
		{"right", basic("u", "p"), http.StatusOK},
	}
	for _, tt := range tests {
		if status, _ := fetchToken(t, r, "repository:x:pull", tt.hdr); status != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, status, tt.want)
		}
	}
	if status, _, _, _ := get(t, "GET", r.TokenURL()+"/token?service=other", nil); status != http.StatusBadRequest {
		t.Errorf("wrong service: status %d, want 400", status)
	}
}

func TestBlobRanges(t *testing.T) {
	t.Parallel()
	r := New(t, Options{})
	content := []byte("0123456789")
	d := r.AddBlob("lib/x", content)
	u := r.URL() + "/v2/lib/x/blobs/" + d.String()
	tests := []struct {
		rng        string
		wantStatus int
		wantBody   string
		wantRange  string
	}{
		{"", 200, "0123456789", ""},
		{"bytes=3-", 206, "3456789", "bytes 3-9/10"},
		{"bytes=2-4", 206, "234", "bytes 2-4/10"},
		{"bytes=8-100", 206, "89", "bytes 8-9/10"},
		{"bytes=10-", 416, "", "bytes */10"},
		{"bytes=-3", 206, "789", "bytes 7-9/10"},
		{"bytes=0-1,3-4", 416, "", "bytes */10"},
	}
	for _, tt := range tests {
		hdr := map[string]string{}
		if tt.rng != "" {
			hdr["Range"] = tt.rng
		}
		status, h, body, err := get(t, "GET", u, hdr)
		if err != nil {
			t.Fatal(err)
		}
		if status != tt.wantStatus || h.Get("Content-Range") != tt.wantRange || (status < 300 && string(body) != tt.wantBody) {
			t.Errorf("Range %q: %d %q %q; want %d %q %q", tt.rng, status, h.Get("Content-Range"), body, tt.wantStatus, tt.wantRange, tt.wantBody)
		}
	}

	r.SetCorrupt(d, true)
	if _, _, body, _ := get(t, "GET", u, map[string]string{"Range": "bytes=5-"}); len(body) != 5 || string(body) == "56789" {
		t.Errorf("corrupt range body = %q, want 5 wrong bytes", body)
	}
	r.SetCorrupt(d, false)

	r.SetCutAfter(d, 4, 1)
	if _, _, body, err := get(t, "GET", u, nil); err == nil || string(body) != "0123" {
		t.Errorf("cut: body %q err %v, want 4 bytes then an error", body, err)
	}
	if _, _, body, err := get(t, "GET", u, nil); err != nil || string(body) != string(content) {
		t.Errorf("after the cut: body %q err %v", body, err)
	}
	if status, _, _, _ := get(t, "GET", r.URL()+"/v2/other/blobs/"+d.String(), nil); status != http.StatusNotFound {
		t.Errorf("blob of another repo: status %d, want 404", status)
	}
}

func TestRedirectAndRecords(t *testing.T) {
	t.Parallel()
	r := New(t, Options{})
	d := r.AddBlob("lib/x", []byte("hello"))
	r.SetRedirectBlobs(true)
	status, h, _, _ := get(t, "GET", r.URL()+"/v2/lib/x/blobs/"+d.String(), nil)
	loc := h.Get("Location")
	if status != http.StatusTemporaryRedirect || !strings.Contains(loc, r.CDNHost()) {
		t.Fatalf("status %d Location %q, want 307 to the CDN", status, loc)
	}
	if _, _, body, _ := get(t, "GET", loc, map[string]string{"Authorization": "Bearer leak"}); string(body) != "hello" {
		t.Errorf("CDN body = %q", body)
	}
	recs := r.Requests()
	if len(recs) != 2 || recs[1].Host != r.CDNHost() || recs[1].Kind != KindCDN || recs[1].Auth != "bearer" || recs[1].Status != 200 {
		t.Errorf("records = %+v", recs)
	}
}

func TestTagsAndErrors(t *testing.T) {
	t.Parallel()
	r := New(t, Options{})
	for _, tag := range []string{"c", "a", "b"} {
		r.AddManifest("lib/t", tag, "application/vnd.oci.image.manifest.v1+json", []byte(tag))
	}
	_, h, body, _ := get(t, "GET", r.URL()+"/v2/lib/t/tags/list?n=2", nil)
	if !strings.Contains(string(body), `"tags":["a","b"]`) || h.Get("Link") != `</v2/lib/t/tags/list?last=b&n=2>; rel="next"` {
		t.Errorf("page 1: %s Link %q", body, h.Get("Link"))
	}
	_, h, body, _ = get(t, "GET", r.URL()+"/v2/lib/t/tags/list?n=2&last=b", nil)
	if !strings.Contains(string(body), `"tags":["c"]`) || h.Get("Link") != "" {
		t.Errorf("page 2: %s Link %q", body, h.Get("Link"))
	}

	status, _, body, _ := get(t, "GET", r.URL()+"/v2/lib/t/manifests/zzz", nil)
	if status != http.StatusNotFound || !strings.Contains(string(body), "MANIFEST_UNKNOWN") {
		t.Errorf("unknown manifest: %d %s", status, body)
	}
	status, _, _, _ = get(t, "GET", r.URL()+"/v2/lib/t/manifests/a", map[string]string{"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
	if status != http.StatusNotFound {
		t.Errorf("manifest type not accepted: status %d, want 404", status)
	}
	r.SetDown(true)
	if status, _, _, _ := get(t, "GET", r.URL()+"/v2/", nil); status != http.StatusServiceUnavailable {
		t.Errorf("down: status %d", status)
	}
	r.SetDown(false)
	r.FailNext(http.StatusBadGateway, 1)
	if status, _, _, _ := get(t, "GET", r.URL()+"/v2/", nil); status != http.StatusBadGateway {
		t.Errorf("FailNext: status %d", status)
	}
	if status, _, _, _ := get(t, "GET", r.URL()+"/v2/", nil); status != http.StatusOK {
		t.Errorf("after FailNext: status %d", status)
	}
}
