package proxy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/access"
	"github.com/berth-dev/berth/internal/token"
	"github.com/berth-dev/berth/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"
)

// teamRules are the example rules.
var teamRules = []access.Rule{
	{Repos: []string{"team-a/**"}, Subjects: []string{"alice", "group:team-a"}, Actions: []access.Action{access.Pull, access.Push, access.Delete}},
	{Repos: []string{"team-b/**"}, Subjects: []string{"bob"}, Actions: []access.Action{access.Pull, access.Push, access.Delete}},
	{Repos: []string{"secret/**"}, Subjects: []string{"bob"}, Actions: []access.Action{access.Pull}},
	{Repos: []string{"secret/**"}, Subjects: []string{"authenticated", "anonymous"}, Actions: nil},
	{Repos: []string{"**"}, Subjects: []string{"authenticated"}, Actions: []access.Action{access.Pull}},
}

type authSrv struct {
	url  string
	log  *logLines
	auth *proxy.Auth
	reg  *prometheus.Registry
}

// event is the value of berth_auth_events_total{event=name}.
func (s *authSrv) event(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "berth_auth_events_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "event" && l.GetValue() == name {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no berth_auth_events_total{event=%q}", name)
	return 0
}

func startAuth(t *testing.T, tokens, anonymousPull bool) *authSrv {
	t.Helper()
	var file strings.Builder
	for _, u := range []string{"alice", "bob"} {
		hash, err := bcrypt.GenerateFromPassword([]byte(u+"-pw"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&file, "%s:%s\n", u, hash)
	}
	o := proxy.AuthOptions{Htpasswd: strings.NewReader(file.String()), Rules: teamRules, AnonymousPull: anonymousPull}
	if tokens {
		is, err := token.New(token.Options{Key: bytes.Repeat([]byte("k"), 32), Service: "berth-test"})
		if err != nil {
			t.Fatal(err)
		}
		o.Tokens = is
	}
	a, err := proxy.NewAuth(o)
	if err != nil {
		t.Fatal(err)
	}
	log := newLogLines(t)
	reg := prometheus.NewRegistry()
	_, srv := startServer(t, cache.Options{}, berth{Auth: a, Log: log, Registerer: reg})
	return &authSrv{url: srv.URL, log: log, auth: a, reg: reg}
}

type acall struct {
	method, path string
	user, pass   string // Basic
	bearer       string
	body         []byte
	form         url.Values // POST form body
}

func (s *authSrv) do(t *testing.T, c acall) (*http.Response, []byte) {
	t.Helper()
	body := io.Reader(bytes.NewReader(c.body))
	if c.form != nil {
		body = strings.NewReader(c.form.Encode())
	}
	req, _ := http.NewRequest(c.method, s.url+c.path, body)
	if c.form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if c.user != "" {
		req.SetBasicAuth(c.user, c.pass)
	}
	if c.bearer != "" {
		req.Header.Set("Authorization", "Bearer "+c.bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b
}

// tokenFor asks the token endpoint for scopes as user ("" anonymous).
func (s *authSrv) tokenFor(t *testing.T, user string, scopes ...string) (tok, granted string) {
	t.Helper()
	q := url.Values{"service": {"berth-test"}, "scope": scopes}
	resp, b := s.do(t, acall{method: "GET", path: proxy.TokenPath + "?" + q.Encode(), user: user, pass: user + "-pw"})
	if resp.StatusCode != 200 {
		t.Fatalf("token for %q: %d %s", user, resp.StatusCode, b)
	}
	var tr struct {
		Token       string
		AccessToken string `json:"access_token"`
		Scope       string
		ExpiresIn   int `json:"expires_in"`
	}
	if err := json.Unmarshal(b, &tr); err != nil || tr.Token == "" || tr.Token != tr.AccessToken || tr.ExpiresIn <= 0 {
		t.Fatalf("token response %s: %v", b, err)
	}
	return tr.Token, tr.Scope
}

const blobD = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" // "hello"

func TestTokenFlow(t *testing.T) {
	t.Parallel()
	s := startAuth(t, true, true)
	host := strings.TrimPrefix(s.url, "http://")

	// The ping challenges with the realm built from the request.
	resp, _ := s.do(t, acall{method: "GET", path: "/v2/"})
	want := `Bearer realm="http://` + host + `/v2/token",service="berth-test"`
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != want {
		t.Fatalf("ping: %d %q, want 401 %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), want)
	}
	// A resource names the scope it needs.
	resp, _ = s.do(t, acall{method: "POST", path: "/v2/team-a/app/blobs/uploads/"})
	if got := resp.Header.Get("WWW-Authenticate"); !strings.HasSuffix(got, `,scope="repository:team-a/app:pull,push"`) {
		t.Errorf("push challenge %q", got)
	}

	// Alice asks for push on both teams: she gets team-a only.
	tok, granted := s.tokenFor(t, "alice", "repository:team-a/app:pull,push", "repository:team-b/app:pull,push")
	if granted != "repository:team-a/app:pull,push repository:team-b/app:pull" {
		t.Errorf("alice granted %q", granted)
	}
	resp, b := s.do(t, acall{method: "POST", path: "/v2/team-a/app/blobs/uploads/?digest=" + blobD, bearer: tok, body: []byte("hello")})
	if resp.StatusCode != 201 {
		t.Fatalf("alice push team-a: %d %s", resp.StatusCode, b)
	}
	audit := s.log.find(t, "audit", resp.Header.Get("X-Request-Id"))
	wantAudit(t, "push audit", audit, map[string]any{"audit": true, "event": "push", "user": "alice", "repo": "team-a/app", "digest": blobD})
	resp, b = s.do(t, acall{method: "POST", path: "/v2/team-b/app/blobs/uploads/?digest=" + blobD, bearer: tok, body: []byte("hello")})
	expectCode(t, "alice push team-b", resp, b, 403, "DENIED")
	audit = s.log.find(t, "audit", resp.Header.Get("X-Request-Id"))
	wantAudit(t, "denied audit", audit, map[string]any{"event": "denied", "user": "alice", "action": "push", "repo": "team-b/app"})
	resp, _ = s.do(t, acall{method: "GET", path: "/v2/team-a/app/blobs/" + blobD, bearer: tok})
	if resp.StatusCode != 200 {
		t.Errorf("alice pull with her token: %d", resp.StatusCode)
	}
	// A scope the token lacks but the rules allow: a new challenge.
	resp, _ = s.do(t, acall{method: "GET", path: "/v2/team-c/x/blobs/" + blobD, bearer: tok})
	if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
		t.Errorf("insufficient scope: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	// A forged token is refused.
	resp, _ = s.do(t, acall{method: "GET", path: "/v2/team-a/app/blobs/" + blobD, bearer: tok[:len(tok)-2] + "xx"})
	if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("forged token: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}

	// Anonymous: a token for pulls, nothing for pushes or secret/.
	anon, granted := s.tokenFor(t, "", "repository:team-a/app:pull,push", "repository:secret/x:pull")
	if granted != "repository:team-a/app:pull" {
		t.Errorf("anonymous granted %q", granted)
	}
	resp, _ = s.do(t, acall{method: "GET", path: "/v2/team-a/app/blobs/" + blobD, bearer: anon})
	if resp.StatusCode != 200 {
		t.Errorf("anonymous pull: %d", resp.StatusCode)
	}
	if resp, _ = s.do(t, acall{method: "GET", path: "/v2/", bearer: anon}); resp.StatusCode != 200 {
		t.Errorf("ping with an anonymous token: %d", resp.StatusCode)
	}
	resp, b = s.do(t, acall{method: "GET", path: "/v2/secret/x/manifests/latest", bearer: anon})
	expectCode(t, "anonymous pull of secret", resp, b, 401, "UNAUTHORIZED")

	// A wrong password at the token endpoint is 401 and an audit line.
	resp, _ = s.do(t, acall{method: "GET", path: proxy.TokenPath + "?scope=repository:a:pull", user: "alice", pass: "wrong"})
	if resp.StatusCode != 401 {
		t.Errorf("wrong password: %d", resp.StatusCode)
	}
	audit = s.log.find(t, "audit", resp.Header.Get("X-Request-Id"))
	wantAudit(t, "failed login", audit, map[string]any{"event": "login_failed", "user": "alice"})
	if bytes.Contains(mustJSON(t, audit), []byte("wrong")) {
		t.Error("the password is in the audit line")
	}

	// The catalog lists only what the caller may pull.
	bobTok, _ := s.tokenFor(t, "bob", "repository:secret/x:pull,push", "registry:catalog:*")
	resp, b = s.do(t, acall{method: "POST", path: "/v2/team-b/app/blobs/uploads/?digest=" + blobD, bearer: bobTok, body: []byte("hello")})
	if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("WWW-Authenticate"), "insufficient_scope") {
		t.Errorf("bob push with a token for secret/x only: %d %s", resp.StatusCode, b)
	}
	bobTok, _ = s.tokenFor(t, "bob", "repository:team-b/app:pull,push", "registry:catalog:*")
	s.do(t, acall{method: "POST", path: "/v2/team-b/app/blobs/uploads/?digest=" + blobD, bearer: bobTok, body: []byte("hello")})
	aliceCat, _ := s.tokenFor(t, "alice", "registry:catalog:*")
	for _, tc := range []struct {
		tok  string
		want []string
	}{{aliceCat, []string{"team-a/app", "team-b/app"}}, {bobTok, []string{"team-a/app", "team-b/app"}}} {
		resp, b := s.do(t, acall{method: "GET", path: "/v2/_catalog", bearer: tc.tok})
		var cat struct{ Repositories []string }
		_ = json.Unmarshal(b, &cat)
		if resp.StatusCode != 200 || !slices.Equal(cat.Repositories, tc.want) {
			t.Errorf("catalog: %d %s, want %v", resp.StatusCode, b, tc.want)
		}
	}
	resp, _ = s.do(t, acall{method: "GET", path: "/v2/_catalog", bearer: anon})
	if resp.StatusCode != 401 {
		t.Errorf("anonymous catalog: %d", resp.StatusCode)
	}
	if n := s.event(t, "token_issued"); n != 5 {
		t.Errorf("token_issued = %v, want 5", n)
	}
	if n := s.event(t, "denied"); n != 2 {
		t.Errorf("denied = %v, want 2 (alice's push to team-b, anonymous secret/)", n)
	}
	if n := s.event(t, "login_failed"); n != 1 {
		t.Errorf("login_failed = %v, want 1", n)
	}
}

func TestTokenRefresh(t *testing.T) {
	t.Parallel()
	s := startAuth(t, true, false)
	// docker login: POST grant_type=password with access_type=offline.
	resp, b := s.do(t, acall{method: "POST", path: proxy.TokenPath, form: url.Values{"grant_type": {"password"}, "username": {"alice"},
		"password": {"alice-pw"}, "service": {"berth-test"}, "client_id": {"docker"}, "access_type": {"offline"}}})
	var tr struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.Unmarshal(b, &tr); resp.StatusCode != 200 || err != nil || tr.RefreshToken == "" {
		t.Fatalf("password grant: %d %s", resp.StatusCode, b)
	}
	// The refresh token is not an access token.
	resp, _ = s.do(t, acall{method: "GET", path: "/v2/team-a/app/tags/list", bearer: tr.RefreshToken})
	if resp.StatusCode != 401 {
		t.Errorf("refresh token used as access token: %d", resp.StatusCode)
	}
	resp, b = s.do(t, acall{method: "POST", path: proxy.TokenPath, form: url.Values{"grant_type": {"refresh_token"},
		"refresh_token": {tr.RefreshToken}, "service": {"berth-test"}, "scope": {"repository:team-a/app:pull,push repository:team-b/x:push"}}})
	var rr struct {
		AccessToken string `json:"access_token"`
		Scope       string
	}
	if err := json.Unmarshal(b, &rr); resp.StatusCode != 200 || err != nil || rr.Scope != "repository:team-a/app:pull,push" {
		t.Fatalf("refresh grant: %d %s", resp.StatusCode, b)
	}
	resp, _ = s.do(t, acall{method: "GET", path: "/v2/team-a/app/tags/list", bearer: rr.AccessToken})
	if resp.StatusCode != 404 { // allowed; nothing there
		t.Errorf("pull with the refreshed token: %d", resp.StatusCode)
	}
	for name, form := range map[string]url.Values{
		"bad refresh token": {"grant_type": {"refresh_token"}, "refresh_token": {"x.y.z"}},
		"access as refresh": {"grant_type": {"refresh_token"}, "refresh_token": {rr.AccessToken}},
		"wrong password":    {"grant_type": {"password"}, "username": {"alice"}, "password": {"nope"}},
	} {
		if resp, b := s.do(t, acall{method: "POST", path: proxy.TokenPath, form: form}); resp.StatusCode != 401 {
			t.Errorf("%s: %d %s", name, resp.StatusCode, b)
		}
	}
	if resp, _ := s.do(t, acall{method: "POST", path: proxy.TokenPath, form: url.Values{"grant_type": {"client_credentials"}}}); resp.StatusCode != 400 {
		t.Errorf("unsupported grant: %d", resp.StatusCode)
	}
	// anonymous_pull off: an anonymous token grants nothing.
	if _, granted := s.tokenFor(t, "", "repository:team-a/app:pull"); granted != "" {
		t.Errorf("anonymous granted %q with anonymous_pull off", granted)
	}
}

// With Basic only, rules decide each request: DENIED for a known user,
// 401 for an anonymous one; /v2/ lets anonymous clients through when they
// may pull.
func TestBasicRules(t *testing.T) {
	t.Parallel()
	s := startAuth(t, false, true)
	for _, tc := range []struct {
		c      acall
		status int
	}{
		{acall{method: "GET", path: "/v2/"}, 200},
		{acall{method: "GET", path: "/v2/", user: "alice", pass: "alice-pw"}, 200},
		{acall{method: "GET", path: "/v2/", user: "alice", pass: "nope"}, 401},
		{acall{method: "POST", path: "/v2/team-a/app/blobs/uploads/?digest=" + blobD, user: "alice", pass: "alice-pw", body: []byte("hello")}, 201},
		{acall{method: "POST", path: "/v2/team-b/app/blobs/uploads/?digest=" + blobD, user: "alice", pass: "alice-pw", body: []byte("hello")}, 403},
		{acall{method: "POST", path: "/v2/team-b/app/blobs/uploads/?digest=" + blobD, body: []byte("hello")}, 401},
		{acall{method: "DELETE", path: "/v2/team-a/app/blobs/" + blobD, user: "bob", pass: "bob-pw"}, 403},
		{acall{method: "GET", path: "/v2/team-a/app/blobs/" + blobD}, 200},
		{acall{method: "GET", path: "/v2/secret/x/tags/list"}, 401},
		{acall{method: "GET", path: "/v2/secret/x/tags/list", user: "alice", pass: "alice-pw"}, 403},
		{acall{method: "GET", path: "/v2/secret/x/tags/list", user: "bob", pass: "bob-pw"}, 404},
		{acall{method: "GET", path: proxy.TokenPath}, 404}, // no token endpoint without tokens
	} {
		resp, b := s.do(t, tc.c)
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s as %q: %d %s, want %d", tc.c.method, tc.c.path, tc.c.user, resp.StatusCode, b, tc.status)
		}
		if resp.StatusCode == 401 && resp.Header.Get("WWW-Authenticate") != `Basic realm="berth"` {
			t.Errorf("%s %s: 401 without the Basic challenge", tc.c.method, tc.c.path)
		}
	}
}

// Failed logins are limited per client address: after a burst, even the
// right password is refused with 429 and Retry-After, unchecked.
func TestLoginRateLimit(t *testing.T) {
	t.Parallel()
	s := startAuth(t, false, true)
	limited := false
	for i := range 20 {
		resp, _ := s.do(t, acall{method: "GET", path: "/v2/", user: fmt.Sprintf("eve%d", i), pass: "guess"})
		if resp.StatusCode == 429 {
			limited = true
			break
		}
		if resp.StatusCode != 401 {
			t.Fatalf("failed login %d: %d", i, resp.StatusCode)
		}
	}
	if !limited {
		t.Fatal("20 failed logins from one address were never limited")
	}
	resp, b := s.do(t, acall{method: "GET", path: "/v2/", user: "alice", pass: "alice-pw"})
	expectCode(t, "right password while limited", resp, b, 429, "TOOMANYREQUESTS")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	if n := s.event(t, "rate_limited"); n < 2 {
		t.Errorf("rate_limited = %v, want at least 2", n)
	}
	if n := s.event(t, "login_failed"); n < 10 {
		t.Errorf("login_failed = %v, want at least 10", n)
	}
}

func expectCode(t *testing.T, what string, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	var e struct{ Errors []struct{ Code string } }
	_ = json.Unmarshal(body, &e)
	if resp.StatusCode != status || len(e.Errors) == 0 || e.Errors[0].Code != code {
		t.Errorf("%s: %d %s, want %d %s", what, resp.StatusCode, body, status, code)
	}
}

// wantAudit checks an audit line's fields, and that it names the client.
func wantAudit(t *testing.T, what string, line map[string]any, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if line[k] != v {
			t.Errorf("%s: %s = %v, want %v", what, k, line[k], v)
		}
	}
	if c, _ := line["client"].(string); !strings.HasPrefix(c, "127.0.0.1:") {
		t.Errorf("%s: client = %v", what, line["client"])
	}
}
