package main

import (
	"maps"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
)

// What a tag may be after a set of writes: the last acknowledged one, or
// one that raced it, or one never answered; never one that was superseded.
func TestModelAllowsRacesNotLosses(t *testing.T) {
	t.Parallel()
	a, b, c := digest.FromString("a"), digest.FromString("b"), digest.FromString("c")
	allowed := func(m *model) []digest.Digest {
		ts := m.tag("r:t")
		out := slices.Collect(maps.Keys(ts.possible))
		out = append(out, ts.acked)
		slices.Sort(out)
		return slices.Compact(out)
	}
	cases := []struct {
		name string
		run  func(m *model)
		want []digest.Digest
	}{
		{"one acked", func(m *model) { m.end("r:t", m.begin("r:t", a), true) }, []digest.Digest{a}},
		{"sequential: the first is superseded", func(m *model) {
			m.end("r:t", m.begin("r:t", a), true)
			m.end("r:t", m.begin("r:t", b), true)
		}, []digest.Digest{b}},
		{"overlapping: either may have landed last", func(m *model) {
			wa := m.begin("r:t", a)
			wb := m.begin("r:t", b)
			m.end("r:t", wb, true)
			m.end("r:t", wa, true)
		}, []digest.Digest{a, b}},
		{"unanswered after the ack stays possible", func(m *model) {
			m.end("r:t", m.begin("r:t", a), true)
			m.end("r:t", m.begin("r:t", b), false)
		}, []digest.Digest{a, b}},
		{"unanswered before an ack it did not overlap is superseded", func(m *model) {
			m.end("r:t", m.begin("r:t", a), false)
			m.end("r:t", m.begin("r:t", b), true)
		}, []digest.Digest{b}},
		{"a delete racing a push", func(m *model) {
			m.end("r:t", m.begin("r:t", a), true)
			wd := m.begin("r:t", "")
			wc := m.begin("r:t", c)
			m.end("r:t", wc, true)
			m.end("r:t", wd, true)
		}, []digest.Digest{"", c}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := newModel()
			tc.run(m)
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if got := allowed(m); !slices.Equal(got, want) {
				t.Errorf("allowed = %v, want %v", got, want)
			}
		})
	}
}
