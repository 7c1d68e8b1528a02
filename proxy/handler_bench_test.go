package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/access"
	"github.com/berth-dev/berth/internal/route"
	"github.com/berth-dev/berth/internal/token"
	"github.com/berth-dev/berth/proxy"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// discardWriter is a ResponseWriter that keeps nothing but the status, so
// an in-process benchmark counts the handler's own allocations only.
type discardWriter struct {
	hdr    http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.hdr }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(s int)           { w.status = s }

// BenchmarkManifestGetHandler and BenchmarkBlobGetHandler serve warm local
// content in process (no socket, no client), with the request log off and
// on (JSON to io.Discard): what berth itself spends per request.
func BenchmarkManifestGetHandler(b *testing.B) {
	benchHandler(b, func(st *cache.Store) string {
		cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
		cd := digest.FromBytes(cfg)
		if err := st.PutBlob("bench/app", "", cd, int64(len(cfg)), bytes.NewReader(cfg)); err != nil {
			b.Fatal(err)
		}
		body := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[]}`, cd, len(cfg))
		h := proxy.New(proxy.Options{Registry: localRouter(st), Logger: zerolog.Nop()})
		req, _ := http.NewRequest(http.MethodPut, "http://berth/v2/bench/app/manifests/latest", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w := &discardWriter{hdr: http.Header{}}
		if h.ServeHTTP(w, req); w.status != http.StatusCreated {
			b.Fatalf("push manifest: %d", w.status)
		}
		return "/v2/bench/app/manifests/latest"
	})
}

func BenchmarkBlobGetHandler(b *testing.B) {
	benchHandler(b, func(st *cache.Store) string {
		blob := bytes.Repeat([]byte("0123456789abcdef"), 640) // 10 KiB
		d := digest.FromBytes(blob)
		if err := st.PutBlob("bench/app", "", d, int64(len(blob)), bytes.NewReader(blob)); err != nil {
			b.Fatal(err)
		}
		return "/v2/bench/app/blobs/" + d.String()
	})
}

func localRouter(st *cache.Store) *route.Router {
	return route.New(route.Options{Local: cache.NewLocal(st), Store: st})
}

func benchHandler(b *testing.B, setup func(*cache.Store) string) {
	st, err := cache.Open(b.TempDir(), cache.Options{Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	path := setup(st)
	rt := localRouter(st)
	for _, tc := range []struct {
		name string
		log  zerolog.Logger
	}{
		{"nolog", zerolog.Nop()},
		{"jsonlog", zerolog.New(io.Discard).With().Timestamp().Logger()},
	} {
		h := proxy.New(proxy.Options{Registry: rt, Logger: tc.log})
		req, err := http.NewRequest(http.MethodGet, "http://berth"+path, nil)
		if err != nil {
			b.Fatal(err)
		}
		req.RemoteAddr = "192.0.2.7:40522"
		req.Header.Set("User-Agent", "docker/28.0.1 go/go1.24 os/linux arch/amd64")
		w := &discardWriter{hdr: http.Header{}}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				clear(w.hdr)
				h.ServeHTTP(w, req)
				if w.status != 0 && w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			}
		})
	}
}

// BenchmarkManifestGetToken is BenchmarkManifestGetHandler's warm manifest
// by tag without authentication and with a Bearer token of berth's token
// flow (verified, then its scope checked): what the token flow costs per
// request.
func BenchmarkManifestGetToken(b *testing.B) {
	st, err := cache.Open(b.TempDir(), cache.Options{Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := digest.FromBytes(cfg)
	if err := st.PutBlob("bench/app", "", cd, int64(len(cfg)), bytes.NewReader(cfg)); err != nil {
		b.Fatal(err)
	}
	body := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[]}`, cd, len(cfg))
	rt := localRouter(st)
	put := proxy.New(proxy.Options{Registry: rt, Logger: zerolog.Nop()})
	req, _ := http.NewRequest(http.MethodPut, "http://berth/v2/bench/app/manifests/latest", bytes.NewReader(body))
	w := &discardWriter{hdr: http.Header{}}
	if put.ServeHTTP(w, req); w.status != http.StatusCreated {
		b.Fatalf("push manifest: %d", w.status)
	}
	is, err := token.New(token.Options{Key: bytes.Repeat([]byte("k"), 32), Service: "berth"})
	if err != nil {
		b.Fatal(err)
	}
	auth, err := proxy.NewAuth(proxy.AuthOptions{Tokens: is, AnonymousPull: true,
		Rules: []access.Rule{{Repos: []string{"bench/**"}, Subjects: []string{"bench"}, Actions: []access.Action{access.Pull, access.Push}}}})
	if err != nil {
		b.Fatal(err)
	}
	tok, _, err := is.Access(access.Identity{User: "bench"}, []access.Scope{{Type: "repository", Name: "bench/app", Actions: []string{"pull"}}})
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		auth *proxy.Auth
	}{{"off", nil}, {"token", auth}} {
		h := proxy.New(proxy.Options{Registry: rt, Logger: zerolog.New(io.Discard).With().Timestamp().Logger(), Auth: tc.auth})
		req, _ := http.NewRequest(http.MethodGet, "http://berth/v2/bench/app/manifests/latest", nil)
		req.RemoteAddr = "192.0.2.7:40522"
		req.Header.Set("User-Agent", "docker/28.0.1 go/go1.24 os/linux arch/amd64")
		if tc.auth != nil {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				clear(w.hdr)
				w.status = 0
				h.ServeHTTP(w, req)
				if w.status != 0 && w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			}
		})
	}
}
