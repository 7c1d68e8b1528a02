package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/opencontainers/go-digest"

	"github.com/berth-dev/berth/internal/oci"
)

// blobRequest builds the request for a blob HEAD or GET.
func (c *Client) blobRequest(method, repo string, d digest.Digest) (*request, error) {
	op := method + " blob " + repo + "@" + d.String()
	if err := c.checkRepo(op, repo); err != nil {
		return nil, err
	}
	if _, err := c.checkDigest(op, d.String()); err != nil {
		return nil, err
	}
	return &request{
		op:     op,
		method: method,
		path:   "/v2/" + repo + "/blobs/" + d.String(),
		scope:  pullScope(repo),
	}, nil
}

// HeadBlob returns the size (and Content-Type) of a blob without downloading
// it.
func (c *Client) HeadBlob(ctx context.Context, repo string, d digest.Digest) (Descriptor, error) {
	r, err := c.blobRequest(http.MethodHead, repo, d)
	if err != nil {
		return Descriptor{}, err
	}
	ctx, cancel := c.withOperationDeadline(ctx)
	defer cancel()
	resp, err := c.do(ctx, r)
	if err != nil {
		return Descriptor{}, err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Descriptor{}, &Error{Upstream: c.name, Op: r.op, Status: resp.StatusCode, Kind: ErrUnexpectedResponse}
	}
	if resp.ContentLength < 0 {
		return Descriptor{}, c.newError(r.op, ErrUnexpectedResponse, "no Content-Length", nil)
	}
	if hd := resp.Header.Get("Docker-Content-Digest"); hd != "" && hd != d.String() {
		return Descriptor{}, c.newError(r.op, ErrDigestMismatch, "upstream reports digest "+sanitize(hd), nil)
	}
	mt := mediaType(resp.Header)
	if mt == "" {
		mt = "application/octet-stream"
	}
	return Descriptor{MediaType: mt, Digest: d, Size: resp.ContentLength}, nil
}

// GetBlob streams a blob starting at offset (sending "Range: bytes=offset-"
// when offset > 0). size is the full blob size, so the reader yields
// size-offset bytes.
//
// The returned reader resumes transparently with a Range request from where
// it stopped if the stream breaks (connection error, a body slower than
// Config.MinStreamRate, or an EOF before size bytes), up to Config.Retries
// resumptions in total, and returns an error wrapping ErrUnavailable if it
// still cannot finish. It never
// returns more than size-offset bytes, nor io.EOF before them. It does not
// verify the digest: the caller hashes what it stores.
func (c *Client) GetBlob(ctx context.Context, repo string, d digest.Digest, offset int64) (rc io.ReadCloser, size int64, err error) {
	r, err := c.blobRequest(http.MethodGet, repo, d)
	if err != nil {
		return nil, 0, err
	}
	if offset < 0 {
		return nil, 0, c.newError(r.op, ErrInvalidArgument, fmt.Sprintf("negative offset %d", offset), nil)
	}
	body, size, err := c.openBlob(ctx, r, repo, d, offset, -1)
	if err != nil {
		return nil, 0, err
	}
	return &blobReader{c: c, ctx: ctx, req: r, repo: repo, dgst: d, body: body, pos: offset, size: size}, size, nil
}

// openBlob sends r (a GET of blob d in repo) for the bytes from offset on and returns a
// body positioned at offset plus the blob's full size. knownSize is the
// expected size (-1 if unknown); a mismatch is an error.
func (c *Client) openBlob(ctx context.Context, r *request, repo string, d digest.Digest, offset, knownSize int64) (io.ReadCloser, int64, error) {
	rr := *r
	if offset > 0 {
		rr.header = http.Header{"Range": {"bytes=" + strconv.FormatInt(offset, 10) + "-"}}
	}
	resp, err := c.do(ctx, &rr)
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.Status == http.StatusRequestedRangeNotSatisfiable {
			e.Kind = ErrInvalidArgument
			e.Message = fmt.Sprintf("offset %d is beyond the end of the blob", offset)
		}
		return nil, 0, err
	}
	fail := func(msg string) (io.ReadCloser, int64, error) {
		_ = resp.Body.Close()
		return nil, 0, &Error{Upstream: c.name, Op: r.op, Status: resp.StatusCode, Message: msg, Kind: ErrUnexpectedResponse}
	}

	var size int64
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		start, end, total, ok := oci.ParseContentRange(cr)
		if !ok {
			return fail("invalid Content-Range " + strconv.Quote(sanitize(cr)))
		}
		if start != offset || (total >= 0 && end != total-1) {
			return fail(fmt.Sprintf("Content-Range %d-%d does not match requested offset %d", start, end, offset))
		}
		size = total
		if size < 0 {
			size = knownSize
		}
	case http.StatusOK:
		size = resp.ContentLength
		if size < 0 {
			size = knownSize
		}
		if offset > 0 {
			// The upstream ignored our Range header: skip what we have.
			if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
				_ = resp.Body.Close()
				return nil, 0, c.bodyError(ctx, r.op, err)
			}
		}
	default:
		return fail("unexpected status for blob download")
	}
	if size < 0 {
		// Chunked response without a total: ask for the size.
		desc, err := c.HeadBlob(ctx, repo, d)
		if err != nil {
			_ = resp.Body.Close()
			return nil, 0, err
		}
		size = desc.Size
	}
	if knownSize >= 0 && size != knownSize {
		return fail(fmt.Sprintf("blob size changed from %d to %d", knownSize, size))
	}
	if offset > size {
		return fail(fmt.Sprintf("offset %d is beyond the blob size %d", offset, size))
	}
	return resp.Body, size, nil
}

// blobReader is the resuming reader returned by GetBlob.
type blobReader struct {
	c       *Client
	ctx     context.Context
	req     *request
	repo    string
	dgst    digest.Digest
	body    io.ReadCloser // current response body; nil between attempts
	pos     int64         // absolute offset of the next byte
	size    int64         // full blob size
	resumes int           // resumptions done so far
	cause   error         // why the last stream broke
	err     error         // sticky terminal error
	closed  bool
}

// Read implements io.Reader.
func (b *blobReader) Read(p []byte) (int, error) {
	switch {
	case b.closed:
		return 0, errString("read on closed blob reader")
	case b.err != nil:
		return 0, b.err
	case b.pos >= b.size:
		return 0, io.EOF
	case len(p) == 0:
		return 0, nil
	}
	if rem := b.size - b.pos; int64(len(p)) > rem {
		p = p[:rem] // never hand out more than size bytes
	}
	for {
		if b.body == nil {
			if err := b.resume(); err != nil {
				b.err = err
				return 0, err
			}
		}
		n, err := b.body.Read(p)
		b.pos += int64(n)
		if b.pos >= b.size {
			// Done; extra bytes the upstream may have sent are ignored.
			_ = b.body.Close()
			b.body = nil
			return n, nil
		}
		if err == nil {
			if n > 0 {
				return n, nil
			}
			continue
		}
		// The stream ended or broke before size bytes.
		_ = b.body.Close()
		b.body = nil
		if b.ctx.Err() != nil {
			b.err = b.c.ctxError(b.req.op, b.ctx)
			return n, nil // report the error on the next call, after the data
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		b.cause = err
		if n > 0 {
			return n, nil // resume on the next call
		}
	}
}

// resume re-requests the rest of the blob from b.pos. A resumption whose
// request fails as unavailable (including a stream that breaks while
// skipping bytes of a 200 answer) uses up another resumption.
func (b *blobReader) resume() error {
	for {
		if b.resumes >= b.c.retries {
			return b.c.newError(b.req.op, ErrUnavailable,
				fmt.Sprintf("stream broken at byte %d of %d after %d resumptions", b.pos, b.size, b.resumes), b.cause)
		}
		b.resumes++
		b.c.log.Debug().Str("upstream", b.c.name).Str("op", b.req.op).Int64("offset", b.pos).
			Int64("size", b.size).Int("resume", b.resumes).AnErr("cause", b.cause).Msg("resuming blob download")
		body, _, err := b.c.openBlob(b.ctx, b.req, b.repo, b.dgst, b.pos, b.size)
		if err == nil {
			b.body = body
			return nil
		}
		if !errors.Is(err, ErrUnavailable) || b.ctx.Err() != nil {
			return err
		}
		b.cause = err
	}
}

// Close implements io.Closer.
func (b *blobReader) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	if b.body != nil {
		err := b.body.Close()
		b.body = nil
		return err
	}
	return nil
}
