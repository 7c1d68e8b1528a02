package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// berth is the real binary, started, killed with SIGKILL and started
// again on one data directory and one port.
type berth struct {
	bin, data, config, addr string
	log                     *os.File
	cmd                     *exec.Cmd
	exited                  chan error
	starts                  int
}

func newBerth(bin, dir, upstreamAddr string, extra string) (*berth, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(dir, "berth.yaml")
	yml := fmt.Sprintf("upstreams:\n  - name: docker.io\n    url: http://%s\n    default: true\n    tag_ttl: 5s\nlocal: [\"team/**\"]\n%s", upstreamAddr, extra)
	if err := os.WriteFile(cfg, []byte(yml), 0o644); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(dir, "berth.log"))
	if err != nil {
		return nil, err
	}
	return &berth{bin: bin, data: filepath.Join(dir, "data"), config: cfg, addr: addr, log: log}, nil
}

// start runs berth and waits until /readyz answers 200.
func (b *berth) start(ctx context.Context) error {
	b.cmd = exec.Command(b.bin, "serve", "--config", b.config, "--addr", b.addr, "--data", b.data, "--log-format", "json", "--log-level", "warn")
	b.cmd.Stdout, b.cmd.Stderr = b.log, b.log
	if err := b.cmd.Start(); err != nil {
		return err
	}
	b.starts++
	b.exited = make(chan error, 1)
	cmd := b.cmd
	go func() { b.exited <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + b.addr + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-b.exited:
			return fmt.Errorf("berth exited at start (%v); see %s", err, b.log.Name())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond): // polling a condition, with a deadline
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("berth not ready after 60s; see %s", b.log.Name())
		}
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (b *berth) kill() error {
	if b.cmd == nil {
		return nil
	}
	_ = b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.exited
	b.cmd = nil
	return nil
}

// stop sends SIGTERM (a graceful stop) and waits.
func (b *berth) stop() error {
	if b.cmd == nil {
		return nil
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-b.exited:
		b.cmd = nil
		return err
	case <-time.After(60 * time.Second):
		return b.kill()
	}
}

// alive reports an unexpected exit (a crash) since start.
func (b *berth) alive() error {
	select {
	case err := <-b.exited:
		b.exited <- err
		return fmt.Errorf("berth exited by itself: %v; see %s", err, b.log.Name())
	default:
		return nil
	}
}

// metrics reads the gauges a leak would show in from /metrics.
func (b *berth) metrics() (map[string]float64, error) {
	resp, err := http.Get("http://" + b.addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	want := map[string]bool{"go_goroutines": true, "process_open_fds": true, "process_resident_memory_bytes": true, "go_memstats_heap_inuse_bytes": true,
		"berth_cache_evicted_blobs_total": true}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if ok && want[name] {
			if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
				out[name] = v
			}
		}
	}
	return out, sc.Err()
}
