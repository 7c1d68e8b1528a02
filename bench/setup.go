package main

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The servers measured. direct is not a server of its own: it is the
// upstream reached through the same throttle the proxies use.
const (
	srvBerth     = "berth"
	srvDistProxy = "distproxy"
	srvDist      = "distribution"
	srvNginx     = "nginx"
	srvDirect    = "direct"
	srvFloor     = "floor"
)

var serverLabels = map[string]string{
	srvBerth:     "berth",
	srvDistProxy: "distribution proxy",
	srvDist:      "distribution",
	srvNginx:     "nginx",
	srvDirect:    "direct",
	srvFloor:     "net/http floor",
}

var serverOrder = []string{srvBerth, srvDistProxy, srvDist, srvNginx, srvFloor, srvDirect}

type server struct {
	name string
	base string // http://127.0.0.1:port
	proc *proc
}

func (s *server) blobURL(repo string, d digest.Digest) string {
	if s.name == srvNginx {
		// The upstream registry's own blob files: .../blobs/sha256/ab/abcd.../data
		return s.base + "/sha256/" + d.Encoded()[:2] + "/" + d.Encoded() + "/data"
	}
	return s.base + "/v2/" + repo + "/blobs/" + d.String()
}

func (s *server) manifestURL(repo, ref string) string {
	return s.base + "/v2/" + repo + "/manifests/" + ref
}

// setup starts the upstream, fills it, starts the servers in front of it
// and primes their caches.
func (b *bench) setup(ctx context.Context) error {
	b.servers = map[string]*server{}
	b.content = b.plan()
	need := b.content.totalBytes()*3 + b.o.bigSize*2
	// The bundle, its copy and the berth it is imported into.
	need += b.o.bundleSize * 3
	// The request logs: berth and nginx together, two rate measurements per
	// round, at most ~100k requests/s of ~400 bytes of log lines.
	need += int64(2 * float64(b.o.rounds) * (b.o.dur * 6 / 5).Seconds() * 100e3 * 400)
	var st syscall.Statfs_t
	if syscall.Statfs(b.tmp, &st) == nil {
		if free := int64(st.Bavail) * st.Bsize; free < need {
			return fmt.Errorf("%s has %.1f GiB free; the run needs about %.1f GiB", b.tmp, float64(free)/gib, float64(need)/gib)
		}
	}

	// The upstream: distribution's registry, plain.
	upAddr, err := freeAddr()
	if err != nil {
		return err
	}
	upDir := filepath.Join(b.tmp, "upstream")
	up, err := b.startRegistry(srvDist, upAddr, upDir, "")
	if err != nil {
		return err
	}
	b.servers[srvDist] = &server{name: srvDist, base: "http://" + upAddr, proc: up}

	sh, err := newShaper(upAddr, b.o.rateMBps*1e6)
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.shaper = sh
	b.mu.Unlock()
	b.servers[srvDirect] = &server{name: srvDirect, base: "http://" + sh.addr()}

	b.logf("generating %.2f GiB of content", float64(b.content.totalBytes())/gib)
	if err := b.content.digestAll(ctx); err != nil {
		return err
	}
	b.logf("pushing it to the upstream (%s)", b.versions["distribution"])
	if err := b.content.push(ctx, "http://"+upAddr); err != nil {
		return fmt.Errorf("filling the upstream: %w", err)
	}

	// berth, in front of the throttled upstream. It logs every request (JSON
	// at info, its default level, spelled out so that a BERTH_LOG_LEVEL in
	// the environment cannot turn it off) to stderr, which startProc sends
	// to a file: the same cost nginx pays for its access log.
	berthAddr, err := freeAddr()
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(b.tmp, "berth.yaml")
	cfg := fmt.Sprintf("upstreams:\n  - {name: docker.io, url: \"http://%s\", default: true, tag_ttl: 10m}\n", sh.addr())
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	bp, err := b.startProc(srvBerth, nil, b.o.berth, "serve", "--config", cfgPath, "--addr", berthAddr,
		"--data", filepath.Join(b.tmp, "berth-data"), "--log-format", "json", "--log-level", "info")
	if err != nil {
		return err
	}
	if err := waitReady(ctx, bp, "http://"+berthAddr+"/readyz"); err != nil {
		return err
	}
	b.servers[srvBerth] = &server{name: srvBerth, base: "http://" + berthAddr, proc: bp}

	// distribution's registry as a pull-through cache of the same upstream.
	dpAddr, err := freeAddr()
	if err != nil {
		return err
	}
	dp, err := b.startRegistry(srvDistProxy, dpAddr, filepath.Join(b.tmp, "distproxy"), "http://"+sh.addr())
	if err != nil {
		return err
	}
	b.servers[srvDistProxy] = &server{name: srvDistProxy, base: "http://" + dpAddr, proc: dp}

	// nginx, sending the upstream's blob files, and the tagged manifest as a
	// static file.
	if b.o.nginx != "" {
		if err := b.startNginx(ctx, filepath.Join(upDir, "docker", "registry", "v2", "blobs"), &b.content.ten); err != nil {
			b.note("nginx skipped: %v", err)
		}
	}
	// The net/http floor (floor.go), serving the same bytes.
	if err := b.startFloor(ctx, filepath.Join(upDir, "docker", "registry", "v2", "blobs")); err != nil {
		return fmt.Errorf("net/http floor: %w", err)
	}
	return b.prime(ctx)
}

func (b *bench) startRegistry(name, addr, dir, remote string) (*proc, error) {
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
`, dir, addr)
	if remote != "" {
		cfg += fmt.Sprintf("proxy:\n  remoteurl: %s\n", remote)
	}
	path := filepath.Join(b.tmp, name+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	p, err := b.startProc(name, []string{"OTEL_SDK_DISABLED=true", "OTEL_TRACES_EXPORTER=none"}, b.o.registry, "serve", path)
	if err != nil {
		return nil, err
	}
	return p, waitReady(context.Background(), p, "http://"+addr+"/v2/")
}

// startNginx starts nginx sending the blob files under root at
// /sha256/..., and im's manifest at /v2/<repo>/manifests/<tag> with the
// headers a registry sends. It writes a buffered access log, as berth
// writes its request log.
func (b *bench) startNginx(ctx context.Context, root string, im *image) error {
	dir := filepath.Join(b.tmp, "nginx")
	for _, d := range []string{"", "body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	www := filepath.Join(dir, "www")
	manPath := filepath.Join(www, "v2", filepath.FromSlash(im.Repo), "manifests", im.Tag)
	if err := os.MkdirAll(filepath.Dir(manPath), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(manPath, im.Manifest, 0o644); err != nil {
		return err
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	conf := nginxConfig(dir, fmt.Sprintf(`
    listen %s;
    location / { root %s; }
    # The manifest by tag, as a static file: no extension, so the type
    # comes from default_type alone.
    location /v2/ {
      root %s;
      types { }
      default_type %s;
      add_header Docker-Distribution-API-Version registry/2.0;
      add_header Docker-Content-Digest %s;
    }
`, addr, root, www, ocispec.MediaTypeImageManifest, im.Digest))
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return err
	}
	p, err := b.startProc(srvNginx, nil, b.o.nginx, "-p", dir+"/", "-c", path, "-e", filepath.Join(dir, "error.log"))
	if err != nil {
		return err
	}
	if err := waitReady(ctx, p, "http://"+addr+"/"); err != nil {
		return err
	}
	b.servers[srvNginx] = &server{name: srvNginx, base: "http://" + addr, proc: p}
	return nil
}

// nginxConfig is the configuration of every nginx the bench runs, in dir:
// two workers, sendfile, a buffered access log of every request, and the
// given server block's body.
func nginxConfig(dir, server string) string {
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;\n" // the workers must read files under a 0700 temp dir
	}
	return fmt.Sprintf(`daemon off;
master_process on;
worker_processes 2;
%spid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log %[2]s/access.log combined buffer=64k flush=1s;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  default_type application/octet-stream;
  client_body_temp_path %[2]s/body;
  proxy_temp_path %[2]s/proxy;
  fastcgi_temp_path %[2]s/fastcgi;
  uwsgi_temp_path %[2]s/uwsgi;
  scgi_temp_path %[2]s/scgi;
  server {%[3]s  }
}
`, user, dir, server)
}

// prime makes the warm measurements warm: one full pull of everything they
// read, verified, from every server (the page cache too), then waits for
// background fills to settle.
func (b *bench) prime(ctx context.Context) error {
	c := b.content
	for _, name := range []string{srvBerth, srvDistProxy, srvDist, srvNginx} {
		s := b.servers[name]
		if s == nil {
			continue
		}
		b.logf("priming %s", serverLabels[name])
		client := newClient(8)
		if err := checkManifest(ctx, client, s.manifestURL(c.ten.Repo, c.ten.Tag), &c.ten); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		for pass := 0; pass < 2; pass++ {
			if _, err := fetch(ctx, client, s.blobURL(c.big.Repo, c.big.Layers[0].Digest), c.big.Layers[0], pass == 0); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			for _, l := range c.small.Layers {
				if _, err := fetch(ctx, client, s.blobURL(c.small.Repo, l.Digest), l, pass == 0); err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
			}
		}
		client.CloseIdleConnections()
		b.shaper.quiet(ctx, 500*time.Millisecond, 60*time.Second)
	}
	return nil
}

// checkManifest GETs im's manifest by tag from url and checks that it comes
// back byte for byte, as an OCI image manifest (content.go pushes only those).
func checkManifest(ctx context.Context, client *http.Client, url string, im *image) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Accept", manifestAccept)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s %s", url, resp.Status, drain(resp))
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != ocispec.MediaTypeImageManifest {
		return fmt.Errorf("GET %s: Content-Type %q, want %q", url, ct, ocispec.MediaTypeImageManifest)
	}
	if !bytes.Equal(body, im.Manifest) {
		return fmt.Errorf("GET %s: %d bytes that are not the pushed manifest (%d bytes)", url, len(body), len(im.Manifest))
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		ia, ib := slices.Index(serverOrder, a), slices.Index(serverOrder, b)
		if ia >= 0 && ib >= 0 {
			return cmp.Compare(ia, ib)
		}
		return cmp.Compare(a, b)
	})
	return keys
}
