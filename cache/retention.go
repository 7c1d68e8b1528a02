package cache

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// RetentionRule says which tags and untagged manifests of the local
// repositories it matches the collector removes. Mirrored repositories are
// never matched: the cache limit (Options.MaxBytes) governs them.
//
// A tag is kept if it matches KeepTags, or is among the KeepLast most
// recently pushed, or was pulled or pushed within NotPulledFor. With
// neither KeepLast nor NotPulledFor set, the rule removes no tag.
type RetentionRule struct {
	// Repos are the rule's patterns, for reports; Match decides.
	Repos []string
	Match func(repo string) bool
	// KeepLast keeps the N most recently pushed tags; 0: not set.
	KeepLast int
	// KeepTags keeps every tag one of them matches.
	KeepTags []*regexp.Regexp
	// UntaggedAfter removes manifests no kept tag reaches (directly, as a
	// child of an index, or as a referrer of one) once they were pushed this
	// long ago; 0: untagged manifests are kept.
	UntaggedAfter time.Duration
	// NotPulledFor: see the type's comment; 0: not set.
	NotPulledFor time.Duration
}

// ruleFor is the first rule matching repo, or nil.
func ruleFor(rules []RetentionRule, repo string) *RetentionRule {
	for i := range rules {
		if rules[i].Match != nil && rules[i].Match(repo) {
			return &rules[i]
		}
	}
	return nil
}

func (r *RetentionRule) name() string { return strings.Join(r.Repos, ",") }

// expiredTags returns the tags of one repository the rule removes, with the
// reason, in name order. pulled holds the last pull of each tag (absent:
// never pulled since pulls were recorded).
func (r *RetentionRule) expiredTags(repo string, tags map[string]TagRecord, pulled map[string]time.Time, now time.Time) []GCTag {
	if r.KeepLast <= 0 && r.NotPulledFor <= 0 {
		return nil
	}
	names := make([]string, 0, len(tags))
	for t := range tags {
		names = append(names, t)
	}
	// Most recently pushed first; ties by name so that the plan is stable.
	slices.SortFunc(names, func(a, b string) int {
		if c := tags[b].FetchedAt.Compare(tags[a].FetchedAt); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	var out []GCTag
	for rank, t := range names {
		if slices.ContainsFunc(r.KeepTags, func(re *regexp.Regexp) bool { return re.MatchString(t) }) {
			continue
		}
		if r.KeepLast > 0 && rank < r.KeepLast {
			continue
		}
		used := tags[t].FetchedAt
		if p := pulled[t]; p.After(used) {
			used = p
		}
		if r.NotPulledFor > 0 && now.Sub(used) < r.NotPulledFor {
			continue
		}
		var why []string
		if r.KeepLast > 0 {
			why = append(why, fmt.Sprintf("not among the %d most recently pushed", r.KeepLast))
		}
		if r.NotPulledFor > 0 {
			why = append(why, "not pulled or pushed for "+r.NotPulledFor.String())
		}
		out = append(out, GCTag{Repo: repo, Tag: t, Digest: tags[t].Digest,
			Reason: strings.Join(why, " and ") + " (retention " + r.name() + ")"})
	}
	slices.SortFunc(out, func(a, b GCTag) int { return strings.Compare(a.Tag, b.Tag) })
	return out
}
