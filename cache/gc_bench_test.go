package cache

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// BenchmarkCollect measures one planning pass (mark and a dry sweep) over a
// store of 1000 pushed images of 3 layers each, half of them untagged and
// expired by a rule: the cost a scheduled collection pays each interval.
func BenchmarkCollect(b *testing.B) {
	clock := newClock()
	st, err := Open(b.TempDir(), Options{Logger: zerolog.Nop(), Clock: clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	for i := range 1000 {
		tag := ""
		if i%2 == 0 {
			tag = fmt.Sprintf("t%d", i)
		}
		image(b, st, fmt.Sprintf("bench/r%d", i%20), tag, nil,
			[]byte(fmt.Sprintf("shared %d", i%10)), []byte(fmt.Sprintf("own %d a", i)), []byte(fmt.Sprintf("own %d b", i)))
	}
	clock.Advance(48 * time.Hour)
	rules := []RetentionRule{{Repos: []string{"bench/**"}, Match: func(string) bool { return true }, KeepLast: 20, UntaggedAfter: 24 * time.Hour}}
	b.ResetTimer()
	for b.Loop() {
		rep, err := st.Collect(context.Background(), GCOptions{Grace: time.Hour, DryRun: true, Retention: rules})
		if err != nil || len(rep.Manifests) == 0 {
			b.Fatalf("%v %d", err, len(rep.Manifests))
		}
	}
}
