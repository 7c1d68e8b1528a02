package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// The air-gap bundle rows: `berth export` of one image (2 GiB; 16 MiB with
// -smoke) from a berth that holds it, and `berth import` of that bundle into
// an offline berth with an empty data directory, each against `cp` of the
// bundle file on the same disk; the peak RSS of the server and of the CLI
// during each.
//
// Two berths of their own, so that neither the other measurements nor these
// touch each other's cache or peak RSS: bundle-src in front of the upstream
// (unthrottled: the throttle is not what is measured here), warmed with
// `berth warm`; bundle-dst offline, started afresh for every import.
const (
	mBundleExport    = "bundle_export_s"
	mBundleImport    = "bundle_import_s"
	mBundleCp        = "bundle_cp_s"
	mBundleExportRSS = "bundle_export_server_rss_MiB"
	mBundleImportRSS = "bundle_import_server_rss_MiB"
	mBundleExportCLI = "bundle_export_cli_rss_MiB"
	mBundleImportCLI = "bundle_import_cli_rss_MiB"
	srvCp            = "cp"
)

func (b *bench) measureBundles(ctx context.Context) error {
	im := &b.content.bundle
	ref := im.Repo + ":" + im.Tag
	up := b.servers[srvDist].base
	dir := filepath.Join(b.tmp, "bundles")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	srcCfg := filepath.Join(dir, "src.yaml")
	if err := os.WriteFile(srcCfg, []byte(fmt.Sprintf(
		"upstreams:\n  - {name: docker.io, url: %q, default: true, tag_ttl: 1h}\n", up)), 0o644); err != nil {
		return err
	}
	// The disconnected side: the same upstream name at an address nobody
	// listens on, and offline.
	dead, err := freeAddr()
	if err != nil {
		return err
	}
	dstCfg := filepath.Join(dir, "dst.yaml")
	if err := os.WriteFile(dstCfg, []byte(fmt.Sprintf(
		"upstreams:\n  - {name: docker.io, url: \"http://%s\", default: true}\noffline: true\n", dead)), 0o644); err != nil {
		return err
	}

	src, srcURL, err := b.startBerth("bundle-src", srcCfg, filepath.Join(dir, "src-data"))
	if err != nil {
		return err
	}
	defer src.stop()
	b.logf("bundles: berth warm %s (%s in %d layers) through bundle-src", ref, size(b.o.bundleSize), len(im.Layers))
	if _, _, err := b.runCLI(ctx, "bundle-warm", "warm", "--server", srcURL, ref); err != nil {
		return err
	}

	for r := range b.o.rounds {
		bundle := filepath.Join(dir, fmt.Sprintf("bundle-%d.tar", r))
		resetPeakRSS(src.pid())
		wall, cliRSS, err := b.runCLI(ctx, "bundle-export", "export", "--server", srcURL, "--out", bundle, ref)
		if err != nil {
			return err
		}
		srvRSS, _ := vmHWM(src.pid())
		fi, err := os.Stat(bundle)
		if err != nil {
			return fmt.Errorf("berth export wrote no %s: %w", bundle, err)
		}
		if fi.Size() < imageBytes(im) {
			return fmt.Errorf("berth export wrote %d bytes, less than the image's %d", fi.Size(), imageBytes(im))
		}
		b.samples.add(mBundleExport, srvBerth, wall.Seconds())
		b.samples.add(mBundleExportRSS, srvBerth, float64(srvRSS)/mib)
		b.samples.add(mBundleExportCLI, srvBerth, float64(cliRSS)/mib)

		cp, err := copyDurably(ctx, bundle, bundle+".cp")
		if err != nil {
			return err
		}
		_ = os.Remove(bundle + ".cp")
		b.samples.add(mBundleCp, srvCp, cp.Seconds())
		b.logf("  bundle of %s: export %6.2f s (berth %.0f MiB, CLI %.0f MiB), cp %6.2f s",
			size(fi.Size()), wall.Seconds(), float64(srvRSS)/mib, float64(cliRSS)/mib, cp.Seconds())

		if err := b.importRound(ctx, dstCfg, filepath.Join(dir, "dst-data"), bundle, im); err != nil {
			return err
		}
		_ = os.Remove(bundle)
	}
	return nil
}

// importRound imports bundle into a fresh offline berth and checks that it
// then serves im's manifest.
func (b *bench) importRound(ctx context.Context, cfg, data, bundle string, im *image) error {
	_ = os.RemoveAll(data)
	dst, url, err := b.startBerth("bundle-dst", cfg, data)
	if err != nil {
		return err
	}
	defer func() { dst.stop(); _ = os.RemoveAll(data) }()
	resetPeakRSS(dst.pid())
	wall, cliRSS, err := b.runCLI(ctx, "bundle-import", "import", "--server", url, bundle)
	if err != nil {
		return err
	}
	srvRSS, _ := vmHWM(dst.pid())
	client := newClient(1)
	defer client.CloseIdleConnections()
	if err := checkManifest(ctx, client, url+"/v2/"+im.Repo+"/manifests/"+im.Tag, im); err != nil {
		return fmt.Errorf("after berth import: %w", err)
	}
	b.samples.add(mBundleImport, srvBerth, wall.Seconds())
	b.samples.add(mBundleImportRSS, srvBerth, float64(srvRSS)/mib)
	b.samples.add(mBundleImportCLI, srvBerth, float64(cliRSS)/mib)
	b.logf("  import %6.2f s (berth %.0f MiB, CLI %.0f MiB)", wall.Seconds(), float64(srvRSS)/mib, float64(cliRSS)/mib)
	return nil
}

// startBerth starts `berth serve` with cfg and data on a free port.
func (b *bench) startBerth(name, cfg, data string) (*proc, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	p, err := b.startProc(name, nil, b.o.berth, "serve", "--config", cfg, "--addr", addr,
		"--data", data, "--log-format", "json", "--log-level", "info")
	if err != nil {
		return nil, "", err
	}
	if err := waitReady(context.Background(), p, "http://"+addr+"/readyz"); err != nil {
		p.stop()
		return nil, "", err
	}
	return p, "http://" + addr, nil
}

// runCLI runs the berth CLI to its end, its output in <tmp>/<name>.log, and
// returns its wall time and its peak RSS (wait4's rusage: ru_maxrss, KiB).
func (b *bench) runCLI(ctx context.Context, name string, args ...string) (time.Duration, int64, error) {
	logPath := filepath.Join(b.tmp, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return 0, 0, err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, b.o.berth, args...)
	cmd.Stdout, cmd.Stderr, cmd.Dir = logf, logf, b.tmp
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	err = cmd.Run()
	wall := time.Since(start)
	if err != nil {
		return 0, 0, fmt.Errorf("berth %s: %w\n%s", args[0], err, (&proc{log: logPath}).tail())
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return wall, 0, errors.New("no rusage for the berth CLI")
	}
	return wall, ru.Maxrss * 1024, nil
}

// copyDurably is the baseline: cp of the bundle file on the same disk, then
// an fsync of the copy, as a finished export or import is on disk.
func copyDurably(ctx context.Context, src, dst string) (time.Duration, error) {
	start := time.Now()
	if out, err := exec.CommandContext(ctx, "cp", src, dst).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("cp %s: %v: %s", src, err, out)
	}
	f, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// resetPeakRSS starts pid's VmHWM afresh (clear_refs 5), so that the peak
// read after one operation is that operation's. Where the kernel refuses,
// the peak covers the process's life, which only overstates it.
func resetPeakRSS(pid int) {
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

func imageBytes(im *image) int64 {
	n := im.Config.Size + int64(len(im.Manifest))
	for _, l := range im.Layers {
		n += l.Size
	}
	return n
}
