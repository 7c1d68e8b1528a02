package main

import (
	"bytes"
	"sync"
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
