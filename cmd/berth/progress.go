package main

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// meter shows the progress of a client command: on a terminal, a bar per
// image and one for the total (bytes, rate, ETA); otherwise a log line
// every few seconds.
type meter struct {
	what  string
	p     *mpb.Progress // nil when not a terminal
	total *mpb.Bar
	out   io.Writer
	start time.Time
	done  atomic.Int64
	size  atomic.Int64 // expected bytes; 0 while unknown
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex // orders lines written when not a terminal
}

// logEvery is how often a command not on a terminal logs its progress.
const logEvery = 5 * time.Second

func newMeter(s stdio, what string) *meter {
	m := &meter{what: what, out: s.err, start: time.Now(), stop: make(chan struct{})}
	if s.tty {
		m.p = mpb.New(mpb.WithOutput(s.err), mpb.WithWidth(32), mpb.WithRefreshRate(150*time.Millisecond))
		m.total = m.p.New(0, mpb.BarStyle(), mpb.BarPriority(1<<30), // last line
			mpb.PrependDecorators(decor.Name("total", decor.WC{W: 24, C: decor.DindentRight})),
			mpb.AppendDecorators(decor.Counters(decor.SizeB1024(0), "% .1f / % .1f"), decor.Name(" "),
				decor.AverageSpeed(decor.SizeB1024(0), "% .1f"), decor.Name(" ETA "), decor.AverageETA(decor.ET_STYLE_GO)))
		return m
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(logEvery)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.logLine()
			}
		}
	}()
	return m
}

func (m *meter) logLine() {
	done, size := m.done.Load(), m.size.Load()
	el := time.Since(m.start)
	rate := float64(done) / max(el.Seconds(), 0.001)
	line := fmt.Sprintf("berth %s: %s", m.what, humanBytes(done))
	if size > 0 {
		line += fmt.Sprintf(" of %s (%d%%)", humanBytes(size), done*100/size)
	}
	line += fmt.Sprintf(", %s/s", humanBytes(int64(rate)))
	if size > done && rate > 0 {
		line += fmt.Sprintf(", about %s left", (time.Duration(float64(size-done)/rate) * time.Nanosecond).Round(time.Second))
	}
	m.printf("%s", line)
}

// grow adds n bytes to what is expected in total.
func (m *meter) grow(n int64) {
	m.size.Add(n)
	if m.total != nil {
		m.total.SetTotal(m.size.Load(), false)
	}
}

// printf writes a line: above the bars on a terminal.
func (m *meter) printf(format string, args ...any) {
	line := fmt.Sprintf(format, args...) + "\n"
	if m.p != nil {
		_, _ = m.p.Write([]byte(line))
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, _ = io.WriteString(m.out, line)
}

// task is one image's share of the work.
type task struct {
	m   *meter
	bar *mpb.Bar
}

// task starts the bar of name, of size bytes (0: unknown).
func (m *meter) task(name string, size int64) *task {
	t := &task{m: m}
	if m.p != nil {
		if len(name) > 40 {
			name = "…" + name[len(name)-39:]
		}
		t.bar = m.p.New(size, mpb.BarStyle(), mpb.BarRemoveOnComplete(),
			mpb.PrependDecorators(decor.Name(name, decor.WC{W: 24, C: decor.DindentRight})),
			mpb.AppendDecorators(decor.Counters(decor.SizeB1024(0), "% .1f / % .1f"), decor.Name(" "),
				decor.AverageSpeed(decor.SizeB1024(0), "% .1f"), decor.Name(" ETA "), decor.AverageETA(decor.ET_STYLE_GO)))
	}
	return t
}

// add counts n bytes done.
func (t *task) add(n int) {
	t.m.done.Add(int64(n))
	if t.bar != nil {
		t.bar.IncrBy(n)
		t.m.total.IncrBy(n)
	}
}

// reader counts what is read through it.
func (t *task) reader(r io.Reader) io.Reader { return &countingReader{r: r, t: t} }

// finish ends the task's bar.
func (t *task) finish(err error) {
	if t.bar == nil {
		return
	}
	if err != nil {
		t.bar.Abort(true)
		return
	}
	t.bar.SetTotal(-1, true)
}

// close ends the display: the last line on a terminal, a final log line
// otherwise.
func (m *meter) close() {
	if m.p != nil {
		m.total.SetTotal(-1, true)
		m.p.Wait()
		return
	}
	close(m.stop)
	m.wg.Wait()
}

type countingReader struct {
	r io.Reader
	t *task
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.t.add(n)
	}
	return n, err
}

// humanBytes is n in binary units: 1.5 GiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
