package main

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// echoName accepts connections and writes name to each, then closes it.
func echoName(t *testing.T, name string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(name + "\n"))
			c.Close()
		}
	}()
	return ln
}

func TestRoundRobinSkipsRefusingBackends(t *testing.T) {
	t.Parallel()
	a, c := echoName(t, "a"), echoName(t, "c")
	defer a.Close()
	defer c.Close()
	// A port nobody listens on: connections to it are refused.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &balancer{backends: []string{a.Addr().String(), deadAddr, c.Addr().String()}, counts: make([]counter, 3), dialTimeout: time.Second}
	go func() { _ = b.serve(ln) }()
	defer ln.Close()

	var got []string
	for range 6 {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err != nil {
			t.Fatalf("read through lb: %v", err)
		}
		got = append(got, line[:len(line)-1])
	}
	// Turns: a, dead->c, c, a, dead->c, c.
	want := []string{"a", "c", "c", "a", "c", "c"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("backends in turn = %v, want %v", got, want)
		}
	}
	if n := b.counts[1].Load(); n != 0 {
		t.Errorf("dead backend counted %d connections", n)
	}
}
