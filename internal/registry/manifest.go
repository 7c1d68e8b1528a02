package registry

import (
	"encoding/json"
	"strings"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Manifest is a manifest parsed once: its descriptor and the references an
// implementation needs to check or record.
type Manifest struct {
	// Desc has the manifest's media type, digest and size, its artifact type
	// (or its config's media type) and its annotations.
	Desc Descriptor
	// Body is the manifest as pushed or fetched, byte for byte.
	Body []byte
	// Subject is the manifest this one refers to (OCI 1.1), if any.
	Subject *Descriptor
	// Blobs are the blobs it needs in its repository: its config and its
	// layers, except non-distributable ones (their bytes live elsewhere).
	Blobs []Descriptor
	// Children are the manifests an index lists.
	Children []Descriptor
}

// manifestFields is the union of the fields berth reads from any manifest kind.
type manifestFields struct {
	SchemaVersion int                  `json:"schemaVersion"`
	MediaType     string               `json:"mediaType"`
	ArtifactType  string               `json:"artifactType"`
	Config        *ocispec.Descriptor  `json:"config"`
	Layers        []ocispec.Descriptor `json:"layers"`
	Manifests     []ocispec.Descriptor `json:"manifests"`
	Subject       *ocispec.Descriptor  `json:"subject"`
	Annotations   map[string]string    `json:"annotations"`
	FSLayers      json.RawMessage      `json:"fsLayers"`
}

// ParseManifest validates a manifest body sent with contentType and
// describes it; d is its digest (computed by the caller, who knows which
// algorithm the client asked for). Errors are MANIFEST_INVALID.
func ParseManifest(contentType string, body []byte, d digest.Digest) (*Manifest, error) {
	var mf manifestFields
	if err := json.Unmarshal(body, &mf); err != nil {
		return nil, oci.Errorf(oci.CodeManifestInvalid, "manifest is not valid JSON: %v", err)
	}
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.TrimSpace(mt)
	if mt == "" || mt == "application/json" || mt == "application/octet-stream" {
		mt = mf.MediaType
	}
	switch {
	case mf.SchemaVersion == 1 || mt == oci.MediaTypeDockerSchema1 || mt == oci.MediaTypeDockerSchema1S || mf.FSLayers != nil:
		return nil, oci.Errorf(oci.CodeManifestInvalid, "Docker schema1 manifests are deprecated and not accepted; push with a current client (schema2 or OCI)")
	case mf.SchemaVersion != 2:
		return nil, oci.Errorf(oci.CodeManifestInvalid, "unsupported schemaVersion %d", mf.SchemaVersion)
	}
	if mt == "" {
		if mf.Manifests != nil {
			mt = oci.MediaTypeOCIIndex
		} else {
			mt = oci.MediaTypeOCIManifest
		}
	}
	if mf.MediaType != "" && mf.MediaType != mt {
		return nil, oci.Errorf(oci.CodeManifestInvalid, "mediaType %q does not match Content-Type %q", mf.MediaType, mt)
	}
	m := &Manifest{Body: body, Children: mf.Manifests,
		Desc: Descriptor{MediaType: mt, Digest: d, Size: int64(len(body)), ArtifactType: mf.ArtifactType, Annotations: mf.Annotations}}
	switch mt {
	case oci.MediaTypeOCIManifest, oci.MediaTypeDockerManifest:
		if mf.Config == nil {
			return nil, oci.Errorf(oci.CodeManifestInvalid, "image manifest has no config")
		}
		if m.Desc.ArtifactType == "" {
			m.Desc.ArtifactType = mf.Config.MediaType
		}
	}
	if mf.Config != nil {
		m.Blobs = append(m.Blobs, *mf.Config)
	}
	for _, l := range mf.Layers {
		if len(l.URLs) == 0 && !nonDistributable(l.MediaType) {
			m.Blobs = append(m.Blobs, l)
		}
	}
	for _, ref := range m.Blobs {
		if ref.Digest.Validate() != nil {
			return nil, oci.Errorf(oci.CodeManifestInvalid, "invalid digest %q in manifest", oci.Clip(string(ref.Digest)))
		}
	}
	for _, c := range m.Children {
		if c.Digest.Validate() != nil {
			return nil, oci.Errorf(oci.CodeManifestInvalid, "invalid digest %q in index", oci.Clip(string(c.Digest)))
		}
	}
	if mf.Subject != nil {
		if mf.Subject.Digest.Validate() != nil {
			return nil, oci.Errorf(oci.CodeManifestInvalid, "invalid subject digest")
		}
		m.Subject = mf.Subject
	}
	return m, nil
}

func nonDistributable(mt string) bool {
	switch mt {
	case "application/vnd.oci.image.layer.nondistributable.v1.tar",
		"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
		"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
		"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
		return true
	}
	return false
}
