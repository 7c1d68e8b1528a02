package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/testutil"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// gatedFetch returns a FetchFunc that waits for release before opening src,
// so a test can attach readers before any byte flows.
func gatedFetch(release <-chan struct{}, src func() (io.ReadCloser, error)) FetchFunc {
	return func(ctx context.Context) (io.ReadCloser, error) {
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return src()
	}
}

// chunked streams b through a pipe in small writes, so readers overtake the
// writer and must wait for bytes.
func chunked(b []byte, tail error) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			for i := 0; i < len(b); i += 1000 {
				if _, err := pw.Write(b[i:min(i+1000, len(b))]); err != nil {
					return
				}
			}
			pw.CloseWithError(tail) // nil: io.EOF
		}()
		return pr, nil
	}
}

func testContent(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func TestFillConcurrentReaders(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	content := testContent(300_000)
	d := digest.FromBytes(content)
	release := make(chan struct{})
	done := make(chan FillResult, 1)

	f, joined, err := st.Fill(d, int64(len(content)), "docker.io/library/a", "docker.io",
		gatedFetch(release, chunked(content, nil)), func(r FillResult) { done <- r })
	if err != nil || joined {
		t.Fatalf("Fill = %v, joined %v", err, joined)
	}
	if st.InFlight(d) != f {
		t.Fatal("InFlight does not return the running fill")
	}
	if fl := st.Fills(); len(fl) != 1 || fl[0].Digest != d || fl[0].Origin != "docker.io" || fl[0].Size != int64(len(content)) || fl[0].Written != 0 {
		t.Fatalf("Fills() before any byte = %+v", fl)
	}
	f2, joined, err := st.Fill(d, int64(len(content)), "docker.io/library/b", "docker.io",
		func(context.Context) (io.ReadCloser, error) { t.Error("second fetch started"); return nil, errBoom }, nil)
	if err != nil || !joined || f2 != f {
		t.Fatalf("second Fill = %p, %v, %v; want the same fill, joined", f2, joined, err)
	}

	offsets := []int64{0, 0, 0, 1, 999, 1000, 123_457, int64(len(content)) - 1, int64(len(content))}
	ctx := context.Background()
	readers := make([]io.ReadCloser, len(offsets))
	for i, off := range offsets {
		if readers[i], err = f.NewReader(ctx, off); err != nil {
			t.Fatalf("NewReader(%d): %v", off, err)
		}
	}
	var wg sync.WaitGroup
	got := make([][]byte, len(offsets))
	errs := make([]error, len(offsets))
	for i := range readers {
		wg.Go(func() {
			defer readers[i].Close()
			got[i], errs[i] = io.ReadAll(readers[i])
		})
	}
	close(release)
	wg.Wait()
	for i, off := range offsets {
		if errs[i] != nil {
			t.Errorf("reader at %d: %v", off, errs[i])
		} else if !bytes.Equal(got[i], content[off:]) {
			t.Errorf("reader at %d got %d bytes, not the blob's %d from that offset", off, len(got[i]), len(content)-int(off))
		}
	}
	if err := f.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if r := testutil.Recv(t, done, "the fill to end"); r.Err != nil || r.Bytes != int64(len(content)) || r.Digest != d {
		t.Errorf("FillResult = %+v", r)
	}
	if st.InFlight(d) != nil || len(st.Fills()) != 0 {
		t.Error("fill still in flight after it ended")
	}
	assertBlob(t, st, "docker.io/library/a", d, content)
	assertBlob(t, st, "docker.io/library/b", d, content)
	for _, repo := range []string{"docker.io/library/a", "docker.io/library/b"} {
		if rec, err := st.Repository(repo); err != nil || rec.Origin != "docker.io" {
			t.Errorf("Repository(%s) = %+v, %v", repo, rec, err)
		}
	}
	assertNoStaging(t, st)
}

func TestFillFailure(t *testing.T) {
	t.Parallel()
	content := testContent(50_000)
	d := digest.FromBytes(content)
	wrong := bytes.Clone(content)
	wrong[len(wrong)-1] ^= 1
	tests := []struct {
		name  string
		fetch func() (io.ReadCloser, error)
		want  error
	}{
		{"wrong bytes", chunked(wrong, nil), ErrDigestMismatch},
		{"too few bytes", chunked(content[:len(content)-1], nil), ErrSizeMismatch},
		{"too many bytes", chunked(append(bytes.Clone(content), 0), nil), ErrSizeMismatch},
		{"error mid-way", chunked(content[:len(content)/2], errBoom), errBoom},
		{"error at the end", chunked(content, errBoom), errBoom},
		{"fetch fails", func() (io.ReadCloser, error) { return nil, errBoom }, errBoom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := openStore(t)
			release := make(chan struct{})
			done := make(chan FillResult, 1)
			f, _, err := st.Fill(d, int64(len(content)), "r", "up", gatedFetch(release, tt.fetch), func(r FillResult) { done <- r })
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			var readers []io.ReadCloser
			for _, off := range []int64{0, 0, 40_000} {
				r, err := f.NewReader(ctx, off)
				if err != nil {
					t.Fatal(err)
				}
				readers = append(readers, r)
			}
			var wg sync.WaitGroup
			errs := make([]error, len(readers))
			for i, r := range readers {
				wg.Go(func() {
					defer r.Close()
					_, errs[i] = io.ReadAll(r)
				})
			}
			close(release)
			wg.Wait()
			for i, err := range errs {
				if !errors.Is(err, ErrFillFailed) || !errors.Is(err, tt.want) {
					t.Errorf("reader %d error = %v, want ErrFillFailed wrapping %v", i, err, tt.want)
				}
			}
			if err := f.Wait(ctx); !errors.Is(err, ErrFillFailed) || !errors.Is(err, tt.want) {
				t.Errorf("Wait = %v", err)
			}
			if r := testutil.Recv(t, done, "the fill to end"); !errors.Is(r.Err, tt.want) {
				t.Errorf("FillResult.Err = %v, want %v", r.Err, tt.want)
			}
			// onDone runs after the staging file is gone.
			assertNoStaging(t, st)
			assertNoBlob(t, st, "r", d)
			if st.InFlight(d) != nil {
				t.Error("failed fill still in flight")
			}
			if _, err := f.NewReader(ctx, 0); !errors.Is(err, ErrFillFailed) {
				t.Errorf("NewReader after failure = %v, want ErrFillFailed", err)
			}
			// A new fill may start after a failed one.
			done2 := make(chan FillResult, 1)
			if _, joined, err := st.Fill(d, int64(len(content)), "r", "up",
				func(context.Context) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(content)), nil },
				func(r FillResult) { done2 <- r }); err != nil || joined {
				t.Fatalf("retry Fill = %v, joined %v", err, joined)
			}
			if r := testutil.Recv(t, done2, "the second fill to end"); r.Err != nil {
				t.Fatalf("retry fill: %v", r.Err)
			}
			assertBlob(t, st, "r", d, content)
		})
	}
}

func TestFillReaderContextCancel(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	content := testContent(10)
	release := make(chan struct{})
	f, _, err := st.Fill(digest.FromBytes(content), int64(len(content)), "r", "up",
		gatedFetch(release, chunked(content, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := f.NewReader(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cancel()
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, context.Canceled) {
		t.Errorf("Read after cancel = %v, want context.Canceled", err)
	}
	close(release)
	if err := f.Wait(context.Background()); err != nil {
		t.Errorf("fill failed: %v", err)
	}
}

func TestFillAbortedByClose(t *testing.T) {
	t.Parallel()
	st, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	content := testContent(10)
	d := digest.FromBytes(content)
	pr, pw := io.Pipe()
	defer pw.Close()
	started := make(chan struct{})
	// Like package upstream's streams, this one ends when its context does.
	f, _, err := st.Fill(d, int64(len(content)), "r", "up", func(ctx context.Context) (io.ReadCloser, error) {
		context.AfterFunc(ctx, func() { pw.CloseWithError(ctx.Err()) })
		close(started)
		return pr, nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Recv(t, started, "the fill to start")
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Wait(context.Background()); !errors.Is(err, ErrFillFailed) || !errors.Is(err, context.Canceled) {
		t.Errorf("Wait after Close = %v, want ErrFillFailed wrapping context.Canceled", err)
	}
	if _, _, err := st.Fill(d, 1, "r", "up", nil, nil); err == nil {
		t.Error("Fill on a closed store succeeded")
	}
	assertNoStaging(t, st)
}

// A repository that joins a fill just as it commits (the mirror adds its
// repository to the fill it found in flight) must still be linked.
func TestFillLateJoinerIsLinked(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	content := testContent(1000)
	d := digest.FromBytes(content)
	done := make(chan FillResult, 1)
	f, _, err := st.Fill(d, int64(len(content)), "first", "up",
		func(context.Context) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(content)), nil },
		func(r FillResult) { done <- r })
	if err != nil {
		t.Fatal(err)
	}
	if r := testutil.Recv(t, done, "the fill to end"); r.Err != nil {
		t.Fatal(r.Err)
	}
	f.AddRepo("late", "up")
	assertBlob(t, st, "first", d, content)
	assertBlob(t, st, "late", d, content)
	if rec, err := st.Repository("late"); err != nil || rec.Origin != "up" {
		t.Errorf("Repository(late) = %+v, %v", rec, err)
	}

	// Joining a failed fill links nothing.
	bad := make(chan FillResult, 1)
	d2 := digest.FromString("other")
	f2, _, err := st.Fill(d2, int64(len(content)), "first", "up",
		func(context.Context) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(content)), nil },
		func(r FillResult) { bad <- r })
	if err != nil {
		t.Fatal(err)
	}
	if r := testutil.Recv(t, bad, "the corrupt fill to end"); !errors.Is(r.Err, ErrDigestMismatch) {
		t.Fatalf("fill of wrong bytes: %v", r.Err)
	}
	f2.AddRepo("late", "up")
	if ok, _ := st.Linked("late", d2); ok {
		t.Error("a failed fill linked a late joiner")
	}
}

// stepReader hands a fill one chunk per send; a nil chunk is a barrier: the
// send returns once the fill is done with the chunk before it.
type stepReader chan []byte

func (r stepReader) Read(p []byte) (int, error) {
	b, ok := <-r
	if !ok {
		return 0, io.EOF
	}
	return copy(p, b), nil
}

func (r stepReader) Close() error { return nil }

// lockedBuffer is a log destination written by the fill goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// A fill that runs longer than fillLogEvery logs its progress at debug
// level, from its own goroutine, at most once per fillLogEvery.
func TestFillLogsProgress(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	clock := newClock()
	st, err := Open(t.TempDir(), Options{Logger: zerolog.New(&logs).Level(zerolog.DebugLevel), Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	content := testContent(4000)
	d := digest.FromBytes(content)
	chunks := make(stepReader)
	done := make(chan FillResult, 1)
	if _, _, err := st.Fill(d, int64(len(content)), "docker.io/library/app", "docker.io",
		func(context.Context) (io.ReadCloser, error) { return chunks, nil }, func(r FillResult) { done <- r }); err != nil {
		t.Fatal(err)
	}
	// The clock moves before each 1000-byte chunk: at 0 s and 3 s nothing
	// is due, at 6 s a line, at 8 s nothing (2 s after that line).
	for i, step := range []time.Duration{0, 3 * time.Second, 3 * time.Second, 2 * time.Second} {
		clock.Advance(step)
		chunks <- content[i*1000 : (i+1)*1000]
		chunks <- nil
	}
	close(chunks)
	if r := <-done; r.Err != nil {
		t.Fatalf("fill: %v", r.Err)
	}

	var lines []map[string]any
	logs.mu.Lock()
	for l := range bytes.Lines(logs.b.Bytes()) {
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if m["message"] == "fill progress" {
			lines = append(lines, m)
		}
	}
	logs.mu.Unlock()
	want := map[string]any{"level": "debug", "digest": d.String(), "origin": "docker.io", "written": 3000.0, "size": 4000.0,
		"percent": 75.0, "bytes_per_second": 500.0, "elapsed_s": 6.0, "message": "fill progress"}
	if len(lines) != 1 || !maps.Equal(lines[0], want) {
		t.Errorf("progress lines = %v, want one: %v", lines, want)
	}
}
