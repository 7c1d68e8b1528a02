package access

import (
	"reflect"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		glob, repo string
		want       bool
	}{
		{"**", "a", true},
		{"**", "a/b/c", true},
		{"team-a/**", "team-a", true},
		{"team-a/**", "team-a/app", true},
		{"team-a/**", "team-a/x/y", true},
		{"team-a/**", "team-ab/app", false},
		{"team-a/**", "team-b/app", false},
		{"team-a/*", "team-a/app", true},
		{"team-a/*", "team-a/x/y", false},
		{"team-a/*", "team-a", false},
		{"team-*/**", "team-b/app", true},
		{"team-*/**", "teamx/app", false},
		{"app", "app", true},
		{"app", "app/x", false},
		{"a/b/**", "a", false},
		{"a/b/**", "a/b", true},
		{"docker.io/library/*", "docker.io/library/alpine", true},
	} {
		if got := Match(tc.glob, tc.repo); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.glob, tc.repo, got, tc.want)
		}
	}
}

func TestValidGlob(t *testing.T) {
	t.Parallel()
	for g, ok := range map[string]bool{"team-a/**": true, "**": true, "a/*/c": true, "": false, "/a": false, "a/": false,
		"a//b": false, "**/a": false, "a/**x": false, "a/[": false} {
		if err := ValidGlob(g); (err == nil) != ok {
			t.Errorf("ValidGlob(%q) = %v, want ok=%v", g, err, ok)
		}
	}
}

// issueRules are the rules of the issue's example, plus a rule that
// restricts who pulls a mirrored repository.
var issueRules = []Rule{
	{Repos: []string{"docker.io/internal/**"}, Subjects: []string{"group:ops"}, Actions: []Action{Pull}},
	{Repos: []string{"docker.io/internal/**"}, Subjects: []string{"authenticated", "anonymous"}, Actions: nil},
	{Repos: []string{"team-a/**"}, Subjects: []string{"alice", "group:team-a"}, Actions: []Action{Pull, Push, Delete}},
	{Repos: []string{"public/**"}, Subjects: []string{"anonymous"}, Actions: []Action{Pull}},
	{Repos: []string{"**"}, Subjects: []string{"authenticated"}, Actions: []Action{Pull}},
}

func TestAllowed(t *testing.T) {
	t.Parallel()
	alice := Identity{User: "alice"}
	bob := Identity{User: "bob", Groups: []string{"team-a"}}
	carol := Identity{User: "carol", Groups: []string{"team-b", "ops"}}
	anon := Identity{}
	p := &Policy{Rules: issueRules, AnonymousPull: true}
	closed := &Policy{Rules: issueRules}
	none := &Policy{AnonymousPull: true}
	for _, tc := range []struct {
		p    *Policy
		id   Identity
		repo string
		a    Action
		want bool
		rule int
	}{
		{p, alice, "team-a/app", Push, true, 2},
		{p, alice, "team-a/app", Delete, true, 2},
		{p, bob, "team-a/x/y", Push, true, 2},    // by group
		{p, carol, "team-a/app", Push, false, 4}, // first match is ** pull only
		{p, carol, "team-a/app", Pull, true, 4},
		{p, alice, "team-b/app", Push, false, 4},
		{p, anon, "team-a/app", Pull, true, -1}, // no rule names anonymous: anonymous_pull decides
		{p, anon, "team-a/app", Push, false, -1},
		{p, anon, "public/x", Pull, true, 3},
		{p, carol, "docker.io/internal/tool", Pull, true, 0},
		{p, alice, "docker.io/internal/tool", Pull, false, 1}, // a rule restricts a mirrored repository
		{p, anon, "docker.io/internal/tool", Pull, false, 1},
		{closed, anon, "public/x", Pull, false, -1}, // anonymous_pull off: nothing for anonymous
		{closed, alice, "team-a/app", Push, true, 2},
		{none, anon, "x", Pull, true, -1},
		{none, anon, "x", Push, false, -1},
		{none, alice, "x", Push, true, -1}, // no rules: as before rules
		{none, alice, "x", Delete, true, -1},
		{&Policy{}, anon, "x", Pull, false, -1},
	} {
		got := tc.p.Allowed(tc.id, tc.repo, tc.a)
		if got.Allowed != tc.want || got.Rule != tc.rule {
			t.Errorf("%+v %s %s: got %+v, want allowed=%v rule=%d", tc.id, tc.a, tc.repo, got, tc.want, tc.rule)
		}
	}
}

func TestParseScope(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want Scope
		err  bool
	}{
		{"repository:team-a/app:pull,push", Scope{"repository", "team-a/app", []string{"pull", "push"}}, false},
		{"repository:localhost:5000/app:pull", Scope{"repository", "localhost:5000/app", []string{"pull"}}, false},
		{"registry:catalog:*", Scope{"registry", "catalog", []string{"*"}}, false},
		{"repository:a:pull,pull,", Scope{"repository", "a", []string{"pull"}}, false},
		{"repository:a:", Scope{"repository", "a", nil}, false},
		{"repository:a", Scope{}, true},
		{"::pull", Scope{}, true},
		{"", Scope{}, true},
	} {
		got, err := ParseScope(tc.in)
		if (err != nil) != tc.err || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseScope(%q) = %+v, %v; want %+v, err=%v", tc.in, got, err, tc.want, tc.err)
		}
	}
	got := ParseScopes([]string{"repository:a:pull repository:b:push", "bad", "repository:c:pull"}, 2)
	if len(got) != 2 || got[0].Name != "a" || got[1].Name != "b" {
		t.Errorf("ParseScopes: %+v", got)
	}
}

func TestGrant(t *testing.T) {
	t.Parallel()
	p := &Policy{Rules: issueRules, AnonymousPull: true}
	want := []Scope{
		{"repository", "team-a/app", []string{"pull", "push", "delete"}},
		{"repository", "team-b/app", []string{"*"}},
		{"repository", "docker.io/internal/x", []string{"pull"}},
		{"registry", "catalog", []string{"*"}},
		{"other", "x", []string{"pull"}},
	}
	got := p.Grant(Identity{User: "alice"}, want)
	exp := []Scope{
		{"repository", "team-a/app", []string{"pull", "push", "delete"}},
		{"repository", "team-b/app", []string{"pull"}},
		{"registry", "catalog", []string{"*"}},
	}
	if !reflect.DeepEqual(got, exp) {
		t.Errorf("Grant(alice) = %+v, want %+v", got, exp)
	}
	if !Permits(got, "team-b/app", Pull) || Permits(got, "team-b/app", Push) || Permits(got, "team-c", Pull) {
		t.Errorf("Permits disagrees with the grant %+v", got)
	}
	if got := (&Policy{Rules: issueRules}).Grant(Identity{}, want); len(got) != 0 {
		t.Errorf("anonymous without anonymous_pull got %+v", got)
	}
}

// FuzzAccess checks globs and scopes on any input: no panic; a glob
// matches itself when it has no metacharacters; "**" under a base matches
// the base and anything below it; a parsed scope prints back to something
// that parses to the same scope; a grant never exceeds the request.
func FuzzAccess(f *testing.F) {
	f.Add("team-a/**", "team-a/app", "repository:team-a/app:pull,push")
	f.Add("a/*/c", "a/b/c", "registry:catalog:*")
	f.Add("[", "x", "::")
	f.Fuzz(func(t *testing.T, glob, repo, scope string) {
		m := Match(glob, repo)
		if ValidGlob(glob) == nil && !strings.ContainsAny(glob, "*?[\\") && m != (glob == repo) {
			t.Fatalf("Match(%q, %q) = %v", glob, repo, m)
		}
		if ValidGlob(repo) == nil && !strings.ContainsAny(repo, "*?[\\") {
			if !Match(repo+"/**", repo) || !Match(repo+"/**", repo+"/x") {
				t.Fatalf("%q/** does not match its base or below", repo)
			}
		}
		sc, err := ParseScope(scope)
		if err != nil {
			return
		}
		again, err := ParseScope(sc.String())
		if err != nil || again.Type != sc.Type || again.Name != sc.Name || strings.Join(again.Actions, ",") != strings.Join(sc.Actions, ",") {
			if !strings.Contains(strings.Join(sc.Actions, ""), " ") {
				t.Fatalf("%q: %+v prints as %q, which parses as %+v, %v", scope, sc, sc.String(), again, err)
			}
		}
		p := &Policy{Rules: []Rule{{Repos: []string{"**"}, Subjects: []string{"authenticated"}, Actions: []Action{Pull, Push}}}}
		for _, g := range p.Grant(Identity{User: "u"}, []Scope{sc}) {
			for _, a := range g.Actions {
				if a == "delete" || (!strings.Contains(scope, a) && !strings.Contains(scope, "*")) {
					t.Fatalf("%q granted %q", scope, a)
				}
			}
		}
	})
}
