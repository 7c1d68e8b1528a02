package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"debug/buildinfo"
	"errors"
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

// proc is a server process started by the bench, in its own process group
// so that it and its children (nginx's workers) can be stopped together.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func (b *bench) startProc(name string, env []string, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(b.tmp, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = b.tmp
	// Pdeathsig: if the bench itself is killed, its servers go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	b.procs = append(b.procs, p)
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL to whatever of the
// group is left after a grace period.
func (p *proc) stop() {
	pgid := p.pid()
	if !p.exited() {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// tail returns the last lines of the process's output, for error messages.
// It reads only the end of the file: berth's log holds a line per request.
func (p *proc) tail() string {
	f, err := os.Open(p.log)
	if err != nil {
		return ""
	}
	defer f.Close()
	const window = 64 << 10
	var data []byte
	if fi, err := f.Stat(); err == nil && fi.Size() > window {
		data = make([]byte, window)
		n, _ := f.ReadAt(data, fi.Size()-window)
		data = data[:n]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:] // the first line is cut
		}
	} else {
		data, _ = io.ReadAll(f)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// waitReady polls url until it answers (any status below 500). An https
// URL is not verified here: readiness only; the measuring clients verify.
func waitReady(ctx context.Context, p *proc, url string) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // readiness only
	deadline := time.Now().Add(60 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 500 {
				return nil
			}
		}
		if p.exited() {
			return fmt.Errorf("%s exited before it was ready (%v):\n%s", p.name, p.err, p.tail())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not ready at %s: %v\n%s", p.name, url, err, p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freeAddr returns a loopback address with a port that was free just now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// peakRSS returns the peak resident set (VmHWM) of pid plus that of its
// children (nginx's workers), in bytes.
func peakRSS(pid int) (int64, error) {
	total, err := vmHWM(pid)
	if err != nil {
		return 0, err
	}
	for _, c := range children(pid) {
		if n, err := vmHWM(c); err == nil {
			total += n
		}
	}
	return total, nil
}

func vmHWM(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmHWM in /proc/pid/status")
}

func children(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(s[i+1:])
		if len(fields) > 1 {
			if ppid, _ := strconv.Atoi(fields[1]); ppid == pid {
				out = append(out, n)
			}
		}
	}
	return out
}

// --- tools -------------------------------------------------------------------

const registryModule = "github.com/distribution/distribution/v3/cmd/registry@v3.1.2"

func (b *bench) findTools(ctx context.Context) error {
	// berth
	if b.o.berth != "" {
		if abs, err := filepath.Abs(b.o.berth); err == nil {
			b.o.berth = abs
		}
	}
	if b.o.berth == "" {
		b.o.berth = filepath.Join(b.root, "bin", "berth")
		if _, err := os.Stat(b.o.berth); err != nil {
			b.o.berth = filepath.Join(b.tmp, "berth")
			b.logf("bin/berth missing: building %s", b.o.berth)
			cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", b.o.berth, "./cmd/berth")
			cmd.Dir, cmd.Env = b.root, append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("building berth: %v\n%s", err, out)
			}
		}
	}
	if out, err := exec.CommandContext(ctx, b.o.berth, "version").Output(); err == nil {
		b.versions["berth"] = strings.TrimSpace(string(out)) + " (" + strings.TrimPrefix(binVersion(b.o.berth), "(devel) ") + ")"
	} else {
		b.versions["berth"] = "berth " + binVersion(b.o.berth)
	}

	// distribution's registry
	if b.o.registry == "" {
		if p, err := exec.LookPath("registry"); err == nil {
			b.o.registry = p
		} else {
			gobin := goBin()
			b.o.registry = filepath.Join(gobin, "registry")
			if _, err := os.Stat(b.o.registry); err != nil {
				b.logf("installing %s", registryModule)
				cmd := exec.CommandContext(ctx, "go", "install", registryModule)
				cmd.Env = append(os.Environ(), "GOBIN="+gobin)
				if out, err := cmd.CombinedOutput(); err != nil {
					return fmt.Errorf("installing distribution's registry: %v\n%s", err, out)
				}
			}
		}
	}
	b.versions["distribution"] = "distribution " + binVersion(b.o.registry)

	// nginx (the cluster run has no nginx column)
	if b.o.nginx == "" && b.o.only != "cluster" {
		b.o.nginx = lookNginx()
		if b.o.nginx == "" && !b.o.smoke && os.Geteuid() == 0 {
			b.logf("installing nginx (apt-get)")
			env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			install := exec.CommandContext(ctx, "apt-get", "install", "-y", "--no-install-recommends", "nginx")
			install.Env = env
			if _, err := install.CombinedOutput(); err != nil {
				upd := exec.CommandContext(ctx, "apt-get", "update")
				upd.Env = env
				_, _ = upd.CombinedOutput()
				install = exec.CommandContext(ctx, "apt-get", "install", "-y", "--no-install-recommends", "nginx")
				install.Env = env
				if out, err := install.CombinedOutput(); err != nil {
					b.note("apt-get install nginx failed: %v: %s", err, lastLine(out))
				}
			}
			b.o.nginx = lookNginx()
		}
		if b.o.nginx == "" {
			b.note("nginx not found: the nginx column is skipped")
		}
	}
	if b.o.nginx != "" {
		out, _ := exec.CommandContext(ctx, b.o.nginx, "-v").CombinedOutput()
		b.versions["nginx"] = strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version: ")
	}
	// Servers run in the temporary directory: make the paths absolute.
	for _, p := range []*string{&b.o.berth, &b.o.registry, &b.o.nginx} {
		if *p != "" {
			if abs, err := filepath.Abs(*p); err == nil {
				*p = abs
			}
		}
	}
	return nil
}

func lookNginx() string {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func goBin() string {
	if v := os.Getenv("GOBIN"); v != "" {
		return v
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		return filepath.Join(os.Getenv("HOME"), "go", "bin")
	}
	return filepath.Join(strings.Split(strings.TrimSpace(string(out)), string(os.PathListSeparator))[0], "bin")
}

// binVersion describes a Go binary: its main module version and toolchain.
func binVersion(path string) string {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 && (v == "" || v == "(devel)") {
			v = s.Value[:12]
		}
	}
	if v == "" {
		v = "(devel)"
	}
	return v + " " + bi.GoVersion
}

func lastLine(out []byte) string {
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	return string(lines[len(lines)-1])
}
