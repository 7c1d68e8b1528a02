package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"syscall"
	"testing"
)

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
