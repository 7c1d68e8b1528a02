// Package iox holds what berth's large copies (a blob staged by an import,
// a bundle written by an export) share: a hash fed on a goroutine of its
// own, so that hashing overlaps reading and writing, and early writeback
// of a file being written, so that its fsync at the end finds it on disk.
package iox

import (
	"io"
	"os"
)

// AsyncHash feeds a hash (or any writer that never fails) from a
// goroutine of its own: Write copies the bytes into one of a few buffers
// and returns while they are hashed, so a copy through it runs at the
// speed of the slower of copying and hashing, not of both in turn. Close
// waits until every byte written has reached the hash. An AsyncHash is
// used by one goroutine.
type AsyncHash struct {
	free, full chan []byte
	done       chan struct{}
	closed     bool
}

const (
	hashBufs    = 3
	hashBufSize = 1 << 20
)

// NewAsyncHash starts feeding h; Close must follow.
func NewAsyncHash(h io.Writer) *AsyncHash {
	a := &AsyncHash{free: make(chan []byte, hashBufs), full: make(chan []byte, hashBufs), done: make(chan struct{})}
	for range hashBufs {
		a.free <- make([]byte, 0, hashBufSize)
	}
	go func() {
		defer close(a.done)
		for b := range a.full {
			_, _ = h.Write(b)
			a.free <- b[:0]
		}
	}()
	return a
}

// Write hands a copy of p to the hash.
func (a *AsyncHash) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		b := <-a.free
		m := min(len(p), cap(b))
		a.full <- append(b, p[:m]...)
		p = p[m:]
	}
	return n, nil
}

// Close waits for the hash to have every byte written. It may be called
// more than once.
func (a *AsyncHash) Close() {
	if !a.closed {
		a.closed = true
		close(a.full)
	}
	<-a.done
}

// WritebackEvery is how many bytes a file takes before the kernel is asked
// to start writing them out (see StartWriteback).
const WritebackEvery = 8 << 20

// Writeback wraps f, written from its current offset on, so that every
// WritebackEvery bytes written start their writeback.
func Writeback(f *os.File) io.Writer {
	off, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return f
	}
	return &writeback{f: f, flushed: off, off: off}
}

type writeback struct {
	f            *os.File
	flushed, off int64
}

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if w.off-w.flushed >= WritebackEvery {
		StartWriteback(w.f, w.flushed, w.off-w.flushed)
		w.flushed = w.off
	}
	return n, err
}
