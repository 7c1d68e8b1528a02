package upstream

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"time"
)

// errSlowStream is the cause reported when a response body arrived slower
// than Config.MinStreamRate, a stalled body included.
var errSlowStream = errors.New("stream below the minimum rate")

// rateBody wraps a response body and enforces a minimum rate: each window
// of time spent inside Read must deliver at least need bytes. Once need
// bytes have arrived a new window starts, so a burst does not buy credit
// for a later stall. Only time spent inside Read counts: a slow consumer
// is not the upstream's fault.
//
// A Read still blocked when its window runs out is aborted by cancelling
// the request's context; an upstream dripping a byte now and then can no
// longer keep a stream alive forever, as it could when any byte reset an
// idle timer.
type rateBody struct {
	rc     io.ReadCloser
	window time.Duration
	need   int64 // bytes each window must deliver, at least 1
	cancel context.CancelFunc
	timer  *time.Timer
	fired  atomic.Bool // the window ran out; the request is cancelled

	// Only Read uses these; an io.Reader's Reads do not overlap.
	waited time.Duration // time spent inside Read in the current window
	got    int64         // bytes delivered in the current window
}

// newRateBody wraps rc, the body of a request that cancel aborts, to
// require minRate bytes per second over windows of the given length.
func newRateBody(rc io.ReadCloser, window time.Duration, minRate int64, cancel context.CancelFunc) *rateBody {
	b := &rateBody{
		rc:     rc,
		window: window,
		need:   max(1, int64(float64(minRate)*window.Seconds())),
		cancel: cancel,
	}
	b.timer = time.AfterFunc(window, b.expire)
	b.timer.Stop()
	return b
}

// expire fails the stream: the request is cancelled, which aborts a Read
// blocked in the network, and later Reads fail.
func (b *rateBody) expire() {
	if b.fired.CompareAndSwap(false, true) {
		b.cancel()
	}
}

// Read implements io.Reader.
func (b *rateBody) Read(p []byte) (int, error) {
	if b.fired.Load() {
		return 0, errSlowStream
	}
	start := time.Now()
	b.timer.Reset(b.window - b.waited)
	n, err := b.rc.Read(p)
	b.timer.Stop()
	b.waited += time.Since(start)
	b.got += int64(n)
	switch {
	case b.got >= b.need:
		b.waited, b.got = 0, 0
	case b.waited >= b.window && err == nil:
		// The window ran out as this Read returned, before the timer
		// could fire.
		b.expire()
	}
	if b.fired.Load() && err != io.EOF {
		// Whatever the read says (typically "context canceled"), the
		// reason is the rate.
		return n, errSlowStream
	}
	return n, err
}

// Close implements io.Closer and releases the request's context.
func (b *rateBody) Close() error {
	b.timer.Stop()
	err := b.rc.Close()
	b.cancel()
	return err
}

// ioCopyN discards up to n bytes from r.
func ioCopyN(r io.Reader, n int64) (int64, error) {
	return io.CopyN(io.Discard, r, n)
}
