package cache

// Size-bounded eviction of mirrored content.
//
// Options.MaxBytes bounds the bytes of blobs that only mirrored repositories
// link. Pushed content is pinned: a blob linked to any local repository
// (RepoRecord.Origin == "") is neither counted against the limit nor ever
// evicted. Past the limit, a pass removes the least recently used mirrored
// blobs until they are back under the low-water mark; a later pull fetches
// them from the upstream again.
//
// Access times live in memory (Touch, called by StatBlob, OpenBlob,
// ManifestBody, and by every update that links or indexes a blob), so a read
// costs no index write; they are saved to a/<digest> every minute and at
// Close, so LRU order survives a restart. A blob not read since it was
// indexed is as old as blobRecord.Created (or its file's modification time,
// for records written before Created existed).
//
// A pass plans from a snapshot without holding the index lock, then removes
// each victim in its own update. Three things keep it from racing the rest
// of the store:
//   - The snapshot is taken, and the access sequence number read, under
//     hotMu shared, so no update is half done: every link committed before
//     is in the snapshot. Every update that links a blob later calls
//     stillStored, which touches the blob with a higher sequence number, and
//     evictBlob skips a blob touched after the snapshot. So a blob that gains
//     a local link during a pass is kept, and a link made after the blob is
//     gone fails with ErrNotFound instead of pointing at nothing.
//   - lockCommit serialises evictBlob with commitFile of the same digest, so
//     the unlink can never remove a file just committed again.
//   - A blob with a fill in flight, or read in the last evictGrace, is kept:
//     requests do StatBlob, then OpenBlob or Link, in separate calls.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

const (
	// lowWaterPercent of MaxBytes is where a pass stops: evicting a little
	// more than needed means one pass per tenth of the cache filled, not
	// one per blob.
	lowWaterPercent = 90
	// evictGrace protects a blob that a request is between two calls on.
	evictGrace = time.Minute
	// flushEvery is how often access times are saved (and the limit checked
	// again: blobs kept for evictGrace become evictable).
	flushEvery = time.Minute
	// flushBatch bounds one transaction of saved access times.
	flushBatch = 1000
)

// accessEntry is the in-memory access time of one blob.
type accessEntry struct {
	at    atomic.Int64  // unix nanoseconds of the last access
	seq   atomic.Uint64 // Store.accessSeq at the last access
	dirty atomic.Bool   // at not saved to a/<digest> yet
}

// accessRecord is the value of a/<digest>.
type accessRecord struct {
	At time.Time `json:"at"`
}

// Evicted is a blob an eviction pass removed.
type Evicted struct {
	Digest digest.Digest
	Size   int64
}

// Usage is what the store holds on disk, for metrics and health checks.
type Usage struct {
	Bytes int64 // every indexed blob, pushed and mirrored
	Blobs int64
	// PinnedBytes is the part of Bytes linked to local repositories as of
	// the last eviction pass (0 before one): it does not count against Limit.
	PinnedBytes  int64
	Limit        int64 // Options.MaxBytes; 0: unbounded
	EvictedBlobs int64 // since Open
	EvictedBytes int64 // since Open
}

// Usage reports the bytes on disk and the limit.
func (s *Store) Usage() Usage {
	return Usage{Bytes: s.usedBytes.Load(), Blobs: s.usedBlobs.Load(), PinnedBytes: s.pinnedBytes.Load(),
		Limit: s.opts.MaxBytes, EvictedBlobs: s.evicted.Load(), EvictedBytes: s.evictedB.Load()}
}

func (s *Store) now() time.Time {
	if s.opts.Clock != nil {
		return s.opts.Clock()
	}
	return time.Now()
}

// Touch records an access to blob d for eviction's LRU order. It writes
// nothing to the index (access times are saved in batches) and does nothing
// when the store has no size limit.
func (s *Store) Touch(d digest.Digest) {
	if s.opts.MaxBytes <= 0 {
		return
	}
	v, ok := s.access.Load(d)
	if !ok {
		v, _ = s.access.LoadOrStore(d, new(accessEntry))
	}
	e := v.(*accessEntry)
	// The time first: a pass that read the sequence number before this
	// touch either sees the new time when it plans or the new sequence
	// number when it removes.
	e.at.Store(s.now().UnixNano())
	e.seq.Store(s.accessSeq.Add(1))
	e.dirty.Store(true)
}

// stillStored is called inside an update that is about to link d: it
// returns ErrNotFound if d is no longer indexed (evicted since the caller
// looked), and touches d so that a running eviction pass keeps it.
func (s *Store) stillStored(txn *wtxn, d digest.Digest) error {
	if _, err := txn.Get(key(kindBlob, d.String())); errors.Is(err, badger.ErrKeyNotFound) {
		return ErrNotFound
	} else if err != nil {
		return err
	}
	s.Touch(d)
	return nil
}

// countUsage sums the indexed blobs, at Open.
func (s *Store) countUsage() error {
	var bytes, blobs int64
	err := s.db.View(func(txn *badger.Txn) error {
		return scanKind(txn, kindBlob, true, func(_ string, v []byte) error {
			var r blobRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			bytes += r.Size
			blobs++
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("count stored blobs: %w", err)
	}
	s.usedBytes.Store(bytes)
	s.usedBlobs.Store(blobs)
	return nil
}

// overLimit estimates, without reading the index, whether mirrored content
// exceeds the limit: pinned bytes are those of the last pass.
func (s *Store) overLimit() bool {
	limit := s.opts.MaxBytes
	return limit > 0 && s.usedBytes.Load()-s.pinnedBytes.Load() > limit
}

// maybeEvict asks the evictor for a pass if the store looks over its limit.
// It never blocks: one pending request is as good as many.
func (s *Store) maybeEvict() {
	if s.overLimit() {
		select {
		case s.evictCh <- struct{}{}:
		default:
		}
	}
}

// evictor runs eviction passes when asked and every flushEvery, and saves
// access times, until the store closes. It runs only with a limit.
func (s *Store) evictor() {
	defer s.wg.Done()
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			if err := s.flushAccess(); err != nil {
				s.log.Warn().Err(err).Msg("saving blob access times")
			}
		case <-s.evictCh:
		}
		if !s.overLimit() {
			continue
		}
		ev, err := s.Evict()
		if err != nil && s.ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("evicting mirrored blobs")
		}
		if s.opts.afterEvict != nil {
			s.opts.afterEvict(ev, err)
		}
	}
}

// Evict runs an eviction pass now if mirrored content exceeds
// Options.MaxBytes, and returns the blobs it removed, least recently used
// first. Passes run one at a time; the store runs them itself after fills
// and every minute.
func (s *Store) Evict() ([]Evicted, error) {
	limit := s.opts.MaxBytes
	if limit <= 0 {
		return nil, nil
	}
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	cands, mirrored, startSeq, err := s.planEviction()
	if err != nil || mirrored <= limit {
		return nil, err
	}
	target := limit - limit/100*(100-lowWaterPercent)
	cutoff := s.now().Add(-evictGrace)
	var out []Evicted
	var freed int64
	for _, c := range cands {
		if mirrored <= target || s.ctx.Err() != nil || c.last.After(cutoff) {
			break // candidates are in LRU order: the rest are more recent still
		}
		ok, err := s.evictBlob(c, startSeq)
		if err != nil {
			return out, err
		}
		if ok {
			mirrored -= c.size
			freed += c.size
			out = append(out, Evicted{Digest: c.d, Size: c.size})
		}
	}
	if len(out) > 0 {
		s.log.Info().Int("blobs", len(out)).Int64("bytes", freed).Int64("mirrored_bytes", mirrored).
			Int64("max_bytes", limit).Msg("evicted least recently used mirrored blobs")
	}
	if mirrored > limit {
		s.log.Warn().Int64("mirrored_bytes", mirrored).Int64("max_bytes", limit).
			Msg("mirrored content over the limit: what is left was read in the last minute or is being filled")
	}
	return out, nil
}

// evictCandidate is a stored blob that no local repository links.
type evictCandidate struct {
	d     digest.Digest
	size  int64
	last  time.Time // last access, or when indexed
	repos []string  // the mirrored repositories that link it
}

// planEviction reads a snapshot of the index and returns the unpinned blobs
// in LRU order, their total size, and the access sequence number of the
// snapshot. It records the pinned bytes for overLimit.
func (s *Store) planEviction() (cands []*evictCandidate, mirrored int64, startSeq uint64, err error) {
	// Under hotMu shared no update is half done; see the top of this file.
	s.hotMu.RLock()
	startSeq = s.accessSeq.Load()
	txn := s.db.NewTransaction(false)
	s.hotMu.RUnlock()
	defer txn.Discard()

	blobs := map[digest.Digest]*evictCandidate{}
	err = scanKind(txn, kindBlob, true, func(rest string, v []byte) error {
		d, err := digest.Parse(rest)
		if err != nil {
			return nil // not a key this store writes; leave it alone
		}
		var r blobRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		blobs[d] = &evictCandidate{d: d, size: r.Size, last: r.Created}
		return nil
	})
	if err != nil {
		return nil, 0, 0, err
	}
	err = scanKind(txn, kindAccess, true, func(rest string, v []byte) error {
		var r accessRecord
		if c := blobs[digest.Digest(rest)]; c != nil && json.Unmarshal(v, &r) == nil && r.At.After(c.last) {
			c.last = r.At
		}
		return nil
	})
	if err != nil {
		return nil, 0, 0, err
	}
	local := map[string]bool{}
	err = scanKind(txn, kindRepo, true, func(repo string, v []byte) error {
		var r RepoRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		local[repo] = r.Origin == ""
		return nil
	})
	if err != nil {
		return nil, 0, 0, err
	}
	pinned := map[digest.Digest]bool{}
	err = scanKind(txn, kindLink, false, func(rest string, _ []byte) error {
		repo, ds, _ := strings.Cut(rest, sep)
		c := blobs[digest.Digest(ds)]
		if c == nil {
			return nil
		}
		// A repository without a record has no known origin: keep its blobs.
		if isLocal, known := local[repo]; isLocal || !known {
			pinned[c.d] = true
		} else {
			c.repos = append(c.repos, repo)
		}
		return nil
	})
	if err != nil {
		return nil, 0, 0, err
	}
	var pinnedBytes int64
	for d, c := range blobs {
		if pinned[d] {
			pinnedBytes += c.size
			continue
		}
		if v, ok := s.access.Load(d); ok {
			if at := time.Unix(0, v.(*accessEntry).at.Load()); at.After(c.last) {
				c.last = at
			}
		}
		if c.last.IsZero() { // indexed before records had Created
			if fi, err := os.Stat(blobPath(s.root, d)); err == nil {
				c.last = fi.ModTime()
			}
		}
		mirrored += c.size
		cands = append(cands, c)
	}
	s.pinnedBytes.Store(pinnedBytes)
	slices.SortFunc(cands, func(a, b *evictCandidate) int {
		if n := a.last.Compare(b.last); n != 0 {
			return n
		}
		return strings.Compare(string(a.d), string(b.d))
	})
	return cands, mirrored, startSeq, nil
}

// evictBlob removes c from the index, the in-memory caches and the disk,
// unless it was touched (read, linked, committed again) since the snapshot
// of startSeq or is being filled. It reports whether it removed it.
func (s *Store) evictBlob(c *evictCandidate, startSeq uint64) (bool, error) {
	unlock := s.lockCommit(c.d)
	defer unlock()
	if s.InFlight(c.d) != nil {
		return false, nil
	}
	ds := c.d.String()
	var removed bool
	err := s.update(func(txn *wtxn) error {
		removed = false
		if v, ok := s.access.Load(c.d); ok && v.(*accessEntry).seq.Load() > startSeq {
			return nil
		}
		if _, err := txn.Get(key(kindBlob, ds)); errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		for _, repo := range c.repos {
			// A mirrored manifest goes with the tags that point at it, so
			// that the next pull by tag asks the upstream afresh rather
			// than by a digest it may no longer serve.
			if err := deleteManifest(txn, repo, c.d); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
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
		// Here, under hotMu exclusive, as StatBlob fills it under hotMu
		// shared: no size read before this commit can be put back after.
		s.sizes.Remove(c.d)
		removed = true
		return nil
	})
	if err != nil || !removed {
		return false, err
	}
	s.access.Delete(c.d)
	// A reader that opened the file keeps reading it to the end.
	if err := os.Remove(blobPath(s.root, c.d)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn().Err(err).Str("digest", ds).Msg("removing evicted blob file")
	}
	// After the unlink, so no later ManifestBody can read the body back in.
	// One that read it just before may still add it: harmless, the body is
	// content-addressed and no record leads to it.
	s.manifests.Remove(c.d)
	s.small.Remove(c.d)
	s.usedBytes.Add(-c.size)
	s.usedBlobs.Add(-1)
	s.evicted.Add(1)
	s.evictedB.Add(c.size)
	return true, nil
}

// flushAccess saves the access times changed since the last flush to
// a/<digest>, and forgets those of blobs no longer stored.
func (s *Store) flushAccess() error {
	type pending struct {
		d  digest.Digest
		e  *accessEntry
		at int64
	}
	var all []pending
	s.access.Range(func(k, v any) bool {
		e := v.(*accessEntry)
		if e.dirty.Swap(false) {
			all = append(all, pending{k.(digest.Digest), e, e.at.Load()})
		}
		return true
	})
	for len(all) > 0 {
		chunk := all[:min(len(all), flushBatch)]
		var gone []pending
		err := s.update(func(txn *wtxn) error {
			gone = gone[:0]
			for _, p := range chunk {
				ds := p.d.String()
				if _, err := txn.Get(key(kindBlob, ds)); errors.Is(err, badger.ErrKeyNotFound) {
					gone = append(gone, p) // evicted since it was read
					continue
				} else if err != nil {
					return err
				}
				if err := setJSON(txn, key(kindAccess, ds), accessRecord{At: time.Unix(0, p.at).UTC()}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			for _, p := range all {
				p.e.dirty.Store(true) // saved next time
			}
			return err
		}
		for _, p := range gone {
			s.access.CompareAndDelete(p.d, p.e)
		}
		all = all[len(chunk):]
	}
	return nil
}

// scanKind calls fn with the rest of the key after kind for every record of
// that kind, and with its value if values is set.
func scanKind(txn *badger.Txn, kind string, values bool, fn func(rest string, v []byte) error) error {
	p := []byte(kind)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: values})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		rest := string(item.Key()[len(p):])
		var err error
		if values {
			err = item.Value(func(v []byte) error { return fn(rest, v) })
		} else {
			err = fn(rest, nil)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
