package iox

import (
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"
)

// Every byte written reaches the hash, in order, whatever the sizes of the
// writes (larger than a buffer, one byte, a short last one).
func TestAsyncHash(t *testing.T) {
	t.Parallel()
	b := make([]byte, 3*hashBufSize+12345)
	for i := range b {
		b[i] = byte(i * 7 / 3)
	}
	h := sha256.New()
	a := NewAsyncHash(h)
	if _, err := io.CopyBuffer(a, iotest.HalfReader(bytes.NewReader(b[:hashBufSize+5])), make([]byte, 3*hashBufSize)); err != nil {
		t.Fatal(err)
	}
	for _, c := range b[hashBufSize+5 : hashBufSize+9] {
		a.Write([]byte{c})
	}
	if n, err := a.Write(b[hashBufSize+9:]); err != nil || n != len(b)-hashBufSize-9 {
		t.Fatalf("Write: %d, %v", n, err)
	}
	a.Close()
	a.Close()
	if want := sha256.Sum256(b); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Error("the hash did not see the bytes written")
	}
}

// A file written through Writeback holds what was written, after the
// offset it started at.
func TestWriteback(t *testing.T) {
	t.Parallel()
	f, err := os.Create(filepath.Join(t.TempDir(), "bundle"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("head"); err != nil {
		t.Fatal(err)
	}
	b := bytes.Repeat([]byte("0123456789abcdef"), (2*WritebackEvery+100)/16)
	w := Writeback(f)
	for p := b; len(p) > 0; { // in 1 MiB writes
		n := min(len(p), 1<<20)
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil || !bytes.Equal(got, append([]byte("head"), b...)) {
		t.Fatalf("file of %d bytes, want %d: %v", len(got), len(b)+4, err)
	}
	if wb := w.(*writeback); wb.flushed != 4+2*WritebackEvery {
		t.Errorf("writeback started up to %d, want %d", wb.flushed, 4+2*WritebackEvery)
	}
}
