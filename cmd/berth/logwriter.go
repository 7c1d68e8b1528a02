package main

import (
	"bufio"
	"io"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// logWriter batches log lines as nginx's `access_log ... buffer=64k
// flush=1s` does: lines go out when 64 KiB have gathered, at the latest a
// second after they were written, at once for warnings and errors, and on
// Close. One request line then costs a copy, not a write(2).
type logWriter struct {
	mu    sync.Mutex
	buf   *bufio.Writer
	dirty bool
	stop  chan struct{}
	done  chan struct{}
}

func newLogWriter(w io.Writer, every time.Duration) *logWriter {
	l := &logWriter{buf: bufio.NewWriterSize(w, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	go l.flusher(every)
	return l
}

func (l *logWriter) Write(p []byte) (int, error) { return l.WriteLevel(zerolog.InfoLevel, p) }

// WriteLevel implements zerolog.LevelWriter.
func (l *logWriter) WriteLevel(level zerolog.Level, p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.buf.Write(p)
	l.dirty = true
	if err == nil && level >= zerolog.WarnLevel {
		err = l.flushLocked()
	}
	return n, err
}

func (l *logWriter) flushLocked() error {
	l.dirty = false
	return l.buf.Flush()
}

func (l *logWriter) flusher(every time.Duration) {
	defer close(l.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.Flush()
		}
	}
}

// Flush writes what is buffered now. A nil writer has nothing to flush.
func (l *logWriter) Flush() {
	if l == nil {
		return
	}
	l.mu.Lock()
	if l.dirty {
		_ = l.flushLocked()
	}
	l.mu.Unlock()
}

// Close stops the flusher and writes what is buffered. A nil writer does nothing.
func (l *logWriter) Close() error {
	if l == nil {
		return nil
	}
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.flushLocked()
}
