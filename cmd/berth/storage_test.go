package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A data directory removed under a running berth: manifest pushes are
// refused (503), never acknowledged and lost, and /readyz fails saying why.
func TestServeDataDirectoryRemoved(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, nil)
	cfg.DiskReserve = 0 // the reserve is cache's tests' business; this is about health
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, ready) }()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	defer func() {
		cancel()
		select {
		case <-done: // an error is expected: the index cannot close in a removed directory
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	}()
	put := func(tag string) int {
		t.Helper()
		body := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`
		req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/v2/team/app/manifests/"+tag, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if code := put("before"); code != http.StatusCreated {
		t.Fatalf("PUT before removal: %d", code)
	}
	if code, _ := readyz(); code != http.StatusOK {
		t.Fatalf("/readyz before removal: %d", code)
	}
	if err := os.RemoveAll(cfg.Data); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if code := put("after" + string(rune('a'+i))); code != http.StatusServiceUnavailable {
			t.Fatalf("PUT %d after removal: %d, want 503", i, code)
		}
	}
	code, body := readyz()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "storage unavailable") {
		t.Errorf("/readyz after removal: %d %q, want 503 naming the storage", code, body)
	}
	// Pulls are not writes: the catalog still answers from the index.
	resp, err := http.Get("http://" + addr + "/v2/_catalog")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/_catalog after removal: %d", resp.StatusCode)
	}
}

// A disk below disk_reserve (a reserve of 1.5x the free space: berth starts,
// since it has more than half of it): pushes are answered 507 UNAVAILABLE
// naming the key, pulls and /readyz go on, the metrics say so.
func TestServePushPastTheReserve(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, nil)
	var st unix.Statfs_t
	if err := unix.Statfs(cfg.Data, &st); err != nil {
		t.Skip("statfs:", err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	cfg.DiskReserve = free + free/2
	addr, _ := runServe(t, cfg)
	for _, req := range []struct{ method, path string }{
		{http.MethodPost, "/v2/team/app/blobs/uploads/"},
		{http.MethodPost, "/v2/team/app/blobs/uploads/?digest=sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"},
	} {
		r, _ := http.NewRequest(req.method, "http://"+addr+req.path, strings.NewReader("hello"))
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		var body struct {
			Errors []struct{ Code, Message string }
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusInsufficientStorage || err != nil || len(body.Errors) != 1 ||
			body.Errors[0].Code != "UNAVAILABLE" || !strings.Contains(body.Errors[0].Message, "disk_reserve") {
			t.Errorf("%s %s past the reserve: %d %+v %v, want 507 UNAVAILABLE naming disk_reserve", req.method, req.path, resp.StatusCode, body, err)
		}
	}
	for _, path := range []string{"/v2/", "/readyz", "/v2/_catalog"} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s past the reserve: %d, want 200", path, resp.StatusCode)
		}
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"berth_storage_writable 0", "berth_storage_healthy 1", "berth_writes_refused_no_space_total 2"} {
		if !strings.Contains(string(b), "\n"+want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
