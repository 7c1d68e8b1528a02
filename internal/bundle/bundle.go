// Package bundle reads and writes berth's bundles: an OCI image layout as a
// tar, streamed in one pass each way, and imports one into a cache.Store
// all or nothing.
//
// # Layout
//
//	oci-layout               {"imageLayoutVersion":"1.0.0"}, first
//	blobs/<alg>/<hex>        every blob once: manifests, configs, layers
//	index.json               last, so that a reader learns what the blobs
//	                         were for only once it has them all
//
// index.json lists each exported image's top manifest (or index) with the
// annotation org.opencontainers.image.ref.name set to its full reference
// (docker.io/library/busybox:latest; a repository local to berth is written
// bare, team/app:1), and each referrer (a manifest with a subject) as an
// entry of its own, named <repository>@<digest> and annotated
// vnd.berth.referrer=true. The index's own annotations say when the bundle
// was made (org.opencontainers.image.created), whether it leaves out blobs
// an earlier bundle carried (vnd.berth.since), and whether it keeps only
// some platforms (vnd.berth.platforms).
//
// Beside a bundle FILE, FILE.digests lists one digest a line: every blob
// that the other side holds once FILE (and the bundles it was made --since)
// is imported. export --since reads it, or a bundle's tar headers.
package bundle

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/berth-dev/berth/internal/iox"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Annotations berth writes.
const (
	// AnnotationRefName is the OCI annotation that names an image.
	AnnotationRefName = ocispec.AnnotationRefName
	// AnnotationCreated, on the index, is when the bundle was made (RFC 3339).
	AnnotationCreated = ocispec.AnnotationCreated
	// AnnotationReferrer marks an index entry that is a referrer of an image.
	AnnotationReferrer = "vnd.berth.referrer"
	// AnnotationSince, on the index, names the bundle this one was made
	// --since: blobs it carried are left out.
	AnnotationSince = "vnd.berth.since"
	// AnnotationPlatforms, on the index, lists the platforms kept
	// (os/arch,...); other children of an index are left out.
	AnnotationPlatforms = "vnd.berth.platforms"
)

// Sentinel errors; match them with errors.Is. A *DigestError wraps the
// ones about one blob.
var (
	// ErrNotBundle: the stream is not a tar holding an OCI image layout.
	ErrNotBundle = errors.New("not a bundle (an OCI image layout as a tar)")
	// ErrTruncated: the stream ended before index.json (an unfinished
	// export, or a file cut short).
	ErrTruncated = errors.New("bundle is truncated or incomplete")
	// ErrCorrupt: a blob's content does not match its digest or size.
	ErrCorrupt = errors.New("content does not match its digest")
	// ErrMissing: something a manifest references is neither in the bundle
	// nor already held.
	ErrMissing = errors.New("missing")
)

// DigestError is an error about one blob, naming it.
type DigestError struct {
	Digest digest.Digest
	Err    error
	Detail string // what went wrong, for the message
}

func (e *DigestError) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("%s: %v", e.Digest, e.Err)
	}
	return fmt.Sprintf("%s: %v: %s", e.Digest, e.Err, e.Detail)
}

func (e *DigestError) Unwrap() error { return e.Err }

// Options describe a bundle being written.
type Options struct {
	// Created stamps the bundle; zero is time.Now.
	Created time.Time
	// Since are the blobs the other side already has (see ReadDigests):
	// Need reports false for them, and the sidecar lists them too.
	Since map[digest.Digest]bool
	// SinceName names the base bundle in the index (vnd.berth.since).
	SinceName string
	// Platforms, when not empty, are the platforms kept of indexes.
	Platforms []string
}

// Writer streams a bundle: blobs as they come, index.json at Close. It
// never holds a blob in memory.
type Writer struct {
	tw      *tar.Writer
	opts    Options
	written map[digest.Digest]bool
	carried []digest.Digest
	bytes   int64
	entries []ocispec.Descriptor
	err     error // sticky: a failed write leaves the tar unusable
	buf     []byte
}

// NewWriter writes the start of a bundle (oci-layout) to w.
func NewWriter(w io.Writer, opts Options) (*Writer, error) {
	if opts.Created.IsZero() {
		opts.Created = time.Now()
	}
	opts.Created = opts.Created.UTC().Truncate(time.Second)
	bw := &Writer{tw: tar.NewWriter(w), opts: opts, written: map[digest.Digest]bool{}}
	layout, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err := bw.file(ocispec.ImageLayoutFile, int64(len(layout)), bytes.NewReader(layout)); err != nil {
		return nil, err
	}
	return bw, nil
}

// Created is the bundle's time stamp.
func (w *Writer) Created() time.Time { return w.opts.Created }

// Need reports whether blob d is still to be written: not written yet, and
// not among the blobs of Options.Since.
func (w *Writer) Need(d digest.Digest) bool { return !w.written[d] && !w.opts.Since[d] }

// AddBlob writes blob desc, read from r (exactly desc.Size bytes), checking
// its digest as it streams; a blob already written or in Since is read no
// further and skipped. A mismatch is an error that leaves the bundle
// unusable (the caller abandons it).
func (w *Writer) AddBlob(desc ocispec.Descriptor, r io.Reader) error {
	if w.err != nil {
		return w.err
	}
	if !w.Need(desc.Digest) {
		return nil
	}
	if err := desc.Digest.Validate(); err != nil {
		return &DigestError{Digest: desc.Digest, Err: ErrCorrupt, Detail: err.Error()}
	}
	v := desc.Digest.Verifier()
	h := iox.NewAsyncHash(v) // hashed while the next chunk is received and written
	name := "blobs/" + desc.Digest.Algorithm().String() + "/" + desc.Digest.Encoded()
	err := w.file(name, desc.Size, io.TeeReader(r, h))
	h.Close()
	if err != nil {
		return err
	}
	if !v.Verified() {
		w.err = &DigestError{Digest: desc.Digest, Err: ErrCorrupt, Detail: "the source sent other content"}
		return w.err
	}
	w.written[desc.Digest] = true
	w.carried = append(w.carried, desc.Digest)
	w.bytes += desc.Size
	return nil
}

// AddManifest is AddBlob for a manifest already in memory.
func (w *Writer) AddManifest(desc ocispec.Descriptor, body []byte) error {
	return w.AddBlob(desc, bytes.NewReader(body))
}

// AddEntry lists desc in index.json (once per digest and name).
func (w *Writer) AddEntry(desc ocispec.Descriptor) {
	for _, e := range w.entries {
		if e.Digest == desc.Digest && e.Annotations[AnnotationRefName] == desc.Annotations[AnnotationRefName] {
			return
		}
	}
	w.entries = append(w.entries, desc)
}

// Carried lists the blobs written, in order; Bytes is their total size.
func (w *Writer) Carried() []digest.Digest { return w.carried }

// Bytes is the total size of the blobs written.
func (w *Writer) Bytes() int64 { return w.bytes }

// Digests is what the sidecar lists: the blobs written and those of Since.
func (w *Writer) Digests() []digest.Digest {
	all := slices.Collect(maps.Keys(w.opts.Since))
	for _, d := range w.carried {
		if !w.opts.Since[d] {
			all = append(all, d)
		}
	}
	slices.Sort(all)
	return slices.Compact(all)
}

// Close writes index.json and ends the tar; it does not close the
// underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	ann := map[string]string{AnnotationCreated: w.opts.Created.Format(time.RFC3339)}
	if w.opts.SinceName != "" || len(w.opts.Since) > 0 {
		ann[AnnotationSince] = w.opts.SinceName
		if ann[AnnotationSince] == "" {
			ann[AnnotationSince] = "unnamed"
		}
	}
	if len(w.opts.Platforms) > 0 {
		ann[AnnotationPlatforms] = strings.Join(w.opts.Platforms, ",")
	}
	manifests := w.entries
	if manifests == nil {
		manifests = []ocispec.Descriptor{}
	}
	idx, err := json.MarshalIndent(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: manifests, Annotations: ann}, "", "  ")
	if err != nil {
		return err
	}
	if err := w.file(ocispec.ImageIndexFile, int64(len(idx)), bytes.NewReader(idx)); err != nil {
		return err
	}
	return w.tw.Close()
}

// file writes one tar entry of size bytes from r.
func (w *Writer) file(name string, size int64, r io.Reader) error {
	if w.err != nil {
		return w.err
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: w.opts.Created}
	if err := w.tw.WriteHeader(hdr); err != nil {
		w.err = err
		return err
	}
	if w.buf == nil {
		w.buf = make([]byte, 1<<20)
	}
	n, err := io.CopyBuffer(w.tw, io.LimitReader(r, size), w.buf)
	if err == nil && n < size {
		err = io.EOF
	}
	if err == io.EOF {
		err = fmt.Errorf("%s: the source ended after %d of %d bytes: %w", name, n, size, io.ErrUnexpectedEOF)
	}
	if err != nil {
		w.err = err
	}
	return err
}
