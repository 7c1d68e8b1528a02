package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/berth-dev/berth/proxy"
)

// The net/http floor: the bench started again as a bare net/http server
// that answers the small blob and manifest GETs from memory with the
// headers berth sends, a body past 3 KiB written in one writev as berth
// writes it (through berth's own listener, proxy.Listener), and
// nothing else: no routing, index, request log or metrics. It is what any
// Go registry built on net/http could reach at most on the machine, so
// berth's rate against it is the cost of berth's own work per request,
// and nginx's against it is how far a C server goes beyond the library.

// floorEntry is one response of the floor server.
type floorEntry struct {
	Path   string `json:"path"`
	Type   string `json:"type"`
	Digest string `json:"digest"`
	File   string `json:"file"`
	Blob   bool   `json:"blob"` // with a blob's Accept-Ranges and Cache-Control, as berth sends
}

// startFloor writes the floor's entries (the small image's layers, the
// ten-layer image's manifest by tag) and starts the bench binary as the
// floor server.
func (b *bench) startFloor(ctx context.Context, blobRoot string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	c := b.content
	dir := filepath.Join(b.tmp, "floor")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var entries []floorEntry
	for _, l := range c.small.Layers {
		entries = append(entries, floorEntry{
			Path: "/v2/" + c.small.Repo + "/blobs/" + l.Digest.String(), Type: "application/octet-stream", Digest: l.Digest.String(),
			File: filepath.Join(blobRoot, "sha256", l.Digest.Encoded()[:2], l.Digest.Encoded(), "data"), Blob: true,
		})
	}
	man := filepath.Join(dir, "manifest.json")
	if err := os.WriteFile(man, c.ten.Manifest, 0o644); err != nil {
		return err
	}
	entries = append(entries, floorEntry{Path: "/v2/" + c.ten.Repo + "/manifests/" + c.ten.Tag,
		Type: "application/vnd.oci.image.manifest.v1+json", Digest: c.ten.Digest.String(), File: man})
	spec, err := json.Marshal(entries)
	if err != nil {
		return err
	}
	specPath := filepath.Join(dir, "entries.json")
	if err := os.WriteFile(specPath, spec, 0o644); err != nil {
		return err
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	p, err := b.startProc(srvFloor, nil, exe, "-floor-serve", addr, "-floor-entries", specPath)
	if err != nil {
		return err
	}
	if err := waitReady(ctx, p, "http://"+addr+"/"); err != nil {
		return err
	}
	b.servers[srvFloor] = &server{name: srvFloor, base: "http://" + addr, proc: p}
	return nil
}

// serveFloor runs the floor server on addr until the process is stopped.
func serveFloor(addr, entriesPath string) error {
	spec, err := os.ReadFile(entriesPath)
	if err != nil {
		return err
	}
	var entries []floorEntry
	if err := json.Unmarshal(spec, &entries); err != nil {
		return fmt.Errorf("%s: %w", entriesPath, err)
	}
	type response struct {
		hdr  http.Header
		body []byte
	}
	responses := map[string]response{}
	for _, e := range entries {
		body, err := os.ReadFile(e.File)
		if err != nil {
			return err
		}
		// Byte for byte the headers berth sends (the request ID is fixed,
		// of the length of berth's).
		hdr := http.Header{
			"Content-Type":                    {e.Type},
			"Content-Length":                  {strconv.Itoa(len(body))},
			"Docker-Content-Digest":           {e.Digest},
			"Docker-Distribution-Api-Version": {"registry/2.0"},
			"Etag":                            {`"` + e.Digest + `"`},
			"X-Request-Id":                    {"flooridx-1234"},
		}
		if e.Blob {
			hdr["Accept-Ranges"] = []string{"bytes"}
			hdr["Cache-Control"] = []string{"max-age=31536000"}
		}
		responses[e.Path] = response{body: body, hdr: hdr}
	}
	srv := &http.Server{

		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			res, ok := responses[r.URL.Path]
			if !ok {
				if r.URL.Path == "/" {
					return // ready
				}
				http.NotFound(w, r)
				return
			}
			hdr := w.Header()
			for k, v := range res.hdr {
				hdr[k] = v
			}
			w.WriteHeader(http.StatusOK)
			if len(res.body) <= 3<<10 {
				_, _ = w.Write(res.body)
				return
			}
			proxy.Batched(r.Context(), func() { _, _ = w.Write(res.body) })
		}),
		ConnContext:       proxy.WithConn,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return srv.Serve(proxy.Listener(ln))
}
