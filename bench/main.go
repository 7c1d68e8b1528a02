// Command bench measures berth against the registry it replaces
// (distribution's registry in proxy mode) and against the physical limit
// (nginx sending the same blob files with sendfile, and the same manifest as
// a static file), all on loopback in one run, berth and nginx both logging
// every request. See bench/README.md.
//
//	go run ./bench                # the full run (make bench), ~10 minutes on 2 cores
//	go run ./bench -smoke         # tiny sizes, a few seconds (make bench-smoke)
//	go run ./bench -only cluster  # three replicas on SeaweedFS only (make bench-cluster; cluster.go)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

type options struct {
	smoke    bool
	out      string
	doc      string
	rounds   int
	keep     bool
	berth    string
	registry string
	nginx    string
	rateMBps float64

	bigSize     int64 // the warm throughput blob
	smallSize   int64 // the request-rate blobs
	nSmall      int
	layerSize   int64 // the 10-layer image
	nLayers     int
	herdSize    int64 // the herd blob
	herdClients int
	warmClients int
	// warmReps is how many single-client warm transfers each server makes
	// per round, interleaved: one 1 GiB transfer takes half a second, so a
	// single sample is mostly noise on a small machine.
	warmReps int
	conns    int
	// fixedRate is the offered load of the open-loop latency rows (req/s).
	fixedRate float64
	dur       time.Duration
	// The air-gap bundle: an image of bundleLayers layers, bundleSize in all.
	bundleSize   int64
	bundleLayers int
	// only, when "tls", runs the TLS rows alone (tls.go); when "cluster",
	// the cluster run alone (cluster.go).
	only string
}

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

func main() {
	var o options
	flag.BoolVar(&o.smoke, "smoke", false, "tiny sizes and short runs (seconds), to check that the bench still works")
	flag.StringVar(&o.out, "out", "", "directory for latest.{json,svg,md} (default bench/results; a temporary one with -smoke)")
	flag.StringVar(&o.doc, "doc", "", "markdown file whose generated section is replaced with this run (default docs/benchmarks.md; none with -smoke)")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds of every measurement, interleaved across servers; medians are reported")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (server data and logs)")
	flag.StringVar(&o.berth, "berth", "", "berth binary (default bin/berth, built if missing)")
	flag.StringVar(&o.registry, "registry", "", "distribution's registry binary (default: PATH, then GOPATH/bin, installed if missing)")
	flag.StringVar(&o.nginx, "nginx", "", "nginx binary (default: PATH, /usr/sbin; apt-get installed if missing, skipped with -smoke)")
	flag.Float64Var(&o.rateMBps, "upstream-rate", 100, "throttle between the proxies and the upstream, MB/s (0: none)")
	dur := flag.Duration("duration", 0, "duration of each request-rate run (default 5s, 300ms with -smoke)")
	bundleMiB := flag.Int64("bundle-mib", 0, "size of the image exported and imported, MiB (default 2048, 16 with -smoke)")
	flag.StringVar(&o.only, "only", "", "tls: only the rows over TLS (berth vs nginx with the same certificate); docs/benchmarks.md is left alone.\ncluster: only the cluster run (three replicas on SeaweedFS; writes cluster.{json,md} and its own section of docs/benchmarks.md)")
	fixedRate := flag.Float64("fixed-rate", 0, "offered load of the open-loop latency rows, req/s (default 15000, 2000 with -smoke)")
	bigMiB := flag.Int64("big-mib", 0, "size of the warm throughput blob, MiB (default 1024, 8 with -smoke)")
	floorAddr := flag.String("floor-serve", "", "internal: serve the net/http floor on this address (floor.go) instead of running the bench")
	floorEntries := flag.String("floor-entries", "", "internal: the floor server's responses (JSON)")
	flag.Parse()
	if *floorAddr != "" {
		if err := serveFloor(*floorAddr, *floorEntries); err != nil {
			fmt.Fprintln(os.Stderr, "berthbench floor:", err)
			os.Exit(1)
		}
		return
	}
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "berthbench: unexpected arguments", flag.Args())
		os.Exit(2)
	}
	if o.rounds < 1 {
		o.rounds = 1
	}
	if o.smoke {
		o.bigSize, o.smallSize, o.nSmall = 8*mib, 10*kib, 20
		o.layerSize, o.nLayers = 256*kib, 10
		o.herdSize, o.herdClients = 4*mib, 32
		o.warmClients, o.conns, o.dur, o.warmReps = 4, 16, 300*time.Millisecond, 1
		o.fixedRate = 2000
		o.bundleSize, o.bundleLayers = 16*mib, 4
		if !flagSet("rounds") {
			o.rounds = 1
		}
	} else {
		o.bigSize, o.smallSize, o.nSmall = 1*gib, 10*kib, 200
		o.layerSize, o.nLayers = 10*mib, 10
		o.herdSize, o.herdClients = 256*mib, 32
		o.warmClients, o.conns, o.dur, o.warmReps = 16, 64, 5*time.Second, 5
		o.fixedRate = 15000
		o.bundleSize, o.bundleLayers = 2*gib, 4
	}
	if *dur > 0 {
		o.dur = *dur
	}
	if *fixedRate > 0 {
		o.fixedRate = *fixedRate
	}
	if *bundleMiB > 0 {
		o.bundleSize = *bundleMiB * mib
	}
	if *bigMiB > 0 {
		o.bigSize = *bigMiB * mib
	}
	if o.only != "" && o.only != "tls" && o.only != "cluster" {
		fmt.Fprintln(os.Stderr, "berthbench: -only takes tls or cluster")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	b := &bench{o: o}
	go func() {
		// If the run does not unwind promptly after a signal, stop the
		// servers and leave anyway.
		<-ctx.Done()
		time.Sleep(20 * time.Second)
		b.cleanup()
		os.Exit(130)
	}()
	err := b.run(ctx)
	interrupted := ctx.Err() != nil
	stop()
	b.cleanup()
	if err != nil {
		if interrupted {
			fmt.Fprintln(os.Stderr, "berthbench: interrupted")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "berthbench:", err)
		os.Exit(1)
	}
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// bench is one run: its servers, its content and its samples.
type bench struct {
	o     options
	root  string // the repository
	tmp   string
	start time.Time

	mu       sync.Mutex
	procs    []*proc
	shaper   *shaper
	once     sync.Once
	notes    []string
	versions map[string]string

	servers map[string]*server
	content *content
	samples samples
	// clusterHerd is the cluster run's herd size (cluster.go).
	clusterHerd int
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	b.mu.Lock()
	b.notes = append(b.notes, s)
	b.mu.Unlock()
	b.logf("note: %s", s)
}

// cleanup stops every process this run started and removes its temporary
// directory. It is safe to call more than once and from any goroutine.
func (b *bench) cleanup() {
	b.once.Do(func() {
		b.mu.Lock()
		procs := append([]*proc(nil), b.procs...)
		sh := b.shaper
		b.mu.Unlock()
		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Add(1)
			go func() { defer wg.Done(); p.stop() }()
		}
		wg.Wait()
		if sh != nil {
			sh.close()
		}
		if b.tmp != "" {
			if b.o.keep {
				fmt.Fprintln(os.Stderr, "berthbench: kept", b.tmp)
			} else {
				_ = os.RemoveAll(b.tmp)
			}
		}
	})
}

func (b *bench) run(ctx context.Context) error {
	b.start = time.Now()
	b.versions = map[string]string{}
	root, err := findRoot()
	if err != nil {
		return err
	}
	b.root = root
	if b.o.out == "" && !b.o.smoke && (b.o.only == "" || b.o.only == "cluster") {
		b.o.out = filepath.Join(root, "bench", "results")
	}
	if b.o.doc == "" && !b.o.smoke && (b.o.only == "" || b.o.only == "cluster") {
		b.o.doc = filepath.Join(root, "docs", "benchmarks.md")
	}
	if b.tmp, err = os.MkdirTemp("", "berthbench-"); err != nil {
		return err
	}
	if b.o.out == "" {
		b.o.out = filepath.Join(b.tmp, "results")
	}
	if err := b.findTools(ctx); err != nil {
		return err
	}
	if b.o.only == "cluster" {
		return b.runCluster(ctx)
	}
	if b.o.only == "tls" {
		b.samples = samples{}
		if err := b.measureTLS(ctx); err != nil {
			return fmt.Errorf("tls: %w", err)
		}
	} else {
		if err := b.setup(ctx); err != nil {
			return err
		}
		if err := b.measure(ctx); err != nil {
			return err
		}
	}
	rep := b.report()
	fmt.Println(rep.markdown())
	if err := rep.write(b.o.out, b.o.doc); err != nil {
		return err
	}
	b.logf("wrote %s/latest.{json,svg,md}%s", b.o.out, map[bool]string{true: " and " + b.o.doc}[b.o.doc != ""])
	return nil
}

// findRoot returns the repository root: the nearest directory upwards
// holding bench/ beside go.mod.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "bench")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the berth repository (no go.mod with bench/ found)")
		}
		dir = parent
	}
}
