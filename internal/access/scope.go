package access

import (
	"fmt"
	"slices"
	"strings"
)

// Scope is one resource a token is asked for or grants, as in the Docker
// token specification: "repository:team-a/app:pull,push" or
// "registry:catalog:*".
type Scope struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// String is the scope as a client writes it.
func (s Scope) String() string {
	return s.Type + ":" + s.Name + ":" + strings.Join(s.Actions, ",")
}

// ParseScope reads one scope. The name may itself hold colons (a
// host:port prefix): the type ends at the first colon, the actions start
// after the last.
func ParseScope(s string) (Scope, error) {
	i := strings.IndexByte(s, ':')
	j := strings.LastIndexByte(s, ':')
	if i < 0 || i == j {
		return Scope{}, fmt.Errorf("scope %q: want TYPE:NAME:ACTIONS", clip(s))
	}
	sc := Scope{Type: s[:i], Name: s[i+1 : j]}
	if sc.Type == "" || sc.Name == "" {
		return Scope{}, fmt.Errorf("scope %q: want TYPE:NAME:ACTIONS", clip(s))
	}
	for _, a := range strings.Split(s[j+1:], ",") {
		if a != "" && !slices.Contains(sc.Actions, a) {
			sc.Actions = append(sc.Actions, a)
		}
	}
	return sc, nil
}

// ParseScopes reads the scope parameters of a token request: each may hold
// several scopes separated by spaces. Malformed ones are skipped (a token
// simply does not grant them); at most max are read.
func ParseScopes(params []string, max int) []Scope {
	var out []Scope
	for _, p := range params {
		for _, f := range strings.Fields(p) {
			if len(out) == max {
				return out
			}
			if sc, err := ParseScope(f); err == nil {
				out = append(out, sc)
			}
		}
	}
	return out
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Grant is the part of the requested scopes p allows id: for a
// repository, the actions the rules allow ("*" is pull, push and delete);
// "registry:catalog:*" to an authenticated client (the catalog lists only
// what the caller may pull; anonymous clients get none, as with Basic). Scopes that grant nothing are left out.
func (p *Policy) Grant(id Identity, want []Scope) []Scope {
	var out []Scope
	for _, sc := range want {
		var got []string
		switch sc.Type {
		case "repository":
			for _, a := range sc.Actions {
				acts, err := ParseAction(a)
				if err != nil {
					continue
				}
				for _, act := range acts {
					if !slices.Contains(got, string(act)) && p.Can(id, sc.Name, act) {
						got = append(got, string(act))
					}
				}
			}
		case "registry":
			if sc.Name == "catalog" && slices.Contains(sc.Actions, "*") && !id.Anonymous() {
				got = []string{"*"}
			}
		}
		if len(got) > 0 {
			out = append(out, Scope{Type: sc.Type, Name: sc.Name, Actions: got})
		}
	}
	return out
}

// Permits reports whether the granted scopes include action a on
// repository repo.
func Permits(granted []Scope, repo string, a Action) bool {
	for _, sc := range granted {
		if sc.Type == "repository" && sc.Name == repo && slices.Contains(sc.Actions, string(a)) {
			return true
		}
	}
	return false
}
