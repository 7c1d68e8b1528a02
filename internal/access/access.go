// Package access decides who may do what to which repository: an ordered
// list of rules (repository globs, subjects, actions; the first rule whose
// globs and subjects match decides), and the Docker token scopes clients
// ask for ("repository:team-a/app:pull,push").
package access

import (
	"fmt"
	"path"
	"slices"
	"strings"
)

// Action is what a request does to a repository.
type Action string

// The actions rules grant.
const (
	Pull   Action = "pull"
	Push   Action = "push"
	Delete Action = "delete"
)

// ParseAction reads pull, push or delete ("*" is all three, as in token
// scopes).
func ParseAction(s string) ([]Action, error) {
	switch s {
	case "pull", "push", "delete":
		return []Action{Action(s)}, nil
	case "*":
		return []Action{Pull, Push, Delete}, nil
	}
	return nil, fmt.Errorf("%q is not an action (pull, push or delete)", s)
}

// Identity is who a request comes from. The zero Identity is anonymous.
type Identity struct {
	User   string   // "" for anonymous
	Groups []string // group names, without the "group:" prefix
}

// Anonymous reports whether id carries no user.
func (id Identity) Anonymous() bool { return id.User == "" }

// Subjects in rules besides user names.
const (
	SubjectAuthenticated = "authenticated"
	SubjectAnonymous     = "anonymous"
	groupPrefix          = "group:"
)

// Rule grants actions on repositories matching Repos to Subjects.
type Rule struct {
	Repos    []string // globs: path.Match per element, "**" as the last element matches one or more
	Subjects []string // user names, "group:NAME", "authenticated", "anonymous"
	Actions  []Action // none: the rule denies everything it matches
}

// Validate checks a rule's globs, subjects and actions, naming the first
// that is wrong.
func (r Rule) Validate() error {
	if len(r.Repos) == 0 {
		return fmt.Errorf("repos: at least one glob (team-a/**)")
	}
	for _, g := range r.Repos {
		if err := ValidGlob(g); err != nil {
			return fmt.Errorf("repos: %w", err)
		}
	}
	if len(r.Subjects) == 0 {
		return fmt.Errorf("subjects: at least one (a user, group:NAME, authenticated or anonymous)")
	}
	for _, s := range r.Subjects {
		if s == "" || s == groupPrefix || strings.ContainsAny(s, " \t") {
			return fmt.Errorf("subjects: %q is not a user, group:NAME, authenticated or anonymous", s)
		}
	}
	return nil // no actions: a rule that denies what it matches
}

// ValidGlob reports why g is not a repository glob, or nil.
func ValidGlob(g string) error {
	if g == "" || strings.HasPrefix(g, "/") || strings.HasSuffix(g, "/") || strings.Contains(g, "//") {
		return fmt.Errorf("%q is not a repository glob such as team-a/** or team-a/*", g)
	}
	for i, el := range strings.Split(g, "/") {
		if strings.Contains(el, "**") && (el != "**" || i != strings.Count(g, "/")) {
			return fmt.Errorf("%q: ** is only allowed as the last element", g)
		}
		if _, err := path.Match(el, ""); err != nil {
			return fmt.Errorf("%q: %w", g, err)
		}
	}
	return nil
}

// Match reports whether repo matches glob g: each element as path.Match,
// and a last element "**" matching one or more further elements or none
// ("team-a/**" matches team-a, team-a/app and team-a/x/y).
func Match(g, repo string) bool {
	if g == "**" {
		return true
	}
	base, deep := strings.CutSuffix(g, "/**")
	n := strings.Count(base, "/") + 1
	if strings.Count(repo, "/")+1 < n {
		return false
	}
	// Compare the first n elements of repo with base, element by element
	// (path.Match's * does not cross a slash, so matching the prefix whole
	// is the same).
	prefix, more := repo, false
	if i := nthSlash(repo, n); i >= 0 {
		prefix, more = repo[:i], true
	}
	if ok, _ := path.Match(base, prefix); !ok {
		return false
	}
	return !more || deep
}

// nthSlash is the index of the n-th slash of s, or -1.
func nthSlash(s string, n int) int {
	for i := range len(s) {
		if s[i] == '/' {
			n--
			if n == 0 {
				return i
			}
		}
	}
	return -1
}

// Policy is an ordered list of rules and what happens when none matches.
// Without rules (no access: key) it is berth's behaviour before rules: an
// authenticated client may do anything, an anonymous one pull if
// AnonymousPull.
type Policy struct {
	Rules []Rule
	// AnonymousPull lets anonymous clients pull where no rule matches them.
	// Off, anonymous clients are refused everything, whatever the rules.
	AnonymousPull bool
}

// Decision is the outcome of Allowed, with the rule that decided (-1: none
// matched).
type Decision struct {
	Allowed bool
	Rule    int
}

// Allowed reports whether id may do a to repo. The first rule whose repos
// and subjects match decides; with none, a pull is allowed to an
// authenticated client (and an anonymous one if AnonymousPull) and a push
// or delete is denied. Mirrored repositories are read-only elsewhere
// (route wraps every upstream in registry.ReadOnly): a rule cannot make
// them writable, only restrict who pulls.
func (p *Policy) Allowed(id Identity, repo string, a Action) Decision {
	if id.Anonymous() && !p.AnonymousPull {
		return Decision{Rule: -1}
	}
	if len(p.Rules) == 0 {
		return Decision{Allowed: !id.Anonymous() || a == Pull, Rule: -1}
	}
	for i, r := range p.Rules {
		if r.matches(id, repo) {
			return Decision{Allowed: slices.Contains(r.Actions, a), Rule: i}
		}
	}
	return Decision{Allowed: a == Pull, Rule: -1}
}

// Can is Allowed(...).Allowed.
func (p *Policy) Can(id Identity, repo string, a Action) bool { return p.Allowed(id, repo, a).Allowed }

func (r Rule) matches(id Identity, repo string) bool {
	return slices.ContainsFunc(r.Subjects, id.is) && slices.ContainsFunc(r.Repos, func(g string) bool { return Match(g, repo) })
}

// is reports whether subject s names id.
func (id Identity) is(s string) bool {
	switch {
	case s == SubjectAnonymous:
		return id.Anonymous()
	case s == SubjectAuthenticated:
		return !id.Anonymous()
	case strings.HasPrefix(s, groupPrefix):
		return !id.Anonymous() && slices.Contains(id.Groups, s[len(groupPrefix):])
	}
	return !id.Anonymous() && s == id.User
}
