package proxy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/upstream"
	"github.com/berth-dev/berth/upstream/upstreamtest"
	"github.com/opencontainers/go-digest"
)

// writeRandomFile writes size random bytes to path and returns their digest.
func writeRandomFile(b *testing.B, path string, size int64) digest.Digest {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	h := digest.Canonical.Digester()
	if _, err := io.Copy(io.MultiWriter(f, h.Hash()), io.LimitReader(rand.Reader, size)); err != nil {
		b.Fatal(err)
	}
	return h.Digest()
}

// localRegistry is a berth with everything local, on a real loopback socket.
func localRegistry(b *testing.B) (*cache.Store, *httptest.Server) {
	b.Helper()
	return startServer(b, cache.Options{}, localOnly)
}

func fetch(b *testing.B, client *http.Client, url string) int64 {
	resp, err := client.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return n
}

// BenchmarkBlobGet serves a warm 256 MiB blob from berth and, in the same
// run, the same file from Go's http.FileServer: the ratio is what matters.
func BenchmarkBlobGet(b *testing.B) {
	const size = 256 << 20
	st, srv := localRegistry(b)
	src := filepath.Join(b.TempDir(), "blob")
	d := writeRandomFile(b, src, size)
	f, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.PutBlob("bench/app", "", d, size, f); err != nil {
		b.Fatal(err)
	}
	f.Close()
	fileSrv := httptest.NewServer(http.FileServer(http.Dir(filepath.Dir(src))))
	defer fileSrv.Close()
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	for _, tc := range []struct{ name, url string }{
		{"berth", srv.URL + "/v2/bench/app/blobs/" + d.String()},
		{"http.FileServer", fileSrv.URL + "/blob"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if n := fetch(b, client, tc.url); n != size {
					b.Fatalf("got %d bytes", n)
				}
			}
		})
	}
}

// BenchmarkManifestGet measures manifest GETs by tag and by digest with
// parallel clients over loopback.
func BenchmarkManifestGet(b *testing.B) {
	st, srv := localRegistry(b)
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := digest.FromBytes(cfg)
	if err := st.PutBlob("bench/app", "", cd, int64(len(cfg)), bytes.NewReader(cfg)); err != nil {
		b.Fatal(err)
	}
	body := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[]}`, cd, len(cfg))
	req, _ := http.NewRequest(http.MethodPut, srv.URL+"/v2/bench/app/manifests/latest", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusCreated {
		b.Fatalf("push manifest: %v %v", err, resp)
	}
	md := digest.FromBytes(body)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for _, ref := range []string{"latest", md.String()} {
		name := "tag"
		if ref != "latest" {
			name = "digest"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					fetch(b, client, srv.URL+"/v2/bench/app/manifests/"+ref)
				}
			})
		})
	}
}

// mirrorEnv is a berth fronting an in-process upstream with Bearer auth.
func mirrorEnv(b *testing.B, throttle int64) (*upstreamtest.Registry, *httptest.Server) {
	b.Helper()
	up := upstreamtest.New(b, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	up.SetThrottle(throttle)
	client, err := upstream.New(upstream.Config{Name: "docker.io", URL: up.URL()})
	if err != nil {
		b.Fatal(err)
	}
	_, srv := startServer(b, cache.Options{}, mirrorOf(client, time.Hour))
	return up, srv
}

// BenchmarkMirrorPull compares, for a 64 MiB blob behind an upstream
// throttled to 512 MB/s: a pull directly from the upstream, a cold pull
// through berth, a warm pull from berth's disk, and 64 clients pulling the
// same cold blob at once (reporting upstream bytes per blob size).
func BenchmarkMirrorPull(b *testing.B) {
	const size = 64 << 20
	const throttle = 512 << 20
	content := make([]byte, size)
	_, _ = rand.Read(content)
	client := &http.Client{}

	b.Run("direct-upstream", func(b *testing.B) {
		up, _ := mirrorEnv(b, throttle)
		c, _ := upstream.New(upstream.Config{Name: "docker.io", URL: up.URL()})
		d := up.AddBlob("library/app", content)
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			rc, _, err := c.GetBlob(context.Background(), "library/app", d, 0)
			if err != nil {
				b.Fatal(err)
			}
			if n, _ := io.Copy(io.Discard, rc); n != size {
				b.Fatalf("got %d", n)
			}
			rc.Close()
		}
	})
	b.Run("cold-through-berth", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			up, srv := mirrorEnv(b, throttle)
			d := up.AddBlob("library/app", append(content[:0:0], content...))
			b.StartTimer()
			fetch(b, client, srv.URL+"/v2/app/blobs/"+d.String())
		}
	})
	b.Run("warm-from-berth", func(b *testing.B) {
		up, srv := mirrorEnv(b, throttle)
		d := up.AddBlob("library/app", content)
		fetch(b, client, srv.URL+"/v2/app/blobs/"+d.String())
		b.SetBytes(size)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			fetch(b, client, srv.URL+"/v2/app/blobs/"+d.String())
		}
	})
	b.Run("herd-64-clients", func(b *testing.B) {
		var upstreamBytes float64
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			up, srv := mirrorEnv(b, throttle)
			d := up.AddBlob("library/app", content)
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			b.StartTimer()
			var wg sync.WaitGroup
			for c := 0; c < 64; c++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					fetch(b, hc, srv.URL+"/v2/app/blobs/"+d.String())
				}()
			}
			wg.Wait()
			b.StopTimer()
			upstreamBytes += float64(up.CountAuthorized(http.MethodGet, upstreamtest.KindBlob)) * size
			b.StartTimer()
		}
		b.ReportMetric(upstreamBytes/float64(b.N)/size, "upstream-bytes/blob")
	})
}
