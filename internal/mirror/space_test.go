package mirror_test

import (
	"bytes"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/mirror"
	"github.com/berth-dev/berth/upstream"
	"github.com/berth-dev/berth/upstream/upstreamtest"
	"github.com/rs/zerolog"
)

// A miss while the store refuses writes (its disk below the reserve) is
// streamed from the upstream, verified, and not cached; once space is
// freed the next miss is cached again. Corrupt upstream bytes are never
// handed over as a clean end.
func TestMissPassesThroughWhenTheDiskIsFull(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	content := bytes.Repeat([]byte("layer "), 50000)
	d := up.AddBlob("library/app", content)
	bad := up.AddBlob("library/app", bytes.Repeat([]byte("other "), 1000))
	up.SetCorrupt(bad, true)
	var free atomic.Int64
	free.Store(1 << 20) // below the 1 GiB reserve
	st, err := cache.Open(t.TempDir(), cache.Options{Logger: zerolog.Nop(), DiskReserve: 1 << 30,
		Statfs: func(string) (int64, error) { return free.Load(), nil }, ProbeInterval: time.Hour})
	if err == nil {
		t.Fatal("Open on a disk below half the reserve succeeded")
	}
	free.Store(600 << 20) // above half: it opens, writes of content are refused
	st, err = cache.Open(t.TempDir(), cache.Options{Logger: zerolog.Nop(), DiskReserve: 1 << 30,
		Statfs: func(string) (int64, error) { return free.Load(), nil }, ProbeInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m := newMirror(t, mirror.Options{Store: st, Client: newClient(t, upstream.Config{URL: up.URL()}), Prefetch: -1})
	ctx := testContext(t)

	rd, err := m.GetBlob(ctx, "library/app", d)
	if got := readAll(t, rd, err); !bytes.Equal(got, content) {
		t.Fatalf("passed-through blob: %d bytes, want the %d upstream bytes", len(got), len(content))
	}
	if _, err := st.StatBlob(d); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("StatBlob after a pass-through: %v, want ErrNotFound (nothing stored)", err)
	}
	rd, err = m.GetBlob(ctx, "library/app", bad)
	if err == nil {
		_, err = io.ReadAll(rd)
		rd.Close()
	}
	if err == nil {
		t.Error("a corrupt blob passed through with a clean end")
	}

	free.Store(4 << 30)
	// The guard trusts one statfs for a quarter second: poll until it asks again.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(waitTimeout); st.Space().Free < 1<<30; <-tick.C {
		if time.Now().After(deadline) {
			t.Fatal("the store never saw the freed space")
		}
	}
	rd, err = m.GetBlob(ctx, "library/app", d)
	readAll(t, rd, err)
	if _, err := st.StatBlob(d); err != nil {
		t.Errorf("StatBlob once space is freed: %v, want the blob cached", err)
	}
}
