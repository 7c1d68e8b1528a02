package main

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/access"
	"github.com/berth-dev/berth/internal/bucket"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/berth-dev/berth/internal/route"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// retentionRules compiles the configured rules (validated when loaded).
func retentionRules(cfg Config) []cache.RetentionRule {
	out := make([]cache.RetentionRule, 0, len(cfg.Retention))
	for _, r := range cfg.Retention {
		pats := slices.Clone(r.Repos)
		rule := cache.RetentionRule{Repos: pats, KeepLast: r.KeepLast, UntaggedAfter: r.UntaggedAfter, NotPulledFor: r.NotPulledFor,
			Match: func(repo string) bool {
				return slices.ContainsFunc(pats, func(p string) bool { return route.MatchPattern(p, repo) })
			}}
		for _, t := range r.KeepTags {
			rule.KeepTags = append(rule.KeepTags, regexp.MustCompile(t))
		}
		out = append(out, rule)
	}
	return out
}

// collectGarbage runs one collection with cfg's rules and logs what it did.
// With storage.driver s3, local repositories are in the bucket: it is
// collected too, and the reports are one.
func collectGarbage(ctx context.Context, st *cache.Store, b *bucket.Registry, cfg Config, log zerolog.Logger, grace time.Duration, dry bool) (*cache.GCReport, error) {
	opts := cache.GCOptions{Grace: grace, DryRun: dry, Retention: retentionRules(cfg)}
	var brep *cache.GCReport
	var err error
	if b != nil {
		// The bucket first: the local copies of what it removes are then
		// swept from this replica's disk by the store's own collection.
		brep, err = b.Collect(ctx, bucket.GCOptions{GCOptions: opts, UploadTTL: cfg.Uploads.TTL,
			Pulls: func(repo string) map[string]time.Time { p, _ := st.Pulls(repo); return p }})
	}
	rep, serr := st.Collect(ctx, opts)
	if err == nil {
		err = serr
	}
	if brep != nil {
		rep.Tags = append(rep.Tags, brep.Tags...)
		rep.Manifests = append(rep.Manifests, brep.Manifests...)
		rep.Blobs = append(rep.Blobs, brep.Blobs...)
		rep.Repos = append(rep.Repos, brep.Repos...)
		rep.Uploads = append(rep.Uploads, brep.Uploads...)
		rep.Unlinked += brep.Unlinked
		rep.Bytes += brep.Bytes
		rep.Seconds += brep.Seconds
	}
	ev := log.Info()
	if err != nil {
		ev = log.Error().Err(err)
	}
	msg := "garbage collected"
	if dry {
		msg = "garbage collection planned (dry run: nothing removed)"
	}
	ev.Bool("dry_run", dry).Int("blobs", len(rep.Blobs)).Int64("bytes", rep.Bytes).Int("manifests", len(rep.Manifests)).
		Int("tags", len(rep.Tags)).Int("repositories", len(rep.Repos)).Int("uploads", len(rep.Uploads)).
		Int("unlinked", rep.Unlinked).Dur("grace", grace).Float64("took_seconds", rep.Seconds).Msg(msg)
	return rep, err
}

// collectorTick is how often the scheduler looks at the clock: a run is
// due gc.interval after the last one, and pull times are saved each minute.
const collectorTick = 5 * time.Second

// runCollector runs the collector every gc.interval (read from the current
// configuration, so a reload applies) and saves tag pull times every
// minute, until ctx ends. In read-only mode it does not collect.
func runCollector(ctx context.Context, api *reloadable) {
	tick := collectorTick
	if i := api.current.Load().cfg.GC.Interval; i > 0 && i < tick {
		tick = i
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	lastRun, lastFlush := time.Now(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if now.Sub(lastFlush) >= time.Minute {
				lastFlush = now
				if err := api.store.FlushPulls(); err != nil {
					api.log.Warn().Err(err).Msg("saving tag pull times")
				}
			}
			cfg := api.current.Load().cfg
			if cfg.GC.Interval <= 0 || now.Sub(lastRun) < cfg.GC.Interval || api.readOnly.Load() {
				continue
			}
			lastRun = now
			_, _ = collectGarbage(ctx, api.store, bucketOf(api), cfg, api.log, cfg.GC.Grace, false)
		}
	}
}

// registerGC exports the collector's counters.
func registerGC(reg prometheus.Registerer, st *cache.Store) {
	g := func(f func(cache.GCStats) float64) func() float64 { return func() float64 { return f(st.GCStats()) } }
	counter := func(name, help string, f func(cache.GCStats) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, g(func(s cache.GCStats) float64 { return float64(f(s)) }))
	}
	reg.MustRegister(
		counter("berth_gc_runs_total", "Garbage collections run (dry runs excluded).", func(s cache.GCStats) int64 { return s.Runs }),
		counter("berth_gc_errors_total", "Garbage collections that failed.", func(s cache.GCStats) int64 { return s.Errors }),
		counter("berth_gc_removed_blobs_total", "Blobs removed by garbage collection.", func(s cache.GCStats) int64 { return s.Blobs }),
		counter("berth_gc_removed_bytes_total", "Bytes of blobs and upload files removed by garbage collection.", func(s cache.GCStats) int64 { return s.Bytes }),
		counter("berth_gc_removed_manifests_total", "Untagged manifests removed by retention rules.", func(s cache.GCStats) int64 { return s.Manifests }),
		counter("berth_gc_removed_tags_total", "Tags removed by retention rules.", func(s cache.GCStats) int64 { return s.Tags }),
		counter("berth_gc_removed_repositories_total", "Empty repositories removed from the catalog.", func(s cache.GCStats) int64 { return s.Repos }),
		counter("berth_gc_removed_uploads_total", "Idle or abandoned upload sessions removed.", func(s cache.GCStats) int64 { return s.Uploads }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_uploads_open_sessions", Help: "Blob upload sessions open (capped by uploads.max_sessions)."},
			func() float64 { n, _, _ := st.OpenUploads(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_uploads_open_bytes", Help: "Bytes held by open upload sessions (capped by uploads.max_bytes)."},
			func() float64 { _, b, _ := st.OpenUploads(); return float64(b) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_gc_last_duration_seconds", Help: "How long the last garbage collection took."},
			g(func(s cache.GCStats) float64 { return s.LastDuration.Seconds() })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_gc_last_run_timestamp_seconds", Help: "When the last garbage collection finished (0: never)."},
			g(func(s cache.GCStats) float64 {
				if s.LastRun.IsZero() {
					return 0
				}
				return float64(s.LastRun.Unix())
			})),
	)
}

// --- the operator's admin endpoints ---------------------------------------------

// rmResult is what DELETE /admin/ref answers.
type rmResult struct {
	Repo   string `json:"repo"`
	Ref    string `json:"ref"`
	Origin string `json:"origin"`
	cache.PurgeReport
	// Note says what happens next (local content: the next collection).
	Note string `json:"note,omitempty"`
}

// ops serves the operator endpoints (berth ls, du, rm, gc); handled is
// false for any other path. With access rules, admit and can check the
// caller's rights: ls shows the repositories it may pull, tags and
// revalidate need pull on the repository, rm needs delete on it; du needs
// pull on every repository, a dry run pull on every local one and a
// collection delete on every local one.
func (a *admin) ops(w http.ResponseWriter, r *http.Request, cfg Config,
	admit func(repo string, act access.Action) error, can func(repo string, act access.Action) bool) (handled bool, err error) {
	st := a.api.store
	q := r.URL.Query()
	// every admits act on each repository (each local one, if localOnly).
	every := func(act access.Action, localOnly bool) error {
		repos, err := st.Repos()
		if err != nil {
			return err
		}
		for _, ri := range repos {
			if localOnly && ri.Origin != "local" {
				continue
			}
			if !can(ri.Name, act) {
				return admit(ri.Name, act)
			}
		}
		return nil
	}
	type route struct{ path, method string }
	endpoints := map[route]func() error{
		{"/admin/repos", http.MethodGet}: func() error {
			repos, err := st.Repos()
			if err != nil {
				return err
			}
			repos = slices.DeleteFunc(repos, func(ri cache.RepoInfo) bool { return !can(ri.Name, access.Pull) })
			return writeJSON(w, map[string]any{"repos": repos})
		},
		{"/admin/tags", http.MethodGet}: func() error {
			repo, err := repoParam(q)
			if err != nil {
				return err
			}
			if err := admit(repo, access.Pull); err != nil {
				return err
			}
			tags, err := st.TagInfos(repo)
			if errors.Is(err, cache.ErrNotFound) {
				return oci.Errorf(oci.CodeNameUnknown, "repository %s unknown", repo)
			}
			if err != nil {
				return err
			}
			return writeJSON(w, map[string]any{"name": repo, "tags": tags})
		},
		{"/admin/du", http.MethodGet}: func() error {
			if err := every(access.Pull, false); err != nil {
				return err
			}
			du, err := st.DiskUsage()
			if err != nil {
				return err
			}
			return writeJSON(w, du)
		},
		{"/admin/gc", http.MethodPost}: func() error {
			dry, _ := parseBool(q.Get("dry_run"))
			if !dry && a.api.readOnly.Load() {
				return oci.Errorf(oci.CodeUnsupported, "read-only maintenance mode: garbage collection is refused (a dry run is not)")
			}
			grace := cfg.GC.Grace
			if g := q.Get("grace"); g != "" {
				d, err := parseDuration(g)
				if err != nil || d < 0 {
					return oci.Errorf(oci.CodeUnsupported, "grace=%q: want %s", oci.Clip(g), durationForms).WithStatus(http.StatusBadRequest)
				}
				grace = d
			}
			act := access.Delete
			if dry {
				act = access.Pull
			}
			if err := every(act, true); err != nil {
				return err
			}
			// The request's context: a client that gives up (^C on berth gc) stops
			// the collection between two removals.
			rep, err := collectGarbage(r.Context(), st, bucketOf(a.api), cfg, *zerolog.Ctx(r.Context()), grace, dry)
			if err != nil {
				return err
			}
			return writeJSON(w, rep)
		},
		{"/admin/ref", http.MethodDelete}: func() error {
			if a.api.readOnly.Load() {
				return oci.Errorf(oci.CodeUnsupported, "read-only maintenance mode: removals are refused")
			}
			repo, err := repoParam(q)
			if err != nil {
				return err
			}
			if err := admit(repo, access.Delete); err != nil {
				return err
			}
			tagOnly, _ := parseBool(q.Get("tag_only"))
			res, err := remove(st, repo, q.Get("ref"), tagOnly)
			if err != nil {
				return err
			}
			zerolog.Ctx(r.Context()).Info().Str("repo", repo).Str("ref", res.Ref).Strs("tags", res.Tags).Int("manifests", len(res.Manifests)).
				Int("blobs", len(res.Blobs)).Int64("bytes", res.Bytes).Msg("removed by an operator")
			return writeJSON(w, res)
		},
		{"/admin/revalidate", http.MethodPost}: func() error {
			repo, err := repoParam(q)
			if err != nil {
				return err
			}
			if err := admit(repo, access.Pull); err != nil {
				return err
			}
			tag := q.Get("tag")
			if rec, err := st.Repository(repo); err != nil || rec.Origin == "" || rec.Origin == bucket.Origin {
				return oci.Errorf(oci.CodeNameUnknown, "no mirrored repository %s (local tags need no revalidation)", repo)
			}
			if err := st.Revalidate(repo, tag); errors.Is(err, cache.ErrNotFound) {
				return oci.Errorf(oci.CodeManifestUnknown, "tag %s unknown in %s", oci.Clip(tag), repo)
			} else if err != nil {
				return err
			}
			return writeJSON(w, map[string]string{"repo": repo, "tag": tag, "status": "stale: the next pull asks the upstream"})
		},
	}
	for rt, f := range endpoints {
		if rt.path != r.URL.Path {
			continue
		}
		if rt.method != r.Method && !(rt.method == http.MethodGet && r.Method == http.MethodHead) {
			return true, oci.Errorf(oci.CodeUnsupported, "%s is not allowed on %s (use %s)", r.Method, r.URL.Path, rt.method).WithStatus(http.StatusMethodNotAllowed)
		}
		return true, f()
	}
	return false, nil
}

func repoParam(q interface{ Get(string) string }) (string, error) {
	repo := q.Get("repo")
	if !oci.ValidName(repo) {
		return "", oci.Errorf(oci.CodeNameInvalid, "repo=%q is not a repository name", oci.Clip(repo))
	}
	return repo, nil
}

// remove is berth rm: for a local repository a tag (and its manifest when
// nothing else needs it) or a manifest or blob by digest, whose bytes the
// next collection frees; for a mirrored one a purge of the image a tag
// points at (only the tag with tagOnly), a manifest or a blob, at once.
func remove(st *cache.Store, repo, ref string, tagOnly bool) (*rmResult, error) {
	rec, err := st.Repository(repo)
	if errors.Is(err, cache.ErrNotFound) {
		return nil, oci.Errorf(oci.CodeNameUnknown, "repository %s unknown", repo)
	} else if err != nil {
		return nil, err
	}
	if rec.Origin == bucket.Origin {
		return nil, oci.Errorf(oci.CodeUnsupported, "%s is in the storage bucket (storage.driver s3): delete it through the registry API (DELETE /v2/%s/manifests/DIGEST); berth rm removes content of the filesystem driver and mirrored content", repo, repo)
	}
	res := &rmResult{Repo: repo, Ref: ref, Origin: rec.Origin,
		PurgeReport: cache.PurgeReport{Tags: []string{}, Manifests: []digest.Digest{}, Blobs: []cache.GCBlob{}}}
	if res.Origin == "" {
		res.Origin = "local"
	}
	d, isDigest := digest.Digest(ref), strings.Contains(ref, ":")
	if isDigest && d.Validate() != nil {
		return nil, oci.Errorf(oci.CodeDigestInvalid, "ref=%q is not a digest", oci.Clip(ref))
	}
	if !isDigest && !oci.ValidTag(ref) {
		return nil, oci.Errorf(oci.CodeNameInvalid, "ref=%q is neither a tag nor a digest", oci.Clip(ref))
	}
	if !isDigest {
		t, err := st.Tag(repo, ref)
		if errors.Is(err, cache.ErrNotFound) {
			return nil, oci.Errorf(oci.CodeManifestUnknown, "tag %s unknown in %s", ref, repo)
		} else if err != nil {
			return nil, err
		}
		if tagOnly || rec.Origin == "" {
			if err := st.DeleteTag(repo, ref); err != nil {
				return nil, err
			}
			res.Tags = append(res.Tags, ref)
		}
		if tagOnly || (rec.Origin == "" && !unneeded(st, repo, t.Digest)) {
			res.Note = noteFor(rec.Origin)
			return res, nil
		}
		d = t.Digest
	}
	if _, err := st.Manifest(repo, d); err == nil {
		if rec.Origin == "" {
			err = st.DeleteManifest(repo, d)
			res.Manifests = append(res.Manifests, d)
		} else {
			var p *cache.PurgeReport
			p, err = st.PurgeManifest(repo, d)
			res.PurgeReport = *p
		}
		res.Note = noteFor(rec.Origin)
		return res, err
	}
	if ok, err := st.Linked(repo, d); err != nil {
		return nil, err
	} else if !ok {
		return nil, oci.Errorf(oci.CodeManifestUnknown, "%s holds no manifest or blob %s", repo, d)
	}
	if rec.Origin == "" {
		res.Unlinked = 1
		res.Note = noteFor(rec.Origin)
		return res, st.Unlink(repo, d)
	}
	p, err := st.PurgeBlob(repo, d)
	res.PurgeReport = *p
	return res, err
}

// unneeded reports whether manifest d of a local repository can go with its
// last tag: no other tag points at it and no index of the repository lists it.
func unneeded(st *cache.Store, repo string, d digest.Digest) bool {
	tags, _, err := st.Tags(repo, 0, "")
	if err != nil {
		return false
	}
	for _, t := range tags {
		if rec, err := st.Tag(repo, t); err != nil || rec.Digest == d {
			return false
		}
	}
	ms, err := st.Manifests(repo)
	if err != nil {
		return false
	}
	for _, m := range ms {
		if m.Digest == d {
			continue
		}
		body, err := st.ManifestBody(m.Digest)
		if err != nil {
			return false
		}
		pm, err := registry.ParseManifest(m.MediaType, body, m.Digest)
		if err != nil {
			return false
		}
		if slices.ContainsFunc(pm.Children, func(c registry.Descriptor) bool { return c.Digest == d }) {
			return false
		}
	}
	return true
}

func noteFor(origin string) string {
	if origin == "" {
		return "the next garbage collection frees what nothing references any longer (berth gc)"
	}
	return "the next pull fetches it from the upstream again"
}

// bucketOf is the bucket of local repositories, or nil on the filesystem driver.
func bucketOf(api *reloadable) *bucket.Registry {
	b, _ := api.local.(*bucket.Registry)
	return b
}
