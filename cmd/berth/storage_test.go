package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
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
