package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/berth-dev/berth/internal/imageref"
	"github.com/berth-dev/berth/internal/regclient"
	"golang.org/x/sync/errgroup"
)

const warmUsage = `usage: berth warm [--server URL] [--platform os/arch,... | --all-platforms] (IMAGE... | -f LIST)

Pulls images through a running berth so that every manifest, blob and
referrer is cached, ready for berth export. IMAGE is written as for docker
pull: busybox, busybox:1.36, ghcr.io/org/app:1.2,
registry.k8s.io/pause@sha256:...; an image pushed to berth itself is named
with berth's host (localhost:5000/team/app:1). Cached content costs one
manifest request and a HEAD per blob. Images are pulled 4 at a time; each
failure is reported on its own line and makes the exit status 1.

  --server URL        the berth (BERTH_SERVER; default http://127.0.0.1:5000)
  --platform LIST     only these platforms of multi-platform images
                      (os/arch[/variant], comma-separated)
  --all-platforms     every platform (the default)
  -f LIST             read IMAGEs from the file LIST (- for stdin), one a line
  --username USER     with --password-stdin: credentials for berth (default:
                      the docker config's auths entry for the server's host)
  --password-stdin    read the password from the first line of stdin
` + clientTLSUsage

// warmParallel bounds the images pulled at once.
const warmParallel = 4

func warmCmd(ctx context.Context, args []string, s stdio) error {
	fs := flag.NewFlagSet("berth warm", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var cf clientFlags
	cf.register(fs, s.getenv)
	platform := fs.String("platform", "", "")
	allPlatforms := fs.Bool("all-platforms", false, "")
	list := fs.String("f", "", "")
	images, err := parseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(s.out, warmUsage)
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w (berth warm --help lists the flags)", err)
	}
	if *platform != "" && *allPlatforms {
		return errors.New("--platform and --all-platforms exclude each other")
	}
	keep, err := parsePlatforms(*platform)
	if err != nil {
		return err
	}
	if images, err = withList(images, *list, s, cf); err != nil {
		return err
	}
	if len(images) == 0 {
		return errors.New("no image: name one or more, or give -f LIST\n" + warmUsage)
	}
	c, err := cf.client(s)
	if err != nil {
		return err
	}
	m := newMeter(s, "warm")
	var failed atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(warmParallel)
	for _, image := range images {
		g.Go(func() error {
			fetched, err := warmImage(gctx, c, image, keep, m)
			if err != nil {
				failed.Add(1)
				m.printf("%s: %v", image, err)
				return nil // the others go on
			}
			m.printf("%s: cached (%s fetched)", image, humanBytes(fetched))
			return nil
		})
	}
	_ = g.Wait()
	m.close()
	if err := ctx.Err(); err != nil {
		return err
	}
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d of %d images failed", n, len(images))
	}
	return nil
}

// warmImage pulls image through berth: its manifests and referrers (walked,
// so fetched), then each blob berth does not hold yet, read and discarded.
func warmImage(ctx context.Context, c *regclient.Client, image string, keep []string, m *meter) (int64, error) {
	ref, err := imageref.Parse(image)
	if err != nil {
		return 0, err
	}
	img, err := walkImage(ctx, c, c.Name(ref), ref.Reference(), keep)
	if err != nil {
		return 0, err
	}
	var missing []int
	var size int64
	for i, b := range img.Blobs {
		_, held, err := c.HeadBlob(ctx, img.Name, b.Digest)
		if err != nil {
			return 0, fmt.Errorf("blob %s: %w", b.Digest, err)
		}
		if !held {
			missing = append(missing, i)
			size += b.Size
		}
	}
	if len(missing) == 0 {
		return 0, nil
	}
	m.grow(size)
	t := m.task(image, size)
	var fetched int64
	for _, i := range missing {
		b := img.Blobs[i]
		rc, _, err := c.Blob(ctx, img.Name, b.Digest)
		if err != nil {
			t.finish(err)
			return fetched, fmt.Errorf("blob %s: %w", b.Digest, err)
		}
		n, err := io.Copy(io.Discard, t.reader(rc))
		rc.Close()
		fetched += n
		if err != nil {
			t.finish(err)
			return fetched, fmt.Errorf("blob %s: %w", b.Digest, err)
		}
		if n != b.Size {
			t.finish(err)
			return fetched, fmt.Errorf("blob %s: got %d bytes, want %d", b.Digest, n, b.Size)
		}
	}
	t.finish(nil)
	return fetched, nil
}
