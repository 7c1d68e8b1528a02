package main

import (
	"io"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// logBatch is how many bytes of lines gather before they are written.
const logBatch = 64 << 10

// idleGap is the least time between two batches that Idle writes: when
// berth is idle between requests its lines go out at once, but a busy
// berth, idle for a moment between every few responses, writes a batch
// every few milliseconds, not one per response (a write(2) per handful of
// lines cost a tenth of berth's request rate on small blobs).
const idleGap = 5 * time.Millisecond

// logWriter batches log lines as nginx's `access_log ... buffer=64k
// flush=1s` does: lines go out when 64 KiB have gathered, at the latest a
// second after they were written, at once for warnings and errors, and on
// Close. One request line then costs a copy, not a write(2); and the
// write(2) of a batch happens outside the lock that requests append under,
// so no request waits for the disk.
type logWriter struct {
	mu    sync.Mutex // guards buf and spare
	buf   []byte
	spare []byte
	last  time.Time   // when the last batch went out (under mu)
	later *time.Timer // Idle's deferred flush; pending while armed is set
	armed bool
	wmu   sync.Mutex // taken before mu is released: batches go out in order
	out   io.Writer
	stop  chan struct{}
	done  chan struct{}
}

func newLogWriter(w io.Writer, every time.Duration) *logWriter {
	l := &logWriter{out: w, buf: make([]byte, 0, logBatch), spare: make([]byte, 0, logBatch),
		stop: make(chan struct{}), done: make(chan struct{})}
	l.later = time.AfterFunc(time.Hour, func() {
		l.mu.Lock()
		l.armed = false
		if len(l.buf) == 0 {
			l.mu.Unlock()
			return
		}
		_ = l.writeOut()
	})
	l.later.Stop()
	go l.flusher(every)
	return l
}

func (l *logWriter) Write(p []byte) (int, error) { return l.WriteLevel(zerolog.InfoLevel, p) }

// WriteLevel implements zerolog.LevelWriter.
func (l *logWriter) WriteLevel(level zerolog.Level, p []byte) (int, error) {
	l.mu.Lock()
	l.buf = append(l.buf, p...)
	if len(l.buf) < logBatch && level < zerolog.WarnLevel {
		l.mu.Unlock()
		return len(p), nil
	}
	return len(p), l.writeOut()
}

// writeOut writes the gathered lines; it is called with mu held and
// releases it before the write(2).
func (l *logWriter) writeOut() error {
	batch := l.buf
	l.buf, l.spare = l.spare[:0], nil
	l.last = time.Now()
	l.wmu.Lock()
	l.mu.Unlock()
	var err error
	if len(batch) > 0 {
		_, err = l.out.Write(batch)
	}
	// wmu first: the next batch's writer may hold mu while it waits for wmu.
	l.wmu.Unlock()
	l.mu.Lock()
	if l.spare == nil && cap(batch) <= 4*logBatch { // a huge line's buffer is let go
		l.spare = batch[:0]
	}
	l.mu.Unlock()
	return err
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
	if len(l.buf) == 0 {
		l.mu.Unlock()
		return
	}
	_ = l.writeOut()
}

// Idle is called when no request is running: with nothing to batch the
// lines with, they go out now, so that whoever reads the log after a
// response finds its line; but at most one batch every idleGap, the rest
// when the gap has passed. A nil writer does nothing.
func (l *logWriter) Idle() {
	if l == nil {
		return
	}
	l.mu.Lock()
	if len(l.buf) == 0 || l.armed {
		l.mu.Unlock()
		return
	}
	if wait := idleGap - time.Since(l.last); wait > 0 {
		l.armed = true
		l.later.Reset(wait)
		l.mu.Unlock()
		return
	}
	_ = l.writeOut()
}

// Close stops the flusher and writes what is buffered. A nil writer does nothing.
func (l *logWriter) Close() error {
	if l == nil {
		return nil
	}
	close(l.stop)
	<-l.done
	l.later.Stop()
	l.mu.Lock()
	return l.writeOut()
}
