package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"testing/synctest"
	"time"

	"github.com/berth-dev/berth/upstream/upstreamtest"
)

// TestRateBody pins the minimum-rate rule in a synctest bubble, where time
// is virtual: every sleep below is instant and every duration exact.
func TestRateBody(t *testing.T) {
	t.Parallel()
	const (
		window  = 100 * time.Millisecond
		minRate = 1000 // bytes per second: 100 bytes a window
	)
	// every returns an upstream that writes n bytes every period until
	// total bytes are written or the reader goes away.
	every := func(period time.Duration, n, total int) func(*io.PipeWriter) {
		return func(w *io.PipeWriter) {
			for sent := 0; sent < total; sent += n {
				if _, err := w.Write(bytes.Repeat([]byte("x"), n)); err != nil {
					return
				}
				time.Sleep(period)
			}
		}
	}
	tests := []struct {
		name        string
		upstream    func(*io.PipeWriter) // writes the body; the pipe is closed after it
		readPause   time.Duration        // the consumer's pause between reads
		wantErr     error
		wantBytes   int           // -1: any
		wantElapsed time.Duration // 0: any
	}{
		{name: "all at once", upstream: every(0, 5000, 5000), wantBytes: 5000},
		{name: "steady above the rate", upstream: every(10*time.Millisecond, 20, 1000), wantBytes: 1000},
		{name: "a burst of the minimum each window", upstream: every(90*time.Millisecond, 100, 1000), wantBytes: 1000},
		{name: "short body", upstream: every(0, 10, 10), wantBytes: 10},
		{name: "slow consumer", upstream: every(0, 1000, 1000), readPause: time.Second, wantBytes: 1000},
		// Each byte comes well within the window, so a timer reset by
		// every byte never fires; the stream is still far too slow.
		{name: "drip below the rate", upstream: every(15*time.Millisecond, 1, 200), wantErr: errSlowStream, wantBytes: -1, wantElapsed: window},
		{name: "stall", upstream: every(time.Hour, 50, 100), wantErr: errSlowStream, wantBytes: 50, wantElapsed: window},
		{name: "bursts too sparse", upstream: every(150*time.Millisecond, 100, 1000), wantErr: errSlowStream, wantBytes: 100, wantElapsed: window},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				pr, pw := io.Pipe()
				upstreamDone := make(chan struct{})
				go func() {
					defer close(upstreamDone)
					tt.upstream(pw)
					_ = pw.Close()
				}()
				// Cancelling a request makes its body's Read fail.
				b := newRateBody(pr, window, minRate, func() { _ = pr.CloseWithError(context.Canceled) })
				defer func() {
					// Closing the body ends the upstream's writes; a bubble
					// must not end with goroutines in it. (A deadlock here
					// would be reported by synctest, not hang.)
					_ = b.Close()
					<-upstreamDone
				}()

				start := time.Now()
				got, err := 0, error(nil)
				buf := make([]byte, 10)
				for {
					n, rerr := b.Read(buf)
					got += n
					if rerr != nil {
						if rerr != io.EOF {
							err = rerr
						}
						break
					}
					time.Sleep(tt.readPause)
				}
				elapsed := time.Since(start)

				if !errors.Is(err, tt.wantErr) || tt.wantErr == nil && err != nil {
					t.Errorf("err = %v, want %v", err, tt.wantErr)
				}
				if tt.wantBytes >= 0 && got != tt.wantBytes {
					t.Errorf("read %d bytes, want %d", got, tt.wantBytes)
				}
				if tt.wantElapsed != 0 && elapsed != tt.wantElapsed {
					t.Errorf("failed after %s, want %s", elapsed, tt.wantElapsed)
				}
				if _, err := b.Read(buf); tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("Read after the failure: %v, want %v again", err, tt.wantErr)
				}
			})
		})
	}
}

// An upstream that drips a blob far below MinStreamRate, each byte well
// within the window, is abandoned window by window and the download fails
// after Retries resumptions, instead of lasting for as long as the drip.
func TestMinStreamRate(t *testing.T) {
	t.Parallel()
	const size = 4000
	reg := upstreamtest.New(t, upstreamtest.Options{})
	img := reg.AddImage("lib/drip", "v", 1, size)
	reg.SetThrottle(200) // 10 bytes every 50 ms: the download would take 20 s
	c := newClient(t, reg, func(cfg *Config) {
		cfg.IdleStreamTimeout = 200 * time.Millisecond
		cfg.MinStreamRate = 10 << 10 // 2 KiB a window
		cfg.Retries = 2
	})
	type result struct {
		got []byte
		err error
	}
	res := within(t, "reading the dripping blob", func() result {
		got, _, err := readBlob(t, c, "lib/drip", img.Layers[0], 0)
		return result{got, err}
	})
	if !IsUnavailable(res.err) || !errors.Is(res.err, errSlowStream) {
		t.Fatalf("err = %v after %d bytes, want a too-slow stream (unavailable)", res.err, len(res.got))
	}
	if len(res.got) == 0 || len(res.got) >= size {
		t.Errorf("read %d bytes, want some but not all", len(res.got))
	}
	if n := reg.Count("GET", upstreamtest.KindBlob); n != 3 {
		t.Errorf("blob GETs = %d, want 3 (the first and Retries = 2 resumptions)", n)
	}
}
