package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/bundle"
	"github.com/rs/zerolog"
)

const importUsage = `usage: berth import [--server URL] FILE
       berth import --data DIR [--config FILE] FILE

Imports a bundle made by berth export (FILE, or - for stdin: the bundle is
read once, in order) into a running berth (--server, through its
POST /admin/import; with client authentication on, it needs credentials
allowed to push), or into the data directory of a stopped one (--data).
Every blob's size and digest, and every manifest's references (in the
bundle or already in berth), are checked before anything becomes visible: a
tampered, truncated or incomplete bundle is refused, naming the first bad or
missing digest, and nothing of it is kept. Images of a configured upstream
(docker.io/library/busybox:latest) become that upstream's cached content;
other names local repositories. A tag berth already has is moved only if
the bundle was made after the tag was last set or confirmed. Importing a
bundle twice changes nothing.

  --server URL        the berth (BERTH_SERVER; default http://127.0.0.1:5000)
  --data DIR          the data directory of a stopped berth
  --config FILE       with --data: berth's configuration, for its upstreams
                      (BERTH_CONFIG; default: the built-in upstreams)
  --username USER     with --password-stdin: credentials for berth (default:
                      the docker config's auths entry for the server's host)
  --password-stdin    read the password from the first line of stdin
` + clientTLSUsage

func importCmd(ctx context.Context, args []string, s stdio) error {
	fs := flag.NewFlagSet("berth import", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var cf clientFlags
	cf.register(fs, s.getenv)
	data := fs.String("data", "", "")
	config := fs.String("config", "", "")
	pos, err := parseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(s.out, importUsage)
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w (berth import --help lists the flags)", err)
	}
	if len(pos) != 1 {
		return errors.New("name one bundle FILE (- for stdin)\n" + importUsage)
	}
	serverSet := false
	fs.Visit(func(f *flag.Flag) { serverSet = serverSet || f.Name == "server" })
	if *data != "" && serverSet {
		return errors.New("--data and --server exclude each other: --data for a stopped berth, --server for a running one")
	}
	file := pos[0]
	if file == "-" && cf.passwordStdin {
		return errors.New("FILE - and --password-stdin both read stdin")
	}
	var in io.Reader = s.in
	var size int64
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return err
		}
		defer f.Close()
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			size = fi.Size()
		}
		in = f
	}
	var sum bundle.Summary
	if *data != "" {
		sum, err = importData(ctx, *data, *config, in, size, s)
	} else {
		sum, err = importServer(ctx, &cf, in, size, s)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(s.out, "imported %s: %d images, %d blobs (%s) added, %d already held, %d tags set, %d tags kept (berth's are newer than the bundle)\n",
		file, sum.Images, sum.Blobs, humanBytes(sum.Bytes), sum.Skipped, sum.Tags, sum.TagsKept)
	return nil
}

func importServer(ctx context.Context, cf *clientFlags, in io.Reader, size int64, s stdio) (bundle.Summary, error) {
	var sum bundle.Summary
	c, err := cf.client(s)
	if err != nil {
		return sum, err
	}
	m := newMeter(s, "import")
	m.grow(size)
	t := m.task("bundle", size)
	if f, ok := in.(*os.File); ok && size > 0 {
		// A regular file goes out as it is, sized (a sendfile over plain
		// HTTP); the bar follows the file's offset, which the copy advances.
		stop := followOffset(f, t)
		err = c.Post(ctx, "/admin/import", "application/x-tar", f, size, &sum)
		stop()
	} else {
		err = c.Post(ctx, "/admin/import", "application/x-tar", t.reader(in), -1, &sum)
	}
	t.finish(err)
	m.close()
	if err != nil {
		return sum, fmt.Errorf("import refused, nothing of the bundle was kept: %w", err)
	}
	return sum, nil
}

func importData(ctx context.Context, dir, config string, in io.Reader, size int64, s stdio) (bundle.Summary, error) {
	var sum bundle.Summary
	var args []string
	if config != "" {
		args = []string{"--config", config}
	}
	cfg, err := loadConfig(args, s.getenv)
	if err != nil {
		return sum, err
	}
	st, err := cache.Open(dir, cache.Options{Logger: zerolog.Nop(), CloseTimeout: 10 * time.Second})
	if errors.Is(err, cache.ErrInUse) {
		return sum, fmt.Errorf("%s is in use by a running berth; use --server", dir)
	}
	if err != nil {
		return sum, err
	}
	m := newMeter(s, "import")
	m.grow(size)
	t := m.task("bundle", size)
	opts := bundle.ImportOptions{Upstream: upstreamOf(cfg), Progress: t.add}
	if cfg.Storage.Driver == "s3" {
		sh, err := openShared(ctx, Config{Storage: cfg.Storage, MaxManifestBytes: cfg.MaxManifestBytes}, st, nil, zerolog.Nop())
		if err != nil {
			st.Close()
			return sum, err
		}
		opts.Publish = publishTo(sh.registry)
	}
	sum, err = bundle.Import(ctx, st, in, opts)
	t.finish(err)
	m.close()
	if cerr := st.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return sum, fmt.Errorf("import refused, nothing of the bundle was kept: %w", err)
	}
	return sum, nil
}

// followOffset adds to t what is read of f, by its offset, until stop.
func followOffset(f *os.File, t *task) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	var seen int64
	poll := func() {
		if pos, err := f.Seek(0, io.SeekCurrent); err == nil && pos > seen {
			t.add(int(pos - seen))
			seen = pos
		}
	}
	go func() {
		defer close(finished)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				poll()
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		poll()
	}
}
