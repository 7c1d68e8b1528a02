// Command soak runs the real berth binary for a long time under mixed load
// with an upstream that misbehaves on a schedule, kills it with SIGKILL a
// few times, and checks that nothing was lost, no wrong byte was served and
// no resource grew without bound (see bench/README.md).
//
//	go run ./bench/soak -berth bin/berth                   # make soak: 30 minutes
//	go run ./bench/soak -berth bin/berth -duration 3m      # make soak-short (in make test)
//	go run ./bench/soak -berth bin/berth -crash -rounds 12 # make crash-e2e: the kill -9 loop
//
// The crash loop starts berth, checks everything acknowledged so far, runs
// clients (pushes, chunked uploads, tag overwrites and deletes, mirror fills
// and herds under eviction, GC if berth has it) and kills berth with SIGKILL
// at a random moment, round after round.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type options struct {
	berth    string
	dir      string
	duration time.Duration
	clients  int
	crash    bool
	rounds   int
	// evictAfter: the crash loop goes on at least this long after filling
	// the cache (eviction spares what was read in the last minute).
	evictAfter time.Duration
	seed       uint64
	out        string
	doc        string
	keep       bool
}

func main() {
	var o options
	flag.StringVar(&o.berth, "berth", "bin/berth", "the berth binary")
	flag.StringVar(&o.dir, "dir", "", "work directory (default: a new temporary one, removed unless -keep or a failure)")
	flag.DurationVar(&o.duration, "duration", 30*time.Minute, "soak length")
	flag.IntVar(&o.clients, "clients", 6, "concurrent clients")
	flag.BoolVar(&o.crash, "crash", false, "run the kill -9 loop instead of the soak")
	flag.IntVar(&o.rounds, "rounds", 12, "kill -9 rounds at least (with -crash)")
	flag.DurationVar(&o.evictAfter, "evict-after", 75*time.Second, "with -crash, go on killing this long after filling the cache, so that eviction runs (0: no such wait)")
	flag.Uint64Var(&o.seed, "seed", 0, "random seed (0: from the clock; printed)")
	flag.StringVar(&o.out, "out", "bench/results", "where the soak writes soak.svg and soak.md")
	flag.StringVar(&o.doc, "doc", "docs/benchmarks.md", "the document whose soak section is replaced (empty: none)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory")
	flag.Parse()
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	bin, err := filepath.Abs(o.berth)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("berth binary: %w (make build)", err)
	}
	dir := o.dir
	if dir != "" {
		// A data directory of an earlier run holds tags this run's model
		// never heard of: start clean.
		if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
			return fmt.Errorf("work directory %s is not empty", dir)
		}
	}
	if dir == "" {
		if dir, err = os.MkdirTemp("", "berth-soak-"); err != nil {
			return err
		}
	}
	fmt.Printf("soak: seed %d, work directory %s\n", o.seed, dir)
	up, err := newUpstream(o.seed, 6, 3, 512<<10)
	if err != nil {
		return err
	}
	defer up.close()
	// A cache limit well under the upstream's images (6 x ~2.3 MiB), so
	// eviction runs all the time under the mirror pulls.
	b, err := newBerth(bin, dir, up.addr, "max_cache_bytes: 6MiB\n")
	if err != nil {
		return err
	}
	defer b.kill()
	st := newStats()
	m := newModel()
	if o.crash {
		err = crashLoop(ctx, o, b, up, m, st)
	} else {
		err = soak(ctx, o, b, up, m, st)
	}
	if err == nil && st.failed() > 0 {
		err = fmt.Errorf("%d failures (first: %s); berth's log: %s", st.failed(), st.failures[0], b.log.Name())
	}
	if err == nil && !o.keep && o.dir == "" {
		os.RemoveAll(dir)
	}
	return err
}

func (o options) workers(b *berth, up *upstream, m *model, st *stats, gc *atomic.Int32, seed uint64) []*worker {
	var ws []*worker
	for i := range o.clients {
		ws = append(ws, &worker{c: newClient(b.addr), m: m, st: st, up: up, rng: rand.New(rand.NewPCG(seed, uint64(i))),
			repos: uploadRepos, tags: []string{"t0", "t1", "t2", "t3", "t4", "t5"},
			maxLayer: 256 << 10, gc: gc})
	}
	return ws
}

// runWorkers runs ws until ctx ends and waits for them.
func runWorkers(ctx context.Context, ws []*worker) {
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() { defer wg.Done(); w.run(ctx) }()
	}
	wg.Wait()
}

// crashLoop: start, check, load, kill -9 at a random moment; again.
func crashLoop(ctx context.Context, o options, b *berth, up *upstream, m *model, st *stats) error {
	rng := rand.New(rand.NewPCG(o.seed, 99))
	gc := new(atomic.Int32)
	c := newClient(b.addr)
	// Eviction leaves alone what was read in the last minute: fill the
	// cache past its limit first and go on killing until more than a
	// minute has passed, so that kills land while passes evict.
	if err := b.start(ctx); err != nil {
		return err
	}
	warm := &worker{c: c, m: m, st: st, up: up, rng: rand.New(rand.NewPCG(o.seed, 7))}
	for range 16 {
		if err := warm.pullMirror(ctx, up.newCold()); err != nil {
			return fmt.Errorf("filling the cache before the loop: %w", err)
		}
	}
	b.kill()
	warmed := time.Now()
	var evicted float64
	for round := 0; round < o.rounds || time.Since(warmed) < o.evictAfter; round++ {
		if err := b.start(ctx); err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
		verify(ctx, c, m, up, b.data, st)
		if st.failed() > 0 {
			return fmt.Errorf("round %d: the check after a kill -9 failed", round)
		}
		// Some rounds cut mirror fills short with a faulty upstream too.
		up.fault.Store(int32([]fault{faultNone, faultNone, faultSlow, faultReset}[rng.IntN(4)]))
		lctx, cancel := context.WithCancel(ctx)
		ws := o.workers(b, up, m, st, gc, o.seed+uint64(round)*1000)
		done := make(chan struct{})
		go func() { runWorkers(lctx, ws); close(done) }()
		killAt := time.Duration(200+rng.IntN(1800)) * time.Millisecond
		select {
		case <-time.After(killAt):
		case <-ctx.Done():
		}
		if err := b.alive(); err != nil {
			cancel()
			<-done
			return fmt.Errorf("round %d: %w", round, err)
		}
		if v, err := b.metrics(); err == nil {
			evicted += v["berth_cache_evicted_blobs_total"] // per incarnation: summed
		}
		b.kill()
		cancel()
		<-done
		up.fault.Store(int32(faultNone))
		st.mu.Lock()
		ops := 0
		for _, n := range st.ops {
			ops += n
		}
		st.mu.Unlock()
		fmt.Printf("round %2d: killed after %v; %d operations, %d tags, %.0f blobs evicted so far\n", round, killAt, ops, len(m.tags), evicted)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if err := b.start(ctx); err != nil {
		return err
	}
	verify(ctx, c, m, up, b.data, st)
	if gc.Load() < 0 {
		fmt.Println("crash loop: POST /admin/gc answered 404 (no GC in this berth): GC was left out of the loop")
	}
	if evicted == 0 && o.evictAfter > 0 {
		return fmt.Errorf("no blob was evicted in %v: the loop never ran eviction", time.Since(warmed).Round(time.Second))
	}
	if err := b.stop(); err != nil {
		return fmt.Errorf("graceful stop after the loop: %w", err)
	}
	fmt.Printf("crash loop: kill -9 over %v (%.0f blobs evicted meanwhile): every acknowledged tag resolves and every blob verifies\n",
		time.Since(warmed).Round(time.Second), evicted)
	return nil
}

// sample is one reading of berth's resources.
type sample struct {
	At         time.Duration
	Start      int // which incarnation of berth
	Goroutines float64
	FDs        float64
	RSS        float64
	Heap       float64
}

// soak runs clients for o.duration with the upstream's faults on a
// schedule, kills berth at 20%, 40% and 60% of the run (each followed by a
// quiet check), samples resources every second, and judges the run.
func soak(ctx context.Context, o options, b *berth, up *upstream, m *model, st *stats) error {
	start := time.Now()
	gc := new(atomic.Int32)
	c := newClient(b.addr)
	if err := b.start(ctx); err != nil {
		return err
	}
	var (
		mu      sync.Mutex
		samples []sample
		faults  []faultSpan
	)
	sctx, stopSampling := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bg.Add(2)
	go func() { // the sampler
		defer bg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
			}
			mu.Lock()
			n := b.starts
			mu.Unlock()
			if v, err := b.metrics(); err == nil {
				mu.Lock()
				samples = append(samples, sample{At: time.Since(start), Start: n, Goroutines: v["go_goroutines"],
					FDs: v["process_open_fds"], RSS: v["process_resident_memory_bytes"], Heap: v["go_memstats_heap_inuse_bytes"]})
				mu.Unlock()
			}
		}
	}()
	go func() { // the upstream's schedule: a fault for a while, then a quiet spell
		defer bg.Done()
		period := max(o.duration/40, 3*time.Second)
		for i := 0; ; i++ {
			f := faultNone
			if i%2 == 1 {
				f = fault(1 + (i/2)%int(nFaults-1))
			}
			up.fault.Store(int32(f))
			mu.Lock()
			faults = append(faults, faultSpan{From: time.Since(start), F: f})
			mu.Unlock()
			select {
			case <-sctx.Done():
				up.fault.Store(int32(faultNone))
				return
			case <-time.After(period):
			}
		}
	}()
	kills := []float64{0.2, 0.4, 0.6}
	seed := o.seed
	for phase := 0; phase <= len(kills); phase++ {
		end := o.duration
		if phase < len(kills) {
			end = time.Duration(kills[phase] * float64(o.duration))
		}
		lctx, cancel := context.WithDeadline(ctx, start.Add(end))
		runWorkers(lctx, o.workers(b, up, m, st, gc, seed))
		seed += 1000
		if err := b.alive(); err != nil {
			cancel()
			stopSampling()
			bg.Wait()
			return err
		}
		if ctx.Err() != nil {
			cancel()
			break
		}
		if phase < len(kills) {
			// kill -9 while clients are busy: a fresh set runs for the last
			// instants so the kill lands in the middle of requests.
			kctx, kcancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { runWorkers(kctx, o.workers(b, up, m, st, gc, seed+500)); close(done) }()
			time.Sleep(time.Duration(300+rand.IntN(700)) * time.Millisecond) // a random kill point, not synchronisation
			mu.Lock()
			b.kill()
			mu.Unlock()
			kcancel()
			<-done
			prev := up.fault.Load()
			up.fault.Store(int32(faultNone)) // the quiet check reads through a working upstream
			mu.Lock()
			err := b.start(ctx)
			mu.Unlock()
			if err != nil {
				cancel()
				stopSampling()
				bg.Wait()
				return err
			}
			verify(ctx, c, m, up, b.data, st)
			up.fault.Store(prev)
			fmt.Printf("soak: kill -9 at %v; the check after the restart: %d failures\n", time.Since(start).Round(time.Second), st.failed())
		}
		cancel()
	}
	stopSampling()
	bg.Wait()
	up.fault.Store(int32(faultNone))
	// The end: a graceful stop (fills cut by the faults may still run: they
	// are stopped), a start, and the same check as after the kills.
	if err := b.stop(); err != nil {
		st.fail("graceful stop at the end: %v", err)
	}
	if err := b.start(ctx); err != nil {
		return err
	}
	verify(ctx, c, m, up, b.data, st)
	if err := b.stop(); err != nil {
		st.fail("graceful stop at the end: %v", err)
	}
	rep := judge(o, samples, faults, st, gc.Load(), time.Since(start))
	fmt.Print(rep.text())
	if err := rep.write(o); err != nil {
		return err
	}
	if len(rep.Growth) > 0 {
		return fmt.Errorf("resources grew without bound: %v", rep.Growth)
	}
	return nil
}
