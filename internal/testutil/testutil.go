// Package testutil holds what the tests of several packages share: a
// bounded channel wait and a lookup of Prometheus series by label.
package testutil

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Recv waits for a value from ch at most a minute, so that a hang fails the
// test with what it waited for rather than at go test's timeout.
func Recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(time.Minute)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// Sample finds the series of family name whose labels include want, and
// reports whether it exists at all (a series not yet created is absent).
func Sample(t testing.TB, reg prometheus.Gatherer, name string, want map[string]string) (*dto.Metric, bool) {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			return m, true
		}
	}
	return nil, false
}

// Value is the value of the counter or gauge series of name whose labels
// include want; the test fails if there is none.
func Value(t testing.TB, reg prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	m, ok := Sample(t, reg, name, want)
	if !ok {
		t.Fatalf("no series %s%v", name, want)
	}
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}

// ValueReaches polls metric name (with labels want) until it equals v or
// ten seconds pass, and returns its last value. A handler records a
// response's metrics after its last byte is written, so a client that has
// read every byte may look before the server has counted them.
func ValueReaches(t testing.TB, reg prometheus.Gatherer, name string, want map[string]string, v float64) float64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := Value(t, reg, name, want)
		if got == v || time.Now().After(deadline) {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
}
