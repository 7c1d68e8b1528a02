package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"
)

// samples holds one value per round: metric -> server -> values.
type samples map[string]map[string][]float64

func (s samples) add(metric, server string, v float64) {
	if s[metric] == nil {
		s[metric] = map[string][]float64{}
	}
	s[metric][server] = append(s[metric][server], v)
}

// median of the metric's samples for server, and whether there are any.
func (s samples) median(metric, server string) (float64, bool) {
	v := slices.Clone(s[metric][server])
	if len(v) == 0 {
		return 0, false
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2], true
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2, true
}

// Metric names: the keys of the JSON samples.
const (
	mWarm1       = "warm_blob_1_client_GBps"
	mWarmN       = "warm_blob_n_clients_GBps"
	mSmallRPS    = "small_blob_rps"
	mSmallP50    = "small_blob_p50_ms"
	mSmallP99    = "small_blob_p99_ms"
	mManRPS      = "manifest_tag_rps"
	mManP50      = "manifest_tag_p50_ms"
	mManP99      = "manifest_tag_p99_ms"
	mSmallFixP50 = "small_blob_fixed_rate_p50_ms"
	mSmallFixP99 = "small_blob_fixed_rate_p99_ms"
	mManFixP50   = "manifest_tag_fixed_rate_p50_ms"
	mManFixP99   = "manifest_tag_fixed_rate_p99_ms"
	mHerdBytes   = "herd_upstream_bytes_per_blob"
	mHerdWall    = "herd_wall_s"
	mHerdTTFB50  = "herd_ttfb_p50_ms"
	mHerdTTFBMax = "herd_ttfb_max_ms"
	mSingle      = "single_cold_pull_s"
	mColdPull    = "cold_image_pull_s"
	mWarmPull    = "warm_image_pull_s"
	mRSS         = "peak_rss_MiB"
	mErrors      = "request_errors"
	mRetries     = "image_pull_503_retries"
)

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// present keeps the servers that run, rotated by round so that no server
// always goes first (or last, after the others warmed the machine up).
func (b *bench) present(round int, names ...string) []string {
	var out []string
	for _, n := range names {
		if b.servers[n] != nil {
			out = append(out, n)
		}
	}
	if len(out) > 0 {
		k := round % len(out)
		out = append(out[k:], out[:k]...)
	}
	return out
}

func (b *bench) measure(ctx context.Context) error {
	b.samples = samples{}
	c := b.content
	big := c.big.Layers[0]
	for r := range b.o.rounds {
		b.logf("round %d of %d", r+1, b.o.rounds)

		// 1. Warm blob throughput.
		for _, n := range []int{1, b.o.warmClients} {
			metric := mWarm1
			if n > 1 {
				metric = mWarmN
			}
			reps := 1
			if n == 1 {
				reps = b.o.warmReps
			}
			for rep := range reps {
				for _, name := range b.present(r+rep, srvBerth, srvDistProxy, srvNginx) {
					s := b.servers[name]
					wall, _, err := pullMany(ctx, s.blobURL(c.big.Repo, big.Digest), big, n)
					if err != nil {
						return b.fail(name, "warm blob", err)
					}
					gbps := float64(big.Size) * float64(n) / wall.Seconds() / 1e9
					b.samples.add(metric, name, gbps)
					b.logf("  warm %s blob, %2d clients, %-18s %6.2f GB/s", size(big.Size), n, serverLabels[name], gbps)
				}
			}
		}

		// 2. Request rate: small blobs, manifests by tag.
		for _, name := range b.present(r, srvBerth, srvDistProxy, srvDist, srvNginx, srvFloor) {
			s := b.servers[name]
			var urls []string
			for _, l := range c.small.Layers {
				urls = append(urls, s.blobURL(c.small.Repo, l.Digest))
			}
			res, err := rate(ctx, urls, "", b.o.conns, b.o.dur)
			if err != nil {
				return b.fail(name, "small blob rate", err)
			}
			b.samples.add(mSmallRPS, name, res.rps)
			b.samples.add(mSmallP50, name, ms(res.p50))
			b.samples.add(mSmallP99, name, ms(res.p99))
			b.samples.add(mErrors, name, float64(res.errors))
			b.logf("  %s blob, %d conns, %-18s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  errors %d",
				size(c.small.Layers[0].Size), b.o.conns, serverLabels[name], res.rps, ms(res.p50), ms(res.p99), res.errors)
		}
		for _, name := range b.present(r, srvBerth, srvDistProxy, srvDist, srvNginx, srvFloor) {
			s := b.servers[name]
			res, err := rate(ctx, []string{s.manifestURL(c.ten.Repo, c.ten.Tag)}, manifestAccept, b.o.conns, b.o.dur)
			if err != nil {
				return b.fail(name, "manifest rate", err)
			}
			b.samples.add(mManRPS, name, res.rps)
			b.samples.add(mManP50, name, ms(res.p50))
			b.samples.add(mManP99, name, ms(res.p99))
			b.samples.add(mErrors, name, float64(res.errors))
			b.logf("  manifest by tag, %d conns, %-18s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  errors %d",
				b.o.conns, serverLabels[name], res.rps, ms(res.p50), ms(res.p99), res.errors)
		}

		// 2b. The same requests at a fixed offered rate (an open loop):
		// latency at the same load for every server, where the rows above
		// give it at each server's own saturation.
		for _, name := range b.present(r, srvBerth, srvNginx, srvFloor) {
			s := b.servers[name]
			var blobs []string
			for _, l := range c.small.Layers {
				blobs = append(blobs, s.blobURL(c.small.Repo, l.Digest))
			}
			for _, k := range []struct {
				what, accept string
				urls         []string
				p50, p99     string
			}{
				{size(c.small.Layers[0].Size) + " blob", "", blobs, mSmallFixP50, mSmallFixP99},
				{"manifest by tag", manifestAccept, []string{s.manifestURL(c.ten.Repo, c.ten.Tag)}, mManFixP50, mManFixP99},
			} {
				res, err := fixedRate(ctx, k.urls, k.accept, b.o.conns, b.o.fixedRate, b.o.dur)
				if err != nil {
					return b.fail(name, k.what+" at a fixed rate", err)
				}
				b.samples.add(k.p50, name, ms(res.p50))
				b.samples.add(k.p99, name, ms(res.p99))
				b.samples.add(mErrors, name, float64(res.errors))
				b.logf("  %s at %.0f req/s offered, %-18s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  errors %d",
					k.what, b.o.fixedRate, serverLabels[name], res.rps, ms(res.p50), ms(res.p99), res.errors)
			}
		}

		// 3. The herd, and a single cold pull for comparison, through the throttle.
		for _, name := range b.present(r, srvBerth, srvDistProxy) {
			s := b.servers[name]
			one := c.single[name][r]
			b.shaper.quiet(ctx, 300*time.Millisecond, 30*time.Second)
			wall, _, err := pullMany(ctx, s.blobURL(herdRepo, one.Digest), one, 1)
			if err != nil {
				return b.fail(name, "single cold pull", err)
			}
			b.samples.add(mSingle, name, wall.Seconds())
			b.logf("  cold %s blob, 1 client, %-18s %6.2f s", size(one.Size), serverLabels[name], wall.Seconds())

			herd := c.herd[name][r]
			b.shaper.quiet(ctx, 300*time.Millisecond, 30*time.Second)
			before := b.shaper.down.Load()
			wall, res, err := pullMany(ctx, s.blobURL(herdRepo, herd.Digest), herd, b.o.herdClients)
			if err != nil {
				return b.fail(name, "herd", err)
			}
			b.shaper.quiet(ctx, 300*time.Millisecond, 30*time.Second)
			fetched := b.shaper.down.Load() - before
			var ttfb []time.Duration
			for _, x := range res {
				ttfb = append(ttfb, x.ttfb)
			}
			slices.Sort(ttfb)
			b.samples.add(mHerdBytes, name, float64(fetched)/float64(herd.Size))
			b.samples.add(mHerdWall, name, wall.Seconds())
			b.samples.add(mHerdTTFB50, name, ms(percentile(ttfb, 0.5)))
			b.samples.add(mHerdTTFBMax, name, ms(ttfb[len(ttfb)-1]))
			b.logf("  herd of %d on a cold %s blob, %-18s %6.2f s, upstream %.2fx the blob, TTFB p50 %.0f ms max %.0f ms",
				b.o.herdClients, size(herd.Size), serverLabels[name], wall.Seconds(), float64(fetched)/float64(herd.Size),
				ms(percentile(ttfb, 0.5)), ms(ttfb[len(ttfb)-1]))
		}

		// 4. A cold image pull, then the warm one after it.
		for _, name := range b.present(r, srvBerth, srvDistProxy, srvDirect) {
			s := b.servers[name]
			im := &c.cold[name][r]
			b.shaper.quiet(ctx, 300*time.Millisecond, 30*time.Second)
			var retries atomic.Int64
			cold, err := pullImage(ctx, s, im, &retries)
			if err != nil {
				return b.fail(name, "cold image pull", err)
			}
			b.samples.add(mColdPull, name, cold.Seconds())
			msg := fmt.Sprintf("  %d-layer image, %-18s cold %6.2f s", len(im.Layers), serverLabels[name], cold.Seconds())
			if name != srvDirect {
				warm, err := pullImage(ctx, s, im, &retries)
				if err != nil {
					return b.fail(name, "warm image pull", err)
				}
				b.samples.add(mWarmPull, name, warm.Seconds())
				msg += fmt.Sprintf("  warm %6.3f s", warm.Seconds())
			}
			b.samples.add(mRetries, name, float64(retries.Load()))
			if n := retries.Load(); n > 0 {
				msg += fmt.Sprintf("  (%d blob GETs answered 503 and were retried)", n)
				b.note("%s answered %d blob GET(s) of the %d-layer image pulls (round %d) with 503, retried as registry clients do",
					serverLabels[name], n, len(im.Layers), r+1)
			}
			b.logf("%s", msg)
		}
	}

	// 5. The air-gap bundle: export and import against cp (bundle.go).
	if err := b.measureBundles(ctx); err != nil {
		return fmt.Errorf("bundles: %w", err)
	}

	// 5b. The warm blob over TLS, berth against nginx (tls.go).
	if err := b.measureTLS(ctx); err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	// 5b. Manifests by tag with token auth on and off (auth.go).
	if err := b.measureAuth(ctx); err != nil {
		return fmt.Errorf("auth: %w", err)
	}

	// 6. The request logs berth and nginx wrote: a log that stayed empty
	// would mean one side ran without the cost the other paid.
	for _, l := range []struct{ name, path string }{
		{srvBerth, filepath.Join(b.tmp, srvBerth+".log")},
		{srvNginx, filepath.Join(b.tmp, "nginx", "access.log")},
	} {
		name, path := l.name, l.path
		if b.servers[name] == nil {
			continue
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Size() == 0 {
			b.note("%s wrote no request log to %s: its request rates were measured without that cost", serverLabels[name], path)
			continue
		}
		b.logf("  request log %-18s %6.1f MiB so far (%s)", serverLabels[name], float64(fi.Size())/mib, path)
	}

	// 7. Peak RSS of every server process over the whole run.
	for _, name := range sortedKeys(b.servers) {
		s := b.servers[name]
		if s.proc == nil {
			continue
		}
		if rss, err := peakRSS(s.proc.pid()); err == nil {
			b.samples.add(mRSS, name, float64(rss)/mib)
			b.logf("  peak RSS %-18s %6.1f MiB", serverLabels[name], float64(rss)/mib)
		}
	}
	return nil
}

// fail wraps a measurement error with the server's last log lines.
func (b *bench) fail(name, what string, err error) error {
	s := b.servers[name]
	if s != nil && s.proc != nil {
		return fmt.Errorf("%s, %s: %w\n%s log:\n%s", what, serverLabels[name], err, name, s.proc.tail())
	}
	return fmt.Errorf("%s, %s: %w", what, serverLabels[name], err)
}

func size(n int64) string {
	switch {
	case n >= gib && n%gib == 0:
		return fmt.Sprintf("%d GiB", n/gib)
	case n >= mib && n%mib == 0:
		return fmt.Sprintf("%d MiB", n/mib)
	case n >= kib && n%kib == 0:
		return fmt.Sprintf("%d KiB", n/kib)
	}
	return fmt.Sprintf("%d B", n)
}
