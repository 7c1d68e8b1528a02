// Command berth is a pull-through caching mirror for container registries
// and a private OCI registry in one endpoint.
//
//	berth serve [--config berth.yaml] [--addr :5000] [--data ./data]
//	berth warm [--server URL] [--platform os/arch,... | --all-platforms] (IMAGE... | -f LIST)
//	berth export [--server URL] --out FILE (IMAGE... | -f LIST | --all) [--since PREVIOUS]
//	berth import (--server URL | --data DIR) FILE
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	_ "net/http/pprof" // served only on debug_addr
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/cluster"
	"github.com/berth-dev/berth/internal/mirror"
	"github.com/berth-dev/berth/internal/status"
	"github.com/berth-dev/berth/internal/tlsserve"
	"github.com/berth-dev/berth/proxy"
	"github.com/mattn/go-isatty"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/errgroup"

	// CA roots for https upstreams where the system has none (a FROM
	// scratch container); the system's roots win wherever they exist.
	_ "golang.org/x/crypto/x509roots/fallback"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "berth:", err)
		os.Exit(1)
	}
}

const usage = `usage: berth <command> [flags]

commands:
  serve     run the registry and mirror (berth serve --help for flags)
  warm      pull images through a running berth so that they are cached
  export    write images berth holds to a bundle file (an OCI layout tar)
  import    import a bundle into a running berth, or a stopped one's data
  ls        list repositories, or a repository's tags, of a running berth
  du        show the bytes a running berth holds: local, by upstream, total, limit
  rm        remove a tag, image or blob (mirrored content: purge it)
  gc        collect unreferenced local content now (--dry-run: list it)
  revalidate  make a mirrored tag ask its upstream at the next pull
  htpasswd  print an htpasswd line for USER with a bcrypt hash of the password read from stdin
  version   print the version
  help      print this, or with a command's name its usage`

const htpasswdUsage = `usage: berth htpasswd USER < password

Prints USER:HASH, the bcrypt hash of the first line of stdin, for the file
named by auth.htpasswd.`

const versionUsage = `usage: berth version

Prints berth's version.`

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// clientCommands are the commands that talk to a berth (or its data).
var clientCommands = map[string]struct {
	run   func(context.Context, []string, stdio) error
	usage string
}{
	"warm":       {warmCmd, warmUsage},
	"export":     {exportCmd, exportUsage},
	"import":     {importCmd, importUsage},
	"ls":         {lsCmd, lsUsage},
	"du":         {duCmd, duUsage},
	"rm":         {rmCmd, rmUsage},
	"gc":         {gcCmd, gcUsage},
	"revalidate": {revalidateCmd, revalidateUsage},
}

// isHelp reports whether arg asks for help, as -h, --help or -help.
func isHelp(arg string) bool { return arg == "-h" || arg == "--help" || arg == "-help" }

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	switch args[0] {
	case "serve":
		// Before anything else: SIGHUP's default action ends the process.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		load := func() (Config, error) { return loadConfig(args[1:], os.Getenv) }
		cfg, err := load()
		if errors.Is(err, flag.ErrHelp) {
			serveUsage(stdout)
			return nil
		}
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return serveWith(ctx, cfg, hooks{reload: hup, load: load})
	case "warm", "export", "import", "ls", "du", "rm", "gc", "revalidate":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		s := stdio{in: stdin, out: stdout, err: os.Stderr, getenv: os.Getenv, tty: isatty.IsTerminal(os.Stderr.Fd())}
		return clientCommands[args[0]].run(ctx, args[1:], s)
	case "htpasswd":
		if len(args) == 2 && isHelp(args[1]) {
			fmt.Fprintln(stdout, htpasswdUsage)
			return nil
		}
		if len(args) != 2 || args[1] == "" || strings.ContainsAny(args[1], ":\n") || strings.HasPrefix(args[1], "-") {
			return errors.New("usage: berth htpasswd USER < password")
		}
		line, err := htpasswdLine(args[1], stdin)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, line)
		return nil
	case "version", "--version":
		if len(args) == 2 && isHelp(args[1]) {
			fmt.Fprintln(stdout, versionUsage)
			return nil
		}
		fmt.Fprintln(stdout, "berth", version)
		return nil
	case "help", "-h", "--help", "-help":
		switch {
		case len(args) == 1:
			fmt.Fprintln(stdout, usage)
		case args[1] == "serve":
			serveUsage(stdout)
		case args[1] == "htpasswd":
			fmt.Fprintln(stdout, htpasswdUsage)
		case args[1] == "version":
			fmt.Fprintln(stdout, versionUsage)
		case clientCommands[args[1]].usage != "":
			fmt.Fprintln(stdout, clientCommands[args[1]].usage)
		default:
			return fmt.Errorf("unknown command %q\n%s", args[1], usage)
		}
		return nil
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}

// newLogger returns the logger of cfg and, for JSON, the writer that batches
// its lines (see logWriter); the console format is for a person watching,
// so it is written at once (and the writer is nil).
func newLogger(cfg Config) (zerolog.Logger, *logWriter) {
	level, _ := zerolog.ParseLevel(cfg.LogLevel)
	format := cfg.LogFormat
	if format == "" {
		format = "json"
		if isatty.IsTerminal(os.Stderr.Fd()) {
			format = "console"
		}
	}
	var l zerolog.Logger
	var w *logWriter
	if format == "console" {
		l = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly})
	} else {
		w = newLogWriter(os.Stderr, time.Second)
		l = zerolog.New(w)
	}
	return l.Level(level).With().Timestamp().Logger(), w
}

// htpasswdLine hashes the first line of r as USER's password.
func htpasswdLine(user string, r io.Reader) (string, error) {
	pw, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	pw = strings.TrimRight(pw, "\r\n")
	if pw == "" {
		return "", errors.New("htpasswd: empty password on stdin")
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
	if err != nil {
		return "", err
	}
	return user + ":" + string(hash), nil
}

// serve runs berth until ctx ends. ready, if set, receives the bound address.
func serve(ctx context.Context, cfg Config, ready chan<- string) error {
	return serveWith(ctx, cfg, hooks{ready: ready})
}

// hooks connect serve to what surrounds it.
type hooks struct {
	ready chan<- string // receives the bound address
	// reload: each signal reloads the configuration with load (SIGHUP).
	reload <-chan os.Signal
	load   func() (Config, error)
	// reloaded, if set, is told how each reload went (tests wait on it).
	reloaded chan<- error
}

// serveWith is serve, with reloads.
func serveWith(ctx context.Context, cfg Config, h hooks) (err error) {
	log, logw := newLogger(cfg)
	defer logw.Close()
	var certs *tlsserve.Reloader
	var tlsConfig *tls.Config
	if cfg.TLS.CertFile != "" {
		certs, err = tlsserve.NewReloader(tlsserve.Config(cfg.TLS), log)
		if ke := (*tlsserve.KeyError)(nil); errors.As(err, &ke) {
			return keyError(ke.Key, "", ke.Err)
		} else if err != nil {
			return err
		}
		tlsConfig = tlsserve.ServerConfig(certs)
	}
	// The index gets a few seconds to close: a data directory removed or
	// made read-only under berth must not hold its exit for minutes.
	reserve := cfg.DiskReserve
	if reserve == 0 {
		reserve = -1 // cache.Options: negative is no check
	}
	store, err := cache.Open(cfg.Data, cache.Options{Logger: log, MaxBytes: cfg.MaxCacheBytes, CloseTimeout: 5 * time.Second, DiskReserve: reserve,
		UploadTTL: cfg.Uploads.TTL, MaxUploads: cfg.Uploads.MaxSessions, MaxUploadBytes: cfg.Uploads.MaxBytes})
	if errors.Is(err, cache.ErrNoSpace) {
		return keyError("disk_reserve", "", err)
	}
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerStore(reg, store)
	if certs != nil {
		reg.MustRegister(certs.Collectors()...)
	}
	registerGC(reg, store)
	page := status.New(status.Options{Version: version, Store: store})
	api := &reloadable{log: log, store: store, mirrorMet: mirror.NewMetrics(reg), httpMet: proxy.NewMetrics(reg),
		readOnly: new(atomic.Bool), page: page, local: cache.NewLocal(store)}
	api.readOnly.Store(cfg.ReadOnly)
	shared, err := openShared(ctx, cfg, store, reg, log)
	if err != nil {
		store.Close()
		return err
	}
	defer shared.close()
	if shared.registry != nil {
		api.local = shared.registry
	}
	if shared.source != nil {
		api.source = shared.source
	}
	first, err := api.build(cfg)
	if err != nil {
		store.Close()
		return err
	}
	api.current.Store(first)
	var handlers sync.WaitGroup // requests running, so the index is never closed under one
	var running atomic.Int64    // the same, counted: the log is flushed whenever berth falls idle
	mux := http.NewServeMux()
	mux.Handle("/v2/", api)
	mux.Handle("/v2", api)
	mux.Handle("/admin/", &admin{api: api})
	mux.Handle("/", page) // the status page; any other unknown path is 404
	if shared.cluster != nil {
		mux.Handle(cluster.Prefix, api.peers(shared.cluster))
	}
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if ctx.Err() != nil {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		if err := store.Healthy(); err != nil {
			http.Error(w, "storage unavailable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		api.stop()
		store.Close()
		return fmt.Errorf("addr: %w", err)
	}
	baseCtx := log.WithContext(context.Background())
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			handlers.Add(1)
			running.Add(1)
			defer handlers.Done()
			if strings.HasPrefix(r.URL.Path, "/v2/") {
				api.ServeHTTP(w, r) // the registry's requests skip the mux's pattern matching
			} else {
				mux.ServeHTTP(w, r)
			}
			if running.Add(-1) == 0 {
				// Idle: nothing to batch with, so the lines go out now (or
				// within a few milliseconds of the last batch), and whoever
				// reads the log after a response finds its line.
				logw.Idle()
			}
		}),
		BaseContext: func(net.Listener) context.Context { return baseCtx },
		ConnContext: proxy.WithConn,
		// Headers are small; a client sending megabytes of them, or taking
		// long to, holds memory for nothing. Bodies have their own idle
		// deadline (proxy.Options.BodyIdleTimeout).
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          stdlog.New(io.Discard, "", 0),
		TLSConfig:         tlsConfig, // ServeTLS adds HTTP/2
	}
	if certs != nil {
		srv.ErrorLog = certs.ErrorLog() // counts failed handshakes
	}
	names := upstreamNames(cfg)
	page.SetUpstreams(names)
	log.Info().Str("addr", ln.Addr().String()).Str("data", cfg.Data).Strs("upstreams", names).
		Strs("local", cfg.Local).Bool("offline", cfg.Offline).Bool("read_only", cfg.ReadOnly).Bool("auth", cfg.Auth.Htpasswd != "").Bool("tls", certs != nil).
		Bool("ldap", cfg.Auth.LDAP.URL != "").Bool("token", cfg.Auth.Token.Enabled).Int("access_rules", len(cfg.Access)).
		Int64("max_cache_bytes", cfg.MaxCacheBytes).Int64("disk_reserve", cfg.DiskReserve).Str("storage", cfg.Storage.Driver).Str("cluster_self", cfg.Cluster.Self).
		Dur("gc_interval", cfg.GC.Interval).Int("retention_rules", len(cfg.Retention)).
		Str("version", version).Msg("berth serving")
	if certs != nil {
		leaf := certs.Leaf()
		log.Info().Str("subject", leaf.Subject.String()).Str("serial", tlsserve.Serial(leaf)).Time("not_after", leaf.NotAfter).
			Bool("client_certificates", cfg.TLS.ClientCAFile != "").Msg("tls: serving HTTPS (HTTP/2 and HTTP/1.1, TLS 1.2+)")
	}
	for _, w := range advisories(cfg) {
		log.Warn().Msg(w)
	}
	if h.ready != nil {
		h.ready <- ln.Addr().String()
	}
	notifyReady(log)
	g, gctx := errgroup.WithContext(ctx)
	if cfg.DebugAddr != "" {
		dbg := &http.Server{Addr: cfg.DebugAddr, Handler: http.DefaultServeMux, ReadHeaderTimeout: 10 * time.Second}
		log.Info().Str("addr", cfg.DebugAddr).Msg("pprof on /debug/pprof/")
		g.Go(func() error {
			if err := dbg.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("debug_addr: %w", err)
			}
			return nil
		})
		g.Go(func() error { <-gctx.Done(); return dbg.Close() })
	}
	g.Go(func() error {
		serve := srv.Serve
		if tlsConfig != nil {
			serve = func(ln net.Listener) error { return srv.ServeTLS(ln, "", "") }
		}
		if err := serve(proxy.Listener(ln)); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	if certs != nil {
		g.Go(func() error { certs.Run(gctx, tlsserve.DefaultInterval); return nil })
	}
	g.Go(func() error { runCollector(gctx, api); return nil })
	g.Go(func() error {
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-h.reload:
				if certs != nil {
					_, _ = certs.Check() // at once, as after nginx -s reload; it logs its own outcome
				}
				err := api.reload(h.load)
				if h.reloaded != nil {
					select {
					case h.reloaded <- err:
					case <-gctx.Done():
					}
				}
			}
		}
	})
	g.Go(func() error {
		<-gctx.Done()
		timeout := api.current.Load().cfg.ShutdownTimeout
		log.Info().Dur("timeout", timeout).Msg("shutting down: finishing in-flight requests")
		notifyStopping(log)
		sctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn().Err(err).Msg("requests still running at the shutdown timeout: closing their connections")
			srv.Close()
		}
		return nil
	})
	err = g.Wait()
	if !waitTimeout(&handlers, shutdownGrace) {
		// A handler stuck past its closed connection: closing the index under
		// it could corrupt what it writes. Badger replays its log at the next
		// start, so leaving it unclosed loses nothing acknowledged.
		log.Error().Dur("grace", shutdownGrace).Msg("requests still running after the shutdown timeout; exiting without closing the index")
		return err
	}
	api.stop()
	shared.close()
	if cerr := store.Close(); cerr != nil {
		log.Error().Err(cerr).Msg("closing the index")
	}
	log.Info().Msg("stopped")
	return err
}

// prefetch is the key's value as mirror.Options wants it: there 0 is the
// default and a negative number is off; in the configuration 0 is off too.
func prefetch(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// shutdownGrace is how long handlers may take to notice their connection
// was closed after the shutdown timeout.
const shutdownGrace = 5 * time.Second

// waitTimeout waits for wg at most d; false if it timed out.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// registerStore exports the store's disk usage and eviction counters.
func registerStore(reg prometheus.Registerer, st *cache.Store) {
	u := func(f func(cache.Usage) float64) func() float64 { return func() float64 { return f(st.Usage()) } }
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_cache_bytes", Help: "Bytes of blobs on disk."},
			u(func(x cache.Usage) float64 { return float64(x.Bytes) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_cache_blobs", Help: "Blobs on disk."},
			u(func(x cache.Usage) float64 { return float64(x.Blobs) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_cache_pinned_bytes", Help: "Bytes of pushed (never evicted) blobs, as of the last eviction pass."},
			u(func(x cache.Usage) float64 { return float64(x.PinnedBytes) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_cache_limit_bytes", Help: "max_cache_bytes (0: unbounded)."},
			u(func(x cache.Usage) float64 { return float64(x.Limit) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_cache_evicted_blobs_total", Help: "Mirrored blobs evicted."},
			u(func(x cache.Usage) float64 { return float64(x.EvictedBlobs) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_cache_evicted_bytes_total", Help: "Bytes of mirrored blobs evicted."},
			u(func(x cache.Usage) float64 { return float64(x.EvictedBytes) })),
	)
	registerSpace(reg, st)
}

// registerSpace exports the free-space reserve and storage health.
func registerSpace(reg prometheus.Registerer, st *cache.Store) {
	sp := func(f func(cache.SpaceStatus) float64) func() float64 { return func() float64 { return f(st.Space()) } }
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_disk_free_bytes", Help: "Free bytes on the data filesystem, less what fills in flight will write."},
			sp(func(x cache.SpaceStatus) float64 { return float64(x.Free) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_disk_reserve_bytes", Help: "disk_reserve: writes that would go below it are refused."},
			sp(func(x cache.SpaceStatus) float64 { return float64(x.Reserve) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_storage_writable", Help: "1 while the data directory accepts writes (healthy and above disk_reserve), else 0."},
			sp(func(x cache.SpaceStatus) float64 { return b(x.Writable) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_storage_healthy", Help: "1 while the data directory is there and writable (the storage probe), else 0."},
			sp(func(x cache.SpaceStatus) float64 { return b(x.Failed == "") })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_writes_refused_no_space_total", Help: "Writes refused because the disk is below disk_reserve or full."},
			sp(func(x cache.SpaceStatus) float64 { return float64(x.NoSpace) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_writes_refused_unavailable_total", Help: "Writes refused because the storage is unavailable."},
			sp(func(x cache.SpaceStatus) float64 { return float64(x.Refused) })),
	)
}
