package bundle

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"strings"
	"time"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxIndexSize bounds index.json, the one entry read into memory.
const maxIndexSize = 64 << 20

// Index is a bundle's index.json, with what its annotations say.
type Index struct {
	ocispec.Index
	Created   time.Time // zero if the bundle does not say
	Since     string    // the base bundle of an incremental one
	Platforms []string  // the platforms kept; empty: all
}

// BlobFunc receives each blob of a bundle as it streams. r yields exactly
// the blob's bytes and fails at its end (with a *DigestError wrapping
// ErrCorrupt) if they do not match the digest: a BlobFunc must read r to its
// end and trust nothing it got before that. What it leaves unread is read
// (and verified) by Read.
type BlobFunc func(d digest.Digest, size int64, r io.Reader) error

// Read reads a bundle from r in one pass, calling blob for each blob in
// order, and returns its index. A blob whose content does not match its
// name, a stream cut short or without index.json is an error naming what
// was wrong.
func Read(r io.Reader, blob BlobFunc) (*Index, error) { return read(r, blob, false) }

// ReadInto is Read for a BlobFunc that verifies, itself, every blob it
// reads to its end (cache.Store.Stage does): those are hashed once, there.
// A blob it returns from without reading is read and verified by ReadInto;
// one it reads only part of is an error.
func ReadInto(r io.Reader, blob BlobFunc) (*Index, error) { return read(r, blob, true) }

func read(r io.Reader, blob BlobFunc, calleeVerifies bool) (*Index, error) {
	tr := tar.NewReader(r)
	var idx *Index
	layout := false
	var last digest.Digest // the last blob begun, to say where a stream broke
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if !layout && last == "" {
				return nil, fmt.Errorf("%w: %v", ErrNotBundle, err)
			}
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, truncated(last)
			}
			if !layout {
				return nil, fmt.Errorf("%w: %v", ErrNotBundle, err)
			}
			return nil, fmt.Errorf("%w: %v", ErrTruncated, err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		switch {
		case hdr.Typeflag == tar.TypeDir:
			continue
		case name == ocispec.ImageLayoutFile:
			var l ocispec.ImageLayout
			if err := json.NewDecoder(io.LimitReader(tr, 4096)).Decode(&l); err != nil || l.Version == "" {
				return nil, fmt.Errorf("%w: unreadable oci-layout", ErrNotBundle)
			}
			layout = true
		case name == ocispec.ImageIndexFile:
			if hdr.Size > maxIndexSize {
				return nil, fmt.Errorf("%w: index.json of %d bytes", ErrNotBundle, hdr.Size)
			}
			if idx, err = readIndex(tr); err != nil {
				if errors.Is(err, io.ErrUnexpectedEOF) {
					return nil, fmt.Errorf("%w: index.json is cut short", ErrTruncated)
				}
				return nil, err
			}
		case strings.HasPrefix(name, "blobs/"):
			d, err := blobDigest(name)
			if err != nil {
				return nil, err
			}
			last = d
			vr := &verifier{r: tr, d: d, h: d.Algorithm().Hash(), left: hdr.Size, size: hdr.Size, skipHash: calleeVerifies}
			if blob != nil {
				if err := blob(d, hdr.Size, vr); err != nil {
					if errors.Is(err, io.ErrUnexpectedEOF) {
						return nil, truncated(d)
					}
					return nil, err
				}
			}
			switch {
			case !calleeVerifies:
			case vr.left == vr.size:
				vr.skipHash = false // not read: verified here
			case vr.left > 0:
				return nil, fmt.Errorf("blob %s: read only %d of %d bytes", d, vr.size-vr.left, vr.size)
			}
			if _, err := io.Copy(io.Discard, vr); err != nil {
				if errors.Is(err, io.ErrUnexpectedEOF) {
					return nil, truncated(d)
				}
				return nil, err
			}
		}
		// Anything else (a tool's extra file) is skipped.
	}
	if !layout {
		return nil, fmt.Errorf("%w: no oci-layout", ErrNotBundle)
	}
	if idx == nil {
		if last != "" {
			return nil, fmt.Errorf("%w: no index.json after the last blob (%s)", ErrTruncated, last)
		}
		return nil, fmt.Errorf("%w: no index.json", ErrTruncated)
	}
	return idx, nil
}

func truncated(last digest.Digest) error {
	if last == "" {
		return fmt.Errorf("%w: the stream ends in the middle of an entry", ErrTruncated)
	}
	return &DigestError{Digest: last, Err: ErrTruncated, Detail: "the stream ends inside this blob"}
}

// blobDigest is the digest a blobs/<alg>/<hex> path names.
func blobDigest(name string) (digest.Digest, error) {
	parts := strings.Split(name, "/")
	if len(parts) != 3 {
		return "", fmt.Errorf("%w: unexpected entry %q", ErrNotBundle, oci.Clip(name))
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(parts[1]), parts[2])
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("%w: entry %q is not a digest: %v", ErrNotBundle, oci.Clip(name), err)
	}
	return d, nil
}

func readIndex(r io.Reader) (*Index, error) {
	var idx Index
	if err := json.NewDecoder(r).Decode(&idx.Index); err != nil {
		return nil, fmt.Errorf("%w: index.json: %w", ErrNotBundle, err)
	}
	if idx.SchemaVersion != 2 {
		return nil, fmt.Errorf("%w: index.json has schemaVersion %d", ErrNotBundle, idx.SchemaVersion)
	}
	if c := idx.Annotations[AnnotationCreated]; c != "" {
		t, err := time.Parse(time.RFC3339, c)
		if err != nil {
			return nil, fmt.Errorf("%w: index.json: %s %q is not RFC 3339", ErrNotBundle, AnnotationCreated, oci.Clip(c))
		}
		idx.Created = t
	}
	idx.Since = idx.Annotations[AnnotationSince]
	if p := idx.Annotations[AnnotationPlatforms]; p != "" {
		idx.Platforms = strings.Split(p, ",")
	}
	for _, m := range idx.Manifests {
		if err := m.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("%w: index.json lists %q: %v", ErrNotBundle, oci.Clip(string(m.Digest)), err)
		}
	}
	return &idx, nil
}

// verifier reads one tar entry and checks size and digest at its end.
type verifier struct {
	r          io.Reader
	d          digest.Digest
	h          hash.Hash
	left, size int64
	err        error
	skipHash   bool // the reader's caller verifies the content itself
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if v.left == 0 {
		v.err = io.EOF
		if v.skipHash {
			return 0, v.err
		}
		if got := digest.NewDigest(v.d.Algorithm(), v.h); got != v.d {
			v.err = &DigestError{Digest: v.d, Err: ErrCorrupt, Detail: "its content hashes to " + got.String()}
		}
		return 0, v.err
	}
	if int64(len(p)) > v.left {
		p = p[:v.left]
	}
	n, err := v.r.Read(p)
	if !v.skipHash {
		v.h.Write(p[:n])
	}
	v.left -= int64(n)
	if err == io.EOF {
		if v.left > 0 {
			v.err = truncated(v.d)
			return n, v.err
		}
		err = nil
	}
	if err != nil {
		v.err = err
	}
	return n, err
}
