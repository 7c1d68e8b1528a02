package proxy_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/proxy"
	"golang.org/x/crypto/bcrypt"
)

func authServer(t *testing.T, anonymousPull bool) *httptest.Server {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte("pushpw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := proxy.ParseHtpasswd(strings.NewReader(fmt.Sprintf("# team\nci:%s\n", hash)), anonymousPull)
	if err != nil {
		t.Fatal(err)
	}
	_, srv := startServer(t, cache.Options{}, berth{Auth: auth})
	return srv
}

func TestAuth(t *testing.T) {
	t.Parallel()
	blob := []byte("hello")
	d := "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
	for _, anon := range []bool{true, false} {
		srv := authServer(t, anon)
		for _, tc := range []struct {
			name, method, path, user, pass string
			body                           []byte
			want                           int
		}{
			{"ping anonymous", "GET", "/v2/", "", "", nil, map[bool]int{true: 200, false: 401}[anon]},
			{"ping with credentials", "GET", "/v2/", "ci", "pushpw", nil, 200},
			{"push anonymous", "POST", "/v2/team/app/blobs/uploads/?digest=" + d, "", "", blob, 401},
			{"push wrong password", "POST", "/v2/team/app/blobs/uploads/?digest=" + d, "ci", "nope", blob, 401},
			{"push unknown user", "POST", "/v2/team/app/blobs/uploads/?digest=" + d, "eve", "pushpw", blob, 401},
			{"push", "POST", "/v2/team/app/blobs/uploads/?digest=" + d, "ci", "pushpw", blob, 201},
			{"pull with credentials", "GET", "/v2/team/app/blobs/" + d, "ci", "pushpw", nil, 200},
			{"pull with wrong credentials", "GET", "/v2/team/app/blobs/" + d, "ci", "nope", nil, 401},
			{"pull anonymous", "GET", "/v2/team/app/blobs/" + d, "", "", nil, map[bool]int{true: 200, false: 401}[anon]},
			{"delete anonymous", "DELETE", "/v2/team/app/blobs/" + d, "", "", nil, 401},
			{"catalog anonymous", "GET", "/v2/_catalog", "", "", nil, 401},
		} {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, bytes.NewReader(tc.body))
			if tc.user != "" {
				req.SetBasicAuth(tc.user, tc.pass)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("anonymous_pull=%v %s: %d, want %d", anon, tc.name, resp.StatusCode, tc.want)
			}
			if resp.StatusCode == 401 && resp.Header.Get("WWW-Authenticate") != `Basic realm="berth"` {
				t.Errorf("%s: 401 without a Basic challenge", tc.name)
			}
		}
	}
}

func TestParseHtpasswdRefusesWeakHashes(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"", "ci:$apr1$abc$def\n", "ci\n", ":x\n", "ci:{SHA}abc=\n"} {
		if _, err := proxy.ParseHtpasswd(strings.NewReader(in), true); err == nil {
			t.Errorf("accepted %q", in)
		}
	}
}
