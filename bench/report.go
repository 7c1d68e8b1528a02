package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

type machine struct {
	CPU    string `json:"cpu"`
	Cores  int    `json:"cores"`
	RAM    string `json:"ram"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	OS     string `json:"os"`
}

func describeMachine() machine {
	m := machine{CPU: "unknown", Cores: runtime.NumCPU(), Go: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
				m.RAM = fmt.Sprintf("%.1f GiB", kb/(1<<20))
				break
			}
		}
		f.Close()
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	return m
}

// row is one line of the table. Values are medians over the rounds.
type row struct {
	Metric string             `json:"metric"`
	Values map[string]float64 `json:"values"`
	cells  map[string]string

	Ratio    float64 `json:"ratio,omitempty"`
	RatioOf  string  `json:"ratio_of,omitempty"`
	Other    string  `json:"other,omitempty"` // the same ratio for the proxy berth replaces
	Target   string  `json:"target,omitempty"`
	Pass     *bool   `json:"pass,omitempty"`
	hasRatio bool
	// chart: the ratio, its target and which side passes
	chartLabel string
	goal       float64
	higher     bool
}

type report struct {
	When     time.Time                     `json:"when"`
	Smoke    bool                          `json:"smoke"`
	Rounds   int                           `json:"rounds"`
	Machine  machine                       `json:"machine"`
	Versions map[string]string             `json:"versions"`
	Setup    map[string]any                `json:"setup"`
	Notes    []string                      `json:"notes,omitempty"`
	Rows     []row                         `json:"rows"`
	Samples  samples                       `json:"samples"`
	Servers  []string                      `json:"servers"`
	Elapsed  float64                       `json:"elapsed_s"`
	Labels   map[string]string             `json:"labels"`
	Medians  map[string]map[string]float64 `json:"medians"`
}

// requestLogs says how berth and nginx log during the run (setup.go).
const requestLogs = "nginx `access_log combined buffer=64k flush=1s` and berth's JSON request log (info level) on stderr, each to a file in the temporary directory"

func num(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

func ratioText(v float64) string {
	if v >= 10 {
		return strconv.FormatFloat(v, 'f', 1, 64) + "x"
	}
	return strconv.FormatFloat(v, 'f', 2, 64) + "x"
}

func (b *bench) report() *report {
	o := b.o
	r := &report{
		When: time.Now().UTC().Truncate(time.Second), Smoke: o.smoke, Rounds: o.rounds,
		Machine: describeMachine(), Versions: b.versions, Notes: b.notes, Samples: b.samples,
		Servers: sortedKeys(b.servers), Elapsed: time.Since(b.start).Seconds(), Labels: serverLabels,
		Medians: map[string]map[string]float64{},
		Setup: map[string]any{
			"big_blob_bytes": o.bigSize, "small_blob_bytes": o.smallSize, "small_blobs": o.nSmall,
			"image_layers": o.nLayers, "layer_bytes": o.layerSize, "herd_blob_bytes": o.herdSize,
			"herd_clients": o.herdClients, "warm_clients": o.warmClients, "connections": o.conns,
			"fixed_rate_rps":  o.fixedRate,
			"rate_duration_s": o.dur.Seconds(), "upstream_rate_MBps": o.rateMBps,
			"request_logs":       requestLogs,
			"bundle_image_bytes": o.bundleSize, "bundle_layers": o.bundleLayers,
		},
	}
	for metric, byServer := range b.samples {
		r.Medians[metric] = map[string]float64{}
		for s := range byServer {
			r.Medians[metric][s], _ = b.samples.median(metric, s)
		}
	}
	med := func(metric, server string) (float64, bool) { return b.samples.median(metric, server) }

	// mk builds a row of one metric's medians.
	mk := func(label, metric string, servers ...string) row {
		rw := row{Metric: label, Values: map[string]float64{}, cells: map[string]string{}}
		for _, s := range servers {
			if v, ok := med(metric, s); ok {
				rw.Values[s] = v
				rw.cells[s] = num(v)
			}
		}
		return rw
	}
	// pair builds a row showing two metrics as "a / b".
	pair := func(label, m1, m2 string, servers ...string) row {
		rw := row{Metric: label, Values: map[string]float64{}, cells: map[string]string{}}
		for _, s := range servers {
			v1, ok1 := med(m1, s)
			v2, ok2 := med(m2, s)
			if ok1 && ok2 {
				rw.Values[s+"_"+strings.TrimSuffix(m1, "_ms")] = v1
				rw.Values[s+"_"+strings.TrimSuffix(m2, "_ms")] = v2
				rw.cells[s] = num(v1) + " / " + num(v2)
			}
		}
		return rw
	}
	// judge sets the row's ratio and its verdict against goal.
	judge := func(rw *row, ratio float64, ok bool, of, target, chart string, goal float64, higher bool) {
		rw.RatioOf, rw.Target, rw.chartLabel, rw.goal, rw.higher = of, target, chart, goal, higher
		if !ok || math.IsNaN(ratio) || math.IsInf(ratio, 0) {
			return
		}
		rw.Ratio, rw.hasRatio = ratio, true
		if target != "" {
			pass := ratio >= goal
			if !higher {
				pass = ratio <= goal
			}
			rw.Pass = &pass
		}
	}
	div := func(a, b float64, oka, okb bool) (float64, bool) { return a / b, oka && okb && b > 0 }
	other := func(rw *row, v float64, ok bool, who string) {
		if ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
			rw.Other = who + " " + ratioText(v)
		}
	}

	bigName, smallName := size(o.bigSize), size(o.smallSize)
	for i, n := range []int{1, o.warmClients} {
		metric, clients := mWarm1, "1 client"
		if i == 1 {
			metric, clients = mWarmN, fmt.Sprintf("%d clients", n)
		}
		rw := mk(fmt.Sprintf("warm %s blob, %s (GB/s)", bigName, clients), metric, srvBerth, srvDistProxy, srvNginx)
		be, ok1 := med(metric, srvBerth)
		ng, ok2 := med(metric, srvNginx)
		dp, ok3 := med(metric, srvDistProxy)
		v, ok := div(be, ng, ok1, ok2)
		judge(&rw, v, ok, "berth / nginx", ">= 0.95x", "warm blob, "+clients+" vs nginx", 0.95, true)
		v, ok = div(dp, ng, ok3, ok2)
		other(&rw, v, ok, "distribution proxy")
		r.Rows = append(r.Rows, rw)
	}

	// Over TLS (tls.go): berth and nginx with the same certificate.
	for i, n := range []int{1, o.warmClients} {
		metric, clients := mTLSWarm1, "1 client"
		if i == 1 {
			metric, clients = mTLSWarmN, fmt.Sprintf("%d clients", n)
		}
		rw := mk(fmt.Sprintf("warm %s blob over TLS, %s (GB/s)", bigName, clients), metric, srvBerth, srvNginx)
		be, ok1 := med(metric, srvBerth)
		ng, ok2 := med(metric, srvNginx)
		v, ok := div(be, ng, ok1, ok2)
		judge(&rw, v, ok, "berth / nginx, both TLS", ">= 0.9x", "warm blob over TLS, "+clients+" vs nginx", 0.9, true)
		r.Rows = append(r.Rows, rw)
	}
	rw := mk(fmt.Sprintf("warm %s blob over TLS, HTTP/2, 1 client (GB/s)", bigName), mTLSWarmH2, srvBerth, srvNginx)
	be, ok1 := med(mTLSWarmH2, srvBerth)
	ng, ok2 := med(mTLSWarmH2, srvNginx)
	v, ok := div(be, ng, ok1, ok2)
	judge(&rw, v, ok, "berth / nginx, both HTTP/2", "", "", 0, true)
	r.Rows = append(r.Rows, rw)

	rw = mk(fmt.Sprintf("%s blob, %d conns (req/s)", smallName, o.conns), mSmallRPS, srvBerth, srvDistProxy, srvDist, srvNginx, srvFloor)
	be, ok1 = med(mSmallRPS, srvBerth)
	ng, ok2 = med(mSmallRPS, srvNginx)
	v, ok = div(be, ng, ok1, ok2)
	judge(&rw, v, ok, "berth / nginx", ">= 0.8x", smallName+" blob req/s vs nginx", 0.8, true)
	dp, ok3 := med(mSmallRPS, srvDistProxy)
	v, ok = div(dp, ng, ok3, ok2)
	other(&rw, v, ok, "distribution proxy")
	r.Rows = append(r.Rows, rw)
	rw = pair(fmt.Sprintf("%s blob latency p50 / p99 (ms)", smallName), mSmallP50, mSmallP99, srvBerth, srvDistProxy, srvDist, srvNginx, srvFloor)
	be, ok1 = med(mSmallP99, srvBerth)
	ng, ok2 = med(mSmallP99, srvNginx)
	v, ok = div(be, ng, ok1, ok2)
	judge(&rw, v, ok, "berth p99 / nginx p99", "<= 1x", smallName+" blob p99 vs nginx", 1, false)
	r.Rows = append(r.Rows, rw)
	// untargeted gives rw the ratio of berth's median of metric to base's,
	// and third's to base's in brackets; no target.
	untargeted := func(rw row, metric, base, third, of string, higher bool) row {
		be, ok1 := med(metric, srvBerth)
		ba, ok2 := med(metric, base)
		th, ok3 := med(metric, third)
		v, ok := div(be, ba, ok1, ok2)
		judge(&rw, v, ok, of, "", "", 0, higher)
		v, ok = div(th, ba, ok3, ok2)
		other(&rw, v, ok, serverLabels[third])
		return rw
	}
	// Against the net/http floor (floor.go): what berth's own work per
	// request costs, and how far nginx goes beyond the library.
	floorRow := func(label, metric string) row {
		return untargeted(mk(label, metric, srvBerth, srvNginx, srvFloor), metric, srvFloor, srvNginx, "berth / net/http floor", true)
	}
	r.Rows = append(r.Rows, floorRow(fmt.Sprintf("%s blob, %d conns (req/s)", smallName, o.conns), mSmallRPS))
	// Latency at one offered load for all (an open loop, fixedRate), where
	// the rows above give it at each server's own saturation. No target.
	fixedRow := func(label, p50, p99 string) row {
		return untargeted(pair(label, p50, p99, srvBerth, srvNginx, srvFloor), p99, srvNginx, srvFloor, "berth p99 / nginx p99, same offered rate", false)
	}
	r.Rows = append(r.Rows, fixedRow(fmt.Sprintf("%s blob at %.0f req/s offered, latency p50 / p99 (ms)", smallName, o.fixedRate), mSmallFixP50, mSmallFixP99))

	// Manifests by tag: the same rates in three rows, one per target.
	manRPS := fmt.Sprintf("manifest by tag, %d conns (req/s)", o.conns)
	be, ok1 = med(mManRPS, srvBerth)
	dp, ok2 = med(mManRPS, srvDistProxy)
	di, ok3 := med(mManRPS, srvDist)
	ng, ok4 := med(mManRPS, srvNginx)
	rw = mk(manRPS, mManRPS, srvBerth, srvDistProxy, srvDist, srvNginx, srvFloor)
	v, ok = div(be, dp, ok1, ok2)
	judge(&rw, v, ok, "berth / distribution proxy", ">= 10x", "manifest by tag vs distribution proxy", 10, true)
	r.Rows = append(r.Rows, rw)
	rw = mk(manRPS, mManRPS, srvBerth, srvDistProxy, srvDist, srvNginx, srvFloor)
	v, ok = div(be, di, ok1, ok3)
	judge(&rw, v, ok, "berth / distribution", ">= 2x", "manifest by tag vs distribution", 2, true)
	r.Rows = append(r.Rows, rw)
	rw = mk(manRPS, mManRPS, srvBerth, srvDistProxy, srvDist, srvNginx, srvFloor)
	v, ok = div(be, ng, ok1, ok4)
	judge(&rw, v, ok, "berth / nginx", ">= 0.8x", "manifest by tag vs nginx", 0.8, true)
	r.Rows = append(r.Rows, rw)

	manLat := "manifest by tag latency p50 / p99 (ms)"
	be, ok1 = med(mManP99, srvBerth)
	dp, ok2 = med(mManP99, srvDistProxy)
	di, ok3 = med(mManP99, srvDist)
	ng, ok4 = med(mManP99, srvNginx)
	rw = pair(manLat, mManP50, mManP99, srvBerth, srvDistProxy, srvDist, srvNginx, srvFloor)
	v, ok = div(be, min(dp, di), ok1, ok2 && ok3)
	// "best other" is the better of the two distributions: nginx has a row of its own.
	judge(&rw, v, ok, "berth p99 / best distribution p99", "< 1x", "manifest p99 vs the better distribution", 0.999999, false)
	r.Rows = append(r.Rows, rw)
	rw = pair(manLat, mManP50, mManP99, srvBerth, srvDistProxy, srvDist, srvNginx, srvFloor)
	v, ok = div(be, ng, ok1, ok4)
	judge(&rw, v, ok, "berth p99 / nginx p99", "<= 1x", "manifest p99 vs nginx", 1, false)
	r.Rows = append(r.Rows, rw)
	r.Rows = append(r.Rows, floorRow(manRPS, mManRPS))
	r.Rows = append(r.Rows, fixedRow(fmt.Sprintf("manifest by tag at %.0f req/s offered, latency p50 / p99 (ms)", o.fixedRate), mManFixP50, mManFixP99))

	herdName := size(o.herdSize)
	rw = mk(fmt.Sprintf("herd of %d, cold %s blob: upstream bytes (x blob)", o.herdClients, herdName), mHerdBytes, srvBerth, srvDistProxy)
	be, ok1 = med(mHerdBytes, srvBerth)
	judge(&rw, be, ok1, "berth upstream bytes / blob", "1x", "herd upstream bytes / blob", 1.005, false)
	if rw.Pass != nil && be < 1 {
		f := false
		rw.Pass = &f
	}
	dp, ok2 = med(mHerdBytes, srvDistProxy)
	other(&rw, dp, ok2, "distribution proxy")
	r.Rows = append(r.Rows, rw)

	rw = mk(fmt.Sprintf("herd of %d: wall time (s)", o.herdClients), mHerdWall, srvBerth, srvDistProxy)
	be, ok1 = med(mHerdWall, srvBerth)
	bs, ok2 := med(mSingle, srvBerth)
	v, ok = div(be, bs, ok1, ok2)
	judge(&rw, v, ok, "berth herd / berth single cold pull", "<= 1.2x", "herd wall / single cold pull", 1.2, false)
	dh, ok3 := med(mHerdWall, srvDistProxy)
	ds, ok4 := med(mSingle, srvDistProxy)
	v, ok = div(dh, ds, ok3, ok4)
	other(&rw, v, ok, "distribution proxy")
	r.Rows = append(r.Rows, rw)
	r.Rows = append(r.Rows, pair(fmt.Sprintf("herd of %d: time to first byte p50 / max (ms)", o.herdClients), mHerdTTFB50, mHerdTTFBMax, srvBerth, srvDistProxy))
	r.Rows = append(r.Rows, mk(fmt.Sprintf("single cold pull of a %s blob (s)", herdName), mSingle, srvBerth, srvDistProxy))

	rw = mk(fmt.Sprintf("cold pull, %d x %s image (s)", o.nLayers, size(o.layerSize)), mColdPull, srvBerth, srvDistProxy, srvDirect)
	be, ok1 = med(mColdPull, srvBerth)
	dr, ok2 := med(mColdPull, srvDirect)
	v, ok = div(be, dr, ok1, ok2)
	judge(&rw, v, ok, "berth / direct", "<= 1.1x", "cold image pull vs direct", 1.1, false)
	dp, ok3 = med(mColdPull, srvDistProxy)
	v, ok = div(dp, dr, ok3, ok2)
	other(&rw, v, ok, "distribution proxy")
	r.Rows = append(r.Rows, rw)
	r.Rows = append(r.Rows, mk("warm pull after it (s)", mWarmPull, srvBerth, srvDistProxy))

	rw = mk("peak RSS (MiB)", mRSS, srvBerth, srvDistProxy, srvDist, srvNginx)
	be, ok1 = med(mRSS, srvBerth)
	judge(&rw, be/100, ok1, "berth / 100 MiB", "<= 100 MiB", "peak RSS / 100 MiB", 1, false)
	r.Rows = append(r.Rows, rw)

	// Token auth on vs off (auth.go), the same build in the same run.
	rw = mk(fmt.Sprintf("manifest by tag with token auth, %d conns (req/s)", o.conns), mAuthOnRPS, srvBerth)
	be, ok1 = med(mAuthOnRPS, srvBerth)
	off, okOff := med(mAuthOffRPS, srvBerth)
	v, ok = div(be, off, ok1, okOff)
	judge(&rw, v, ok, "token auth on / off", ">= 0.8x", "manifest by tag, token auth on / off", 0.8, true)
	if okOff {
		rw.Other = "auth off " + num(off) + " req/s"
	}
	r.Rows = append(r.Rows, rw)

	// The air-gap bundle (bundle.go): each command against cp of the bundle
	// file, and the peak RSS of the server and of the CLI during each.
	bundleName := size(o.bundleSize)
	cp, okCp := med(mBundleCp, srvCp)
	for _, x := range []struct{ what, metric string }{{"export", mBundleExport}, {"import", mBundleImport}} {
		rw = mk(fmt.Sprintf("berth %s, bundle of a %s image (s)", x.what, bundleName), x.metric, srvBerth)
		be, ok1 = med(x.metric, srvBerth)
		v, ok = div(be, cp, ok1, okCp)
		judge(&rw, v, ok, "berth "+x.what+" / cp of the bundle", "<= 1.5x", "bundle "+x.what+" vs cp", 1.5, false)
		if okCp {
			rw.Other = "cp " + num(cp) + " s"
		}
		r.Rows = append(r.Rows, rw)
	}
	for _, x := range []struct{ who, export, imp string }{
		{"berth", mBundleExportRSS, mBundleImportRSS},
		{"CLI", mBundleExportCLI, mBundleImportCLI},
	} {
		rw = pair(fmt.Sprintf("peak RSS of the %s, export / import (MiB)", x.who), x.export, x.imp, srvBerth)
		e, ok1 := med(x.export, srvBerth)
		i, ok2 := med(x.imp, srvBerth)
		judge(&rw, max(e, i)/100, ok1 && ok2, x.who+" / 100 MiB", "<= 100 MiB", "bundle: peak RSS of the "+x.who+" / 100 MiB", 1, false)
		r.Rows = append(r.Rows, rw)
	}
	if o.only != "" { // the rows measured, without the empty others
		r.Rows = slices.DeleteFunc(r.Rows, func(rw row) bool { return len(rw.Values) == 0 })
	}
	return r
}

var tableServers = []string{srvBerth, srvDistProxy, srvDist, srvNginx, srvFloor, srvDirect}

// table renders the rows as a markdown table.
func (r *report) table() string {
	var sb strings.Builder
	sb.WriteString("| measurement |")
	for _, s := range tableServers {
		sb.WriteString(" " + serverLabels[s] + " |")
	}
	sb.WriteString(" berth ratio | target | result |\n|---|")
	for range tableServers {
		sb.WriteString("--:|")
	}
	sb.WriteString("--:|:-:|:-:|\n")
	for _, rw := range r.Rows {
		sb.WriteString("| " + rw.Metric + " |")
		for _, s := range tableServers {
			c := rw.cells[s]
			if c == "" {
				c = "–"
			}
			sb.WriteString(" " + c + " |")
		}
		ratio := ""
		if rw.hasRatio {
			ratio = ratioText(rw.Ratio)
			if strings.HasSuffix(rw.RatioOf, " / 100 MiB") {
				ratio = num(rw.Ratio*100) + " MiB"
			}
			if rw.Other != "" {
				ratio += " (" + rw.Other + ")"
			}
		} else if rw.Target != "" {
			ratio = "n/a"
		}
		result := ""
		if rw.Pass != nil {
			result = map[bool]string{true: "PASS", false: "**FAIL**"}[*rw.Pass]
		} else if rw.Target != "" {
			result = "n/a"
		}
		target := rw.Target
		if target != "" && rw.RatioOf != "" {
			target = rw.RatioOf + " " + target
		}
		fmt.Fprintf(&sb, " %s | %s | %s |\n", ratio, target, result)
	}
	return sb.String()
}

func (r *report) machineLine() string {
	m := r.Machine
	return fmt.Sprintf("%s, %d cores, %s RAM, Linux %s, %s (%s)", m.CPU, m.Cores, m.RAM, m.Kernel, m.Go, m.OS)
}

// markdown is what the run prints, and what docs/benchmarks.md shows.
func (r *report) markdown() string {
	var sb strings.Builder
	kind := "full run"
	if r.Smoke {
		kind = "smoke run (tiny sizes: the figures mean nothing)"
	}
	fmt.Fprintf(&sb, "Run of %s, %s, %d round(s) (medians), %.0f s in all.\n\n", r.When.Format("2006-01-02 15:04 UTC"), kind, r.Rounds, r.Elapsed)
	fmt.Fprintf(&sb, "- Machine: %s\n", r.machineLine())
	fmt.Fprintf(&sb, "- Servers: %s; %s; %s\n", r.Versions["berth"], r.Versions["distribution"], orNone(r.Versions["nginx"]))
	fmt.Fprintf(&sb, "- Upstream throttle: %v MB/s (bytes counted at the throttle)\n", r.Setup["upstream_rate_MBps"])
	fmt.Fprintf(&sb, "- Request logs: %v\n\n", r.Setup["request_logs"])
	sb.WriteString(r.table())
	passed, failed := 0, 0
	for _, rw := range r.Rows {
		if rw.Pass != nil {
			if *rw.Pass {
				passed++
			} else {
				failed++
			}
		}
	}
	fmt.Fprintf(&sb, "\ntargets: %d passed, %d failed\n", passed, failed)
	for _, n := range r.Notes {
		fmt.Fprintf(&sb, "\nNote: %s\n", n)
	}
	return sb.String()
}

func orNone(s string) string {
	if s == "" {
		return "nginx not run"
	}
	return s
}

// write puts latest.json, latest.svg and latest.md into dir and, if doc is
// set, replaces the generated section of that markdown file.
func (r *report) write(dir, doc string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	md := r.markdown()
	for name, content := range map[string][]byte{
		"latest.json": append(data, '\n'),
		"latest.svg":  []byte(r.svg()),
		"latest.md":   []byte(md),
	} {
		tmp := filepath.Join(dir, name+".tmp")
		if err := os.WriteFile(tmp, content, 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	if doc == "" {
		return nil
	}
	return replaceSection(doc, md+"\n![ratios](../bench/results/latest.svg)\n")
}

const (
	beginMarker = "<!-- bench:begin (generated by `make bench`; edits here are overwritten) -->"
	endMarker   = "<!-- bench:end -->"
)

func replaceSection(path, body string) error {
	return replaceSectionWith(path, beginMarker, endMarker, "## Latest run", body)
}

// replaceSectionWith replaces what lies between begin and end in the file
// at path with body, or appends the section under heading.
func replaceSectionWith(path, begin, end, heading, body string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	text := string(old)
	section := begin + "\n" + body + end
	i, j := strings.Index(text, begin), strings.Index(text, end)
	if i >= 0 && j > i {
		text = text[:i] + section + text[j+len(end):]
	} else {
		if text == "" {
			text = "# Benchmarks\n"
		}
		text = strings.TrimRight(text, "\n") + "\n\n" + heading + "\n\n" + section + "\n"
	}
	return os.WriteFile(path, []byte(text), 0o644)
}

// svg draws the ratios that have targets as horizontal bars on a log scale,
// with each target marked: green passes, red fails.
func (r *report) svg() string {
	var rows []row
	for _, rw := range r.Rows {
		if rw.Target != "" && rw.hasRatio && rw.Ratio > 0 {
			rows = append(rows, rw)
		}
	}
	const (
		width, left, right, top, rowH, barH = 930.0, 290.0, 180.0, 56.0, 34.0, 18.0
	)
	plotW := width - left - right
	height := top + rowH*float64(max(len(rows), 1)) + 40
	lo, hi := 0.1, 10.0
	for _, rw := range rows {
		for _, v := range []float64{rw.Ratio, rw.goal} {
			lo = math.Min(lo, math.Pow(10, math.Floor(math.Log10(v*0.8))))
			hi = math.Max(hi, math.Pow(10, math.Ceil(math.Log10(v*1.25))))
		}
	}
	x := func(v float64) float64 {
		v = math.Min(math.Max(v, lo), hi)
		return left + plotW*(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&sb, `<rect width="100%%" height="100%%" fill="#fff"/>`+"\n")
	title := fmt.Sprintf("berth: ratios against targets (%s, %d cores, %s)", r.Machine.CPU, r.Machine.Cores, r.When.Format("2006-01-02"))
	fmt.Fprintf(&sb, `<text x="10" y="20" font-size="14" font-weight="bold">%s</text>`+"\n", html.EscapeString(title))
	fmt.Fprintf(&sb, `<text x="10" y="38" fill="#555">bar: berth's ratio (log scale); black tick: the target; green passes, red fails</text>`+"\n")
	bottom := top + rowH*float64(len(rows))
	for d := lo; d <= hi*1.0001; d *= 10 {
		for _, m := range []float64{1, 2, 5} {
			v := d * m
			if v > hi*1.0001 {
				break
			}
			stroke, w := "#ddd", 1.0
			if v == 1 {
				stroke, w = "#888", 1.5
			}
			fmt.Fprintf(&sb, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%.1f"/>`+"\n", x(v), top-6, x(v), bottom, stroke, w)
			fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#555">%sx</text>`+"\n", x(v), bottom+16, strconv.FormatFloat(v, 'g', -1, 64))
		}
	}
	for i, rw := range rows {
		y := top + rowH*float64(i)
		color := "#2e7d32"
		if rw.Pass != nil && !*rw.Pass {
			color = "#c62828"
		}
		fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-8, y+barH/2+4, html.EscapeString(rw.chartLabel))
		fmt.Fprintf(&sb, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", left, y, math.Max(x(rw.Ratio)-left, 1), barH, color)
		fmt.Fprintf(&sb, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000" stroke-width="2.5"/>`+"\n", x(rw.goal), y-4, x(rw.goal), y+barH+4)
		verdict := "PASS"
		if rw.Pass != nil && !*rw.Pass {
			verdict = "FAIL"
		}
		fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f">%s %s (%s)</text>`+"\n", width-right+6, y+barH/2+4, ratioText(rw.Ratio), verdict, html.EscapeString(rw.Target))
	}
	sb.WriteString("</svg>\n")
	return sb.String()
}
