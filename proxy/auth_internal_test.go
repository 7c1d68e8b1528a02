package proxy

import (
	"fmt"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// An unknown user is checked against a dummy hash of the file's own cost,
// so a wrong user name takes as long as a wrong password.
func TestAuthDummyHashCost(t *testing.T) {
	t.Parallel()
	for _, costs := range [][]int{{bcrypt.MinCost}, {bcrypt.MinCost + 1}, {bcrypt.MinCost, bcrypt.MinCost + 1, bcrypt.MinCost}} {
		var file strings.Builder
		want := 0
		for i, c := range costs {
			hash, err := bcrypt.GenerateFromPassword([]byte("pw"), c)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&file, "user%d:%s\n", i, hash)
			want = max(want, c)
		}
		a, err := ParseHtpasswd(strings.NewReader(file.String()), false)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := bcrypt.Cost(a.dummy); err != nil || got != want {
			t.Errorf("hash costs %v: dummy cost = %d, %v; want %d", costs, got, err, want)
		}
	}
}

// Failed logins are counted per address and per user: a user attacked from
// many addresses is blocked everywhere, other users are not.
func TestLoginLimitsPerUser(t *testing.T) {
	t.Parallel()
	l := newLoginLimits()
	for i := range failBurst {
		if l.blocked(fmt.Sprintf("10.0.0.%d", i), "alice") > 0 {
			t.Fatalf("blocked after %d failures", i)
		}
		l.fail(fmt.Sprintf("10.0.0.%d", i), "alice")
	}
	if l.blocked("10.0.1.1", "alice") == 0 {
		t.Error("alice not blocked from a new address after a burst of failures")
	}
	if l.blocked("10.0.1.1", "bob") != 0 {
		t.Error("bob blocked by alice's failures")
	}
	if l.blocked("10.0.0.1", "bob") != 0 {
		t.Error("one failure from an address blocked it")
	}
}
