// Command lb is a small round-robin TCP load balancer for berth's cluster
// tests and benchmark: each new connection goes to the next backend, and a
// backend that refuses the connection is skipped (as a real load balancer's
// health check would skip a dead replica). No affinity: consecutive
// connections of one client land on different backends.
//
//	lb -listen 127.0.0.1:5000 -backends 127.0.0.1:5001,127.0.0.1:5002,127.0.0.1:5003
//
// It prints "listening on ADDR" once it accepts connections (useful with
// -listen 127.0.0.1:0), and the count of connections per backend on SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	backends := flag.String("backends", "", "comma-separated backend addresses (host:port)")
	dialTimeout := flag.Duration("dial-timeout", 2*time.Second, "how long one backend may take to accept")
	logConns := flag.Bool("log", false, "print \"conn N ADDR\" for each connection handed to backend ADDR")
	rate := flag.Float64("rate", 0, "cap each connection's backend-to-client bytes per second (0: none); a slow upstream for tests")
	flag.Parse()
	o := &balancer{dialTimeout: *dialTimeout, log: *logConns, rate: *rate}
	if err := run(*listen, strings.Split(*backends, ","), o); err != nil {
		fmt.Fprintln(os.Stderr, "lb:", err)
		os.Exit(1)
	}
}

func run(listen string, backends []string, o *balancer) error {
	var bs []string
	for _, b := range backends {
		if b = strings.TrimSpace(b); b != "" {
			bs = append(bs, strings.TrimPrefix(strings.TrimPrefix(b, "http://"), "https://"))
		}
	}
	if len(bs) == 0 {
		return errors.New("no backends (-backends host:port,...)")
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &balancer{backends: bs, counts: make([]counter, len(bs)), dialTimeout: o.dialTimeout, log: o.log, rate: o.rate}
	fmt.Printf("listening on %s\n", ln.Addr())
	go func() { <-ctx.Done(); ln.Close() }()
	err = b.serve(ln)
	for i, be := range bs {
		fmt.Printf("backend %s: %d connections\n", be, b.counts[i].Load())
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// balancer hands connections to backends in turn.
type balancer struct {
	backends    []string
	counts      []counter
	next        atomic.Uint64
	dialTimeout time.Duration
	log         bool
	rate        float64 // bytes/s per connection, backend to client; 0 is unlimited
	conns       atomic.Int64
	outMu       sync.Mutex
	wg          sync.WaitGroup
}

func (b *balancer) serve(ln net.Listener) error {
	defer b.wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		b.wg.Add(1)
		go func() { defer b.wg.Done(); b.handle(c) }()
	}
}

// dial connects to the next backend that accepts, trying each at most once.
func (b *balancer) dial() (net.Conn, error) {
	start := b.next.Add(1) - 1
	var errs []error
	for i := range b.backends {
		k := int((start + uint64(i)) % uint64(len(b.backends)))
		c, err := net.DialTimeout("tcp", b.backends[k], b.dialTimeout)
		if err == nil {
			b.counts[k].Add(1)
			if b.log {
				b.outMu.Lock()
				fmt.Printf("conn %d %s\n", b.conns.Add(1), b.backends[k])
				b.outMu.Unlock()
			}
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

func (b *balancer) handle(c net.Conn) {
	defer c.Close()
	be, err := b.dial()
	if err != nil {
		fmt.Fprintln(os.Stderr, "lb: no backend accepts:", err)
		return
	}
	defer be.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn, rate float64) {
		if rate > 0 {
			_, _ = io.Copy(dst, &slowReader{r: src, rate: rate, start: time.Now()})
		} else {
			_, _ = io.Copy(dst, src)
		}
		// Pass the half-close on, so a client's end of request body (or a
		// server's end of response) is seen on the other side.
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(be, c, 0)
	go pipe(c, be, b.rate)
	<-done
	// One side is finished; when the backend dies, the client must see its
	// connection close too rather than wait forever.
	<-done
}

// counter counts one backend's connections.
type counter = atomic.Int64

// slowReader reads at most rate bytes per second on average.
type slowReader struct {
	r     io.Reader
	rate  float64
	start time.Time
	n     int64
}

func (s *slowReader) Read(p []byte) (int, error) {
	if len(p) > 32<<10 {
		p = p[:32<<10]
	}
	// Pacing, not synchronisation: wait until the bytes read so far are due.
	if due := s.start.Add(time.Duration(float64(s.n) / s.rate * float64(time.Second))); time.Until(due) > 0 {
		time.Sleep(time.Until(due))
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	return n, err
}
