package token

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/access"
)

func TestIssueVerify(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	key := []byte(strings.Repeat("k", 32))
	is, err := New(Options{Key: key, Service: "berth", TTL: time.Minute, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	id := access.Identity{User: "alice", Groups: []string{"team-a"}}
	scopes := []access.Scope{{Type: "repository", Name: "team-a/app", Actions: []string{"pull", "push"}}}
	tok, issued, err := is.Access(id, scopes)
	if err != nil || !issued.Equal(now) {
		t.Fatal(err, issued)
	}
	c, err := is.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Identity(), id) || !reflect.DeepEqual(c.Access, scopes) {
		t.Errorf("claims %+v", c)
	}
	if _, err := is.VerifyRefresh(tok); !errors.Is(err, ErrInvalid) {
		t.Errorf("an access token passed as a refresh token: %v", err)
	}
	ref, err := is.Refresh(id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := is.Verify(ref); !errors.Is(err, ErrInvalid) {
		t.Errorf("a refresh token passed as an access token: %v", err)
	}
	if c, err := is.VerifyRefresh(ref); err != nil || c.Subject != "alice" {
		t.Errorf("refresh: %+v %v", c, err)
	}
	if _, err := is.Refresh(access.Identity{}); err == nil {
		t.Error("a refresh token for anonymous")
	}

	// Tampered, another key, another service, expired.
	parts := strings.Split(tok, ".")
	forged := parts[0] + "." + parts[1] + "x." + parts[2]
	other, _ := New(Options{Key: []byte(strings.Repeat("o", 32)), Service: "berth", Now: clock})
	otherSvc, _ := New(Options{Key: key, Service: "elsewhere", Now: clock})
	later, _ := New(Options{Key: key, Service: "berth", Now: func() time.Time { return now.Add(2 * time.Minute) }})
	for name, check := range map[string]func() error{
		"tampered":        func() error { _, err := is.Verify(forged); return err },
		"other key":       func() error { _, err := other.Verify(tok); return err },
		"other service":   func() error { _, err := otherSvc.Verify(tok); return err },
		"expired":         func() error { _, err := later.Verify(tok); return err },
		"garbage":         func() error { _, err := is.Verify("not.a.token"); return err },
		"alg none":        func() error { _, err := is.Verify("eyJhbGciOiJub25lIn0." + parts[1] + "."); return err },
		"empty":           func() error { _, err := is.Verify(""); return err },
		"refresh expired": func() error { _, err := later.VerifyRefresh(ref); return err },
	} {
		if err := check(); name == "refresh expired" {
			if err != nil {
				t.Errorf("refresh token expired after 2 minutes: %v", err)
			}
		} else if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := New(Options{Key: []byte("short")}); err == nil {
		t.Error("a short key was accepted")
	}
}

func TestLoadKey(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sub", "token.key")
	if _, err := LoadKey(path, false); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing key without create: %v", err)
	}
	k1, err := LoadKey(path, true)
	if err != nil || len(k1) != keyBytes {
		t.Fatal(k1, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", fi.Mode(), err)
	}
	k2, err := LoadKey(path, true)
	if err != nil || string(k1) != string(k2) {
		t.Fatalf("second start got another key: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.key")
	_ = os.WriteFile(bad, []byte("abcd\n"), 0o600)
	if _, err := LoadKey(bad, false); err == nil || !strings.Contains(err.Error(), "hex") {
		t.Errorf("short key file: %v", err)
	}
}

func BenchmarkVerify(b *testing.B) {
	is, _ := New(Options{Key: []byte(strings.Repeat("k", 32)), Service: "berth"})
	tok, _, _ := is.Access(access.Identity{User: "alice"}, []access.Scope{{Type: "repository", Name: "a/b", Actions: []string{"pull"}}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := is.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// A token verified once (and remembered) is still refused once it expires.
func TestVerifiedExpires(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	is, _ := New(Options{Key: []byte(strings.Repeat("k", 32)), Service: "berth", TTL: time.Minute, Now: func() time.Time { return now }})
	tok, _, _ := is.Access(access.Identity{User: "alice"}, nil)
	for range 2 {
		if _, err := is.Verify(tok); err != nil {
			t.Fatal(err)
		}
	}
	now = now.Add(61 * time.Second)
	if _, err := is.Verify(tok); !errors.Is(err, ErrInvalid) {
		t.Fatalf("expired token accepted from the verified table: %v", err)
	}
}
