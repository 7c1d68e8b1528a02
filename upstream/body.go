package upstream

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"time"
)

// errIdleStream is the cause reported when a body read made no progress for
// the idle-stream timeout.
var errIdleStream = errors.New("idle stream timeout: no data received")

// idleBody wraps a response body so that a Read blocking for longer than
// timeout aborts the request (by cancelling its context). Only time spent
// inside Read counts: a slow consumer is not the upstream's fault.
type idleBody struct {
	rc      io.ReadCloser
	timeout time.Duration
	cancel  context.CancelFunc
	timer   *time.Timer
	fired   atomic.Bool
}

func newIdleBody(rc io.ReadCloser, timeout time.Duration, cancel context.CancelFunc) *idleBody {
	b := &idleBody{rc: rc, timeout: timeout, cancel: cancel}
	b.timer = time.AfterFunc(timeout, func() {
		b.fired.Store(true)
		cancel()
	})
	b.timer.Stop()
	return b
}

// Read implements io.Reader.
func (b *idleBody) Read(p []byte) (int, error) {
	if b.fired.Load() {
		return 0, errIdleStream
	}
	b.timer.Reset(b.timeout)
	n, err := b.rc.Read(p)
	b.timer.Stop()
	if err != nil && err != io.EOF && b.fired.Load() {
		// The read failed because we cancelled it; report why.
		err = errIdleStream
	}
	return n, err
}

// Close implements io.Closer and releases the request's context.
func (b *idleBody) Close() error {
	b.timer.Stop()
	err := b.rc.Close()
	b.cancel()
	return err
}

// ioCopyN discards up to n bytes from r.
func ioCopyN(r io.Reader, n int64) (int64, error) {
	return io.CopyN(io.Discard, r, n)
}
