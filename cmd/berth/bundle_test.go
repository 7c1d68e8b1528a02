package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/access"
	"github.com/berth-dev/berth/internal/bundle"
	"github.com/berth-dev/berth/upstream/upstreamtest"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// runServe runs serve on cfg until the test ends or stop is called.
func runServe(t *testing.T, cfg Config) (addr string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, ready) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	}
	t.Cleanup(stop)
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	return addr, stop
}

// runCmd runs a client command as berth would, with its output captured.
func runCmd(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := clientCommands[args[0]]
	err := cmd.run(context.Background(), args[1:], stdio{in: strings.NewReader(stdin), out: &out, err: &errOut,
		getenv: func(string) string { return "" }})
	return out.String() + errOut.String(), err
}

func pushBlob(t *testing.T, addr, repo string, b []byte) ocispec.Descriptor {
	t.Helper()
	d := digest.FromBytes(b)
	resp, err := http.Post("http://"+addr+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push blob: %s", resp.Status)
	}
	return ocispec.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: int64(len(b))}
}

func pushManifest(t *testing.T, addr, repo, ref string, m any) ocispec.Descriptor {
	t.Helper()
	body, _ := json.Marshal(m)
	req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(body))
	req.Header.Set("Content-Type", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push manifest: %s", resp.Status)
	}
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(body), Size: int64(len(body))}
}

// fetch GETs path from addr and returns status and body.
func fetch(t *testing.T, addr, path string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func catalog(t *testing.T, addr string) string {
	t.Helper()
	_, b := fetch(t, addr, "/v2/_catalog")
	return string(b)
}

// The air-gapped workflow in one process: warm and export from berth A
// fronting an upstream, import into an offline berth B with an empty data
// directory, and pull the same digests through B.
func TestAirGap(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	busybox := up.AddImage("library/busybox", "latest", 2, 64<<10)
	amd, arm := up.AddImage("library/multi", "", 1, 4096), up.AddImage("library/multi", "", 1, 4096)
	multiBody, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{
			{MediaType: ocispec.MediaTypeImageManifest, Digest: amd.Manifest, Size: int64(len(amd.ManifestBody)), Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}},
			{MediaType: ocispec.MediaTypeImageManifest, Digest: arm.Manifest, Size: int64(len(arm.ManifestBody)), Platform: &ocispec.Platform{OS: "linux", Architecture: "arm64"}},
		}})
	multi := up.AddManifest("library/multi", "latest", ocispec.MediaTypeImageIndex, multiBody)
	later := up.AddImage("library/later", "1", 1, 32<<10)
	byDigest := up.AddImage("library/bydigest", "", 1, 1024)
	ups := []UpstreamConfig{{Name: "docker.io", URL: up.URL(), Default: true, Aliases: []string{"index.docker.io"}}}

	cfgA := testConfig(t, ups)
	cfgA.Local = []string{"team/**"}
	a, _ := runServe(t, cfgA)
	// A local image with a referrer (a signature), pushed to A.
	cfgBlob := pushBlob(t, a, "team/app", []byte(`{"architecture":"amd64","os":"linux"}`))
	cfgBlob.MediaType = ocispec.MediaTypeImageConfig
	layer := pushBlob(t, a, "team/app", bytes.Repeat([]byte("app"), 10000))
	layer.MediaType = ocispec.MediaTypeImageLayer
	app := pushManifest(t, a, "team/app", "1", ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: cfgBlob, Layers: []ocispec.Descriptor{layer}})
	empty := pushBlob(t, a, "team/app", []byte("{}"))
	empty.MediaType = "application/vnd.oci.empty.v1+json"
	sigLayer := pushBlob(t, a, "team/app", []byte("signature"))
	sigLayer.MediaType = "application/vnd.example.sig"
	sig := pushManifest(t, a, "team/app", "sig", ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: "application/vnd.example.sig", Config: empty, Layers: []ocispec.Descriptor{sigLayer}, Subject: &app})

	dir := t.TempDir()
	first, second := filepath.Join(dir, "week1.tar"), filepath.Join(dir, "week2.tar")
	images := []string{"busybox", "docker.io/library/multi:latest", a + "/team/app:1"}
	if out, err := runCmd(t, "", append([]string{"warm", "--server", "http://" + a}, images...)...); err != nil {
		t.Fatalf("warm: %v\n%s", err, out)
	}
	// Warm again: everything is cached, no blob is fetched upstream.
	blobsBefore := up.Count(http.MethodGet, upstreamtest.KindBlob)
	if out, err := runCmd(t, "", append([]string{"warm", "--server", "http://" + a}, images...)...); err != nil {
		t.Fatalf("warm again: %v\n%s", err, out)
	}
	if n := up.Count(http.MethodGet, upstreamtest.KindBlob); n != blobsBefore {
		t.Errorf("a second warm fetched %d blobs upstream", n-blobsBefore)
	}
	if out, err := runCmd(t, "", "warm", "--server", "http://"+a, "busybox", "nosuch/image:1"); err == nil || !strings.Contains(out, "nosuch/image:1:") {
		t.Errorf("warm of a missing image: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "", append([]string{"export", "--server", "http://" + a, "--out", first}, images...)...); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	if _, err := os.Stat(first + bundle.SidecarSuffix); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(first + ".partial"); !os.IsNotExist(err) {
		t.Errorf("partial file left: %v", err)
	}
	// Names in the bundle: full references, the local image bare, the referrer.
	names := bundleNames(t, first)
	for _, want := range []string{"docker.io/library/busybox:latest", "docker.io/library/multi:latest", "team/app:1", "team/app@" + sig.Digest.String()} {
		if !names[want] {
			t.Errorf("bundle does not name %s: %v", want, names)
		}
	}
	// A week later one more image was pulled: the second bundle holds only it.
	if out, err := runCmd(t, "", "warm", "--server", "http://"+a, "later:1", "bydigest@"+byDigest.Manifest.String()); err != nil {
		t.Fatalf("warm: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "", "export", "--server", "http://"+a, "--out", second, "--since", first, "--all"); err != nil {
		t.Fatalf("export --since: %v\n%s", err, out)
	}
	blobs2 := bundleBlobs(t, second)
	want2 := map[digest.Digest]bool{later.Manifest: true, later.Config: true, later.Layers[0]: true,
		byDigest.Manifest: true, byDigest.Config: true, byDigest.Layers[0]: true}
	if names := bundleNames(t, second); !names["docker.io/library/bydigest@"+byDigest.Manifest.String()] || len(names) != 7 {
		t.Errorf("--all names: %v", names)
	}
	if len(blobs2) != len(want2) {
		t.Errorf("the incremental bundle carries %d blobs, want the %d new ones", len(blobs2), len(want2))
	}
	for d := range want2 {
		if !blobs2[d] {
			t.Errorf("the incremental bundle lacks %s", d)
		}
	}
	up.Close() // the gap

	cfgB := testConfig(t, ups)
	cfgB.Offline = true
	b, _ := runServe(t, cfgB)
	before := catalog(t, b)
	out, err := runCmd(t, "", "import", "--server", "http://"+b, second)
	if err == nil || !strings.Contains(out+err.Error(), "week1.tar") || !strings.Contains(err.Error(), "base is missing") {
		t.Errorf("incremental bundle before its base: %v\n%s", err, out)
	}
	// One flipped byte in a layer: refused, naming it, nothing indexed.
	tampered := filepath.Join(dir, "tampered.tar")
	raw, _ := os.ReadFile(first)
	blob := blobIn(t, first, busybox.Layers[1])
	i := bytes.Index(raw, blob)
	raw[i+100] ^= 0x20
	os.WriteFile(tampered, raw, 0o644)
	out, err = runCmd(t, "", "import", "--server", "http://"+b, tampered)
	if err == nil || !strings.Contains(err.Error(), busybox.Layers[1].String()) {
		t.Errorf("tampered bundle: %v\n%s", err, out)
	}
	if after := catalog(t, b); after != before {
		t.Errorf("catalog changed by refused imports: %s -> %s", before, after)
	}
	if ents, _ := os.ReadDir(filepath.Join(cfgB.Data, "ingest")); len(ents) != 0 {
		t.Errorf("%d staging files left", len(ents))
	}
	// The base, then the increment.
	for _, f := range []string{first, second} {
		if out, err := runCmd(t, "", "import", "--server", "http://"+b, f); err != nil {
			t.Fatalf("import %s: %v\n%s", f, err, out)
		}
	}
	// Twice changes nothing.
	out, err = runCmd(t, "", "import", "--server", "http://"+b, first)
	if err != nil || !strings.Contains(out, "0 blobs (0 B) added") || !strings.Contains(out, "0 tags set") {
		t.Errorf("second import: %v\n%s", err, out)
	}
	// Through B, offline: the same digests, as mirror clients ask for them.
	for _, c := range []struct{ path, digest string }{
		{"/v2/library/busybox/manifests/latest", busybox.Manifest.String()},
		{"/v2/docker.io/library/busybox/manifests/" + busybox.Manifest.String(), busybox.Manifest.String()},
		{"/v2/library/busybox/blobs/" + busybox.Layers[0].String(), busybox.Layers[0].String()},
		{"/v2/library/multi/manifests/latest", multi.String()},
		{"/v2/library/multi/manifests/" + arm.Manifest.String(), arm.Manifest.String()},
		{"/v2/library/multi/blobs/" + arm.Layers[0].String(), arm.Layers[0].String()},
		{"/v2/library/later/manifests/1", later.Manifest.String()},
		{"/v2/library/bydigest/manifests/" + byDigest.Manifest.String(), byDigest.Manifest.String()},
		{"/v2/team/app/manifests/1", app.Digest.String()},
		{"/v2/team/app/blobs/" + layer.Digest.String(), layer.Digest.String()},
	} {
		status, body := fetch(t, b, c.path)
		if status != http.StatusOK || digest.FromBytes(body).String() != c.digest {
			t.Errorf("GET %s through B: %d, digest %s, want %s", c.path, status, digest.FromBytes(body), c.digest)
		}
	}
	if status, body := fetch(t, b, "/v2/team/app/referrers/"+app.Digest.String()); status != http.StatusOK || !strings.Contains(string(body), sig.Digest.String()) {
		t.Errorf("referrers through B: %d %s", status, body)
	}
	// Mirrored content stays read-only.
	if resp, err := http.Post("http://"+b+"/v2/docker.io/library/busybox/blobs/uploads/", "", nil); err == nil {
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			t.Errorf("push into mirrored content: %s", resp.Status)
		}
	}
	// --data into B's directory while B runs: one clear line.
	out, err = runCmd(t, "", "import", "--data", cfgB.Data, first)
	if err == nil || err.Error() != cfgB.Data+" is in use by a running berth; use --server" {
		t.Errorf("--data while running: %v\n%s", err, out)
	}
	// --data into a stopped berth's directory.
	cfgC := testConfig(t, ups)
	cfgC.Offline = true
	if out, err := runCmd(t, "", "import", "--data", cfgC.Data, first); err != nil {
		t.Fatalf("--data: %v\n%s", err, out)
	}
	c, _ := runServe(t, cfgC)
	if status, body := fetch(t, c, "/v2/library/busybox/manifests/latest"); status != http.StatusOK || digest.FromBytes(body) != busybox.Manifest {
		t.Errorf("after --data import: %d", status)
	}
}

// bundleNames lists the ref names of a bundle's index.json.
func bundleNames(t *testing.T, file string) map[string]bool {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	idx, err := bundle.Read(f, nil)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range idx.Manifests {
		names[m.Annotations[bundle.AnnotationRefName]] = true
	}
	return names
}

func bundleBlobs(t *testing.T, file string) map[digest.Digest]bool {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	set := map[digest.Digest]bool{}
	if _, err := bundle.Read(f, func(d digest.Digest, _ int64, _ io.Reader) error { set[d] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	return set
}

// blobIn returns the content of blob d in a bundle.
func blobIn(t *testing.T, file string, d digest.Digest) []byte {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s not in %s: %v", d, file, err)
		}
		if h.Name == "blobs/sha256/"+d.Encoded() {
			b, _ := io.ReadAll(tr)
			return b
		}
	}
}

// With client authentication on, an import needs credentials; export and
// warm take them the same way (--username, --password-stdin).
func TestImportNeedsCredentials(t *testing.T) {
	t.Parallel()
	line, err := htpasswdLine("ci", strings.NewReader("s3cret\n"))
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgA := testConfig(t, nil)
	cfgA.Local = []string{"team/**"}
	cfgA.Auth.Htpasswd = htpasswd
	a, _ := runServe(t, cfgA)
	// Push through the API with credentials.
	push := func(method, path, ct string, body []byte) {
		req, _ := http.NewRequest(method, "http://"+a+path, bytes.NewReader(body))
		req.SetBasicAuth("ci", "s3cret")
		req.Header.Set("Content-Type", ct)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("%s %s: %s", method, path, resp.Status)
		}
	}
	cfgJSON := []byte(`{"architecture":"amd64","os":"linux"}`)
	push(http.MethodPost, "/v2/team/app/blobs/uploads/?digest="+digest.FromBytes(cfgJSON).String(), "application/octet-stream", cfgJSON)
	man, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfgJSON), Size: int64(len(cfgJSON))},
		Layers: []ocispec.Descriptor{}})
	push(http.MethodPut, "/v2/team/app/manifests/1", ocispec.MediaTypeImageManifest, man)

	file := filepath.Join(t.TempDir(), "b.tar")
	server := "http://" + a
	if out, err := runCmd(t, "", "export", "--server", server, "--out", file, "--all"); err == nil {
		t.Errorf("export --all without credentials: accepted\n%s", out)
	}
	if out, err := runCmd(t, "s3cret\n", "export", "--server", server, "--username", "ci", "--password-stdin", "--out", file, "--all"); err != nil {
		t.Fatalf("export with credentials: %v\n%s", err, out)
	}
	if !bundleNames(t, file)["team/app:1"] {
		t.Error("team/app:1 not exported")
	}
	cfgB := testConfig(t, nil)
	cfgB.Auth.Htpasswd = htpasswd
	b, _ := runServe(t, cfgB)
	out, err := runCmd(t, "", "import", "--server", "http://"+b, file)
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("import without credentials: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "wrong\n", "import", "--server", "http://"+b, "--username", "ci", "--password-stdin", file); err == nil {
		t.Errorf("import with a wrong password: accepted\n%s", out)
	}
	// The docker config's auths entry for the host is used when present.
	dockerDir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("ci:s3cret"))
	os.WriteFile(filepath.Join(dockerDir, "config.json"), []byte(`{"auths":{"`+b+`":{"auth":"`+auth+`"}}}`), 0o600)
	var o, e bytes.Buffer
	err = importCmd(context.Background(), []string{"--server", "http://" + b, file}, stdio{in: strings.NewReader(""), out: &o, err: &e,
		getenv: func(k string) string { return map[string]string{"DOCKER_CONFIG": dockerDir}[k] }})
	if err != nil {
		t.Fatalf("import with docker config credentials: %v\n%s%s", err, o.String(), e.String())
	}
	if status, _ := fetch(t, b, "/v2/team/app/manifests/1"); status != http.StatusOK {
		t.Errorf("after the import: %d", status)
	}

	// With access rules, an import needs push on every local repository
	// it writes, and the inventory pull: ci may push other/** only, and
	// nobody may touch team/**, so the bundle is refused whole.
	cfgC := testConfig(t, nil)
	cfgC.Auth.Htpasswd = htpasswd
	cfgC.Access = []access.Rule{{Repos: []string{"other/**"}, Subjects: []string{"ci"}, Actions: []access.Action{access.Pull, access.Push}},
		{Repos: []string{"team/**"}, Subjects: []string{"authenticated"}}}
	c, _ := runServe(t, cfgC)
	out, err = runCmd(t, "s3cret\n", "import", "--server", "http://"+c, "--username", "ci", "--password-stdin", file)
	if err == nil || !strings.Contains(err.Error()+out, "DENIED") {
		t.Errorf("import into team/app without push there: %v\n%s", err, out)
	}
	if status, _ := fetch(t, c, "/v2/_catalog"); status == http.StatusOK {
		t.Error("anonymous catalog answered")
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+c+"/admin/inventory?repo=team/app", nil)
	req.SetBasicAuth("ci", "s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("inventory of team/app without pull there: %s", resp.Status)
	}
}

// --platform keeps only some children of an index; the import accepts an
// index whose other children are left out, and serves the kept ones.
func TestExportPlatform(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	amd, arm := up.AddImage("library/multi", "", 1, 4096), up.AddImage("library/multi", "", 1, 4096)
	body, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{
			{MediaType: ocispec.MediaTypeImageManifest, Digest: amd.Manifest, Size: int64(len(amd.ManifestBody)), Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}},
			{MediaType: ocispec.MediaTypeImageManifest, Digest: arm.Manifest, Size: int64(len(arm.ManifestBody)), Platform: &ocispec.Platform{OS: "linux", Architecture: "arm64"}},
		}})
	up.AddManifest("library/multi", "latest", ocispec.MediaTypeImageIndex, body)
	ups := []UpstreamConfig{{Name: "docker.io", URL: up.URL(), Default: true}}
	a, _ := runServe(t, testConfig(t, ups))
	file := filepath.Join(t.TempDir(), "amd64.tar")
	var eout bytes.Buffer
	if err := exportCmd(context.Background(), []string{"--server", "http://" + a, "--platform", "linux/amd64", "--out", file, "multi"},
		stdio{in: strings.NewReader(""), out: &eout, err: &eout, getenv: func(string) string { return "" }, tty: true}); err != nil {
		t.Fatalf("export: %v\n%s", err, eout.String())
	}
	blobs := bundleBlobs(t, file)
	if !blobs[amd.Layers[0]] || blobs[arm.Layers[0]] || blobs[arm.Manifest] {
		t.Errorf("--platform linux/amd64 bundle: %v", blobs)
	}
	cfgB := testConfig(t, ups)
	cfgB.Offline = true
	b, _ := runServe(t, cfgB)
	// From a pipe, with progress bars as on a terminal.
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	err = importCmd(context.Background(), []string{"--server", "http://" + b, "-"}, stdio{in: bytes.NewReader(raw), out: &out, err: &errOut,
		getenv: func(string) string { return "" }, tty: true})
	if err != nil || !strings.Contains(out.String(), "imported -: 1 images") {
		t.Fatalf("import -: %v\n%s%s", err, out.String(), errOut.String())
	}
	if status, _ := fetch(t, b, "/v2/library/multi/blobs/"+amd.Layers[0].String()); status != http.StatusOK {
		t.Errorf("amd64 layer: %d", status)
	}
}

// Every client command answers --help with its usage and status 0.
func TestClientHelp(t *testing.T) {
	t.Parallel()
	for name, c := range clientCommands {
		var out bytes.Buffer
		if err := run([]string{name, "--help"}, strings.NewReader(""), &out); err != nil || !strings.HasPrefix(out.String(), "usage: berth "+name) {
			t.Errorf("%s --help: %v %q", name, err, out.String())
		}
		out.Reset()
		if err := run([]string{"help", name}, strings.NewReader(""), &out); err != nil || strings.TrimSpace(out.String()) != c.usage {
			t.Errorf("help %s: %v", name, err)
		}
	}
	if err := run([]string{"export", "--server", "http://127.0.0.1:1", "busybox"}, strings.NewReader(""), io.Discard); err == nil ||
		!strings.Contains(err.Error(), "--out") {
		t.Errorf("export without --out: %v", err)
	}
}

// The bar of a file sent as it is follows the file's offset: at the end it
// has counted every byte once.
func TestFollowOffset(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bundle.tar")
	if err := os.WriteFile(p, bytes.Repeat([]byte("x"), 3<<20+7), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	m := newMeter(stdio{out: &out, err: &out, getenv: func(string) string { return "" }}, "import")
	task := m.task("bundle", 3<<20+7)
	stop := followOffset(f, task)
	if _, err := io.Copy(io.Discard, f); err != nil {
		t.Fatal(err)
	}
	stop()
	m.close()
	if got := m.done.Load(); got != 3<<20+7 {
		t.Errorf("counted %d bytes, want %d", got, 3<<20+7)
	}
}
