// Package imageref parses image references as people write them
// ("busybox", "busybox:1.36", "ghcr.io/org/app:1.2",
// "registry.k8s.io/pause@sha256:...") into a registry, a repository and a
// tag or digest, with Docker's defaults: docker.io, library/ for one-element
// names, and the tag latest.
package imageref

import (
	"fmt"
	"strings"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/opencontainers/go-digest"
)

// DefaultRegistry is where a reference without a registry points.
const DefaultRegistry = "docker.io"

// Ref is a parsed image reference.
type Ref struct {
	Registry   string        // docker.io, ghcr.io, localhost:5000
	Repository string        // library/busybox, org/app
	Tag        string        // "" when only a digest was given
	Digest     digest.Digest // "" when none was given
}

// Parse parses s. A first element is a registry if it has a '.' or a ':',
// or is "localhost"; docker.io's aliases (index.docker.io,
// registry-1.docker.io) become docker.io. Without a tag or a digest the tag
// is latest.
func Parse(s string) (Ref, error) {
	var r Ref
	rest := s
	if i := strings.IndexByte(rest, '@'); i >= 0 {
		d, err := oci.ParseDigest(rest[i+1:])
		if err != nil {
			return Ref{}, fmt.Errorf("image reference %q: invalid digest", oci.Clip(s))
		}
		r.Digest, rest = d, rest[:i]
	}
	// A tag is after the last ':' that follows the last '/' (a registry's
	// port comes before a '/').
	if i := strings.LastIndexByte(rest, ':'); i > strings.LastIndexByte(rest, '/') {
		r.Tag, rest = rest[i+1:], rest[:i]
		if !oci.ValidTag(r.Tag) {
			return Ref{}, fmt.Errorf("image reference %q: invalid tag %q", oci.Clip(s), oci.Clip(r.Tag))
		}
	}
	r.Registry = DefaultRegistry
	if first, after, ok := strings.Cut(rest, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		r.Registry, rest = first, after
	}
	switch r.Registry {
	case "index.docker.io", "registry-1.docker.io":
		r.Registry = DefaultRegistry
	}
	if r.Registry == DefaultRegistry && !strings.Contains(rest, "/") {
		rest = "library/" + rest
	}
	if !oci.ValidName(rest) {
		return Ref{}, fmt.Errorf("image reference %q: invalid repository name %q", oci.Clip(s), oci.Clip(rest))
	}
	r.Repository = rest
	if r.Tag == "" && r.Digest == "" {
		r.Tag = "latest"
	}
	return r, nil
}

// Name is the repository's full name: docker.io/library/busybox.
func (r Ref) Name() string { return r.Registry + "/" + r.Repository }

// Reference is what a manifest request names: the digest if there is one,
// else the tag.
func (r Ref) Reference() string {
	if r.Digest != "" {
		return r.Digest.String()
	}
	return r.Tag
}

// String is the full reference: docker.io/library/busybox:latest, with
// @digest when there is one.
func (r Ref) String() string {
	s := r.Name()
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest.String()
	}
	return s
}
