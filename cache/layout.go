// Package cache owns berth's bytes on disk and their Badger index: blobs by
// digest (manifests included), per-repository links, manifests, tags with
// their freshness, uploads in progress, referrers, and the in-flight fills
// that stream a blob from an upstream to many readers at once.
//
// It knows nothing of HTTP; package proxy speaks the protocol and calls it.
//
// # Layout
//
// Files under the data directory:
//
//	<data>/blobs/<alg>/<hex[0:2]>/<hex>  immutable, verified content (manifests too)
//	<data>/ingest/<id>                   staging: pushes in progress and upstream fills
//	<data>/meta/                         the Badger index
//
// A file appears under blobs/ only by rename(2) from ingest/ after its size
// and digest were verified and it was fsynced, so a crash at any point leaves
// either the whole verified blob or nothing.
//
// Badger keys, one prefix a kind ("\x00" separates a repository name from
// what follows, since names never contain it):
//
//	b/<digest>                  blobRecord: size, when indexed; the blob file exists
//	a/<digest>                  accessRecord: last read, saved in batches (eviction's LRU order)
//	l/<repo>\x00<digest>        link: <repo> may read blob <digest>
//	m/<repo>\x00<digest>        manifestRecord: media type, size, subject, artifact type
//	t/<repo>\x00<tag>           tagRecord: digest and when it was fetched or pushed
//	r/<repo>\x00<subject>\x00<digest>  referrer descriptor (OCI 1.1 subject)
//	u/<id>                      uploadRecord: repository and committed offset
//	n/<repo>                    repoRecord: the repository exists (catalog)
//	p/<repo>\x00<tag>           pullRecord: last pull of a local tag, saved in batches (retention)
//
// Every key is built by one function, key, and pinned by a table test.
package cache

import (
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Key prefixes, one per kind of record.
const (
	kindBlob     = "b/"
	kindLink     = "l/"
	kindManifest = "m/"
	kindTag      = "t/"
	kindReferrer = "r/"
	kindUpload   = "u/"
	kindRepo     = "n/"
	kindAccess   = "a/"
	kindPull     = "p/"
)

const sep = "\x00"

// key builds a Badger key of the given kind from its parts.
func key(kind string, parts ...string) []byte { return []byte(keyString(kind, parts...)) }

// keyString is the one builder of keys, as a string: the hot cache looks
// keys up by string, so a warm request builds its key once and converts
// nothing.
func keyString(kind string, parts ...string) string {
	n := len(kind)
	for _, p := range parts {
		n += len(p) + 1
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(kind)
	for i, p := range parts {
		if i > 0 {
			b.WriteString(sep)
		}
		b.WriteString(p)
	}
	return b.String()
}

// prefix is key with a trailing separator, for iterating one repository's records.
func prefix(kind string, parts ...string) []byte {
	return append(key(kind, parts...), sep...)
}

// blobPath is where a verified blob lives.
func blobPath(root string, d digest.Digest) string {
	hex := d.Encoded()
	return filepath.Join(root, "blobs", d.Algorithm().String(), hex[:2], hex)
}

// ingestPath is the staging file of an upload or fill.
func ingestPath(root, id string) string {
	return filepath.Join(root, "ingest", id)
}
