package main

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// syncBuffer is a bytes.Buffer safe to read while the flusher writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestLogWriterBatches(t *testing.T) {
	t.Parallel()
	var out syncBuffer
	w := newLogWriter(&out, time.Hour) // the ticker never fires in this test
	log := zerolog.New(w)
	log.Info().Msg("one")
	if got := out.String(); got != "" {
		t.Fatalf("an info line went out at once: %q", got)
	}
	log.Warn().Msg("two")
	if got := out.String(); !bytes.Contains([]byte(got), []byte(`"one"`)) || !bytes.Contains([]byte(got), []byte(`"two"`)) {
		t.Fatalf("a warning did not flush the batch: %q", got)
	}
	log.Info().Msg("three")
	w.Flush()
	if !bytes.Contains([]byte(out.String()), []byte(`"three"`)) {
		t.Fatalf("Flush left a line behind: %q", out.String())
	}
	log.Info().Msg("four")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains([]byte(out.String()), []byte(`"four"`)) {
		t.Fatalf("Close left a line behind: %q", out.String())
	}
	var nilw *logWriter
	nilw.Flush()
	if err := nilw.Close(); err != nil {
		t.Fatal(err)
	}
}

// Lines from many goroutines all arrive, whole and each writer's in order,
// however batches are cut and flushed.
func TestLogWriterConcurrent(t *testing.T) {
	t.Parallel()
	var out syncBuffer
	w := newLogWriter(&out, time.Millisecond)
	var wg sync.WaitGroup
	const writers, lines = 8, 2000
	for g := range writers {
		wg.Go(func() {
			for i := range lines {
				level := zerolog.InfoLevel
				if i%500 == 0 {
					level = zerolog.WarnLevel
				}
				if _, err := w.WriteLevel(level, []byte(fmt.Sprintf("%d %d\n", g, i))); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	next := make([]int, writers)
	for _, line := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		var g, i int
		if _, err := fmt.Sscanf(line, "%d %d", &g, &i); err != nil {
			t.Fatalf("torn line %q", line)
		}
		if i != next[g] {
			t.Fatalf("writer %d: line %d after %d", g, i, next[g]-1)
		}
		next[g]++
	}
	for g, n := range next {
		if n != lines {
			t.Errorf("writer %d: %d lines, want %d", g, n, lines)
		}
	}
}

// Idle writes the lines at once when no batch went out within idleGap, and
// otherwise once the gap has passed: one write for a burst, none lost.
func TestLogWriterIdle(t *testing.T) {
	t.Parallel()
	out := countingBuffer{wrote: make(chan struct{}, 1)}
	w := newLogWriter(&out, time.Hour) // the ticker never fires in this test
	defer w.Close()
	log := zerolog.New(w)
	log.Info().Msg("first")
	w.Idle()
	if got := out.String(); !strings.Contains(got, `"first"`) || out.writes() != 1 {
		t.Fatalf("after a quiet spell Idle did not write at once: %d writes, %q", out.writes(), got)
	}
	for i := range 50 { // a busy spell: idle after every line
		log.Info().Msgf("busy %d", i)
		w.Idle()
	}
	timeout := time.After(10 * time.Second)
	for !strings.Contains(out.String(), `"busy 49"`) {
		select {
		case <-out.wrote:
		case <-timeout:
			t.Fatalf("the busy spell's lines never went out: %q", out.String())
		}
	}
	// The burst went out in the deferred batch (on a slow machine perhaps
	// in a few, one per idleGap), not a write per line.
	if n := out.writes(); n > 10 {
		t.Errorf("%d writes for 51 lines", n)
	}
	for i := range 50 {
		if !strings.Contains(out.String(), fmt.Sprintf(`"busy %d"`, i)) {
			t.Fatalf("line %d lost", i)
		}
	}
	var nilw *logWriter
	nilw.Idle()
}

// countingBuffer counts its writes and signals each on wrote.
type countingBuffer struct {
	syncBuffer
	n     atomic.Int64
	wrote chan struct{}
}

func (c *countingBuffer) Write(p []byte) (int, error) {
	c.n.Add(1)
	n, err := c.syncBuffer.Write(p)
	select {
	case c.wrote <- struct{}{}:
	default:
	}
	return n, err
}

func (c *countingBuffer) writes() int64 { return c.n.Load() }
