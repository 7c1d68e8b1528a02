package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// listenNotify is the service manager's end of $NOTIFY_SOCKET: a unixgram
// socket named name (a path, or '@' and an abstract name).
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return conn
}

// readNotify returns the next datagram sent to conn.
func readNotify(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("reading NOTIFY_SOCKET: %v", err)
	}
	return string(buf[:n])
}

// Not parallel: NOTIFY_SOCKET is the process's environment.
func TestNotify(t *testing.T) {
	for _, tc := range []struct {
		name   string
		socket func(t *testing.T) string
	}{
		{"path", func(t *testing.T) string { return filepath.Join(t.TempDir(), "notify") }},
		{"abstract", func(t *testing.T) string { return fmt.Sprintf("@berth-test-%d-%d", os.Getpid(), time.Now().UnixNano()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := listenNotify(t, tc.socket(t))
			notifyReady(zerolog.Nop())
			if got := readNotify(t, conn); got != "READY=1" {
				t.Errorf("got %q, want READY=1", got)
			}
			notifyStopping(zerolog.Nop())
			if got := readNotify(t, conn); got != "STOPPING=1" {
				t.Errorf("got %q, want STOPPING=1", got)
			}
		})
	}
}

func TestNotifyWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdNotify("READY=1"); err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v, want nothing done", err)
	}
}

func TestNotifyErrors(t *testing.T) {
	for _, name := range []string{
		filepath.Join(t.TempDir(), "nobody-listens"),
		"vsock:2:1234", // a newer systemd's form, not supported here
	} {
		t.Setenv("NOTIFY_SOCKET", name)
		if err := sdNotify("READY=1"); err == nil {
			t.Errorf("NOTIFY_SOCKET=%s: no error", name)
		}
	}
}

// serve sends READY=1 once it accepts connections and STOPPING=1 when
// shutdown begins.
func TestServeNotifiesSystemd(t *testing.T) {
	conn := listenNotify(t, filepath.Join(t.TempDir(), "notify"))
	cfg := testConfig(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, ready) }()
	if got := readNotify(t, conn); got != "READY=1" {
		t.Fatalf("got %q, want READY=1", got)
	}
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatalf("after READY=1: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /readyz after READY=1: %d", resp.StatusCode)
	}
	cancel()
	if got := readNotify(t, conn); !strings.HasPrefix(got, "STOPPING=1") {
		t.Errorf("got %q, want STOPPING=1", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
}
