package cache

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestChunkedUpload(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	content := []byte("0123456789abcdefghij")
	d := digest.FromBytes(content)

	u, err := st.NewUpload("a")
	if err != nil {
		t.Fatal(err)
	}
	if u.Repo != "a" || u.Offset != 0 || !validID(u.ID) {
		t.Fatalf("NewUpload = %+v", u)
	}
	if _, err := os.Stat(ingestPath(st.Root(), u.ID)); err != nil {
		t.Fatalf("staging file: %v", err)
	}
	if u, err = st.AppendUpload("a", u.ID, 0, bytes.NewReader(content[:5])); err != nil || u.Offset != 5 {
		t.Fatalf("AppendUpload = %+v, %v", u, err)
	}
	// Chunks that do not continue the upload are refused and change nothing.
	for _, start := range []int64{0, 4, 6, 100} {
		got, err := st.AppendUpload("a", u.ID, start, strings.NewReader("XXXXX"))
		if !errors.Is(err, ErrOffset) {
			t.Errorf("AppendUpload at %d = %v, want ErrOffset", start, err)
		}
		if got.Offset != 5 || got.ID != u.ID {
			t.Errorf("AppendUpload at %d reported %+v, want offset 5", start, got)
		}
	}
	// A chunk from another repository, or for an id the store never made, is unknown.
	if _, err := st.AppendUpload("b", u.ID, 5, strings.NewReader("x")); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("AppendUpload from another repo = %v, want ErrUploadUnknown", err)
	}
	if u, err = st.AppendUpload("a", u.ID, 5, bytes.NewReader(content[5:12])); err != nil || u.Offset != 12 {
		t.Fatalf("AppendUpload = %+v, %v", u, err)
	}
	// start < 0: append wherever the upload is.
	if u, err = st.AppendUpload("a", u.ID, -1, bytes.NewReader(content[12:15])); err != nil || u.Offset != 15 {
		t.Fatalf("AppendUpload(-1) = %+v, %v", u, err)
	}
	// A broken chunk is dropped whole.
	if got, err := st.AppendUpload("a", u.ID, 15, io.MultiReader(strings.NewReader("zz"), errReader{errBoom})); !errors.Is(err, errBoom) || got.Offset != 15 {
		t.Errorf("broken chunk = %+v, %v; want offset 15, errBoom", got, err)
	}
	if got, err := st.GetUpload("a", u.ID); err != nil || got.Offset != 15 {
		t.Errorf("GetUpload = %+v, %v", got, err)
	}
	// Wrong digest: refused, upload kept.
	if _, err := st.CommitUpload("a", u.ID, digest.FromString("other"), nil); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("CommitUpload(wrong digest) = %v, want ErrDigestMismatch", err)
	}
	if _, err := st.CommitUpload("a", u.ID, d, bytes.NewReader(content[15:16])); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("CommitUpload(short) = %v, want ErrDigestMismatch", err)
	}
	if got, err := st.GetUpload("a", u.ID); err != nil || got.Offset != 16 {
		t.Fatalf("GetUpload after mismatch = %+v, %v", got, err)
	}
	assertNoBlob(t, st, "a", d)
	n, err := st.CommitUpload("a", u.ID, d, bytes.NewReader(content[16:]))
	if err != nil || n != int64(len(content)) {
		t.Fatalf("CommitUpload = %d, %v", n, err)
	}
	assertBlob(t, st, "a", d, content)
	assertNoStaging(t, st)
	if _, err := st.GetUpload("a", u.ID); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("GetUpload after commit = %v, want ErrUploadUnknown", err)
	}
	if _, err := st.AppendUpload("a", u.ID, -1, strings.NewReader("x")); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("AppendUpload after commit = %v, want ErrUploadUnknown", err)
	}
}

func TestCommitUploadOfStoredBlob(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	content := []byte("dup")
	d := digest.FromBytes(content)
	if err := st.PutBlob("a", "", d, -1, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	u, err := st.NewUpload("b")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := st.CommitUpload("b", u.ID, d, bytes.NewReader(content)); err != nil || n != 3 {
		t.Fatalf("CommitUpload = %d, %v", n, err)
	}
	assertBlob(t, st, "b", d, content)
	assertNoStaging(t, st)
}

func TestUploadUnknownIDs(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	u, err := st.NewUpload("a")
	if err != nil {
		t.Fatal(err)
	}
	// Plant a file an escaping id could reach.
	if err := os.WriteFile(ingestPath(st.Root(), "..")+"/victim", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ids := []string{"", "..", "../victim", "../../etc/passwd", strings.Repeat("0", 32), strings.ToUpper(u.ID),
		u.ID + "0", u.ID[:31], u.ID[:31] + "/", u.ID[:31] + "g", "victim"}
	for _, id := range ids {
		if _, err := st.GetUpload("a", id); !errors.Is(err, ErrUploadUnknown) {
			t.Errorf("GetUpload(%q) = %v, want ErrUploadUnknown", id, err)
		}
		if _, err := st.AppendUpload("a", id, -1, strings.NewReader("x")); !errors.Is(err, ErrUploadUnknown) {
			t.Errorf("AppendUpload(%q) = %v, want ErrUploadUnknown", id, err)
		}
		if _, err := st.CommitUpload("a", id, dg, nil); !errors.Is(err, ErrUploadUnknown) {
			t.Errorf("CommitUpload(%q) = %v, want ErrUploadUnknown", id, err)
		}
		if err := st.CancelUpload("a", id); !errors.Is(err, ErrUploadUnknown) {
			t.Errorf("CancelUpload(%q) = %v, want ErrUploadUnknown", id, err)
		}
	}
	if b, err := os.ReadFile(ingestPath(st.Root(), "..") + "/victim"); err != nil || string(b) != "x" {
		t.Errorf("victim file = %q, %v", b, err)
	}
	// Cancel by another repository is refused; by the owner it removes the file.
	if err := st.CancelUpload("b", u.ID); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("CancelUpload from b = %v", err)
	}
	if err := st.CancelUpload("a", u.ID); err != nil {
		t.Fatal(err)
	}
	assertNoStaging(t, st)
	if _, err := st.GetUpload("a", u.ID); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("GetUpload after cancel = %v", err)
	}
}

func TestUploadSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	content := []byte("the quick brown fox jumps over the lazy dog")
	d := digest.FromBytes(content)

	st, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	u, err := st.NewUpload("team/app")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AppendUpload("team/app", u.ID, 0, bytes.NewReader(content[:10])); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AppendUpload("team/app", u.ID, 10, bytes.NewReader(content[10:20])); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = openStoreAt(t, dir)
	got, err := st.GetUpload("team/app", u.ID)
	if err != nil || got.Offset != 20 {
		t.Fatalf("GetUpload after reopen = %+v, %v; want offset 20", got, err)
	}
	if _, err := st.AppendUpload("team/app", u.ID, 10, bytes.NewReader(content[10:20])); !errors.Is(err, ErrOffset) {
		t.Errorf("replayed chunk after reopen = %v, want ErrOffset", err)
	}
	if got, err := st.AppendUpload("team/app", u.ID, 20, bytes.NewReader(content[20:30])); err != nil || got.Offset != 30 {
		t.Fatalf("AppendUpload after reopen = %+v, %v", got, err)
	}
	if n, err := st.CommitUpload("team/app", u.ID, d, bytes.NewReader(content[30:])); err != nil || n != int64(len(content)) {
		t.Fatalf("CommitUpload after reopen = %d, %v", n, err)
	}
	assertBlob(t, st, "team/app", d, content)
	assertNoStaging(t, st)
}

// TestUploadTornWrite simulates a crash between writing a chunk and recording
// it: the staging file holds more or fewer bytes than the record says.
func TestUploadTornWrite(t *testing.T) {
	t.Parallel()
	content := []byte("abcdefghij")
	d := digest.FromBytes(content)
	tests := []struct {
		name       string
		tamper     func(path string) error
		wantOffset int64
	}{
		{"extra bytes", func(p string) error {
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteString("GARBAGE")
			return errors.Join(err, f.Close())
		}, 4},
		{"lost bytes", func(p string) error { return os.Truncate(p, 2) }, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := openStore(t)
			u, err := st.NewUpload("a")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.AppendUpload("a", u.ID, 0, bytes.NewReader(content[:4])); err != nil {
				t.Fatal(err)
			}
			if err := tt.tamper(ingestPath(st.Root(), u.ID)); err != nil {
				t.Fatal(err)
			}
			got, err := st.GetUpload("a", u.ID)
			if err != nil || got.Offset != tt.wantOffset {
				t.Fatalf("GetUpload = %+v, %v; want offset %d", got, err, tt.wantOffset)
			}
			if _, err := st.AppendUpload("a", u.ID, tt.wantOffset, bytes.NewReader(content[tt.wantOffset:])); err != nil {
				t.Fatal(err)
			}
			if n, err := st.CommitUpload("a", u.ID, d, nil); err != nil || n != int64(len(content)) {
				t.Fatalf("CommitUpload = %d, %v", n, err)
			}
			assertBlob(t, st, "a", d, content)
		})
	}
}
