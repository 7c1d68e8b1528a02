package proxy

import (
	"context"
	"io"
	"net"
	"sync"
	"syscall"
)

type connKey struct{}

// WithConn is an http.Server's ConnContext: it lets a handler reach the
// connection under a response, to batch or cork its writes (see Batched
// and corked).
func WithConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// Listener wraps ln's TCP connections so that a response written from
// memory leaves in one writev(2) (see Batched). berth serve listens
// through it; TLS wraps the connections it returns, as any.
func Listener(ln net.Listener) net.Listener { return batchListener{ln} }

type batchListener struct{ net.Listener }

func (l batchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		return &batchConn{TCPConn: tc}, nil
	}
	return c, err
}

// batchConn is a TCP connection that can hold one write back to send it
// with the next. net/http hands a response bigger than its 4 KiB buffer to
// the connection in two writes (the buffer of headers and body, then the
// rest of the body); sent apart they cost two passes through the TCP stack
// and two wake-ups of the client. Held and joined, they cost one writev:
// the effect of nginx's tcp_nopush, without TCP_CORK's two setsockopt
// calls around every response. Only the serving goroutine writes to an
// HTTP/1.1 connection, so the fields need no lock.
type batchConn struct {
	*net.TCPConn
	batching bool
	held     *[]byte // a copy of the held write, from heldBufs; nil when none
}

// heldMax is the biggest write held: net/http's buffer size.
const heldMax = 4 << 10

// heldBufs lends the copies of held writes, for the moment they are held:
// an idle connection keeps none.
var heldBufs = sync.Pool{New: func() any { b := make([]byte, 0, heldMax); return &b }}

func (c *batchConn) Write(p []byte) (int, error) {
	if c.held != nil {
		held := c.held
		c.held = nil
		bufs := net.Buffers{*held, p}
		n, err := bufs.WriteTo(c.TCPConn)
		n -= int64(len(*held))
		heldBufs.Put(held)
		return max(int(n), 0), err
	}
	if c.batching && len(p) <= heldMax {
		b := heldBufs.Get().(*[]byte)
		*b = append((*b)[:0], p...) // net/http reuses p
		c.held = b
		return len(p), nil
	}
	return c.TCPConn.Write(p)
}

// flush sends a held write. Its error, if any, shows again on the
// connection's next read or write, where net/http handles it.
func (c *batchConn) flush() {
	if c.held != nil {
		held := c.held
		c.held = nil
		_, _ = c.TCPConn.Write(*held)
		heldBufs.Put(held)
	}
}

// ReadFrom sends what is held before the file (sendfile(2) goes to the
// socket directly, past Write).
func (c *batchConn) ReadFrom(r io.Reader) (int64, error) {
	c.flush()
	return c.TCPConn.ReadFrom(r)
}

// Batched runs write with the connection holding its first write back to
// send it with the second (see batchConn). Without a batchConn (over TLS,
// whose records are written whole; in tests) it just writes.
func Batched(ctx context.Context, write func()) {
	c, _ := ctx.Value(connKey{}).(*batchConn)
	if c == nil {
		write()
		return
	}
	c.batching = true
	defer func() {
		c.batching = false
		c.flush()
	}()
	write()
}

// tcpConn is the plain TCP connection under a response, or nil (TLS,
// HTTP/2, tests without one).
func tcpConn(ctx context.Context) *net.TCPConn {
	switch c := ctx.Value(connKey{}).(type) {
	case *net.TCPConn:
		return c
	case *batchConn:
		return c.TCPConn
	}
	return nil
}

// corked runs write with the connection's TCP_CORK set, so that a file
// sent with sendfile(2) leaves in full segments, headers with its first, as
// nginx's tcp_nopush does. Without a plain TCP connection it just writes:
// over TLS the connection is a *tls.Conn (its records are already written
// whole, and with HTTP/2 many streams share the socket, so one handler's
// cork would hold back the others' frames), and in tests there may be
// none.
func corked(ctx context.Context, write func()) {
	var raw syscall.RawConn
	if c := tcpConn(ctx); c != nil {
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
