package status

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"time"

	"github.com/berth-dev/berth/cache"
)

// maxFills bounds the fills the page lists (oldest first).
const maxFills = 50

// Page is everything the page shows, as of Now.
type Page struct {
	Version string
	Now     time.Time
	Started time.Time
	Uptime  time.Duration
	Traffic Traffic
	// Upstreams are the configured ones, in order, then any other seen.
	Upstreams []Upstream
	HasStore  bool
	Disk      cache.Usage
	Fills     []Fill
	MoreFills int // in flight but not listed
}

// Fill is a fill in flight.
type Fill struct {
	Digest  string
	Origin  string // the upstream's name
	Written int64
	Size    int64 // <= 0: unknown
	Age     time.Duration
}

// Percent is how much of the fill arrived, or -1 if its size is unknown.
func (f Fill) Percent() int {
	if f.Size <= 0 {
		return -1
	}
	return int(f.Written * 100 / f.Size)
}

// Snapshot gathers what the page shows now.
func (s *Status) Snapshot() Page {
	now := s.now()
	p := Page{Version: s.version, Now: now, Started: s.started, Uptime: now.Sub(s.started),
		Traffic: s.traffic(), Upstreams: s.upstreams()}
	if s.store != nil {
		p.HasStore = true
		p.Disk = s.store.Usage()
		fills := s.store.Fills()
		if len(fills) > maxFills {
			p.MoreFills = len(fills) - maxFills
			fills = fills[:maxFills]
		}
		for _, f := range fills {
			p.Fills = append(p.Fills, Fill{Digest: f.Digest.String(), Origin: f.Origin, Written: f.Written,
				Size: f.Size, Age: now.Sub(f.Started)})
		}
	}
	return p
}

// ServeHTTP serves the page at / (GET and HEAD); any other path is 404.
func (s *Status) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, s.Snapshot()); err != nil {
		http.Error(w, "rendering the status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	// The page has no script, and says so: a name that slipped past the
	// escaping could not run one either.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(buf.Bytes())
}

//go:embed page.html
var pageHTML string

var pageTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"bytes":    formatBytes,
	"duration": formatDuration,
	"ago": func(now, t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return formatDuration(now.Sub(t)) + " ago"
	},
	"percent": func(f float64) string { return strconv.FormatFloat(f*100, 'f', 1, 64) + "%" },
	"ms": func(d time.Duration) string {
		if d == 0 {
			return "–"
		}
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + " ms"
	},
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"ratio": func(a, b int64) float64 {
		if b <= 0 {
			return 0
		}
		return float64(a) / float64(b)
	},
	"sub":   func(a, b int64) int64 { return a - b },
	"short": shortDigest,
}).Parse(pageHTML))

// formatBytes writes n in IEC units: 1.5 GiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// formatDuration writes d to the second, in its two largest units: 3d 4h,
// 5m 12s, 7s.
func formatDuration(d time.Duration) string {
	if d < time.Second {
		return "0s"
	}
	s := int64(d / time.Second)
	days, h, m := s/86400, s/3600%24, s/60%60
	s %= 60
	switch {
	case days > 0:
		return fmt.Sprintf("%dd %dh", days, h)
	case h > 0:
		return fmt.Sprintf("%dh %dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm %ds", m, s)
	}
	return fmt.Sprintf("%ds", s)
}

// shortDigest is a digest as people compare them: algorithm and 12 hex
// digits.
func shortDigest(d string) string {
	for i := 0; i < len(d); i++ {
		if d[i] == ':' && len(d) > i+13 {
			return d[:i+13]
		}
	}
	return d
}
