package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/berth-dev/berth/upstream/upstreamtest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// dashboardPath is the Grafana dashboard shipped in deploy/.
const dashboardPath = "../../deploy/grafana/berth.json"

// The Grafana dashboard queries only series that a running berth exports,
// with label values it exports: a renamed metric or label cannot leave a
// panel silently empty.
func TestDashboardQueriesExportedSeries(t *testing.T) {
	t.Parallel()
	exprs := dashboardExprs(t, dashboardPath)
	if len(exprs) < 10 {
		t.Fatalf("%d queries in %s: the panels were not found", len(exprs), dashboardPath)
	}

	up := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.AuthBearer})
	img := up.AddImage("library/app", "1", 1, 8<<10)
	addr := startServe(t, []UpstreamConfig{{Name: "docker.io", URL: up.URL(), Default: true, TagTTL: 0}})
	// One pull through the mirror, so that series born on first use (the
	// HTTP requests by kind and status) exist too.
	get(t, "http://"+addr+"/v2/app/manifests/1", ocispec.MediaTypeImageManifest)
	for _, d := range append(img.Layers, img.Config) {
		get(t, "http://"+addr+"/v2/app/blobs/"+d.String(), "")
	}
	exported := scrape(t, "http://"+addr+"/metrics")

	for _, e := range exprs {
		for _, problem := range exported.check(e.expr) {
			t.Errorf("%s: %s", e.where, problem)
		}
	}
	// serve has the upstream clients report to the metrics.
	if n := exported.value("berth_upstream_request_duration_seconds_count", map[string]string{"upstream": "docker.io", "kind": "manifest"}); n < 1 {
		t.Errorf("upstream manifest exchanges observed: %v, want at least 1", n)
	}
}

type dashboardExpr struct{ where, expr string }

// dashboardExprs returns the PromQL of every panel target (rows' nested
// panels included) and of every query variable. It also insists that every
// query names the dashboard's datasource variable, not one Grafana's UID.
func dashboardExprs(t *testing.T, path string) []dashboardExpr {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type datasource struct{ Type, UID string }
	type panel struct {
		ID         int
		Type       string
		Title      string
		Datasource *datasource
		Targets    []struct {
			Expr       string
			Datasource *datasource
		}
		Panels []json.RawMessage
	}
	var dash struct {
		Title      string
		Panels     []json.RawMessage
		Templating struct {
			List []struct {
				Name, Type string
				Query      json.RawMessage
				Datasource *datasource
			}
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []dashboardExpr
	hasDatasourceVar := false
	checkDS := func(where string, ds *datasource) {
		if ds == nil || ds.Type != "prometheus" || ds.UID != "${datasource}" {
			t.Errorf("%s: datasource %+v, want the prometheus ${datasource} variable", where, ds)
		}
	}
	for _, v := range dash.Templating.List {
		switch v.Type {
		case "datasource":
			hasDatasourceVar = true
		case "query":
			where := "variable " + v.Name
			checkDS(where, v.Datasource)
			var q struct{ Query string }
			if err := json.Unmarshal(v.Query, &q.Query); err != nil { // a string, or {"query": ...}
				if err := json.Unmarshal(v.Query, &q); err != nil {
					t.Fatalf("%s: query %s: %v", where, v.Query, err)
				}
			}
			out = append(out, dashboardExpr{where, q.Query})
		}
	}
	if !hasDatasourceVar {
		t.Error("no datasource variable: the dashboard works only with the Prometheus it was exported from")
	}
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("%s: panel %s: %v", path, r, err)
			}
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
			checkDS(where, p.Datasource)
			if len(p.Targets) == 0 {
				t.Errorf("%s: no query", where)
			}
			for _, tg := range p.Targets {
				checkDS(where, tg.Datasource)
				out = append(out, dashboardExpr{where, tg.Expr})
			}
		}
	}
	walk(dash.Panels)
	return out
}

// startServe runs serve on a free port with ups as its upstreams until the
// test ends, and returns its address.
func startServe(t *testing.T, ups []UpstreamConfig) string {
	t.Helper()
	addr, _ := runServe(t, testConfig(t, ups))
	return addr
}

func get(t *testing.T, url, accept string) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v %.200s", url, resp.StatusCode, err, b)
	}
	return b
}

// exposition is what /metrics exported: each family's type and its samples.
type exposition struct {
	types   map[string]string
	samples map[string][]sample // by family
}

type sample struct {
	name   string
	labels map[string]string
	value  float64
}

var (
	sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)`)
	labelPair  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// scrape reads the text exposition format at url.
func scrape(t *testing.T, url string) exposition {
	t.Helper()
	body := get(t, url, "")
	var err error
	x := exposition{types: map[string]string{}, samples: map[string][]sample{}}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			x.types[f[2]] = f[3]
			continue
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		s := sample{name: m[1], labels: map[string]string{}}
		for _, p := range labelPair.FindAllStringSubmatch(m[2], -1) {
			s.labels[p[1]] = p[2]
		}
		if s.value, err = strconv.ParseFloat(m[3], 64); err != nil {
			t.Fatalf("GET %s: %q: %v", url, line, err)
		}
		x.samples[x.family(s.name)] = append(x.samples[x.family(s.name)], s)
	}
	if len(x.types) == 0 {
		t.Fatalf("GET %s: no metric families in %.200s", url, body)
	}
	return x
}

// histogramSuffixes are the series a histogram is queried by.
var histogramSuffixes = []string{"_bucket", "_sum", "_count"}

// family names the metric family a series name belongs to.
func (x exposition) family(series string) string {
	for _, s := range histogramSuffixes {
		if base, ok := strings.CutSuffix(series, s); ok && (x.types[base] == "histogram" || x.types[base] == "summary" && s != "_bucket") {
			return base
		}
	}
	return series
}

var (
	// selector finds berth's series in PromQL, with their label matchers.
	selector = regexp.MustCompile(`\b(berth_[a-z_]+)(\{[^}]*\})?`)
	matcher  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
)

// alternatives is a regexp that only lists values: "hit|miss".
var alternatives = regexp.MustCompile(`^[a-zA-Z0-9_]+(\|[a-zA-Z0-9_]+)*$`)

// scrapeLabels are added by Prometheus, not exported by berth.
var scrapeLabels = map[string]bool{"instance": true, "job": true}

// check lists what expr asks for that x does not have: a series, a label,
// or a label value (values holding a dashboard variable are not checked).
func (x exposition) check(expr string) []string {
	var problems []string
	found := false
	for _, m := range selector.FindAllStringSubmatch(expr, -1) {
		found = true
		name, fam := m[1], x.family(m[1])
		typ, ok := x.types[fam]
		switch {
		case !ok:
			problems = append(problems, "queries "+name+", which berth does not export")
			continue
		case typ == "histogram" && fam == name:
			problems = append(problems, "queries the histogram "+name+" without _bucket, _sum or _count")
			continue
		}
		for _, mm := range matcher.FindAllStringSubmatch(m[2], -1) {
			label, op, value := mm[1], mm[2], mm[3]
			if scrapeLabels[label] {
				continue
			}
			wants := map[string]*regexp.Regexp{label: nil} // label existence only
			switch {
			case strings.Contains(value, "$"):
			case op == "=", op == "=~" && alternatives.MatchString(value):
				// Each value named must exist: "hit|miss" with a typo in one
				// of them is a line missing from a panel.
				wants = map[string]*regexp.Regexp{}
				for _, v := range strings.Split(value, "|") {
					wants[fmt.Sprintf("%s=%q", label, v)] = regexp.MustCompile("^" + regexp.QuoteMeta(v) + "$")
				}
			case op == "=~":
				re, err := regexp.Compile("^(?:" + value + ")$")
				if err != nil {
					problems = append(problems, fmt.Sprintf("%s: bad regexp %q: %v", name, value, err))
					continue
				}
				wants = map[string]*regexp.Regexp{fmt.Sprintf("%s=~%q", label, value): re}
			}
			for want, re := range wants {
				if !x.has(fam, label, re) {
					problems = append(problems, fmt.Sprintf("%s{%s}: no such series exported", name, want))
				}
			}
		}
	}
	if !found {
		problems = append(problems, fmt.Sprintf("no berth series in %q", expr))
	}
	return problems
}

// has reports whether a sample of fam has label (with a value matching re,
// if set).
func (x exposition) has(fam, label string, re *regexp.Regexp) bool {
	for _, s := range x.samples[fam] {
		if v, ok := s.labels[label]; ok && (re == nil || re.MatchString(v)) {
			return true
		}
	}
	return false
}

// value is the sum of the samples of series name whose labels include want.
func (x exposition) value(name string, want map[string]string) float64 {
	var sum float64
next:
	for _, s := range x.samples[x.family(name)] {
		if s.name != name {
			continue
		}
		for k, v := range want {
			if s.labels[k] != v {
				continue next
			}
		}
		sum += s.value
	}
	return sum
}
