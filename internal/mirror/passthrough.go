package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/berth-dev/berth/cache"
	"github.com/berth-dev/berth/internal/oci"
	"github.com/berth-dev/berth/internal/registry"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// uncachable reports whether a fill was refused because the store cannot
// take it (the disk is below its reserve, or the storage is unavailable):
// the client can still get the blob, streamed from the upstream.
func uncachable(err error) bool {
	return errors.Is(err, cache.ErrNoSpace) || errors.Is(err, cache.ErrStorageUnavailable)
}

// passThrough streams blob d from the upstream to one client without
// storing it: what a miss gets while the store refuses writes. Like a
// fill, the client never sees a clean end of content that fails its digest.
func (m *Mirror) passThrough(ctx context.Context, repo string, d digest.Digest, cause error) (registry.BlobReader, error) {
	rc, size, err := m.o.Client.GetBlob(ctx, repo, d, 0)
	if err != nil {
		m.met.mismatch("blob", err)
		return nil, m.upstreamErr(ctx, err, oci.CodeBlobUnknown)
	}
	zerolog.Ctx(ctx).Warn().Err(cause).Str("digest", d.String()).Str("repo", m.storeRepo(repo)).
		Str("request_id", registry.InfoFrom(ctx).RequestID).Msg("blob not cached: streaming it from upstream")
	m.met.result(ctx, "blob", "uncached")
	return &passBlob{rc: rc, v: d.Verifier(), left: size,
		desc: registry.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: size}}, nil
}

// passBlob is an upstream stream checked as it is read: it holds back the
// blob's last byte until the whole blob has arrived, is the size it should
// be and matches its digest.
type passBlob struct {
	rc   io.ReadCloser
	v    digest.Verifier
	left int64 // bytes not yet returned
	desc registry.Descriptor
	last [1]byte
}

func (b *passBlob) Descriptor() registry.Descriptor { return b.desc }
func (b *passBlob) Streaming() bool                 { return true }
func (b *passBlob) Close() error                    { return b.rc.Close() }

func (b *passBlob) Read(p []byte) (int, error) {
	switch {
	case len(p) == 0:
		return 0, nil
	case b.left > 1:
		if int64(len(p)) > b.left-1 {
			p = p[:b.left-1]
		}
		n, err := b.rc.Read(p)
		b.v.Write(p[:n])
		b.left -= int64(n)
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("%w: upstream ended %d bytes short of %s", io.ErrUnexpectedEOF, b.left, b.desc.Digest)
		}
		return n, err
	case b.left == 1:
		if _, err := io.ReadFull(b.rc, b.last[:]); err != nil {
			return 0, fmt.Errorf("%w: upstream ended 1 byte short of %s", io.ErrUnexpectedEOF, b.desc.Digest)
		}
		b.v.Write(b.last[:])
		if err := b.end(); err != nil {
			return 0, err
		}
		b.left = 0
		p[0] = b.last[0]
		return 1, nil
	}
	if b.desc.Size == 0 {
		if err := b.end(); err != nil {
			return 0, err
		}
	}
	return 0, io.EOF
}

// end checks there is nothing past the blob and that it verifies.
func (b *passBlob) end() error {
	var extra [1]byte
	if n, _ := io.ReadFull(b.rc, extra[:]); n > 0 {
		return fmt.Errorf("upstream sent more than %d bytes of %s", b.desc.Size, b.desc.Digest)
	}
	if !b.v.Verified() {
		return fmt.Errorf("upstream content of %s does not match its digest", b.desc.Digest)
	}
	return nil
}
