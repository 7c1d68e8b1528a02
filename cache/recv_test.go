package cache

import (
	"testing"
	"time"
)

// recv waits for a value from ch at most a minute, so that a hang fails the
// test with what it waited for rather than at go test's timeout.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
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
