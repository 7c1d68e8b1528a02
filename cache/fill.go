package cache

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// FetchFunc opens the upstream stream of a blob. The stream must resume by
// itself if it is cut (package upstream does); its context is the fill's,
// detached from every client.
type FetchFunc func(ctx context.Context) (io.ReadCloser, error)

// ErrFillFailed is what readers of a fill see when it was cut off or its
// content failed verification: they must not treat what they read as whole.
var ErrFillFailed = errors.New("upstream fill failed")

// Fill is one download of a blob from an upstream into the store, shared by
// every client that asks for the blob while it runs. Readers stream from the
// staging file as it grows.
type Fill struct {
	Digest digest.Digest
	Size   int64

	file  *os.File // staging file, written by the fill goroutine only
	store *Store

	mu        sync.Mutex
	written   int64
	done      bool
	err       error
	changed   chan struct{} // closed and replaced on every change
	repos     map[string]string
	committed bool // the blob is stored and repos were taken for linking
	origin    string
	started   time.Time
}

// FillProgress is a fill in flight, as the status page and logs show it.
type FillProgress struct {
	Digest  digest.Digest
	Origin  string // the upstream it comes from
	Size    int64
	Written int64
	Started time.Time
}

// Fills lists the fills in flight, oldest first.
func (s *Store) Fills() []FillProgress {
	s.fillMu.Lock()
	out := make([]FillProgress, 0, len(s.fills))
	for _, f := range s.fills {
		f.mu.Lock()
		out = append(out, FillProgress{Digest: f.Digest, Origin: f.origin, Size: f.Size, Written: f.written, Started: f.started})
		f.mu.Unlock()
	}
	s.fillMu.Unlock()
	slices.SortFunc(out, func(a, b FillProgress) int { return a.Started.Compare(b.Started) })
	return out
}

// FillResult reports how a fill ended, for metrics and logs.
type FillResult struct {
	Digest digest.Digest
	Bytes  int64
	Err    error
}

// Fill returns the in-flight fill of blob d, starting one with fetch if there
// is none. joined is false for the caller that started it. Once the fill is
// verified and committed, repo is linked to the blob (with origin naming the
// upstream), as is every repository of a later joiner. onDone, if set, is
// called once when the fill ends.
func (s *Store) Fill(d digest.Digest, size int64, repo, origin string, fetch FetchFunc, onDone func(FillResult)) (f *Fill, joined bool, err error) {
	s.fillMu.Lock()
	defer s.fillMu.Unlock()
	if f, ok := s.fills[d]; ok {
		f.AddRepo(repo, origin)
		return f, true, nil
	}
	if s.ctx.Err() != nil {
		return nil, false, fmt.Errorf("store closed: %w", s.ctx.Err())
	}
	if err := s.space.admit(max(size, 0)); err != nil {
		return nil, false, err
	}
	file, err := s.createStaging()
	if err != nil {
		return nil, false, err
	}
	s.space.pending.Add(max(size, 0)) // released as the fill writes, the rest when it ends
	f = &Fill{Digest: d, Size: size, file: file, store: s, changed: make(chan struct{}), repos: map[string]string{repo: origin},
		origin: origin, started: s.now()}
	s.fills[d] = f
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		n, err := s.runFill(f, fetch)
		if onDone != nil {
			onDone(FillResult{Digest: d, Bytes: n, Err: err})
		}
	}()
	return f, false, nil
}

// Context is the parent of upstream downloads that fill the store: it is
// detached from every client and ends when the store is closed.
func (s *Store) Context() context.Context { return s.ctx }

// InFlight returns the fill of d in progress, or nil.
func (s *Store) InFlight(d digest.Digest) *Fill {
	s.fillMu.Lock()
	defer s.fillMu.Unlock()
	return s.fills[d]
}

// HasRepo reports whether repo will be linked when the fill commits.
func (f *Fill) HasRepo(repo string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.repos[repo]
	return ok
}

// AddRepo asks for repo to be linked to the blob when the fill commits, or
// links it now if the fill has committed already.
func (f *Fill) AddRepo(repo, origin string) {
	f.mu.Lock()
	committed := f.committed
	if !committed {
		f.repos[repo] = origin
	}
	f.mu.Unlock()
	if committed {
		if err := f.store.Link(repo, origin, f.Digest); err != nil {
			f.store.log.Warn().Err(err).Str("digest", f.Digest.String()).Str("repo", repo).Msg("link after fill")
		}
	}
}

// runFill copies the upstream stream into the staging file, hashing as it
// goes, then verifies, commits and links, or discards everything.
func (s *Store) runFill(f *Fill, fetch FetchFunc) (int64, error) {
	var n int64
	w := s.space.writer(f.file, f.Size)
	err := func() error {
		rc, err := fetch(s.ctx)
		if err != nil {
			return err
		}
		defer rc.Close()
		h := f.Digest.Algorithm().Hash()
		buf := make([]byte, 256<<10)
		p := progressLog{at: f.started}
		for {
			m, rerr := rc.Read(buf)
			if m > 0 {
				if n+int64(m) > f.Size {
					return fmt.Errorf("%w: upstream sent more than %d bytes", ErrSizeMismatch, f.Size)
				}
				if _, err := w.Write(buf[:m]); err != nil {
					return err
				}
				h.Write(buf[:m])
				n += int64(m)
				f.progress(n)
				p.log(s, f, n)
			}
			if rerr == io.EOF {
				return s.finishFill(f, h, n)
			}
			if rerr != nil {
				return rerr
			}
		}
	}()
	s.fillMu.Lock()
	delete(s.fills, f.Digest)
	s.fillMu.Unlock()
	w.release()
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrFillFailed, err)
		s.log.Warn().Err(err).Str("digest", f.Digest.String()).Int64("bytes", n).Msg("fill discarded")
	}
	f.finish(err)
	s.cleanupStaging(f.file)
	return n, err
}

// fillLogEvery is how often a long fill logs its progress, at debug level.
const fillLogEvery = 5 * time.Second

// progressLog is where a fill's progress log stands: the fill goroutine
// checks the clock after each chunk it writes, so no timer or goroutine of
// its own is needed.
type progressLog struct {
	at      time.Time // of the last line, or the fill's start
	written int64     // bytes at the last line
}

func (p *progressLog) log(s *Store, f *Fill, n int64) {
	now := s.now()
	elapsed := now.Sub(p.at)
	if elapsed < fillLogEvery {
		return
	}
	if ev := s.log.Debug(); ev != nil {
		ev.Str("digest", f.Digest.String()).Str("origin", f.origin).Int64("written", n).Int64("size", f.Size).
			Float64("percent", float64(n*1000/max(f.Size, 1))/10).
			Int64("bytes_per_second", int64(float64(n-p.written)/elapsed.Seconds())).
			Float64("elapsed_s", now.Sub(f.started).Round(time.Millisecond).Seconds()).
			Msg("fill progress")
	}
	p.at, p.written = now, n
}

func (s *Store) finishFill(f *Fill, h hash.Hash, n int64) error {
	if n != f.Size {
		return fmt.Errorf("%w: upstream sent %d bytes, want %d", ErrSizeMismatch, n, f.Size)
	}
	if got := digest.NewDigest(f.Digest.Algorithm(), h); got != f.Digest {
		return fmt.Errorf("%w: upstream content hashes to %s", ErrDigestMismatch, got)
	}
	if err := s.commitFile(f.file, f.Digest, n); err != nil {
		return err
	}
	f.mu.Lock()
	repos := f.repos
	f.repos, f.committed = map[string]string{}, true
	f.mu.Unlock()
	for repo, origin := range repos {
		if err := s.Link(repo, origin, f.Digest); err != nil {
			return err
		}
	}
	return nil
}

func (f *Fill) progress(n int64) {
	f.mu.Lock()
	f.written = n
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *Fill) finish(err error) {
	f.mu.Lock()
	f.done, f.err = true, err
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// Wait blocks until the fill ends and returns its error.
func (f *Fill) Wait(ctx context.Context) error {
	for {
		f.mu.Lock()
		done, err, ch := f.done, f.err, f.changed
		f.mu.Unlock()
		if done {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// NewReader returns a reader of the blob from offset on, which blocks until
// the bytes it needs have arrived. It holds back the blob's last byte until
// the whole blob is verified, so it returns io.EOF only for verified
// content, and ErrFillFailed if the fill fails: a client must never see a
// clean end of content that fails its digest. (A read that stops earlier,
// a Range, cannot be verified on its own and gets its bytes as they come.)
// It seeks, for Range. ctx ends the wait of a reader whose client went away.
func (f *Fill) NewReader(ctx context.Context, offset int64) (io.ReadSeekCloser, error) {
	file, err := os.Open(f.file.Name())
	if err != nil {
		// The fill already ended and the staging file is gone (committed
		// or discarded); the caller retries from the store.
		return nil, fmt.Errorf("%w: %w", ErrFillFailed, err)
	}
	return &fillReader{f: f, file: file, off: offset, ctx: ctx}, nil
}

type fillReader struct {
	f    *Fill
	file *os.File
	off  int64
	ctx  context.Context
}

func (r *fillReader) Read(p []byte) (int, error) {
	for {
		r.f.mu.Lock()
		written, done, err, ch := r.f.written, r.f.done, r.f.err, r.f.changed
		r.f.mu.Unlock()
		if err != nil {
			return 0, err
		}
		avail := written
		if !done && avail == r.f.Size {
			avail-- // the last byte waits for verification
		}
		if r.off < avail {
			if int64(len(p)) > avail-r.off {
				p = p[:avail-r.off]
			}
			n, err := r.file.ReadAt(p, r.off)
			r.off += int64(n)
			if err == io.EOF && n > 0 {
				err = nil
			}
			return n, err
		}
		if done {
			return 0, io.EOF
		}
		select {
		case <-ch:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

// Seek moves the read offset (io.SeekStart and io.SeekCurrent; io.SeekEnd
// against the blob's size).
func (r *fillReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.f.Size
	}
	if offset < 0 {
		return r.off, errors.New("fill reader: negative offset")
	}
	r.off = offset
	return offset, nil
}

func (r *fillReader) Close() error { return r.file.Close() }
