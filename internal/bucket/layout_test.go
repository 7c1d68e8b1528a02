package bucket

import (
	"testing"

	"github.com/opencontainers/go-digest"
)

// The bucket's layout is a contract with every replica and with the data
// already written: a change here must be deliberate.
func TestLayout(t *testing.T) {
	d := digest.Digest("sha256:" + "ab" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd")
	s := digest.Digest("sha512:" + "cd" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab")
	for _, tc := range []struct{ got, want string }{
		{blobKey(d), "blobs/sha256/" + d.Encoded()},
		{linkKey("team/app", d), "repos/team/app/_links/sha256/" + d.Encoded()},
		{manifestKey("team/app", d), "repos/team/app/_manifests/sha256/" + d.Encoded()},
		{tagKey("team/app", "v1.2"), "repos/team/app/_tags/v1.2"},
		{referrersKey("team/app", s), "repos/team/app/_referrers/sha512/" + s.Encoded() + "/"},
		{referrerKey("team/app", s, d), "repos/team/app/_referrers/sha512/" + s.Encoded() + "/sha256/" + d.Encoded()},
		{catalogKey("team/app"), "catalog/team/app"},
		{uploadInfoKey("0f"), "uploads/0f/info"},
		{chunkKey("0f", 1<<20), "uploads/0f/00000000000001048576"},
	} {
		if tc.got != tc.want {
			t.Errorf("key %q, want %q", tc.got, tc.want)
		}
	}
	// Chunk keys sort by offset, which is how an upload is read back.
	if !(chunkKey("0f", 9) < chunkKey("0f", 10) && chunkKey("0f", 99999) < chunkKey("0f", 100000)) {
		t.Error("chunk keys do not sort by offset")
	}
	// A repository's tag list is a listing of its _tags/ prefix: it must
	// not reach into a repository whose name extends this one's.
	if p := repoKey("a", "tags"); len(tagKey("a/b", "x")) > len(p) && tagKey("a/b", "x")[:len(p)] == p {
		t.Error("repository a's tags include a/b's")
	}
}
