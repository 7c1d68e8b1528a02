package bucket

import (
	"context"
	"errors"
	"io"
)

// Resume returns a reader of a stream opened by open from offset 0 that,
// when the stream is cut, opens it again where it ended, up to tries times
// in a row without progress. The first open happens now, so an error
// (a missing object, a peer refusing) is returned at once.
func Resume(ctx context.Context, tries int, open func(ctx context.Context, offset int64) (io.ReadCloser, error)) (io.ReadCloser, error) {
	rc, err := open(ctx, 0)
	if err != nil {
		return nil, err
	}
	return &resumer{ctx: ctx, open: open, cur: rc, tries: tries}, nil
}

type resumer struct {
	ctx    context.Context
	open   func(ctx context.Context, offset int64) (io.ReadCloser, error)
	cur    io.ReadCloser
	off    int64
	tries  int
	failed int
}

func (r *resumer) Read(p []byte) (int, error) {
	for {
		if r.cur == nil {
			rc, err := r.open(r.ctx, r.off)
			if err != nil {
				r.failed++
				if r.failed >= r.tries || r.ctx.Err() != nil {
					return 0, err
				}
				continue
			}
			r.cur = rc
		}
		n, err := r.cur.Read(p)
		r.off += int64(n)
		if n > 0 {
			r.failed = 0
		}
		if err == nil || errors.Is(err, io.EOF) {
			return n, err
		}
		r.cur.Close()
		r.cur = nil
		r.failed++
		if r.failed >= r.tries || r.ctx.Err() != nil {
			return n, err
		}
		if n > 0 {
			return n, nil
		}
	}
}

func (r *resumer) Close() error {
	if r.cur == nil {
		return nil
	}
	return r.cur.Close()
}
