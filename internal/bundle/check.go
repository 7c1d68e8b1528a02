package bundle

import (
	"fmt"
	"strings"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Source is where a check finds content: the bundle's blobs and what the
// receiving side already holds.
type Source interface {
	// Has reports whether blob d is in the bundle or already held.
	Has(d digest.Digest) bool
	// Manifest returns the verified bytes of manifest d (Has is true).
	Manifest(d digest.Digest) ([]byte, error)
}

// Image is one entry of index.json, checked: everything it needs is in the
// bundle or already held.
type Image struct {
	// Name is the entry's reference as written: docker.io/library/busybox:latest,
	// team/app:1, or <repository>@<digest> for a referrer.
	Name     string
	Desc     ocispec.Descriptor
	Referrer bool
	// Manifests are the entry's manifest and, for an index, its children
	// present; children come before their index.
	Manifests []*registry.Manifest
	// Blobs are the configs and layers of those manifests.
	Blobs []ocispec.Descriptor
}

// maxManifestSize bounds a manifest read into memory while checking.
const maxManifestSize = 16 << 20

// Check checks that every entry of idx is complete in src: its manifest,
// its children (those of the kept platforms, when the bundle keeps only
// some) and their configs and layers. The first thing missing is an error
// naming its digest (and, for an incremental bundle, that its base is
// missing).
func Check(idx *Index, src Source) ([]*Image, error) {
	var out []*Image
	for _, e := range idx.Manifests {
		name := e.Annotations[AnnotationRefName]
		if name == "" {
			return nil, fmt.Errorf("%w: index.json lists %s without %s", ErrNotBundle, e.Digest, AnnotationRefName)
		}
		img := &Image{Name: name, Desc: e, Referrer: e.Annotations[AnnotationReferrer] == "true"}
		if err := walk(idx, src, img, e, true); err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, nil
}

func walk(idx *Index, src Source, img *Image, desc ocispec.Descriptor, top bool) error {
	if !src.Has(desc.Digest) {
		if !top && len(idx.Platforms) > 0 {
			return nil // a platform the bundle leaves out
		}
		return missing(idx, img, desc.Digest, "manifest")
	}
	body, err := src.Manifest(desc.Digest)
	if err != nil {
		return &DigestError{Digest: desc.Digest, Err: ErrMissing, Detail: err.Error()}
	}
	if int64(len(body)) != desc.Size && desc.Size != 0 {
		return &DigestError{Digest: desc.Digest, Err: ErrCorrupt, Detail: fmt.Sprintf("%s lists %d bytes, the manifest has %d", img.Name, desc.Size, len(body))}
	}
	if int64(len(body)) > maxManifestSize {
		return &DigestError{Digest: desc.Digest, Err: ErrCorrupt, Detail: fmt.Sprintf("a manifest of %d bytes", len(body))}
	}
	m, err := registry.ParseManifest(desc.MediaType, body, desc.Digest)
	if err != nil {
		return &DigestError{Digest: desc.Digest, Err: ErrCorrupt, Detail: "not a valid manifest: " + err.Error()}
	}
	for _, c := range m.Children {
		if err := walk(idx, src, img, c, false); err != nil {
			return err
		}
	}
	for _, b := range m.Blobs {
		if !src.Has(b.Digest) {
			return missing(idx, img, b.Digest, "blob")
		}
		img.Blobs = append(img.Blobs, b)
	}
	img.Manifests = append(img.Manifests, m)
	return nil
}

func missing(idx *Index, img *Image, d digest.Digest, what string) error {
	detail := fmt.Sprintf("%s of %s is neither in the bundle nor already held", what, oci.Clip(img.Name))
	if idx.Since != "" {
		detail += fmt.Sprintf("; this bundle is incremental (made --since %s): its base is missing, import that bundle first", idx.Since)
	}
	return &DigestError{Digest: d, Err: ErrMissing, Detail: detail}
}

// SplitRef splits a reference as a bundle names it into a repository name
// and a tag or a digest, without adding any default (team/app:1 stays
// team/app; docker.io/library/busybox:latest keeps its host).
func SplitRef(ref string) (name, tag string, d digest.Digest, err error) {
	name = ref
	if i := strings.IndexByte(name, '@'); i >= 0 {
		if d, err = oci.ParseDigest(name[i+1:]); err != nil {
			return "", "", "", fmt.Errorf("reference %q: invalid digest", oci.Clip(ref))
		}
		name = name[:i]
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name, tag = name[:i], name[i+1:]
		if !oci.ValidTag(tag) {
			return "", "", "", fmt.Errorf("reference %q: invalid tag", oci.Clip(ref))
		}
	}
	if name == "" {
		return "", "", "", fmt.Errorf("reference %q: no repository", oci.Clip(ref))
	}
	return name, tag, d, nil
}
