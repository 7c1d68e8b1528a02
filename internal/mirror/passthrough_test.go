package mirror

import (
	"bytes"
	"io"
	"testing"

	"github.com/berth-dev/berth/internal/registry"
	"github.com/opencontainers/go-digest"
)

// A pass-through stream ends cleanly only for the whole, verified blob:
// short, long or changed content is an error at the end, and the last byte
// is never handed over before the check.
func TestPassBlob(t *testing.T) {
	t.Parallel()
	blob := bytes.Repeat([]byte("0123456789"), 1000)
	d := digest.FromBytes(blob)
	changed := bytes.Clone(blob)
	changed[len(changed)-1] ^= 1
	cases := []struct {
		name    string
		d       digest.Digest
		size    int64
		stream  []byte
		wantErr bool
	}{
		{"whole", d, int64(len(blob)), blob, false},
		{"empty blob", digest.FromBytes(nil), 0, nil, false},
		{"short", d, int64(len(blob)), blob[:len(blob)-1], true},
		{"long", d, int64(len(blob)), append(bytes.Clone(blob), 'x'), true},
		{"last byte changed", d, int64(len(blob)), changed, true},
		{"empty blob with bytes", digest.FromBytes(nil), 0, []byte("x"), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := &passBlob{rc: io.NopCloser(bytes.NewReader(tc.stream)), v: tc.d.Verifier(), left: tc.size,
				desc: registry.Descriptor{Digest: tc.d, Size: tc.size}}
			var got []byte
			buf := make([]byte, 333)
			var err error
			for {
				var n int
				n, err = b.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					break
				}
			}
			if tc.wantErr {
				if err == io.EOF {
					t.Fatalf("clean end after %d bytes of a bad stream", len(got))
				}
				if int64(len(got)) >= tc.size && tc.size > 0 {
					t.Errorf("all %d bytes handed over before the error", len(got))
				}
				return
			}
			if err != io.EOF || !bytes.Equal(got, tc.stream) {
				t.Errorf("got %d bytes, %v; want the %d bytes and io.EOF", len(got), err, len(tc.stream))
			}
		})
	}
}
