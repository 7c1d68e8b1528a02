package oci

import (
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Media types berth reads or writes.
const (
	MediaTypeOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeOCIIndex       = "application/vnd.oci.image.index.v1+json"
	MediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerSchema1  = "application/vnd.docker.distribution.manifest.v1+json"
	MediaTypeDockerSchema1S = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	MediaTypeEmptyJSON      = "application/vnd.oci.empty.v1+json"
)

// ManifestAccept is the Accept header value that asks a registry for every
// manifest kind berth understands.
var ManifestAccept = strings.Join([]string{MediaTypeOCIIndex, MediaTypeOCIManifest, MediaTypeDockerList, MediaTypeDockerManifest}, ", ")

// MaxNameLength bounds a repository name, as distribution does.
const MaxNameLength = 255

// ValidName reports whether name is a valid repository name: slash-separated
// lower-case components, at most MaxNameLength bytes. It rejects "..", empty
// components and anything that could escape a path.
func ValidName(name string) bool {
	if name == "" || len(name) > MaxNameLength {
		return false
	}
	for c := range strings.SplitSeq(name, "/") {
		if !validComponent(c) {
			return false
		}
	}
	return true
}

// validComponent matches the spec's path component grammar,
// [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*, byte by byte: every request's name
// goes through it, and a regexp costs more than the rest of a warm GET's
// parsing (FuzzValidName checks it against the regexp).
func validComponent(c string) bool {
	if c == "" || !alnum(c[0]) || !alnum(c[len(c)-1]) {
		return false
	}
	for i := 1; i < len(c); i++ {
		switch b := c[i]; {
		case alnum(b):
		case b == '.':
			if !alnum(c[i-1]) {
				return false // a separator follows another
			}
		case b == '_':
			if !alnum(c[i-1]) && !(c[i-1] == '_' && i >= 2 && alnum(c[i-2])) {
				return false // "_" or "__", no more
			}
		case b == '-':
			if !alnum(c[i-1]) && c[i-1] != '-' {
				return false // "-+" only after [a-z0-9] or "-"
			}
		default:
			return false
		}
	}
	return true
}

func alnum(b byte) bool { return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' }

// ValidTag reports whether s is a valid tag: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127},
// checked byte by byte for the same reason as validComponent.
func ValidTag(s string) bool {
	if s == "" || len(s) > 128 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !alnum(b) && !(b >= 'A' && b <= 'Z') && b != '_' && b != '.' && b != '-' {
			return false
		}
	}
	return true
}

// ParseDigest parses and validates a digest, accepting the algorithms berth
// stores (sha256 and sha512). Any failure is a DIGEST_INVALID *Error.
func ParseDigest(s string) (digest.Digest, error) {
	if isSHA256(s) { // the common case, without go-digest's regexp
		return digest.Digest(s), nil
	}
	d, err := digest.Parse(s)
	if err != nil {
		return "", Errorf(CodeDigestInvalid, "invalid digest %q", truncate(s))
	}
	if a := d.Algorithm(); a != digest.SHA256 && a != digest.SHA512 {
		return "", Errorf(CodeDigestInvalid, "unsupported digest algorithm %q", a)
	}
	return d, nil
}

// IsDigest reports whether a manifest reference looks like a digest rather
// than a tag (tags cannot contain ':').
func IsDigest(ref string) bool { return strings.Contains(ref, ":") }

// ParseRange parses a single HTTP byte range "bytes=a-b" or a Content-Range
// "a-b" (with or without the "bytes " prefix) into its inclusive bounds.
// It does not accept suffix or multi-part ranges; ok is false for anything
// malformed.
func ParseRange(s string) (start, end int64, ok bool) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "bytes=")
	s = strings.TrimPrefix(s, "bytes ")
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	a, b, found := strings.Cut(s, "-")
	if !found || a == "" || b == "" {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, false
	}
	return start, end, true
}

// Clip shortens s for an error message.
func Clip(s string) string { return truncate(s) }

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// ParseContentRange parses a response's Content-Range "bytes a-b/total"
// into inclusive bounds and the resource's total size, -1 when the server
// sent "*". The a-b part is read by ParseRange; ok is false for anything
// malformed or inconsistent (end at or past total).
func ParseContentRange(s string) (start, end, total int64, ok bool) {
	rng, tot, found := strings.Cut(strings.TrimSpace(s), "/")
	if !found || !strings.HasPrefix(rng, "bytes ") {
		return 0, 0, 0, false
	}
	if start, end, ok = ParseRange(rng); !ok {
		return 0, 0, 0, false
	}
	if tot == "*" {
		return start, end, -1, true
	}
	n, err := strconv.ParseUint(tot, 10, 63)
	if err != nil || end >= int64(n) {
		return 0, 0, 0, false
	}
	return start, end, int64(n), true
}

// ResolveRange resolves a request's single Range header against a resource
// of size bytes: "bytes=a-b" (end clamped to the last byte), "bytes=a-" and
// the suffix form "bytes=-n". ok is false for anything else, for multi-part
// ranges, and for a range that starts at or past size (416 territory).
func ResolveRange(h string, size int64) (start, end int64, ok bool) {
	spec, found := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !found || size <= 0 || strings.ContainsAny(spec, ", /") {
		return 0, 0, false
	}
	switch {
	case strings.HasPrefix(spec, "-"):
		n, err := strconv.ParseUint(spec[1:], 10, 63)
		if err != nil || n == 0 {
			return 0, 0, false
		}
		return max(0, size-int64(n)), size - 1, true
	case strings.HasSuffix(spec, "-"):
		n, err := strconv.ParseUint(spec[:len(spec)-1], 10, 63)
		if err != nil {
			return 0, 0, false
		}
		start, end = int64(n), size-1
	default:
		if start, end, ok = ParseRange(h); !ok {
			return 0, 0, false
		}
	}
	if start >= size {
		return 0, 0, false
	}
	return start, min(end, size-1), true
}

// isSHA256 reports whether s is "sha256:" and 64 lower-case hex digits, the
// canonical form go-digest accepts for sha256.
func isSHA256(s string) bool {
	hex, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(hex) != 64 {
		return false
	}
	for i := 0; i < len(hex); i++ {
		if c := hex[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
