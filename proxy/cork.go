package proxy

import (
	"context"
	"net"
	"syscall"
)

type connKey struct{}

// WithConn is an http.Server's ConnContext: it lets a handler reach the
// connection under a response, to cork it (see corked).
func WithConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// corked runs write with the connection's TCP_CORK set, so that a response
// net/http hands to the kernel in two writes (its 4 KiB buffer of headers
// and body, then the rest of the body) leaves as one transmission, as
// nginx's tcp_nopush does: on a small blob the second pass through the TCP
// stack, and the second wake-up of the client, cost more than the two
// setsockopt calls. Without a plain TCP connection it just writes: over
// TLS the connection is a *tls.Conn (its records are already written whole,
// and with HTTP/2 many streams share the socket, so one handler's cork would
// hold back the others' frames), and in tests there may be none.
func corked(ctx context.Context, write func()) {
	c, _ := ctx.Value(connKey{}).(*net.TCPConn)
	var raw syscall.RawConn
	if c != nil {
		raw, _ = c.SyscallConn()
	}
	if raw == nil {
		write()
		return
	}
	setCork(raw, 1)
	write()
	setCork(raw, 0)
}
