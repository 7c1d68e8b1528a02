package main

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// shaper is a loopback TCP proxy in front of the upstream registry. It
// limits the bytes flowing from the upstream, across all connections
// together, to rate bytes per second (a slow internet link), and counts
// them: the herd measurement reads how much the proxies fetched.
type shaper struct {
	ln     net.Listener
	target string
	rate   float64 // bytes per second; 0: unlimited

	mu    sync.Mutex
	tat   time.Time // theoretical arrival time of the next byte (GCRA)
	conns map[net.Conn]struct{}

	down atomic.Int64 // upstream -> proxy bytes
	up   atomic.Int64
}

// burst is how far ahead of the rate a sender may get.
const burst = 5 * time.Millisecond

func newShaper(target string, rate float64) (*shaper, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &shaper{ln: ln, target: target, rate: rate, conns: map[net.Conn]struct{}{}}
	go s.serve()
	return s, nil
}

func (s *shaper) addr() string { return s.ln.Addr().String() }

func (s *shaper) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		go s.handle(c)
	}
}

func (s *shaper) track(c net.Conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.conns == nil {
			return false
		}
		s.conns[c] = struct{}{}
	} else if s.conns != nil {
		delete(s.conns, c)
	}
	return true
}

func (s *shaper) handle(c net.Conn) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", s.target, 5*time.Second)
	if err != nil {
		return
	}
	defer u.Close()
	if !s.track(c, true) || !s.track(u, true) {
		return
	}
	defer s.track(c, false)
	defer s.track(u, false)
	go func() {
		n, _ := io.Copy(u, c)
		s.up.Add(n)
		if tc, ok := u.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := u.Read(buf)
		if n > 0 {
			s.take(n)
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
			s.down.Add(int64(n))
		}
		if err != nil {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			return
		}
	}
}

// take waits until n more bytes may pass.
func (s *shaper) take(n int) {
	if s.rate <= 0 {
		return
	}
	s.mu.Lock()
	now := time.Now()
	if s.tat.Before(now) {
		s.tat = now
	}
	s.tat = s.tat.Add(time.Duration(float64(n) / s.rate * float64(time.Second)))
	wait := s.tat.Sub(now) - burst
	s.mu.Unlock()
	if wait > 0 {
		time.Sleep(wait)
	}
}

// quiet waits until no byte has flowed from the upstream for d (at most
// max), so that a measurement starts with no background fill running.
func (s *shaper) quiet(ctx context.Context, d, max time.Duration) {
	deadline := time.Now().Add(max)
	last, since := s.down.Load(), time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(d / 5)
		if n := s.down.Load(); n != last {
			last, since = n, time.Now()
		} else if time.Since(since) >= d {
			return
		}
	}
}

func (s *shaper) close() {
	s.ln.Close()
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}
