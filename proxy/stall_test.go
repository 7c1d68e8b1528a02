package proxy_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/registry/regmem"
	"github.com/berth-dev/berth/internal/testutil"
	"github.com/berth-dev/berth/proxy"
	"github.com/rs/zerolog"
)

// A client that stops sending its upload body is cut after the idle
// timeout: it holds nothing for long, and other uploads go on meanwhile.
func TestStalledUploadBodyIsCut(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(proxy.New(proxy.Options{Registry: regmem.New(), Logger: zerolog.Nop(), BodyIdleTimeout: 200 * time.Millisecond}))
	defer srv.Close()
	start := func() string {
		resp, err := http.Post(srv.URL+"/v2/team/app/blobs/uploads/", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("start upload: %d", resp.StatusCode)
		}
		return srv.URL + resp.Header.Get("Location")
	}
	stalled, other := start(), start()

	pr, pw := io.Pipe() // a body that sends one chunk, then nothing
	defer pw.Close()
	go func() { _, _ = pw.Write([]byte("first bytes")) }()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPatch, stalled, pr)
	req.ContentLength = 1 << 20 // promised, never sent
	done := make(chan int, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- -1 // the server cut the connection: also an answer
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()

	req2, _ := http.NewRequest(http.MethodPatch, other, strings.NewReader("another push"))
	resp, err := http.DefaultClient.Do(req2)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("a PATCH of another upload while one stalls: %d", resp.StatusCode)
	}
	if s := testutil.Recv(t, done, "the stalled PATCH to be cut"); s == http.StatusAccepted {
		t.Fatalf("the stalled PATCH was accepted")
	}
}
