package cache

// Garbage collection of local repositories: mark and sweep, online.
//
// Mark reads one snapshot of the index (taken under hotMu shared, so no
// update is half done) and decides, for local repositories only:
//   - which tags retention rules remove (retention.go);
//   - which manifests are kept: every manifest a kept tag reaches, the
//     children of kept indexes and the referrers of kept manifests
//     (recursively), and the untagged ones no rule expires;
//   - which blobs are referenced: the bodies, configs and layers of kept
//     manifests.
//
// Sweep removes the rest, each record in its own update that checks again
// what the plan assumed. Updates never overlap (Store.update holds hotMu
// exclusively), so of a removal and a push that race, whichever runs second
// sees what the first did:
//   - A blob is removed only if neither its Created nor its Linked stamp is
//     within the grace period before the snapshot (or after it). Every
//     update that links a blob (Link, a fill, a commit with its link) and
//     every manifest push, for each blob it references (PutManifestRefs),
//     writes that stamp in the same transaction that checks the blob and
//     the repository's link are still there. So either the removal comes
//     second, sees the fresh stamp and keeps the blob, or the push comes
//     second, finds the blob or link gone and fails with ErrRefGone
//     (MANIFEST_BLOB_UNKNOWN: the client pushes the blob again). An upload
//     in progress has no digest yet; its commit indexes and links the blob
//     in one update, so a blob is never seen stored but unlinked.
//   - lockCommit serialises the file's removal with a commit of the same
//     digest, and a blob with a fill in flight is skipped, as eviction does.
//   - A manifest is removed only if no tag points at it and its Pushed stamp
//     is from before the snapshot; a push of an index stamps its children.
//   - A repository record is removed when the repository holds no tag,
//     manifest or link; a later link creates it again (ensureRepo).
//
// Blobs a mirrored repository links belong to eviction (evict.go): the
// collector never removes them. It drops every link of a local repository
// to a blob none of the repository's kept manifests references (once the
// blob is past the grace period), whether the blob stays (another
// repository, or a mirrored one, needs it) or not: so deleting a pushed
// image releases a layer it shared with a mirrored one to the cache limit,
// and a repository whose images were deleted ends up empty. A push checks
// the links it references in its own update (stampRefs).
//
// The mark phase only reads the index through gcIndex and manifest bodies
// through a function, so another storage driver can feed it its own.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"

	"github.com/berth-dev/berth/internal/registry"
)

var (
	// ErrRefGone: a manifest push referenced a blob or child manifest that
	// a collection removed while the push was checked; push it again.
	ErrRefGone = errors.New("referenced content was collected")
	// ErrUploadLimit: Options.MaxUploads or MaxUploadBytes is reached.
	ErrUploadLimit = errors.New("too many uploads in progress")
)

// gcState is the collector's part of the Store.
type gcState struct {
	mu    sync.Mutex // one collection at a time
	pulls sync.Map   // repo+sep+tag -> *pullEntry, not yet saved
	// refs caches what stored manifests reference (content-addressed, so
	// never stale): a run reads only the bodies pushed since the last.
	// Guarded by mu; made by the first run.
	refs *lru.Cache[digest.Digest, *registry.Manifest]

	runs, errs, blobs, bytes, manifests, tags, repos, uploads atomic.Int64
	lastTook                                                  atomic.Int64 // nanoseconds
	lastRun                                                   atomic.Int64 // unix seconds of the last finished run
}

type pullEntry struct {
	at    atomic.Int64
	dirty atomic.Bool
}

// pullRecord is the value of p/<repo>\x00<tag>.
type pullRecord struct {
	At time.Time `json:"at"`
}

// GCOptions tune one collection.
type GCOptions struct {
	// Grace protects blobs created or linked this recently, or since the
	// collection started (and so manifests and tags). Negative is zero.
	Grace time.Duration
	// DryRun plans and reports without removing anything.
	DryRun bool
	// Retention rules, the first matching a repository applies.
	Retention []RetentionRule
}

// GCTag is a tag a collection removes.
type GCTag struct {
	Repo   string        `json:"repo"`
	Tag    string        `json:"tag"`
	Digest digest.Digest `json:"digest"`
	Reason string        `json:"reason"`
}

// GCManifest is a manifest a collection removes.
type GCManifest struct {
	Repo   string        `json:"repo"`
	Digest digest.Digest `json:"digest"`
	Reason string        `json:"reason"`
}

// GCBlob is a blob a collection removes, or an upload's staging file.
type GCBlob struct {
	Digest digest.Digest `json:"digest,omitempty"`
	Upload string        `json:"upload,omitempty"`
	Size   int64         `json:"size"`
}

// GCReport is what a collection removed, or with DryRun would remove.
type GCReport struct {
	DryRun    bool         `json:"dryRun"`
	Tags      []GCTag      `json:"tags"`
	Manifests []GCManifest `json:"manifests"`
	Blobs     []GCBlob     `json:"blobs"`
	// Unlinked counts links of local repositories dropped from blobs that
	// mirrored repositories still hold (now under the cache limit).
	Unlinked int      `json:"unlinked"`
	Repos    []string `json:"repos"`
	Uploads  []GCBlob `json:"uploads"`
	// Bytes is the size of the blobs and upload files removed.
	Bytes int64 `json:"bytes"`
	// Seconds is how long the collection took.
	Seconds float64 `json:"seconds"`
}

// GCStats are the collector's counters since Open, for metrics.
type GCStats struct {
	Runs, Errors                                  int64
	Blobs, Bytes, Manifests, Tags, Repos, Uploads int64
	LastDuration                                  time.Duration
	LastRun                                       time.Time // zero before the first
}

// GCStats reports the collector's counters.
func (s *Store) GCStats() GCStats {
	st := GCStats{Runs: s.gc.runs.Load(), Errors: s.gc.errs.Load(), Blobs: s.gc.blobs.Load(), Bytes: s.gc.bytes.Load(),
		Manifests: s.gc.manifests.Load(), Tags: s.gc.tags.Load(), Repos: s.gc.repos.Load(), Uploads: s.gc.uploads.Load(),
		LastDuration: time.Duration(s.gc.lastTook.Load())}
	if u := s.gc.lastRun.Load(); u > 0 {
		st.LastRun = time.Unix(u, 0)
	}
	return st
}

// --- pulls -------------------------------------------------------------------

// RecordPull notes a pull of tag in repo, for retention's not_pulled_for,
// if repo is local. It writes nothing to the index: pull times are saved in
// batches by FlushPulls (each collection, and Close).
func (s *Store) RecordPull(repo, tag string) {
	if r, err := s.Repository(repo); err != nil || r.Origin != "" {
		return
	}
	k := repo + sep + tag
	v, ok := s.gc.pulls.Load(k)
	if !ok {
		v, _ = s.gc.pulls.LoadOrStore(k, new(pullEntry))
	}
	e := v.(*pullEntry)
	e.at.Store(s.now().UnixNano())
	e.dirty.Store(true)
}

// FlushPulls saves the pull times recorded since the last flush.
func (s *Store) FlushPulls() error {
	type pending struct {
		k  string
		e  *pullEntry
		at int64
	}
	var all []pending
	s.gc.pulls.Range(func(k, v any) bool {
		if e := v.(*pullEntry); e.dirty.Swap(false) {
			all = append(all, pending{k.(string), e, e.at.Load()})
		}
		return true
	})
	for len(all) > 0 {
		chunk := all[:min(len(all), flushBatch)]
		err := s.update(func(txn *wtxn) error {
			for _, p := range chunk {
				repo, tag, _ := strings.Cut(p.k, sep)
				if err := setJSON(txn, key(kindPull, repo, tag), pullRecord{At: time.Unix(0, p.at).UTC()}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			for _, p := range all {
				p.e.dirty.Store(true)
			}
			return err
		}
		for _, p := range chunk {
			if !p.e.dirty.Load() {
				s.gc.pulls.CompareAndDelete(p.k, p.e)
			}
		}
		all = all[len(chunk):]
	}
	return nil
}

// Pulls returns the last pull of each tag of repo that was pulled.
func (s *Store) Pulls(repo string) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	err := s.db.View(func(txn *badger.Txn) error {
		p := prefix(kindPull, repo)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var r pullRecord
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &r) }); err == nil {
				out[string(it.Item().Key()[len(p):])] = r.At
			}
		}
		return nil
	})
	s.gc.pulls.Range(func(k, v any) bool {
		if r, tag, _ := strings.Cut(k.(string), sep); r == repo {
			if at := time.Unix(0, v.(*pullEntry).at.Load()); at.After(out[tag]) {
				out[tag] = at
			}
		}
		return true
	})
	return out, err
}

// --- stamps (called inside updates that reference content) -------------------

// stampLinked is called inside an update that links d or references it: it
// returns ErrNotFound if d is no longer stored, and otherwise stamps the
// blob as linked now, which a later removal's update sees.
func (s *Store) stampLinked(txn *wtxn, d digest.Digest) error {
	var r blobRecord
	if err := getJSON(txn, key(kindBlob, d.String()), &r); err != nil {
		return err
	}
	s.Touch(d)
	r.Linked = s.now()
	return setJSON(txn, key(kindBlob, d.String()), r)
}

// stampRefs stamps what a pushed manifest references in repo: its blobs and
// child manifests; ErrRefGone if one was removed since the caller checked.
func (s *Store) stampRefs(txn *wtxn, repo string, blobs, children []digest.Digest) error {
	for _, d := range blobs {
		// The link too: a collection may have dropped it (unlinkOld).
		if _, err := txn.Get(key(kindLink, repo, d.String())); errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("%w: blob %s is no longer linked to %s", ErrRefGone, d, repo)
		} else if err != nil {
			return err
		}
		if err := s.stampLinked(txn, d); errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: blob %s", ErrRefGone, d)
		} else if err != nil {
			return err
		}
	}
	for _, c := range children {
		k := key(kindManifest, repo, c.String())
		var m ManifestRecord
		if err := getJSON(txn, k, &m); errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: manifest %s", ErrRefGone, c)
		} else if err != nil {
			return err
		}
		m.Pushed = s.now()
		if err := setJSON(txn, k, m); err != nil {
			return err
		}
	}
	return nil
}

// --- uploads -----------------------------------------------------------------

// OpenUploads counts the upload sessions open and the bytes they hold.
func (s *Store) OpenUploads() (n int, bytes int64, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		return scanKind(txn, kindUpload, true, func(_ string, v []byte) error {
			var r uploadRecord
			if json.Unmarshal(v, &r) == nil {
				n++
				bytes += r.Offset
			}
			return nil
		})
	})
	return n, bytes, err
}

// checkUploadLimits fails with ErrUploadLimit if a new upload session would
// pass Options.MaxUploads, or the open ones hold MaxUploadBytes already.
func (s *Store) checkUploadLimits() error {
	if s.opts.MaxUploads <= 0 && s.opts.MaxUploadBytes <= 0 {
		return nil
	}
	n, bytes, err := s.OpenUploads()
	if err != nil {
		return err
	}
	if s.opts.MaxUploads > 0 && n >= s.opts.MaxUploads {
		return fmt.Errorf("%w: %d upload sessions are open (limit %d); finish or cancel some, or wait for idle ones to expire", ErrUploadLimit, n, s.opts.MaxUploads)
	}
	if s.opts.MaxUploadBytes > 0 && bytes >= s.opts.MaxUploadBytes {
		return fmt.Errorf("%w: open upload sessions hold %d bytes (limit %d); finish or cancel some, or wait for idle ones to expire", ErrUploadLimit, bytes, s.opts.MaxUploadBytes)
	}
	return nil
}

// expiredUploads lists (and unless dry, removes) the staging files that no
// live upload or fill owns: uploads idle past Options.UploadTTL, whose
// record Badger expired, and leftovers of a crash.
func (s *Store) expiredUploads(dry bool) ([]GCBlob, error) {
	entries, err := os.ReadDir(filepath.Join(s.root, "ingest"))
	if err != nil {
		return nil, fmt.Errorf("read staging directory: %w", err)
	}
	live := map[string]bool{}
	s.fillMu.Lock()
	for _, f := range s.fills {
		live[filepath.Base(f.file.Name())] = true
	}
	s.fillMu.Unlock()
	s.uploadMu.Lock()
	for id := range s.uploading { // a request is writing it: its record is renewed when it ends
		live[id] = true
	}
	s.uploadMu.Unlock()
	var out []GCBlob
	for _, e := range entries {
		id := e.Name()
		if _, writing := s.staging.Load(id); live[id] || writing {
			continue
		}
		err := s.db.View(func(txn *badger.Txn) error {
			_, err := txn.Get(key(kindUpload, id))
			return err
		})
		if !errors.Is(err, badger.ErrKeyNotFound) {
			continue
		}
		var size int64
		if fi, err := e.Info(); err == nil {
			size = fi.Size()
		}
		if !dry {
			if err := os.Remove(filepath.Join(s.root, "ingest", id)); err != nil {
				continue
			}
		}
		out = append(out, GCBlob{Upload: id, Size: size})
	}
	return out, nil
}

// --- snapshot and mark ---------------------------------------------------------

// gcIndex is what the mark phase reads of the index.
type gcIndex struct {
	origin    map[string]string                           // every repository -> origin ("" local)
	tags      map[string]map[string]TagRecord             // local repositories
	manifests map[string]map[digest.Digest]ManifestRecord // local repositories
	pulls     map[string]map[string]time.Time             // local repositories
	blobs     map[digest.Digest]blobRecord
	links     map[digest.Digest][]string // repositories linking each blob
}

func (ix *gcIndex) isLocal(repo string) bool {
	o, ok := ix.origin[repo]
	return !ok || o == "" // no record: no upstream claims it
}

// snapshot reads the gcIndex in one read transaction.
func (s *Store) snapshot() (*gcIndex, error) {
	s.hotMu.RLock()
	txn := s.db.NewTransaction(false)
	s.hotMu.RUnlock()
	defer txn.Discard()
	ix := &gcIndex{origin: map[string]string{}, tags: map[string]map[string]TagRecord{},
		manifests: map[string]map[digest.Digest]ManifestRecord{}, pulls: map[string]map[string]time.Time{},
		blobs: map[digest.Digest]blobRecord{}, links: map[digest.Digest][]string{}}
	err := scanKind(txn, kindRepo, true, func(repo string, v []byte) error {
		var r RepoRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		ix.origin[repo] = r.Origin
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = scanKind(txn, kindTag, true, func(rest string, v []byte) error {
		repo, tag, _ := strings.Cut(rest, sep)
		if !ix.isLocal(repo) {
			return nil
		}
		var t TagRecord
		if err := json.Unmarshal(v, &t); err != nil {
			return err
		}
		if ix.tags[repo] == nil {
			ix.tags[repo] = map[string]TagRecord{}
		}
		ix.tags[repo][tag] = t
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = scanKind(txn, kindManifest, true, func(rest string, v []byte) error {
		repo, ds, _ := strings.Cut(rest, sep)
		if !ix.isLocal(repo) {
			return nil
		}
		var m ManifestRecord
		if err := json.Unmarshal(v, &m); err != nil {
			return err
		}
		if ix.manifests[repo] == nil {
			ix.manifests[repo] = map[digest.Digest]ManifestRecord{}
		}
		m.Digest = digest.Digest(ds)
		ix.manifests[repo][m.Digest] = m
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = scanKind(txn, kindPull, true, func(rest string, v []byte) error {
		repo, tag, _ := strings.Cut(rest, sep)
		var r pullRecord
		if json.Unmarshal(v, &r) != nil {
			return nil
		}
		if ix.pulls[repo] == nil {
			ix.pulls[repo] = map[string]time.Time{}
		}
		ix.pulls[repo][tag] = r.At
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = scanKind(txn, kindBlob, true, func(rest string, v []byte) error {
		d, err := digest.Parse(rest)
		if err != nil {
			return nil // not a key this store writes
		}
		var r blobRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		ix.blobs[d] = r
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = scanKind(txn, kindLink, false, func(rest string, _ []byte) error {
		repo, ds, _ := strings.Cut(rest, sep)
		ix.links[digest.Digest(ds)] = append(ix.links[digest.Digest(ds)], repo)
		return nil
	})
	return ix, err
}

// gcMark is the outcome of the mark phase.
type gcMark struct {
	deadTags      []GCTag
	deadManifests []GCManifest
	keptBlobs     map[digest.Digest]bool
	// keptIn: the blobs each local repository's kept manifests reference;
	// its links to others are dropped after the grace period.
	keptIn map[string]map[digest.Digest]bool
}

// bodyFunc returns a stored manifest parsed.
type bodyFunc func(d digest.Digest, mediaType string) (*registry.Manifest, error)

// mark decides what the local repositories keep (see the top of this file).
// A kept manifest whose body cannot be read or parsed is an error: nothing
// it might reference may be swept.
func mark(ix *gcIndex, rules []RetentionRule, now time.Time, body bodyFunc) (*gcMark, error) {
	out := &gcMark{keptBlobs: map[digest.Digest]bool{}, keptIn: map[string]map[digest.Digest]bool{}}
	parsed := map[digest.Digest]*registry.Manifest{}
	var repo string // the repository being marked, for errors
	parse := func(m ManifestRecord) (*registry.Manifest, error) {
		if p, ok := parsed[m.Digest]; ok {
			return p, nil
		}
		p, err := body(m.Digest, m.MediaType)
		if err != nil {
			return nil, fmt.Errorf("manifest %s@%s cannot be read (%w): delete it (berth rm) or restore its blob", repo, m.Digest, err)
		}
		parsed[m.Digest] = p
		return p, nil
	}
	repos := make([]string, 0, len(ix.origin))
	for repo := range ix.manifests {
		repos = append(repos, repo)
	}
	for repo := range ix.tags {
		if ix.manifests[repo] == nil {
			repos = append(repos, repo)
		}
	}
	slices.Sort(repos)
	for _, repo = range repos {
		rule := ruleFor(rules, repo)
		tags, mans := ix.tags[repo], ix.manifests[repo]
		dead := map[string]bool{}
		if rule != nil {
			for _, t := range rule.expiredTags(repo, tags, ix.pulls[repo], now) {
				dead[t.Tag] = true
				out.deadTags = append(out.deadTags, t)
			}
		}
		referrers := map[digest.Digest][]digest.Digest{}
		for d, m := range mans {
			if m.Subject != "" {
				referrers[m.Subject] = append(referrers[m.Subject], d)
			}
		}
		kept := map[digest.Digest]bool{}
		var keep func(d digest.Digest) error
		keep = func(d digest.Digest) error {
			m, ok := mans[d]
			if !ok || kept[d] {
				return nil
			}
			kept[d] = true
			p, err := parse(m)
			if err != nil {
				return err
			}
			for _, c := range p.Children {
				if err := keep(c.Digest); err != nil {
					return err
				}
			}
			for _, r := range referrers[d] {
				if err := keep(r); err != nil {
					return err
				}
			}
			return nil
		}
		for _, t := range sortedKeys(tags) {
			if !dead[t] {
				if err := keep(tags[t].Digest); err != nil {
					return nil, err
				}
			}
		}
		// Untagged manifests no kept tag reaches: kept unless the rule
		// expires them (and then kept still if a kept one reaches them).
		reached := copySet(kept)
		var expired []digest.Digest
		for _, d := range sortedKeys(mans) {
			if reached[d] {
				continue
			}
			if rule != nil && rule.UntaggedAfter > 0 && untaggedSince(mans[d], ix.blobs[d], now) >= rule.UntaggedAfter {
				expired = append(expired, d)
				continue
			}
			if err := keep(d); err != nil {
				return nil, err
			}
		}
		for _, d := range expired {
			if !kept[d] {
				out.deadManifests = append(out.deadManifests, GCManifest{Repo: repo, Digest: d,
					Reason: "untagged for more than " + rule.UntaggedAfter.String() + " (retention " + rule.name() + ")"})
			}
		}
		in := map[digest.Digest]bool{}
		for d := range kept {
			in[d] = true
			for _, b := range parsed[d].Blobs {
				in[b.Digest] = true
			}
		}
		for d := range in {
			out.keptBlobs[d] = true
		}
		out.keptIn[repo] = in
	}
	return out, nil
}

// untaggedSince is how long ago m was last pushed or referenced by a push;
// zero (never expired) if nothing says.
func untaggedSince(m ManifestRecord, body blobRecord, now time.Time) time.Duration {
	at := m.Pushed
	if at.IsZero() {
		at = later(body.Created, body.Linked)
	}
	if at.IsZero() {
		return 0
	}
	return now.Sub(at)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func copySet[K comparable](m map[K]bool) map[K]bool {
	c := make(map[K]bool, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func sortedKeys[K ~string, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// parseStored reads a stored manifest's body from its file and parses it.
func (s *Store) parseStored(d digest.Digest, mediaType string) (*registry.Manifest, error) {
	b, err := os.ReadFile(blobPath(s.root, d))
	if err != nil {
		return nil, err
	}
	return registry.ParseManifest(mediaType, b, d)
}

// refsCacheEntries bounds the collector's cache of manifest references.
const refsCacheEntries = 16384

// parseCached is parseStored through gcState.refs, keeping only the
// references (no body, no annotations). The caller holds gc.mu.
func (s *Store) parseCached(d digest.Digest, mediaType string) (*registry.Manifest, error) {
	if s.gc.refs == nil {
		s.gc.refs, _ = lru.New[digest.Digest, *registry.Manifest](refsCacheEntries)
	}
	if m, ok := s.gc.refs.Get(d); ok {
		return m, nil
	}
	m, err := s.parseStored(d, mediaType)
	if err != nil {
		return nil, err
	}
	refs := &registry.Manifest{Desc: registry.Descriptor{MediaType: m.Desc.MediaType, Digest: d, Size: m.Desc.Size},
		Subject: m.Subject, Blobs: m.Blobs, Children: m.Children}
	s.gc.refs.Add(d, refs)
	return refs, nil
}

// --- collect ------------------------------------------------------------------

// Collect runs one garbage collection of local repositories (see the top of
// this file) and returns what it removed, or with DryRun what it would
// remove. Collections run one at a time. When ctx ends, it stops between
// two removals (each is whole) and returns what it did with ctx's error.
func (s *Store) Collect(ctx context.Context, opts GCOptions) (*GCReport, error) {
	s.gc.mu.Lock()
	defer s.gc.mu.Unlock()
	began := time.Now()
	rep, err := s.collect(ctx, opts)
	rep.Seconds = time.Since(began).Seconds()
	if opts.DryRun {
		return rep, err
	}
	s.gc.runs.Add(1)
	if err != nil {
		s.gc.errs.Add(1)
	}
	s.gc.lastTook.Store(int64(time.Since(began)))
	s.gc.lastRun.Store(time.Now().Unix())
	s.gc.blobs.Add(int64(len(rep.Blobs)))
	s.gc.bytes.Add(rep.Bytes)
	s.gc.manifests.Add(int64(len(rep.Manifests)))
	s.gc.tags.Add(int64(len(rep.Tags)))
	s.gc.repos.Add(int64(len(rep.Repos)))
	s.gc.uploads.Add(int64(len(rep.Uploads)))
	return rep, err
}

func (s *Store) collect(ctx context.Context, opts GCOptions) (*GCReport, error) {
	rep := &GCReport{DryRun: opts.DryRun, Tags: []GCTag{}, Manifests: []GCManifest{}, Blobs: []GCBlob{}, Repos: []string{}, Uploads: []GCBlob{}}
	if s.ctx.Err() != nil {
		return rep, errors.New("store is closing")
	}
	if err := s.FlushPulls(); err != nil {
		return rep, err
	}
	start := s.now()
	ix, err := s.snapshot()
	if err != nil {
		return rep, err
	}
	mk, err := mark(ix, opts.Retention, start, s.parseCached)
	if err != nil {
		return rep, fmt.Errorf("mark: %w (nothing removed)", err)
	}
	sw := &sweep{s: s, dry: opts.DryRun, start: start, cutoff: start.Add(-max(opts.Grace, 0)),
		ix: ix, mk: mk, rep: rep, gone: map[string]map[digest.Digest]bool{}}
	// Tags, then manifests (one goes only once no tag points at it), then
	// blobs, then what that left empty; leftovers last.
	for _, phase := range []func(context.Context) error{sw.tags, sw.manifests, sw.blobs, sw.repos, sw.leftovers} {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if err := phase(ctx); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// sweep is one collection's sweep phase: it removes what mark did not keep
// (or with dry only reports it) into rep.
type sweep struct {
	s      *Store
	dry    bool
	start  time.Time // of the snapshot
	cutoff time.Time // start less the grace period
	ix     *gcIndex
	mk     *gcMark
	rep    *GCReport
	gone   map[string]map[digest.Digest]bool // links each repository lost
}

func (sw *sweep) tags(ctx context.Context) error {
	for _, t := range sw.mk.deadTags {
		ok, err := true, ctx.Err()
		if err == nil && !sw.dry {
			ok, err = sw.s.removeTag(t, sw.start)
		}
		if err != nil {
			return err
		}
		if ok {
			sw.rep.Tags = append(sw.rep.Tags, t)
		}
	}
	return nil
}

func (sw *sweep) manifests(ctx context.Context) error {
	for _, m := range sw.mk.deadManifests {
		ok, err := true, ctx.Err()
		if err == nil && !sw.dry {
			ok, err = sw.s.removeManifest(m.Repo, m.Digest, sw.start)
		}
		if err != nil {
			return err
		}
		if ok {
			sw.rep.Manifests = append(sw.rep.Manifests, m)
		}
	}
	return nil
}

func (sw *sweep) lose(repos []string, d digest.Digest) {
	for _, r := range repos {
		if sw.gone[r] == nil {
			sw.gone[r] = map[digest.Digest]bool{}
		}
		sw.gone[r][d] = true
	}
}

// blobs removes the blobs past the grace period that nothing kept
// references, and local links that no kept manifest of their repository
// needs from the blobs that stay.
func (sw *sweep) blobs(ctx context.Context) error {
	for _, d := range sortedKeys(sw.ix.blobs) {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := sw.ix.blobs[d]
		if !later(b.Created, b.Linked).Before(sw.cutoff) {
			continue
		}
		var stale []string
		mirrored := false
		for _, repo := range sw.ix.links[d] {
			switch {
			case !sw.ix.isLocal(repo):
				mirrored = true
			case !sw.mk.keptIn[repo][d]:
				stale = append(stale, repo)
			}
		}
		if sw.mk.keptBlobs[d] || mirrored { // kept: by a local manifest, or by eviction's rules
			if len(stale) == 0 {
				continue
			}
			ok, err := true, error(nil)
			if !sw.dry {
				ok, err = sw.s.unlinkOld(d, stale, sw.cutoff)
			}
			if err != nil {
				return err
			}
			if ok {
				sw.rep.Unlinked += len(stale)
				sw.lose(stale, d)
			}
			continue
		}
		ok, size, err := true, b.Size, error(nil)
		if !sw.dry {
			size, ok, err = sw.s.removeBlob(d, sw.cutoff, stale, false)
		}
		if err != nil {
			return err
		}
		if ok {
			sw.rep.Blobs = append(sw.rep.Blobs, GCBlob{Digest: d, Size: size})
			sw.rep.Bytes += size
			sw.lose(stale, d)
		}
	}
	return nil
}

// repos removes the records of repositories left with nothing (a dry run
// works out which would be).
func (sw *sweep) repos(ctx context.Context) error {
	deadMans := map[string]map[digest.Digest]bool{}
	for _, m := range sw.mk.deadManifests {
		if deadMans[m.Repo] == nil {
			deadMans[m.Repo] = map[digest.Digest]bool{}
		}
		deadMans[m.Repo][m.Digest] = true
	}
	linksOf := map[string][]digest.Digest{}
	for d, repos := range sw.ix.links {
		for _, r := range repos {
			linksOf[r] = append(linksOf[r], d)
		}
	}
	for _, repo := range sortedKeys(sw.ix.origin) {
		if sw.dry {
			if sw.ix.isLocal(repo) && emptyAfter(repo, sw.ix, sw.rep.Tags, deadMans[repo], linksOf[repo], sw.gone[repo]) {
				sw.rep.Repos = append(sw.rep.Repos, repo)
			}
			continue
		}
		if ok, err := sw.s.removeEmptyRepo(repo); err != nil {
			return err
		} else if ok {
			sw.rep.Repos = append(sw.rep.Repos, repo)
		}
	}
	return nil
}

// leftovers removes blob files a crash left without a record, the pull
// times of tags that are gone, and upload sessions past their TTL.
func (sw *sweep) leftovers(ctx context.Context) error {
	orphans, err := sw.s.orphanFiles(sw.dry, sw.cutoff, sw.ix.blobs)
	if err != nil {
		return err
	}
	for _, o := range orphans {
		sw.rep.Blobs = append(sw.rep.Blobs, o)
		sw.rep.Bytes += o.Size
	}
	if !sw.dry {
		for _, repo := range sortedKeys(sw.ix.pulls) {
			for _, tag := range sortedKeys(sw.ix.pulls[repo]) {
				if _, ok := sw.ix.tags[repo][tag]; !ok {
					if err := sw.s.dropPull(repo, tag); err != nil {
						return err
					}
				}
			}
		}
	}
	ups, err := sw.s.expiredUploads(sw.dry)
	if err != nil {
		return err
	}
	sw.rep.Uploads = append(sw.rep.Uploads, ups...)
	for _, u := range ups {
		sw.rep.Bytes += u.Size
	}
	return nil
}

// emptyAfter reports whether a dry run's plan leaves repo with nothing.
func emptyAfter(repo string, ix *gcIndex, deadTags []GCTag, deadMans map[digest.Digest]bool, links []digest.Digest, gone map[digest.Digest]bool) bool {
	tagsLeft := len(ix.tags[repo])
	for _, t := range deadTags {
		if t.Repo == repo {
			tagsLeft--
		}
	}
	if tagsLeft > 0 || len(ix.manifests[repo]) > len(deadMans) {
		return false
	}
	for _, d := range links {
		if !gone[d] && !deadMans[d] {
			return false
		}
	}
	return true
}

// removeTag removes t unless it was moved or pushed again since start.
func (s *Store) removeTag(t GCTag, start time.Time) (bool, error) {
	var removed bool
	err := s.update(func(txn *wtxn) error {
		removed = false
		var cur TagRecord
		if err := getJSON(txn, key(kindTag, t.Repo, t.Tag), &cur); errors.Is(err, ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if cur.Digest != t.Digest || !cur.FetchedAt.Before(start) {
			return nil
		}
		if err := txn.Delete(key(kindTag, t.Repo, t.Tag)); err != nil {
			return err
		}
		removed = true
		return txn.Delete(key(kindPull, t.Repo, t.Tag))
	})
	if removed {
		s.gc.pulls.Delete(t.Repo + sep + t.Tag)
	}
	return removed, err
}

// orphanFiles lists (and unless dry, removes) files under blobs/ that no
// blob record names and that were written before cutoff: what a crash left
// between a removal's index update and its unlink. commitFile holds the
// digest's commit lock from its rename to its index update, so under that
// lock a file without a record is not one being committed.
// indexed are the blobs the snapshot knew: their files are not looked at.
func (s *Store) orphanFiles(dry bool, cutoff time.Time, indexed map[digest.Digest]blobRecord) ([]GCBlob, error) {
	var out []GCBlob
	root := filepath.Join(s.root, "blobs")
	err := filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		parts := strings.Split(filepath.ToSlash(rel), "/")
		if len(parts) != 3 {
			return nil
		}
		d := digest.NewDigestFromEncoded(digest.Algorithm(parts[0]), parts[2])
		if _, known := indexed[d]; known || d.Validate() != nil || blobPath(s.root, d) != p {
			return nil // indexed, or not a file this store writes
		}
		fi, err := e.Info()
		if err != nil || !fi.ModTime().Before(cutoff) {
			return nil
		}
		unlock := s.lockCommit(d)
		defer unlock()
		err = s.db.View(func(txn *badger.Txn) error { _, err := txn.Get(key(kindBlob, d.String())); return err })
		if !errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if !dry {
			if err := os.Remove(p); err != nil {
				return nil
			}
		}
		out = append(out, GCBlob{Digest: d, Size: fi.Size()})
		return nil
	})
	return out, err
}

// dropPull forgets the pull time of tag in repo unless the tag exists.
func (s *Store) dropPull(repo, tag string) error {
	return s.update(func(txn *wtxn) error {
		if _, err := txn.Get(key(kindTag, repo, tag)); err == nil {
			return nil
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		return txn.Delete(key(kindPull, repo, tag))
	})
}

// removeManifest removes manifest d from repo unless a tag points at it or
// it was pushed or referenced since start.
func (s *Store) removeManifest(repo string, d digest.Digest, start time.Time) (bool, error) {
	var removed bool
	err := s.update(func(txn *wtxn) error {
		removed = false
		var m ManifestRecord
		if err := getJSON(txn, key(kindManifest, repo, d.String()), &m); errors.Is(err, ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if !m.Pushed.Before(start) {
			return nil
		}
		tagged := false
		err := scanPrefix(txn.Txn, prefix(kindTag, repo), func(v []byte) bool {
			var t TagRecord
			tagged = json.Unmarshal(v, &t) == nil && t.Digest == d
			return !tagged
		})
		if err != nil || tagged {
			return err
		}
		removed = true
		return deleteManifest(txn, repo, d)
	})
	return removed, err
}

// scanPrefix calls fn with each value under p while it returns true.
func scanPrefix(txn *badger.Txn, p []byte, fn func(v []byte) bool) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		var more bool
		if err := it.Item().Value(func(v []byte) error { more = fn(v); return nil }); err != nil {
			return err
		}
		if !more {
			return nil
		}
	}
	return nil
}

// unlinkOld drops the links of repos to d unless d was linked or referenced
// after cutoff.
func (s *Store) unlinkOld(d digest.Digest, repos []string, cutoff time.Time) (bool, error) {
	var done bool
	err := s.update(func(txn *wtxn) error {
		done = false
		var r blobRecord
		if err := getJSON(txn, key(kindBlob, d.String()), &r); errors.Is(err, ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if !later(r.Created, r.Linked).Before(cutoff) {
			return nil
		}
		for _, repo := range repos {
			if err := txn.Delete(key(kindLink, repo, d.String())); err != nil {
				return err
			}
		}
		done = true
		return nil
	})
	return done, err
}

// removeBlob removes blob d, with the links of repos to it, from the index
// and the disk. It keeps it if it was created or linked after cutoff (a
// zero cutoff: whenever), if a fill of it is in flight, or, with
// onlyUnlinked, if any repository other than repos links it. It returns the
// blob's size and whether it removed it.
func (s *Store) removeBlob(d digest.Digest, cutoff time.Time, repos []string, onlyUnlinked bool) (int64, bool, error) {
	unlock := s.lockCommit(d)
	defer unlock()
	if s.InFlight(d) != nil {
		return 0, false, nil
	}
	ds := d.String()
	var removed bool
	var size int64
	err := s.update(func(txn *wtxn) error {
		removed = false
		var r blobRecord
		if err := getJSON(txn, key(kindBlob, ds), &r); errors.Is(err, ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if !cutoff.IsZero() && !later(r.Created, r.Linked).Before(cutoff) {
			return nil
		}
		if onlyUnlinked {
			other, err := linkedOutside(txn.Txn, d, repos)
			if err != nil || other {
				return err
			}
		}
		for _, repo := range repos {
			if err := txn.Delete(key(kindLink, repo, ds)); err != nil {
				return err
			}
		}
		if err := txn.Delete(key(kindBlob, ds)); err != nil {
			return err
		}
		if err := txn.Delete(key(kindAccess, ds)); err != nil {
			return err
		}
		s.sizes.Remove(d) // under hotMu exclusive, as in evictBlob
		size, removed = r.Size, true
		return nil
	})
	if err != nil || !removed {
		return 0, false, err
	}
	s.access.Delete(d)
	if err := os.Remove(blobPath(s.root, d)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn().Err(err).Str("digest", ds).Msg("removing collected blob file")
	}
	s.manifests.Remove(d)
	s.small.Remove(d)
	s.usedBytes.Add(-size)
	s.usedBlobs.Add(-1)
	return size, true, nil
}

// linkedOutside reports whether a repository not in repos links d. It
// scans every link: for operator purges, not for the collector.
func linkedOutside(txn *badger.Txn, d digest.Digest, repos []string) (bool, error) {
	suffix := sep + d.String()
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(kindLink)})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		k := string(it.Item().Key())
		if repo, ok := strings.CutSuffix(k[len(kindLink):], suffix); ok && !slices.Contains(repos, repo) {
			return true, nil
		}
	}
	return false, nil
}

// removeEmptyRepo removes repo's record if it holds no tag, manifest or link.
func (s *Store) removeEmptyRepo(repo string) (bool, error) {
	var removed bool
	err := s.update(func(txn *wtxn) error {
		removed = false
		if _, err := txn.Get(key(kindRepo, repo)); errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		for _, kind := range []string{kindTag, kindManifest, kindLink} {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix(kind, repo)})
			it.Rewind()
			some := it.Valid()
			it.Close()
			if some {
				return nil
			}
		}
		removed = true
		return txn.Delete(key(kindRepo, repo))
	})
	return removed, err
}
