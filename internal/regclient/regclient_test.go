package regclient

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berth-dev/berth/internal/imageref"
	"github.com/opencontainers/go-digest"
)

func TestPagesFollowLink(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, _ := r.BasicAuth(); u != "ci" || p != "pw" {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		switch r.URL.Query().Get("last") {
		case "":
			w.Header().Set("Link", `</v2/_catalog?last=b&n=2>; rel="next"`)
			fmt.Fprint(w, `{"repositories":["a","b"]}`)
		case "b":
			fmt.Fprint(w, `{"repositories":["c"]}`)
		}
	}))
	defer srv.Close()
	c, err := New(srv.URL, Options{Username: "ci", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Catalog(context.Background())
	if err != nil || !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("catalog %v %v", got, err)
	}
	anon, _ := New(srv.URL, Options{})
	_, err = anon.Catalog(context.Background())
	var e *Error
	if !errors.As(err, &e) || e.Status != 401 || e.Code != "UNAUTHORIZED" {
		t.Errorf("anonymous: %v", err)
	}
}

func TestManifestDigestChecked(t *testing.T) {
	t.Parallel()
	body := `{"schemaVersion":2}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/missing") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		fmt.Fprint(w, body)
	}))
	defer srv.Close()
	c, _ := New(srv.URL, Options{})
	d := digest.FromString(body)
	desc, _, err := c.Manifest(context.Background(), "x/y", d.String())
	if err != nil || desc.Digest != d || desc.MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("manifest %+v %v", desc, err)
	}
	if _, _, err := c.Manifest(context.Background(), "x/y", digest.FromString("other").String()); err == nil {
		t.Error("a manifest of another digest accepted")
	}
	if _, _, err := c.Manifest(context.Background(), "x/y", "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("404: %v", err)
	}
}

func TestName(t *testing.T) {
	t.Parallel()
	c, _ := New("http://berth.internal:5000", Options{})
	for in, want := range map[string]string{
		"busybox":                        "docker.io/library/busybox",
		"ghcr.io/org/app:1":              "ghcr.io/org/app",
		"berth.internal:5000/team/app:1": "team/app",
	} {
		r, err := imageref.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Name(r); got != want {
			t.Errorf("Name(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestDockerCredentials(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("ci:pw:with:colons"))
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"auths":{"https://berth.internal:5000/v1/":{"auth":"`+auth+`"}}}`), 0o600)
	env := func(k string) string { return map[string]string{"DOCKER_CONFIG": dir}[k] }
	u, p, ok, err := DockerCredentials("berth.internal:5000", env)
	if err != nil || !ok || u != "ci" || p != "pw:with:colons" {
		t.Errorf("got %q %q %v %v", u, p, ok, err)
	}
	if _, _, ok, _ := DockerCredentials("other:5000", env); ok {
		t.Error("credentials for another host")
	}
}
