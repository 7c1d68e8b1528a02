package bucket

// # Layout
//
// Keys under the configured prefix (repository names contain "/", and no
// path element of a name starts with "_", so "/_" ends a name):
//
//	blobs/<alg>/<hex>                                  content, blobs and manifests alike; written once, verified
//	repos/<repo>/_links/<alg>/<hex>                    <repo> may read blob <digest> (body: its size, decimal)
//	repos/<repo>/_manifests/<alg>/<hex>                manifestRecord (JSON): media type, size, subject, artifact type
//	repos/<repo>/_tags/<tag>                           tagRecord (JSON): the digest; a PUT replaces it whole
//	repos/<repo>/_referrers/<alg>/<hex>/<alg>/<hex>    referrer descriptor (JSON) of subject, then referrer
//	catalog/<repo>                                     the repository exists (empty); listed for /v2/_catalog
//	uploads/<id>/info                                  uploadInfo (JSON): repository, started
//	uploads/<id>/<offset, 20 digits>                   one chunk of the upload, at that offset
//	gc/<alg>/<hex>                                     tombstone: a collection is removing blob <digest>
//
// A blob is written under blobs/ only after its digest was verified; a tag
// is written last, after everything it leads to, so a reader that finds a
// tag finds its manifest and blobs. Every key is built here, and pinned by
// a table test.

import (
	"fmt"

	"github.com/opencontainers/go-digest"
)

func blobKey(d digest.Digest) string { return "blobs/" + d.Algorithm().String() + "/" + d.Encoded() }

func repoKey(repo, kind string) string { return "repos/" + repo + "/_" + kind + "/" }

func digestPath(d digest.Digest) string { return d.Algorithm().String() + "/" + d.Encoded() }

func linkKey(repo string, d digest.Digest) string { return repoKey(repo, "links") + digestPath(d) }

func manifestKey(repo string, d digest.Digest) string {
	return repoKey(repo, "manifests") + digestPath(d)
}

func tagKey(repo, tag string) string { return repoKey(repo, "tags") + tag }

func referrersKey(repo string, subject digest.Digest) string {
	return repoKey(repo, "referrers") + digestPath(subject) + "/"
}

func referrerKey(repo string, subject, d digest.Digest) string {
	return referrersKey(repo, subject) + digestPath(d)
}

func catalogKey(repo string) string { return "catalog/" + repo }

func uploadKey(id string) string { return "uploads/" + id + "/" }

func uploadInfoKey(id string) string { return uploadKey(id) + "info" }

func chunkKey(id string, offset int64) string { return fmt.Sprintf("%s%020d", uploadKey(id), offset) }

func tombstoneKey(d digest.Digest) string { return "gc/" + digestPath(d) }
