package bucket

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

// cutReader returns at most n bytes of r, then fails.
type cutReader struct {
	r io.Reader
	n int
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, errors.New("connection reset")
	}
	if len(p) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= n
	return n, err
}

func TestResume(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000)
	t.Run("cut streams continue where they ended", func(t *testing.T) {
		var offsets []int64
		rc, err := Resume(context.Background(), 3, func(_ context.Context, off int64) (io.ReadCloser, error) {
			offsets = append(offsets, off)
			return io.NopCloser(&cutReader{r: bytes.NewReader(data[off:]), n: 3000}), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("read %d bytes, not the %d written", len(got), len(data))
		}
		if want := []int64{0, 3000, 6000, 9000}; len(offsets) != len(want) || offsets[1] != 3000 || offsets[3] != 9000 {
			t.Errorf("opened at %v, want %v", offsets, want)
		}
	})
	t.Run("gives up after tries without progress", func(t *testing.T) {
		opens := 0
		rc, err := Resume(context.Background(), 3, func(_ context.Context, off int64) (io.ReadCloser, error) {
			opens++
			if off > 0 {
				return nil, errors.New("refused")
			}
			return io.NopCloser(&cutReader{r: bytes.NewReader(data), n: 10}), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(rc); err == nil {
			t.Fatal("a stream that cannot be resumed read to a clean end")
		}
		if opens != 3 {
			t.Errorf("%d opens, want 3 (the tries)", opens)
		}
	})
	t.Run("a failed first open is returned at once", func(t *testing.T) {
		_, err := Resume(context.Background(), 3, func(context.Context, int64) (io.ReadCloser, error) { return nil, ErrNotFound })
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("got %v", err)
		}
	})
}
