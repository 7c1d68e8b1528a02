package cache

import (
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

const (
	hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	dg    = digest.Digest("sha256:" + hex64)
)

// TestKeyLayout pins the Badger key layout documented in layout.go: changing
// it silently would orphan every existing index.
func TestKeyLayout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"blob", key(kindBlob, dg.String()), "b/sha256:" + hex64},
		{"link", key(kindLink, "a/b", dg.String()), "l/a/b\x00sha256:" + hex64},
		{"manifest", key(kindManifest, "a/b", dg.String()), "m/a/b\x00sha256:" + hex64},
		{"tag", key(kindTag, "a/b", "latest"), "t/a/b\x00latest"},
		{"referrer", key(kindReferrer, "a/b", "sha256:s", "sha256:r"), "r/a/b\x00sha256:s\x00sha256:r"},
		{"upload", key(kindUpload, "0011"), "u/0011"},
		{"repo", key(kindRepo, "a/b"), "n/a/b"},
		{"access", key(kindAccess, dg.String()), "a/sha256:" + hex64},
		{"pull", key(kindPull, "library/alpine", "3.19"), "p/library/alpine\x003.19"},
		{"kind only", key(kindRepo), "n/"},
		{"tag prefix", prefix(kindTag, "a/b"), "t/a/b\x00"},
		{"referrer prefix", prefix(kindReferrer, "a", "sha256:s"), "r/a\x00sha256:s\x00"},
		{"repo prefix", prefix(kindRepo), "n/\x00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if string(tt.got) != tt.want {
				t.Errorf("key = %q, want %q", tt.got, tt.want)
			}
		})
	}
	// The prefixes are distinct one-byte kinds followed by '/'.
	seen := map[string]bool{}
	for _, k := range []string{kindBlob, kindLink, kindManifest, kindTag, kindReferrer, kindUpload, kindRepo, kindAccess, kindPull} {
		if len(k) != 2 || k[1] != '/' || seen[k] {
			t.Errorf("kind prefix %q is not a unique <letter>/", k)
		}
		seen[k] = true
	}
}

func TestPaths(t *testing.T) {
	t.Parallel()
	root := filepath.FromSlash("/data")
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"sha256 blob", blobPath(root, dg), "/data/blobs/sha256/01/" + hex64},
		{"sha512 blob", blobPath(root, digest.Digest("sha512:ff"+hex64[2:]+hex64)), "/data/blobs/sha512/ff/ff" + hex64[2:] + hex64},
		{"ingest", ingestPath(root, "00ff"), "/data/ingest/00ff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.got != filepath.FromSlash(tt.want) {
				t.Errorf("path = %q, want %q", tt.got, tt.want)
			}
		})
	}
}
