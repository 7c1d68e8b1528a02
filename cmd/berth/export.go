package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/bundle"
	"github.com/berth-dev/berth/internal/imageref"
	"github.com/berth-dev/berth/internal/iox"
	"github.com/berth-dev/berth/internal/regclient"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const exportUsage = `usage: berth export [--server URL] --out FILE (IMAGE... | -f LIST | --all) [--since PREVIOUS] [--platform os/arch,...]

Writes images berth holds to FILE, one OCI image layout as a tar
(oci-layout, blobs/<alg>/<hex>, index.json last), through berth's HTTP API.
Each image is listed in index.json under its full reference
(org.opencontainers.image.ref.name: docker.io/library/busybox:latest; an
image pushed to berth under its bare name, team/app:1), with its referrers
(signatures, SBOMs). FILE.digests, written beside it, lists every blob the
other side holds once FILE is imported. The bundle is written to
FILE.partial and renamed at the end: an interrupted export leaves no FILE.

  --server URL        the berth (BERTH_SERVER; default http://127.0.0.1:5000)
  --out FILE          the bundle to write
  --all               every image berth holds: each tag of each repository
                      of its catalog (mirrored repositories as <upstream>/<name>)
  -f LIST             read IMAGEs from the file LIST (- for stdin), one a line
  --since PREVIOUS    leave out the blobs an earlier bundle carried
                      (PREVIOUS is that bundle or its .digests file)
  --platform LIST     only these platforms of multi-platform images
                      (os/arch[/variant], comma-separated; default: all)
  --username USER     with --password-stdin: credentials for berth (default:
                      the docker config's auths entry for the server's host)
  --password-stdin    read the password from the first line of stdin
` + clientTLSUsage

// exportItem is one image to export: where berth serves it and the name
// the bundle gives it.
type exportItem struct {
	name    string // repository on berth
	ref     string // tag or digest
	refName string // org.opencontainers.image.ref.name
}

func exportCmd(ctx context.Context, args []string, s stdio) error {
	fs := flag.NewFlagSet("berth export", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var cf clientFlags
	cf.register(fs, s.getenv)
	out := fs.String("out", "", "")
	all := fs.Bool("all", false, "")
	list := fs.String("f", "", "")
	since := fs.String("since", "", "")
	platform := fs.String("platform", "", "")
	images, err := parseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(s.out, exportUsage)
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w (berth export --help lists the flags)", err)
	}
	if *out == "" {
		return errors.New("--out FILE is required\n" + exportUsage)
	}
	keep, err := parsePlatforms(*platform)
	if err != nil {
		return err
	}
	if images, err = withList(images, *list, s, cf); err != nil {
		return err
	}
	if *all == (len(images) > 0) {
		return errors.New("name images (IMAGE... or -f LIST) or give --all, not both\n" + exportUsage)
	}
	opts := bundle.Options{Platforms: keep}
	if *since != "" {
		set, err := bundle.ReadDigests(*since)
		if err != nil {
			return fmt.Errorf("--since: %w", err)
		}
		opts.Since, opts.SinceName = set, filepath.Base(strings.TrimSuffix(*since, bundle.SidecarSuffix))
	}
	c, err := cf.client(s)
	if err != nil {
		return err
	}
	var items, untagged []exportItem
	if *all {
		if items, untagged, err = listAll(ctx, c); err != nil {
			return err
		}
	}
	for _, image := range images {
		ref, err := imageref.Parse(image)
		if err != nil {
			return err
		}
		it := exportItem{name: c.Name(ref), ref: ref.Reference(), refName: ref.String()}
		if it.name == ref.Repository { // pushed to berth itself: its bare name
			it.refName = strings.TrimPrefix(ref.String(), ref.Registry+"/")
		}
		items = append(items, it)
	}
	items, imgs, err := walkAll(ctx, c, items, untagged, keep)
	if err != nil {
		return err
	}
	return writeBundle(ctx, c, items, imgs, *out, opts, s)
}

// walkAll walks every item, then those of untagged that no item holds.
func walkAll(ctx context.Context, c *regclient.Client, items, untagged []exportItem, keep []string) ([]exportItem, []*remoteImage, error) {
	imgs := make([]*remoteImage, 0, len(items))
	seen := map[string]bool{} // repo@digest of every manifest walked
	add := func(it exportItem) error {
		img, err := walkImage(ctx, c, it.name, it.ref, keep)
		if err != nil {
			return fmt.Errorf("%s: %w", it.refName, err)
		}
		for _, m := range img.Manifests {
			seen[it.name+"@"+m.Desc.Digest.String()] = true
		}
		for _, d := range img.Listed { // children of platforms left out too
			seen[it.name+"@"+d.String()] = true
		}
		imgs = append(imgs, img)
		return nil
	}
	for _, it := range items {
		if err := add(it); err != nil {
			return nil, nil, err
		}
	}
	for _, it := range untagged {
		if seen[it.name+"@"+it.ref] {
			continue
		}
		if err := add(it); err != nil {
			return nil, nil, err
		}
		items = append(items, it)
	}
	return items, imgs, nil
}

// listAll lists every image berth holds: each tag of each repository of
// its catalog, as berth itself holds them (/admin/inventory: a mirrored
// repository's tags are not asked of its upstream), and the manifests no
// tag names (an image pulled by digest), which writeBundle adds unless
// they are part of another image.
func listAll(ctx context.Context, c *regclient.Client) (items, untagged []exportItem, err error) {
	repos, err := c.Catalog(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("catalog: %w", err)
	}
	for _, repo := range repos {
		var inv inventory
		if err := c.Get(ctx, "/admin/inventory", url.Values{"repo": {repo}}, &inv); err != nil {
			return nil, nil, fmt.Errorf("inventory of %s: %w", repo, err)
		}
		for _, tag := range inv.Tags {
			items = append(items, exportItem{name: repo, ref: tag, refName: repo + ":" + tag})
		}
		// Indexes first: their children are then known as parts of them.
		slices.SortStableFunc(inv.Manifests, func(a, b cache.ManifestRecord) int {
			return cmp.Compare(rank(b.MediaType), rank(a.MediaType))
		})
		for _, m := range inv.Manifests {
			if m.Subject == "" { // a referrer travels with its subject
				untagged = append(untagged, exportItem{name: repo, ref: m.Digest.String(), refName: repo + "@" + m.Digest.String()})
			}
		}
	}
	return items, untagged, nil
}

// rank orders indexes before manifests.
func rank(mediaType string) int {
	if mediaType == ocispec.MediaTypeImageIndex || mediaType == "application/vnd.docker.distribution.manifest.list.v2+json" {
		return 1
	}
	return 0
}

// writeBundle streams the blobs of the walked images (imgs[i] is items[i]: its
// manifests are known, so is the total) into FILE.partial,
// renamed to FILE once whole; FILE.digests is written beside it.
func writeBundle(ctx context.Context, c *regclient.Client, items []exportItem, imgs []*remoteImage, out string, opts bundle.Options, s stdio) (err error) {
	partial := out + ".partial"
	f, err := os.Create(partial)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			// Interrupted, FILE.partial stays (without index.json, no import
			// takes it); any other failure leaves nothing.
			if ctx.Err() == nil {
				os.Remove(partial)
			}
		}
	}()
	// The bundle starts its way to disk as it is written: the fsync at the
	// end then has little left to do.
	w, err := bundle.NewWriter(iox.Writeback(f), opts)
	if err != nil {
		return err
	}
	m := newMeter(s, "export")
	defer m.close()
	planned := map[digest.Digest]bool{}
	sizes := make([]int64, len(imgs))
	for i, img := range imgs {
		for _, b := range img.Blobs {
			if w.Need(b.Digest) && !planned[b.Digest] {
				planned[b.Digest] = true
				sizes[i] += b.Size
			}
		}
		for _, mf := range img.Manifests {
			if w.Need(mf.Desc.Digest) && !planned[mf.Desc.Digest] {
				planned[mf.Desc.Digest] = true
				sizes[i] += mf.Desc.Size
			}
		}
		m.grow(sizes[i])
	}
	for i, img := range imgs {
		t := m.task(items[i].refName, sizes[i])
		if err := exportImage(ctx, c, w, img, t); err != nil {
			t.finish(err)
			return fmt.Errorf("%s: %w", items[i].refName, err)
		}
		t.finish(nil)
		top := img.Top
		top.Annotations = map[string]string{bundle.AnnotationRefName: items[i].refName}
		w.AddEntry(top)
		// A referrer is named by its repository and digest: it has no tag.
		repo, _, _, _ := bundle.SplitRef(items[i].refName)
		for _, r := range img.Referrers {
			r.Annotations = map[string]string{bundle.AnnotationRefName: repo + "@" + r.Digest.String(), bundle.AnnotationReferrer: "true"}
			w.AddEntry(r)
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	side, err := os.Create(out + bundle.SidecarSuffix)
	if err != nil {
		return err
	}
	if err := bundle.WriteDigests(side, filepath.Base(out), w.Digests()); err != nil {
		side.Close()
		return err
	}
	if err := side.Close(); err != nil {
		return err
	}
	if err := os.Rename(partial, out); err != nil {
		return err
	}
	m.printf("%s: %d images, %d blobs, %s", out, len(items), len(w.Carried()), humanBytes(w.Bytes()))
	return nil
}

// exportImage writes img's blobs and manifests that the bundle still needs.
func exportImage(ctx context.Context, c *regclient.Client, w *bundle.Writer, img *remoteImage, t *task) error {
	for _, b := range img.Blobs {
		if !w.Need(b.Digest) {
			continue
		}
		rc, _, err := c.Blob(ctx, img.Name, b.Digest)
		if err != nil {
			return fmt.Errorf("blob %s: %w", b.Digest, err)
		}
		err = w.AddBlob(ocispec.Descriptor{Digest: b.Digest, Size: b.Size}, t.reader(rc))
		rc.Close()
		if err != nil {
			return err
		}
	}
	for _, mf := range img.Manifests {
		if !w.Need(mf.Desc.Digest) {
			continue
		}
		if err := w.AddManifest(mf.Desc, mf.Body); err != nil {
			return err
		}
		t.add(len(mf.Body))
	}
	return nil
}
