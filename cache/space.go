package cache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/berth-dev/berth/internal/iox"
	"github.com/berth-dev/berth/internal/oci"
	"golang.org/x/sys/unix"
)

// Free space and storage health.
//
// Badger keeps its memtable in an mmap'd file: a page it touches on a full
// filesystem is a SIGBUS, not an error, and the memtable is replayed (and
// touched again) at every start. So the index must never be what meets a
// full disk. Content writes (uploads, monolithic pushes, fills, manifests,
// imports) are admitted only while the free space, less the bytes promised
// to fills in flight, stays above Options.DiskReserve; index-only writes
// (Store.update: links, tags, deletes, upload records) stop at half of it,
// which they never reach through berth's own content since that stopped a
// half reserve earlier. DefaultDiskReserve is what Badger needs to flush
// and compact with this store's options: two 16 MiB memtables, a 64 MiB
// value-log file (mapped at twice its size), level-0 tables written before
// the ones they replace are removed.
//
// The data directory can also vanish (rm -rf) or turn read-only under a
// running berth: Badger's mmap'd writes still succeed then, and would be
// acknowledged and lost. Each index write checks that the directory is the
// one opened (device and inode), before and after it commits; a probe
// (write, fsync, remove a small file) runs every Options.ProbeInterval; a
// staging write that fails with EROFS or EIO marks the storage failed. While
// it is failed every write is refused with 503 and Healthy reports why
// (/readyz). A read-only or failing filesystem recovers by itself once the
// probe succeeds again; a directory that was replaced needs a restart.

// DefaultDiskReserve is the free space berth keeps for its index when
// Options.DiskReserve is zero.
const DefaultDiskReserve = 256 << 20

// DefaultProbeInterval is how often the storage probe runs when
// Options.ProbeInterval is zero.
const DefaultProbeInterval = 2 * time.Second

// statfsTTL is how long one statfs(2) answer is trusted by the chunks of a
// stream; the bytes written through the store since it are subtracted from
// it. The start of every write operation asks afresh.
const statfsTTL = 250 * time.Millisecond

var (
	// ErrNoSpace: the write would take the filesystem below the reserve (or
	// the filesystem is full). Answered 507 Insufficient Storage.
	ErrNoSpace = errors.New("not enough free disk space")
	// ErrStorageUnavailable: the data directory is gone, replaced, read-only
	// or failing. Answered 503.
	ErrStorageUnavailable = errors.New("storage unavailable")
)

// noSpace is the error a refused write returns: an OCI error (UNAVAILABLE,
// 507) whose chain holds ErrNoSpace, so both errors.Is and the HTTP layer
// see what they need whichever path it takes.
func noSpace(detail string) error {
	return &oci.Error{Code: oci.CodeUnavailable, HTTPStatus: 507,
		Message: "berth's disk is below its free-space reserve (disk_reserve); writes resume once space is freed: " + detail,
		Cause:   fmt.Errorf("%w: %s", ErrNoSpace, detail)}
}

func unavailable(reason string) error {
	return &oci.Error{Code: oci.CodeUnavailable, Message: "berth's storage is unavailable: " + reason,
		Cause: fmt.Errorf("%w: %s", ErrStorageUnavailable, reason)}
}

// space guards the filesystem under the data directory.
type space struct {
	root    string
	reserve int64
	now     func() time.Time
	statfs  func(path string) (free int64, err error)
	ident   os.FileInfo // the data directory as opened

	pending atomic.Int64 // bytes promised to fills not yet written

	mu      sync.Mutex
	checked time.Time
	free    int64        // at checked
	written atomic.Int64 // through the store since checked

	failed    atomic.Pointer[string] // why the storage is unavailable; nil: fine
	permanent atomic.Bool            // the directory was replaced: only a restart helps
	refused   [2]atomic.Int64        // writes refused: no space, unavailable
}

func statfsFree(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

func newSpace(root string, reserve int64, now func() time.Time, statfs func(string) (int64, error)) (*space, error) {
	ident, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	return &space{root: root, reserve: reserve, now: now, statfs: statfs, ident: ident}, nil
}

// Free is the free space as the guard sees it: the last statfs less what
// was written since, less what fills in flight still have to write.
func (sp *space) Free() (int64, error) { return sp.available(false) }

// available is Free; fresh asks statfs(2) whatever the age of its last answer.
// Each write operation asks once as it starts (another process may have
// filled the disk a moment ago); a stream's chunks use the cached answer.
func (sp *space) available(fresh bool) (int64, error) {
	sp.mu.Lock()
	now := sp.now()
	if fresh || now.Sub(sp.checked) >= statfsTTL || sp.checked.IsZero() {
		f, err := sp.statfs(sp.root)
		if err != nil {
			sp.mu.Unlock()
			return 0, err
		}
		sp.free, sp.checked = f, now
		sp.written.Store(0)
	}
	free := sp.free
	sp.mu.Unlock()
	return free - sp.written.Load() - sp.pending.Load(), nil
}

// healthy returns the error every write gets while the storage is failed,
// after checking that the data directory is still the one opened.
func (sp *space) healthy() error {
	if r := sp.failed.Load(); r != nil {
		sp.refused[1].Add(1)
		return unavailable(*r)
	}
	if err := sp.checkIdent(); err != nil {
		sp.refused[1].Add(1)
		return err
	}
	return nil
}

func (sp *space) checkIdent() error {
	fi, err := os.Stat(sp.root)
	switch {
	case err != nil:
		return sp.fail(fmt.Sprintf("data directory %s: %v", sp.root, err), true)
	case !os.SameFile(fi, sp.ident):
		return sp.fail(fmt.Sprintf("data directory %s was replaced under berth (another device or inode); restart berth", sp.root), true)
	}
	return nil
}

// fail marks the storage unavailable and returns the error writes get.
func (sp *space) fail(reason string, permanent bool) error {
	if permanent {
		sp.permanent.Store(true)
	}
	sp.failed.Store(&reason)
	return unavailable(reason)
}

// admit checks that n more bytes of content may be written, keeping the
// reserve; n may be 0 for a write of unknown size (it is then checked as
// it streams).
func (sp *space) admit(n int64) error {
	if err := sp.healthy(); err != nil {
		return err
	}
	return sp.room(n, sp.reserve, true)
}

// admitSmall checks that n bytes of small content (a manifest) may be
// written, down to half the reserve.
func (sp *space) admitSmall(n int64) error {
	if err := sp.healthy(); err != nil {
		return err
	}
	return sp.room(n, sp.reserve/2, true)
}

// Admit reports whether a push of n bytes (0: unknown size) may start:
// ErrNoSpace (as a 507) past the reserve, ErrStorageUnavailable (503)
// while the storage is failed.
func (s *Store) Admit(n int64) error { return s.space.admit(n) }

// admitIndex checks that an index-only write may go ahead.
func (sp *space) admitIndex() error {
	if err := sp.healthy(); err != nil {
		return err
	}
	return sp.room(0, sp.reserve/2, true)
}

func (sp *space) room(n, keep int64, fresh bool) error {
	if sp.reserve <= 0 {
		return nil
	}
	free, err := sp.available(fresh)
	if err != nil {
		return sp.fail(fmt.Sprintf("statfs %s: %v", sp.root, err), false)
	}
	if free-n < keep {
		sp.refused[0].Add(1)
		return noSpace(fmt.Sprintf("%d bytes free, %d would remain, %d kept in reserve", free, free-n, keep))
	}
	return nil
}

// classify turns a filesystem error of a staging write into the store's
// vocabulary: a full disk is ErrNoSpace, a read-only or failing one marks
// the storage unavailable.
func (sp *space) classify(err error) error {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		sp.refused[0].Add(1)
		return noSpace(err.Error())
	case errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EIO):
		return sp.fail(err.Error(), false)
	case errors.Is(err, fs.ErrNotExist):
		if e := sp.checkIdent(); e != nil {
			return e
		}
	}
	return err
}

// writer wraps a staging file so that each write keeps the reserve.
// promised is what a fill admitted (and counted as pending) at its start:
// its writes release it, and stop only if the disk falls to the index's
// half reserve (something else is filling it); writes past it, or of a
// stream with nothing promised, must keep the whole reserve.
//
// A file starts its writeback as it is written (iox.Writeback): the fsync
// at commit then finds the blob on disk.
func (sp *space) writer(w io.Writer, promised int64) *guarded {
	if f, ok := w.(*os.File); ok {
		w = iox.Writeback(f)
	}
	g := &guarded{w: w, sp: sp, promised: max(promised, 0), keep: sp.reserve}
	if g.promised > 0 {
		g.keep = sp.reserve / 2
	}
	return g
}

type guarded struct {
	w        io.Writer
	sp       *space
	promised int64 // bytes still counted in pending for this stream
	keep     int64 // free bytes each write must leave
	n        int64 // bytes written through it
	checked  int64 // bytes written when the directory was last checked
}

func (g *guarded) Write(p []byte) (int, error) {
	n := int64(len(p)) - g.promised // what pending does not count yet
	var err error
	if g.n == 0 || g.n-g.checked >= iox.WritebackEvery {
		// The data directory's identity (a stat) every few MiB of a
		// stream, not every write; a failure seen elsewhere, every write.
		err = g.sp.healthy()
		g.checked = g.n
	} else if r := g.sp.failed.Load(); r != nil {
		g.sp.refused[1].Add(1)
		err = unavailable(*r)
	}
	if err == nil {
		err = g.sp.room(max(n, 0), g.keep, false)
	}
	if err != nil {
		return 0, err
	}
	m, err := g.w.Write(p)
	g.n += int64(m)
	g.sp.written.Add(int64(m))
	if rel := min(int64(m), g.promised); rel > 0 {
		g.promised -= rel
		g.sp.pending.Add(-rel)
	}
	if err != nil {
		return m, g.sp.classify(err)
	}
	return m, nil
}

// release gives back what the stream promised and did not write.
func (g *guarded) release() {
	g.sp.pending.Add(-g.promised)
	g.promised = 0
}

// probe writes, fsyncs and removes a small file under the data directory
// and checks the directory is the one opened. It clears a failure that
// was not permanent once it succeeds.
func (sp *space) probe() error {
	if err := sp.checkIdent(); err != nil {
		return err
	}
	p := filepath.Join(sp.root, ".probe")
	err := func() error {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		_, werr := f.Write([]byte("berth storage probe\n"))
		serr := f.Sync()
		cerr := f.Close()
		return errors.Join(werr, serr, cerr, os.Remove(p))
	}()
	if err != nil && !errors.Is(err, syscall.ENOSPC) { // a full disk is not a failed one
		return sp.fail("probe of "+sp.root+": "+err.Error(), false)
	}
	if !sp.permanent.Load() {
		sp.failed.Store(nil)
	}
	return nil
}

// SpaceStatus is the store's view of its filesystem, for /readyz and metrics.
type SpaceStatus struct {
	Free     int64  // bytes, as the guard counts them (statfs less promised)
	Reserve  int64  // Options.DiskReserve
	Failed   string // why storage is unavailable; "" if it is fine
	NoSpace  int64  // writes refused for space since Open
	Refused  int64  // writes refused as unavailable since Open
	Writable bool   // Failed == "" and Free above the reserve
}

// Space reports free space and storage health.
func (s *Store) Space() SpaceStatus {
	st := SpaceStatus{Reserve: s.space.reserve, NoSpace: s.space.refused[0].Load(), Refused: s.space.refused[1].Load()}
	if r := s.space.failed.Load(); r != nil {
		st.Failed = *r
	}
	free, err := s.space.Free()
	if err != nil && st.Failed == "" {
		st.Failed = err.Error()
	}
	st.Free = free
	st.Writable = st.Failed == "" && (s.space.reserve <= 0 || free >= s.space.reserve)
	return st
}

// Healthy returns nil while the storage under the data directory works,
// else an error saying why (the directory is gone, replaced, read-only,
// failing). A disk below the reserve is healthy: pulls go on.
func (s *Store) Healthy() error {
	if r := s.space.failed.Load(); r != nil {
		return errors.New(*r)
	}
	return nil
}

// prober runs the storage probe until the store closes, logging each
// change of state once.
func (s *Store) prober() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.ProbeInterval)
	defer t.Stop()
	var was string
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		_ = s.space.probe()
		now := ""
		if r := s.space.failed.Load(); r != nil {
			now = *r
		}
		switch {
		case now != "" && now != was:
			s.log.Error().Str("reason", now).Msg("storage unavailable: refusing writes, /readyz failing")
		case now == "" && was != "":
			s.log.Info().Str("was", was).Msg("storage writable again")
		}
		was = now
	}
}

// checkStartSpace refuses to open the index read-write on a disk below
// half the reserve: Badger would replay its memtable into a full disk.
func checkStartSpace(root string, reserve int64, statfs func(string) (int64, error)) error {
	if reserve <= 0 {
		return nil
	}
	free, err := statfs(root)
	if err != nil {
		return fmt.Errorf("data directory %s: %w", root, err)
	}
	if free < reserve/2 {
		return fmt.Errorf("%w: data directory %s has %d bytes free, less than half of disk_reserve (%d); free space before starting berth",
			ErrNoSpace, root, free, reserve)
	}
	return nil
}
