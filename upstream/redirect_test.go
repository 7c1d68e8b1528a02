package upstream

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
)

// A host a blob redirect leads to cannot obtain the upstream's credentials
// by answering 401 with a Bearer realm of its choosing.
func TestRedirectTargetCannotHijackAuth(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var stolen []string
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		stolen = append(stolen, r.Header.Get("Authorization"))
		mu.Unlock()
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer evil.Close()
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+evil.URL+`/token",service="x"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer cdn.Close()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			w.Header().Set("WWW-Authenticate", `Basic realm="up"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if strings.Contains(r.URL.Path, "/blobs/") {
			http.Redirect(w, r, cdn.URL+"/blob", http.StatusTemporaryRedirect)
			return
		}
		w.WriteHeader(http.StatusNotFound)
	}))
	defer up.Close()
	c, err := New(Config{Name: "docker.io", URL: up.URL, Username: "robot", Password: "hunter2", Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.GetBlob(t.Context(), "a/b", digest.FromString("x"), 0); err == nil {
		t.Fatal("GetBlob succeeded against a CDN that answers 401")
	} else if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error names the password: %v", err)
	}
	if _, _, err := c.GetBlob(t.Context(), "a/c", digest.FromString("y"), 0); err == nil {
		t.Fatal("second GetBlob succeeded")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(stolen) > 0 {
		t.Errorf("a realm named by a redirect target was contacted (Authorization %q)", stolen)
	}
}
