package bundle

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/opencontainers/go-digest"
)

// SidecarSuffix is appended to a bundle's file name to name its sidecar.
const SidecarSuffix = ".digests"

// WriteDigests writes the sidecar: one digest a line, after a comment line.
func WriteDigests(w io.Writer, bundleName string, ds []digest.Digest) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "# berth bundle %s: blobs held once it is imported (berth export --since)\n", bundleName)
	for _, d := range ds {
		bw.WriteString(d.String())
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// ReadDigests reads the set of blobs an earlier bundle leaves on the other
// side, from its sidecar or from the bundle itself (its tar headers only,
// skipping the content). Given a bundle whose sidecar lies beside it, the
// sidecar is read: it also lists what that bundle's own base carried.
func ReadDigests(file string) (map[digest.Digest]bool, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, 512)
	n, _ := io.ReadFull(f, head)
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if isTar(head[:n]) {
		if sf, err := os.Open(file + SidecarSuffix); err == nil {
			defer sf.Close()
			return readSidecar(sf, file+SidecarSuffix)
		}
		return tarDigests(f, file)
	}
	return readSidecar(f, file)
}

func isTar(head []byte) bool {
	return len(head) >= 512 && bytes.Equal(head[257:262], []byte("ustar"))
}

func readSidecar(r io.Reader, name string) (map[digest.Digest]bool, error) {
	set := map[digest.Digest]bool{}
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		t := strings.TrimSpace(sc.Text())
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		d, err := oci.ParseDigest(t)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %q is not a digest (want a bundle or its %s file)", name, line, oci.Clip(t), SidecarSuffix)
		}
		set[d] = true
	}
	return set, sc.Err()
}

// tarDigests lists the blobs of a bundle from its headers; the tar reader
// skips content by seeking where it can.
func tarDigests(r io.Reader, name string) (map[digest.Digest]bool, error) {
	set := map[digest.Digest]bool{}
	tr := tar.NewReader(r)
	index := false
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		p := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if p == "index.json" {
			index = true
		}
		if hdr.Typeflag != tar.TypeReg || !strings.HasPrefix(p, "blobs/") {
			continue
		}
		d, err := blobDigest(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		set[d] = true
	}
	if !index {
		return nil, fmt.Errorf("%s: %w: no index.json", name, ErrTruncated)
	}
	return set, nil
}
