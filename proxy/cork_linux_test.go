package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// batchPair is a connection accepted through Listener and its client.
func batchPair(t *testing.T) (*batchConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln = Listener(ln)
	t.Cleanup(func() { ln.Close() })
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	bc, ok := server.(*batchConn)
	if !ok {
		t.Fatalf("Listener accepted a %T, want *batchConn", server)
	}
	return bc, client
}

// In a batch the first write is held and goes out with the second, in
// order; a write alone in its batch goes out when the batch ends; outside
// a batch nothing is held.
func TestBatchedWrites(t *testing.T) {
	t.Parallel()
	c, client := batchPair(t)
	ctx := WithConn(context.Background(), c)
	head, body := bytes.Repeat([]byte("h"), heldMax), bytes.Repeat([]byte("b"), 10<<10)
	Batched(ctx, func() {
		if n, err := c.Write(head); n != len(head) || err != nil {
			t.Errorf("first write: %d, %v", n, err)
		}
		if c.held == nil {
			t.Error("the first write of a batch was not held")
		}
		head[0] = 'X' // net/http reuses its buffer: the held copy must not change
		if c.held == nil || (*c.held)[0] != 'h' {
			t.Error("the held write is not a copy")
		}
		if n, err := c.Write(body); n != len(body) || err != nil {
			t.Errorf("second write: %d, %v", n, err)
		}
		if c.held != nil {
			t.Error("the second write left something held")
		}
	})
	Batched(ctx, func() { _, _ = c.Write([]byte("alone")) })
	if c.held != nil {
		t.Fatal("a write alone in its batch is still held after it")
	}
	if _, err := c.Write([]byte("after")); err != nil || c.held != nil {
		t.Fatalf("a write outside a batch: %v, held %v", err, c.held != nil)
	}
	want := append(append(append(bytes.Repeat([]byte("h"), heldMax), body...), "alone"...), "after"...)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the client read the writes changed or out of order")
	}
}

// A held write goes out before a file sent with sendfile(2), which
// bypasses Write.
func TestBatchedReadFromSendsHeldFirst(t *testing.T) {
	t.Parallel()
	c, client := batchPair(t)
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, []byte("file"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	Batched(WithConn(context.Background(), c), func() {
		_, _ = c.Write([]byte("headers "))
		if _, err := c.ReadFrom(f); err != nil {
			t.Error(err)
		}
	})
	got := make([]byte, len("headers file"))
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "headers file" {
		t.Fatalf("client read %q, %v; want %q", got, err, "headers file")
	}
}

// A corked write reaches the client whole, and the socket is uncorked after
// (a cork left on would hold the next response back for 200 ms).
func TestCorkedWrite(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	payload := make([]byte, 10<<10)
	var during int
	corked(WithConn(context.Background(), server), func() {
		during = corkState(t, server)
		if _, err := server.Write(payload); err != nil {
			t.Error(err)
		}
	})
	if during != 1 || corkState(t, server) != 0 {
		t.Fatalf("TCP_CORK was %d while writing and %d after; want 1 then 0", during, corkState(t, server))
	}
	if n, err := io.ReadFull(client, make([]byte, len(payload))); err != nil || n != len(payload) {
		t.Fatalf("client read %d bytes: %v", n, err)
	}
}

func corkState(t *testing.T, c net.Conn) int {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	_ = raw.Control(func(fd uintptr) { v, err = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_CORK) })
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Over TLS corked leaves the socket alone: the context holds a *tls.Conn.
func TestCorkedSkipsTLS(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	during := -1
	corked(WithConn(context.Background(), tls.Server(server, &tls.Config{})), func() { during = corkState(t, server) })
	if during != 0 {
		t.Fatalf("TCP_CORK was %d under a TLS connection, want 0", during)
	}
}
