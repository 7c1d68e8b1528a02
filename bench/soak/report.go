package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

type faultSpan struct {
	From time.Duration
	F    fault
}

// report is a soak's result: what ran, what failed, how resources moved.
type report struct {
	Duration time.Duration
	Clients  int
	Seed     uint64
	Ops      map[string]int
	Errs     map[string]int
	Samples  []sample
	Faults   []faultSpan
	Failures []string
	Restarts int
	GC       string
	Checks   []string // the growth checks, as sentences
	Growth   []string // the ones that failed
}

// The growth check: within berth's last incarnation (the longest, 40% of
// the run), after a warm-up of its first fifth, the median of the last
// third of the samples against the first third's, with a margin.
var limits = []struct {
	name   string
	get    func(sample) float64
	factor float64
	slack  float64
	unit   string
}{
	{"goroutines", func(s sample) float64 { return s.Goroutines }, 1.5, 50, ""},
	{"open fds", func(s sample) float64 { return s.FDs }, 1.5, 50, ""},
	{"RSS", func(s sample) float64 { return s.RSS / (1 << 20) }, 1.5, 64, " MiB"},
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	sort.Float64s(v)
	return v[len(v)/2]
}

func judge(o options, samples []sample, faults []faultSpan, st *stats, gc int32, d time.Duration) *report {
	st.mu.Lock()
	r := &report{Duration: d, Clients: o.clients, Seed: o.seed, Ops: st.ops, Errs: st.errs, Samples: samples, Faults: faults,
		Failures: slices.Clone(st.failures)}
	st.mu.Unlock()
	r.GC = "POST /admin/gc ran"
	switch {
	case gc < 0:
		r.GC = "POST /admin/gc answered 404 (this berth has no GC): GC runs were left out"
	case gc == 0:
		r.GC = "no GC run was attempted"
	}
	last := 0
	for _, s := range samples {
		last = max(last, s.Start)
	}
	r.Restarts = max(last-1, 0)
	var inc []sample
	for _, s := range samples {
		if s.Start == last {
			inc = append(inc, s)
		}
	}
	inc = inc[len(inc)/5:]
	if len(inc) < 9 {
		r.Checks = append(r.Checks, fmt.Sprintf("too few samples (%d) in the last incarnation for a growth check", len(inc)))
		return r
	}
	third := len(inc) / 3
	for _, l := range limits {
		var a, b []float64
		for _, s := range inc[:third] {
			a = append(a, l.get(s))
		}
		for _, s := range inc[len(inc)-third:] {
			b = append(b, l.get(s))
		}
		ma, mb := median(a), median(b)
		bound := ma*l.factor + l.slack
		line := fmt.Sprintf("%s: median %.0f%s in the first third, %.0f%s in the last (bound %.0f%s)", l.name, ma, l.unit, mb, l.unit, bound, l.unit)
		if mb > bound {
			r.Growth = append(r.Growth, line)
			line += ": GREW"
		} else {
			line += ": ok"
		}
		r.Checks = append(r.Checks, line)
	}
	return r
}

func (r *report) text() string {
	var b strings.Builder
	total, errs := 0, 0
	kinds := make([]string, 0, len(r.Ops))
	for k, n := range r.Ops {
		kinds = append(kinds, k)
		total += n
		errs += r.Errs[k]
	}
	sort.Strings(kinds)
	fmt.Fprintf(&b, "soak: %v, %d clients, seed %d, %d kill -9 restarts; %d operations, %d failed (expected under the upstream's faults and the kills)\n",
		r.Duration.Round(time.Second), r.Clients, r.Seed, r.Restarts, total, errs)
	fmt.Fprintf(&b, "\n| operation | count | errors |\n|---|---:|---:|\n")
	for _, k := range kinds {
		fmt.Fprintf(&b, "| %s | %d | %d |\n", k, r.Ops[k], r.Errs[k])
	}
	fmt.Fprintf(&b, "\n- wrong bytes served, lost pushes: %d\n", len(r.Failures))
	for _, f := range r.Failures {
		fmt.Fprintf(&b, "  - %s\n", f)
	}
	fmt.Fprintf(&b, "- %s\n", r.GC)
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "- %s\n", c)
	}
	return b.String()
}

// write puts soak.svg and soak.md into o.out and the section into o.doc.
func (r *report) write(o options) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "soak.svg"), []byte(r.svg()), 0o644); err != nil {
		return err
	}
	md := r.markdown(o)
	if err := os.WriteFile(filepath.Join(o.out, "soak.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if o.doc == "" {
		return nil
	}
	return replaceSection(o.doc, md)
}

func (r *report) markdown(o options) string {
	form := "the full soak (`make soak`)"
	if r.Duration < 30*time.Minute {
		form = fmt.Sprintf("the short form (`SOAK=%v`, as `make test` runs it), not the 30-minute `make soak`", o.duration)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Generated %s on %s by %s.\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), describeHost(), form)
	b.WriteString(r.text())
	b.WriteString("\nThe upstream's schedule alternates quiet spells with a fault (slow, 5xx, resets, wrong bytes, hang); ")
	b.WriteString("berth was killed with SIGKILL at 20%, 40% and 60% of the run, each time followed by a check that every acknowledged tag resolves, ")
	b.WriteString("every blob verifies and no staging file outlived its upload. ")
	b.WriteString("An error is a request that failed cleanly (an error status, or a connection cut before the end) while the upstream misbehaved ")
	b.WriteString("or berth was being killed: cold pulls meet every fault, warm ones and pushes only the kills.\n\n")
	b.WriteString("![berth's goroutines, open fds and RSS over the soak](../bench/results/soak.svg)\n")
	return b.String()
}

func describeHost() string {
	h, _ := os.Hostname()
	n := 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		n = strings.Count(string(b), "processor\t:")
	}
	return fmt.Sprintf("%s (%d CPUs)", h, n)
}

const (
	beginMarker = "<!-- soak:begin (generated by `make soak`, SOAK=3m for the short form; edits here are overwritten) -->"
	endMarker   = "<!-- soak:end -->"
)

func replaceSection(path, body string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	text := string(old)
	section := beginMarker + "\n" + body + endMarker
	i, j := strings.Index(text, beginMarker), strings.Index(text, endMarker)
	if i >= 0 && j > i {
		text = text[:i] + section + text[j+len(endMarker):]
	} else {
		text = strings.TrimRight(text, "\n") + "\n\n## Soak\n\n" + section + "\n"
	}
	return os.WriteFile(path, []byte(text), 0o644)
}

// svg draws goroutines, open fds and RSS over time, one panel each, with
// the upstream's fault spans shaded and the kill -9 restarts marked.
func (r *report) svg() string {
	const w, left, right, panelH, gap, top = 900.0, 70.0, 20.0, 150.0, 40.0, 40.0
	plotW := w - left - right
	h := top + 3*(panelH+gap) + 20
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="20" font-size="14">berth soak: %v, %d clients, %d kill -9 restarts (dashed)</text>`+"\n",
		left, r.Duration.Round(time.Second), r.Clients, r.Restarts)
	total := r.Duration.Seconds()
	if total <= 0 {
		total = 1
	}
	x := func(d time.Duration) float64 { return left + plotW*d.Seconds()/total }
	colors := map[fault]string{faultSlow: "#fde68a", fault5xx: "#fecaca", faultReset: "#ddd6fe", faultWrong: "#fbcfe8", faultHang: "#bfdbfe"}
	panels := []struct {
		title string
		get   func(sample) float64
	}{
		{"goroutines", func(s sample) float64 { return s.Goroutines }},
		{"open fds", func(s sample) float64 { return s.FDs }},
		{"RSS (MiB)", func(s sample) float64 { return s.RSS / (1 << 20) }},
	}
	for pi, p := range panels {
		y0 := top + float64(pi)*(panelH+gap) + 10
		// fault spans
		for i, f := range r.Faults {
			if f.F == faultNone {
				continue
			}
			end := r.Duration
			if i+1 < len(r.Faults) {
				end = r.Faults[i+1].From
			}
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", x(f.From), y0, max(x(end)-x(f.From), 0.5), panelH, colors[f.F])
			if pi == 0 {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="9">%s</text>`+"\n", x(f.From)+1, y0-2, f.F)
			}
		}
		hi := 0.0
		for _, s := range r.Samples {
			hi = max(hi, p.get(s))
		}
		hi = max(hi*1.1, 1)
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.1f" width="%.0f" height="%.0f" fill="none" stroke="#999"/>`+"\n", left, y0, plotW, panelH)
		fmt.Fprintf(&b, `<text x="5" y="%.1f">%s</text><text x="%.0f" y="%.1f" text-anchor="end">%.0f</text><text x="%.0f" y="%.1f" text-anchor="end">0</text>`+"\n",
			y0+panelH/2, p.title, left-4, y0+10, hi, left-4, y0+panelH)
		// one polyline per incarnation
		byStart := map[int][]sample{}
		var starts []int
		for _, s := range r.Samples {
			if _, ok := byStart[s.Start]; !ok {
				starts = append(starts, s.Start)
			}
			byStart[s.Start] = append(byStart[s.Start], s)
		}
		for k, st := range starts {
			var pts []string
			for _, s := range byStart[st] {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.At), y0+panelH-panelH*p.get(s)/hi))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="#1d4ed8" stroke-width="1.5" points="%s"/>`+"\n", strings.Join(pts, " "))
			if k > 0 && len(byStart[st]) > 0 {
				xr := x(byStart[st][0].At)
				fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#dc2626" stroke-dasharray="4 3"/>`+"\n", xr, xr, y0, y0+panelH)
			}
		}
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">0</text><text x="%.0f" y="%.0f" text-anchor="end">%v</text>`+"\n", left, h-8, w-right, h-8, r.Duration.Round(time.Second))
	b.WriteString("</svg>\n")
	return b.String()
}
