package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/access"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestRetentionConfig(t *testing.T) {
	t.Parallel()
	good := `retention:
  - repos: ["ci/**"]
    keep_last: 20
    keep_tags: ["^v\\d+", "^latest$"]
    untagged_after: 24h
    not_pulled_for: 30d
  - repos: ["**"]
    untagged_after: 7d
`
	cfg, err := loadConfig([]string{"--config", writeFile(t, good)}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Retention) != 2 {
		t.Fatalf("rules = %+v", cfg.Retention)
	}
	r := cfg.Retention[0]
	if r.KeepLast != 20 || r.UntaggedAfter != 24*time.Hour || r.NotPulledFor != 30*24*time.Hour || len(r.KeepTags) != 2 || r.Repos[0] != "ci/**" {
		t.Errorf("rule 0 = %+v", r)
	}
	rules := retentionRules(cfg)
	if !rules[0].Match("ci/app/x") || rules[0].Match("team/app") || !rules[1].Match("team/app") || !rules[0].KeepTags[0].MatchString("v12") {
		t.Error("compiled rules match wrongly")
	}
	for _, tc := range []struct{ body, why string }{
		{"retention: {repos: x}\n", "config key retention: a mapping is not a list of rules"},
		{"retention:\n  - keep_last: 3\n", "config key retention[0].repos: required"},
		{"retention:\n  - repos: [a]\n    keep_last: many\n", `config key retention[0].keep_last: "many" is not an integer`},
		{"retention:\n  - repos: [a]\n    keep_tags: [\"(\"]\n", "config key retention[0].keep_tags: \"(\" is not a regular expression"},
		{"retention:\n  - repos: [a]\n    keep: 3\n", "config key retention[0].keep: unknown key"},
		{"retention:\n  - repos: [a]\n    not_pulled_for: 1month\n", "retention[0].not_pulled_for: \"1month\" is not a duration"},
	} {
		_, err := loadConfig([]string{"--config", writeFile(t, tc.body)}, env(nil))
		if err == nil || !strings.Contains(err.Error(), tc.why) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line containing %q", tc.body, err, tc.why)
		}
	}
}

func TestRemoveRefParsing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, repo, ref string }{
		{"team/app:v1", "team/app", "v1"},
		{"localhost:5000/team/app:v1", "team/app", "v1"},
		{"docker.io/library/alpine@sha256:abc", "docker.io/library/alpine", "sha256:abc"},
	} {
		repo, ref, err := splitRef(tc.in, "localhost:5000")
		if err != nil || repo != tc.repo || ref != tc.ref {
			t.Errorf("splitRef(%q) = %q, %q, %v", tc.in, repo, ref, err)
		}
	}
	if _, _, err := splitRef("localhost:5000/team/app", "localhost:5000"); err == nil {
		t.Error("a ref without tag accepted")
	}
}

// The operator commands against a running berth: push, ls, du, rm, gc.
func TestOpsCommands(t *testing.T) {
	t.Parallel()
	addr := startServe(t, nil)
	server := "http://" + addr
	layer := pushBlob(t, addr, "team/app", []byte(strings.Repeat("layer one ", 5000)))
	cfg := pushBlob(t, addr, "team/app", []byte(`{"architecture":"amd64","os":"linux"}`))
	cfg.MediaType, layer.MediaType = ocispec.MediaTypeImageConfig, ocispec.MediaTypeImageLayer
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: []ocispec.Descriptor{layer}}
	pushManifest(t, addr, "team/app", "v1", m)
	if status, _ := fetch(t, addr, "/v2/team/app/manifests/v1"); status != 200 {
		t.Fatalf("pull: %d", status)
	}
	run := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		s := stdio{in: strings.NewReader(""), out: &out, err: &out, getenv: env(nil)}
		cmd := clientCommands[args[0]]
		if err := cmd.run(context.Background(), append(args[1:], "--server", server), s); err != nil {
			t.Fatalf("berth %v: %v\n%s", args, err, out.String())
		}
		return out.String()
	}
	if out := run("ls"); !regexp.MustCompile(`team/app\s+local\s+1\s+\d`).MatchString(out) {
		t.Errorf("ls:\n%s", out)
	}
	var tags struct {
		Tags []struct {
			Tag   string
			Bytes int64
		}
	}
	if err := json.Unmarshal([]byte(run("ls", "--json", "team/app")), &tags); err != nil || len(tags.Tags) != 1 || tags.Tags[0].Bytes < 50000 {
		t.Errorf("ls --json team/app: %+v %v", tags, err)
	}
	var du struct{ Local, Total int64 }
	if err := json.Unmarshal([]byte(run("du", "--json")), &du); err != nil || du.Local < 50000 || du.Total != du.Local {
		t.Errorf("du: %+v %v", du, err)
	}
	if out := run("rm", "team/app:v1"); !strings.Contains(out, "removed tag team/app:v1") || !strings.Contains(out, "removed manifest") {
		t.Errorf("rm:\n%s", out)
	}
	if out := run("gc", "--dry-run", "--grace", "0s"); !strings.Contains(out, "would remove 3 blobs") {
		t.Errorf("gc --dry-run:\n%s", out)
	}
	var rep struct {
		Bytes int64
		Repos []string
	}
	if err := json.Unmarshal([]byte(run("gc", "--grace", "0s", "--json")), &rep); err != nil || rep.Bytes < 50000 || len(rep.Repos) != 1 {
		t.Errorf("gc: %+v %v", rep, err)
	}
	if err := json.Unmarshal([]byte(run("du", "--json")), &du); err != nil || du.Total != 0 {
		t.Errorf("du after gc: %+v %v", du, err)
	}
}

// The operator endpoints need the credentials a push needs, even where
// anonymous pulls are allowed; read-only mode refuses removals, not dry runs.
func TestOpsAuthAndReadOnly(t *testing.T) {
	t.Parallel()
	line, err := htpasswdLine("ci", strings.NewReader("s3cret\n"))
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, nil)
	cfg.Auth.Htpasswd = htpasswd
	cfg.ReadOnly = true
	addr, _ := runServe(t, cfg)
	server := "http://" + addr
	for _, args := range [][]string{{"ls"}, {"du"}, {"gc", "--dry-run"}, {"rm", "team/app:v1"}} {
		out, err := runCmd(t, "", append(args, "--server", server)...)
		if err == nil || !strings.Contains(err.Error(), "UNAUTHORIZED") || !strings.Contains(err.Error(), "credentials a push needs") {
			t.Errorf("berth %v without credentials: %v %s", args, err, out)
		}
	}
	if out, err := runCmd(t, "wrong\n", "du", "--server", server, "--username", "ci", "--password-stdin"); err == nil {
		t.Errorf("wrong password accepted: %s", out)
	}
	if out, err := runCmd(t, "s3cret\n", "gc", "--dry-run", "--server", server, "--username", "ci", "--password-stdin"); err != nil {
		t.Errorf("dry run in read-only mode: %v %s", err, out)
	}
	out, err := runCmd(t, "s3cret\n", "gc", "--server", server, "--username", "ci", "--password-stdin")
	if err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("gc in read-only mode: %v %s", err, out)
	}
}

// The collector runs on its own every gc.interval, and says so in metrics.
func TestCollectorSchedule(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, nil)
	cfg.GC = GCConfig{Interval: 100 * time.Millisecond, Grace: 0}
	addr, _ := runServe(t, cfg)
	loose := pushBlob(t, addr, "team/sched", []byte("collected by the schedule"))
	deadline := time.Now().Add(20 * time.Second)
	for {
		status, _ := fetch(t, addr, "/v2/team/sched/blobs/"+loose.Digest.String())
		if status == 404 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("loose blob still served (%d) after 20s of a 100ms gc.interval", status)
		}
		time.Sleep(50 * time.Millisecond) // polling the schedule's effect
	}
	_, metrics := fetch(t, addr, "/metrics")
	if !regexp.MustCompile(`(?m)^berth_gc_runs_total [1-9]`).Match(metrics) || !regexp.MustCompile(`(?m)^berth_gc_removed_blobs_total [1-9]`).Match(metrics) ||
		!regexp.MustCompile(`(?m)^berth_uploads_open_sessions 0$`).Match(metrics) {
		t.Errorf("metrics lack the runs:\n%s", grepLines(string(metrics), "berth_gc_"))
	}
	if c := catalog(t, addr); strings.Contains(c, "team/sched") {
		t.Errorf("emptied repository still in the catalog: %s", c)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Bad requests to the operator endpoints get an OCI error and a 4xx.
func TestOpsBadRequests(t *testing.T) {
	t.Parallel()
	addr := startServe(t, nil)
	pushBlob(t, addr, "team/x", []byte("x"))
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/admin/tags", 400, "NAME_INVALID"},
		{"GET", "/admin/tags?repo=nope/nope", 404, "NAME_UNKNOWN"},
		{"DELETE", "/admin/ref?repo=team/x&ref=sha256:zz", 400, "DIGEST_INVALID"},
		{"DELETE", "/admin/ref?repo=team/x&ref=no%20tag", 400, "NAME_INVALID"},
		{"DELETE", "/admin/ref?repo=team/x&ref=v1", 404, "MANIFEST_UNKNOWN"},
		{"DELETE", "/admin/ref?repo=team/y&ref=v1", 404, "NAME_UNKNOWN"},
		{"POST", "/admin/gc?grace=soon", 400, "UNSUPPORTED"},
		{"GET", "/admin/gc", 405, "UNSUPPORTED"},
		{"POST", "/admin/revalidate?repo=team/x&tag=v1", 404, "NAME_UNKNOWN"},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+addr+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(body), `"code":"`+tc.code+`"`) {
			t.Errorf("%s %s: %d %s, want %d %s", tc.method, tc.path, resp.StatusCode, body, tc.status, tc.code)
		}
	}
}

// A reload names the gc, uploads and retention keys it changed; the uploads
// ones wait for a restart.
func TestReloadGCKeys(t *testing.T) {
	t.Parallel()
	a := defaultConfig()
	b := defaultConfig()
	b.GC.Interval = time.Minute
	b.Uploads.TTL = time.Minute
	b.Retention = []RetentionConfig{{Repos: []string{"ci/**"}, KeepLast: 3}}
	got := changedKeys(a, b)
	for _, want := range []string{"gc.interval", "uploads.ttl", "retention"} {
		if !slices.Contains(got, want) {
			t.Errorf("changedKeys = %v, want %s", got, want)
		}
	}
	restart := false
	for _, k := range restartOnly {
		restart = restart || k.name == "uploads.ttl"
	}
	if !restart {
		t.Error("uploads.ttl is not restart-only")
	}
}

// With access rules, the operator endpoints check the caller's rights.
func TestOpsAccessRules(t *testing.T) {
	t.Parallel()
	line, err := htpasswdLine("ci", strings.NewReader("s3cret\n"))
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, nil)
	cfg.Auth.Htpasswd = htpasswd
	cfg.Access = []access.Rule{
		{Repos: []string{"team-a/**"}, Subjects: []string{"ci"}, Actions: []access.Action{access.Pull, access.Push, access.Delete}},
		{Repos: []string{"team-b/**"}, Subjects: []string{"ci"}, Actions: []access.Action{access.Pull, access.Push}},
	}
	addr, _ := runServe(t, cfg)
	for _, repo := range []string{"team-a/app", "team-b/app", "team-c/app"} {
		b := []byte("blob of " + repo)
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v2/"+repo+"/blobs/uploads/?digest="+digest.FromBytes(b).String(), bytes.NewReader(b))
		req.SetBasicAuth("ci", "s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if want := map[bool]int{true: 201, false: 403}[repo != "team-c/app"]; resp.StatusCode != want {
			t.Fatalf("push to %s: %d, want %d", repo, resp.StatusCode, want)
		}
	}
	as := func(args ...string) (string, error) {
		return runCmd(t, "s3cret\n", append(args, "--server", "http://"+addr, "--username", "ci", "--password-stdin")...)
	}
	out, err := as("ls")
	if err != nil || !strings.Contains(out, "team-a/app") || !strings.Contains(out, "team-b/app") {
		t.Errorf("ls: %v\n%s", err, out)
	}
	if _, err := as("du"); err != nil {
		t.Errorf("du with pull everywhere: %v", err)
	}
	if _, err := as("gc", "--dry-run"); err != nil {
		t.Errorf("gc --dry-run with pull everywhere: %v", err)
	}
	if out, err := as("gc"); err == nil || !strings.Contains(err.Error(), "DENIED") {
		t.Errorf("gc without delete on team-b: %v %s", err, out)
	}
	if out, err := as("rm", "team-b/app@"+digest.FromBytes([]byte("blob of team-b/app")).String()); err == nil || !strings.Contains(err.Error(), "DENIED") {
		t.Errorf("rm in team-b without delete: %v %s", err, out)
	}
	if out, err := as("rm", "team-a/app@"+digest.FromBytes([]byte("blob of team-a/app")).String()); err != nil {
		t.Errorf("rm in team-a: %v %s", err, out)
	}
}
