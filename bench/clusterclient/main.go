// Command clusterclient is the registry client of berth's cluster e2e
// (.ci/cluster-e2e.sh): many verified blob GETs at once, and a chunked push
// that survives a replica being killed under it. Every request opens a new
// connection, so behind a round-robin balancer consecutive requests land on
// different replicas.
//
//	clusterclient get  -urls http://A,http://B -n 16 -repo R -digest sha256:... [-retries 5]
//	clusterclient push -url http://LB -repo R -tag T -size 64MiB -chunk 8MiB [-pause-after 3 -pause-file F]
//
// get starts n clients per URL at once; each reads the whole blob and checks
// its digest and size, retrying (from the start, on a new connection) up to
// -retries times. It prints one summary line and exits 1 unless every client
// got the right bytes.
//
// push uploads a random blob in chunks (POST, PATCH..., PUT), then a config
// and a manifest tagged T. A failed request is retried: for a PATCH, the
// upload's status (GET, Range) says where to resume; an upload the registry
// acknowledged and then forgot is an error. With -pause-after k it writes
// "paused" to F after k acknowledged chunks and waits until F.go exists. It
// prints "pushed MANIFEST-DIGEST BLOB-DIGEST retries=N". (With -pause-after k,
// the pause is halfway through the body of chunk k+1, with the request in flight.)
package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: clusterclient get|push [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "get":
		err = get(os.Args[2:])
	case "push":
		err = push(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (get or push)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "clusterclient:", err)
		os.Exit(1)
	}
}

// client opens a new connection for every request.
var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, ResponseHeaderTimeout: 2 * time.Minute}}

func get(args []string) error {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	urls := fs.String("urls", "", "comma-separated registry base URLs")
	n := fs.Int("n", 1, "clients per URL")
	repo := fs.String("repo", "", "repository")
	dg := fs.String("digest", "", "the blob's digest (sha256:...)")
	size := fs.Int64("size", -1, "the blob's size (-1: not checked)")
	retries := fs.Int("retries", 0, "retries per client")
	_ = fs.Parse(args)
	bases := strings.Split(*urls, ",")
	var wg sync.WaitGroup
	var ok, failed, retried atomic.Int64
	errs := make(chan error, len(bases)**n)
	for _, base := range bases {
		for i := 0; i < *n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				u := strings.TrimRight(base, "/") + "/v2/" + *repo + "/blobs/" + *dg
				var err error
				for try := 0; try <= *retries; try++ {
					if try > 0 {
						retried.Add(1)
					}
					if err = fetchVerify(u, *dg, *size); err == nil {
						ok.Add(1)
						return
					}
				}
				failed.Add(1)
				errs <- fmt.Errorf("%s: %w", u, err)
			}()
		}
	}
	wg.Wait()
	close(errs)
	fmt.Printf("get: %d ok, %d failed, %d retries\n", ok.Load(), failed.Load(), retried.Load())
	var all []error
	for e := range errs {
		all = append(all, e)
	}
	return errors.Join(all...)
}

func fetchVerify(u, dg string, size int64) error {
	resp, err := client.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return fmt.Errorf("after %d bytes: %w", n, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != dg {
		return fmt.Errorf("%d bytes with digest %s, want %s", n, got, dg)
	}
	if size >= 0 && n != size {
		return fmt.Errorf("%d bytes, want %d", n, size)
	}
	return nil
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suf, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(s, suf) {
			s, mult = strings.TrimSuffix(s, suf), m
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n * mult, err
}

// pusher is one chunked push and its retries.
type pusher struct {
	base, repo string
	retries    int
	tries      int
}

// do sends a request made by mk, retrying failures (no response, or a 5xx)
// on a new connection; 4xx answers are returned as they are.
func (p *pusher) do(what string, mk func() (*http.Request, error)) (*http.Response, error) {
	var last error
	for try := 0; try <= p.retries; try++ {
		if try > 0 {
			p.tries++
			time.Sleep(200 * time.Millisecond) // back-off between retries, as clients do
		}
		req, err := mk()
		if err != nil {
			return nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			fmt.Fprintf(os.Stderr, "clusterclient: %s: %v (retrying)\n", what, err)
			last = err
			continue
		}
		if resp.StatusCode >= 500 {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			last = fmt.Errorf("%s: %s", resp.Status, b)
			continue
		}
		return resp, nil
	}
	return nil, fmt.Errorf("%s: %d retries: %w", what, p.retries, last)
}

func (p *pusher) abs(loc string) (string, error) {
	b, err := url.Parse(p.base)
	if err != nil {
		return "", err
	}
	l, err := url.Parse(loc)
	if err != nil {
		return "", err
	}
	return b.ResolveReference(l).String(), nil
}

func expect(resp *http.Response, what string, codes ...int) error {
	for _, c := range codes {
		if resp.StatusCode == c {
			return nil
		}
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return fmt.Errorf("%s: %s: %s", what, resp.Status, b)
}

// offset asks the upload at loc how many bytes it holds.
func (p *pusher) offset(loc string) (int64, error) {
	resp, err := p.do("upload status", func() (*http.Request, error) { return http.NewRequest(http.MethodGet, loc, nil) })
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if err := expect(resp, "upload status "+loc, http.StatusNoContent); err != nil {
		return 0, fmt.Errorf("an acknowledged upload is gone: %w", err)
	}
	r := resp.Header.Get("Range") // 0-N
	if r == "" {
		return 0, nil
	}
	_, end, _ := strings.Cut(r, "-")
	n, err := strconv.ParseInt(end, 10, 64)
	return n + 1, err
}

func (p *pusher) blob(data []byte, chunk int64, pauseAfter int, pauseFile string) (string, error) {
	dg := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	resp, err := p.do("POST upload", func() (*http.Request, error) {
		return http.NewRequest(http.MethodPost, p.base+"/v2/"+p.repo+"/blobs/uploads/", nil)
	})
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if err := expect(resp, "POST upload", http.StatusAccepted); err != nil {
		return "", err
	}
	loc, err := p.abs(resp.Header.Get("Location"))
	if err != nil {
		return "", err
	}
	var acked int64 // bytes the registry said it holds
	chunks := 0
	for acked < int64(len(data)) {
		end := min(acked+chunk, int64(len(data)))
		from := acked
		// The chunk after the pause-after'th stops halfway through its body
		// (once) until the test says go: a replica killed then dies with the
		// request in flight.
		var body func() io.Reader = func() io.Reader { return bytes.NewReader(data[from:end]) }
		if chunks == pauseAfter && pauseFile != "" {
			paused := false
			body = func() io.Reader {
				if paused {
					return bytes.NewReader(data[from:end])
				}
				paused = true
				half := from + (end-from)/2
				return io.MultiReader(bytes.NewReader(data[from:half]), &pauser{file: pauseFile}, bytes.NewReader(data[half:end]))
			}
		}
		resp, err := p.do("PATCH", func() (*http.Request, error) {
			req, err := http.NewRequest(http.MethodPatch, loc, body())
			if err != nil {
				return nil, err
			}
			req.Header.Set("Content-Type", "application/octet-stream")
			req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", from, end-1))
			req.ContentLength = end - from
			return req, nil
		})
		if err == nil {
			resp.Body.Close()
			err = expect(resp, "PATCH", http.StatusAccepted)
		}
		if err != nil {
			// Where does the upload stand? The registry may have taken the
			// chunk and lost only its answer, or lost the chunk.
			n, oerr := p.offset(loc)
			if oerr != nil {
				return "", fmt.Errorf("%w (then %v)", err, oerr)
			}
			if n < acked {
				return "", fmt.Errorf("upload %s holds %d bytes after %d were acknowledged", loc, n, acked)
			}
			fmt.Fprintf(os.Stderr, "clusterclient: PATCH %d-%d failed (%v); upload holds %d bytes, resuming\n", from, end-1, err, n)
			acked = n
			continue
		}
		if l := resp.Header.Get("Location"); l != "" {
			if loc, err = p.abs(l); err != nil {
				return "", err
			}
		}
		acked = end
		chunks++
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	resp, err = p.do("PUT upload", func() (*http.Request, error) {
		return http.NewRequest(http.MethodPut, loc+sep+"digest="+url.QueryEscape(dg), nil)
	})
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		// The PUT may have landed before a failure lost its answer.
		if ok, _ := p.exists(dg); ok {
			return dg, nil
		}
	}
	return dg, expect(resp, "PUT upload", http.StatusCreated)
}

func (p *pusher) exists(dg string) (bool, error) {
	resp, err := p.do("HEAD blob", func() (*http.Request, error) {
		return http.NewRequest(http.MethodHead, p.base+"/v2/"+p.repo+"/blobs/"+dg, nil)
	})
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, nil
}

func push(args []string) error {
	fs := flag.NewFlagSet("push", flag.ExitOnError)
	base := fs.String("url", "", "registry base URL")
	repo := fs.String("repo", "", "repository")
	tag := fs.String("tag", "latest", "tag of the pushed manifest")
	sizeS := fs.String("size", "64MiB", "size of the pushed layer")
	chunkS := fs.String("chunk", "8MiB", "PATCH size")
	retries := fs.Int("retries", 5, "retries per request")
	pauseAfter := fs.Int("pause-after", 0, "pause halfway through the chunk after this many acknowledged ones")
	pauseFile := fs.String("pause-file", "", "written when paused; continue once FILE.go exists")
	_ = fs.Parse(args)
	size, err := parseSize(*sizeS)
	if err != nil {
		return err
	}
	chunk, err := parseSize(*chunkS)
	if err != nil || chunk <= 0 {
		return fmt.Errorf("-chunk %q: %v", *chunkS, err)
	}
	p := &pusher{base: strings.TrimRight(*base, "/"), repo: *repo, retries: *retries}
	layer := make([]byte, size)
	if _, err := rand.Read(layer); err != nil {
		return err
	}
	ld, err := p.blob(layer, chunk, *pauseAfter, *pauseFile)
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cd, err := p.blob(cfg, int64(len(cfg)), 0, "")
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	man, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": size}},
	})
	resp, err := p.do("PUT manifest", func() (*http.Request, error) {
		req, err := http.NewRequest(http.MethodPut, p.base+"/v2/"+p.repo+"/manifests/"+*tag, bytes.NewReader(man))
		if err == nil {
			req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		}
		return req, err
	})
	if err != nil {
		return err
	}
	resp.Body.Close()
	if err := expect(resp, "PUT manifest", http.StatusCreated); err != nil {
		return err
	}
	fmt.Printf("pushed sha256:%x %s retries=%d\n", sha256.Sum256(man), ld, p.tries)
	return nil
}

// pauser is a body part that reads nothing: on its first Read it writes
// "paused" to file and waits until file.go exists.
type pauser struct {
	file string
	done bool
}

func (p *pauser) Read([]byte) (int, error) {
	if p.done {
		return 0, io.EOF
	}
	p.done = true
	if err := os.WriteFile(p.file, []byte("paused\n"), 0o644); err != nil {
		return 0, err
	}
	for deadline := time.Now().Add(5 * time.Minute); ; {
		if _, err := os.Stat(p.file + ".go"); err == nil {
			return 0, io.EOF
		}
		if time.Now().After(deadline) {
			return 0, errors.New("nobody created " + p.file + ".go")
		}
		time.Sleep(50 * time.Millisecond) // polling for the test's go-ahead
	}
}
