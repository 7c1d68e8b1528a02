package ldapauth

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg  Config
		err  string
		addr string
	}{
		{Config{URL: "ldap://dir.example", UserBase: "ou=p"}, "", "dir.example:389"},
		{Config{URL: "ldaps://dir.example", UserBase: "ou=p"}, "", "dir.example:636"},
		{Config{URL: "ldap://dir.example:1389", UserBase: "ou=p", GroupBase: "ou=g"}, "", "dir.example:1389"},
		{Config{URL: "http://dir.example", UserBase: "ou=p"}, "want ldap://", ""},
		{Config{URL: "ldap://dir.example"}, "user_base", ""},
		{Config{URL: "ldap://dir.example", UserBase: "ou=p", UserFilter: "(uid=x)"}, "{user}", ""},
		{Config{URL: "ldap://dir.example", UserBase: "ou=p", UserFilter: "(uid={user}"}, "user_filter", ""},
		{Config{URL: "ldap://dir.example", UserBase: "ou=p", GroupFilter: "(member={dn})"}, "group_base", ""},
	} {
		d, err := New(tc.cfg)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%+v: %v", tc.cfg, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%+v: error %v, want one with %q", tc.cfg, err, tc.err)
		case err == nil && d.addr != tc.addr:
			t.Errorf("%+v: addr %s, want %s", tc.cfg, d.addr, tc.addr)
		}
	}
}

// An empty password is never a login (it would be an unauthenticated
// bind), and the directory is not even asked.
func TestEmptyPassword(t *testing.T) {
	t.Parallel()
	d, err := New(Config{URL: "ldap://127.0.0.1:1", UserBase: "ou=p"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Check(context.Background(), "alice", ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty password: %v", err)
	}
	// An unreachable directory is an error, not "invalid credentials".
	if _, err := d.Check(context.Background(), "alice", "pw"); err == nil || errors.Is(err, ErrInvalid) {
		t.Errorf("unreachable directory: %v", err)
	}
}
