package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/testutil"
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

// stalledBody is a request body whose client stopped sending: it reports its
// first Read on reading, blocks until release is closed, then yields rest.
type stalledBody struct {
	reading, release chan struct{}
	once             sync.Once
	rest             []byte
}

func newStalledBody(rest []byte) *stalledBody {
	return &stalledBody{reading: make(chan struct{}), release: make(chan struct{}), rest: rest}
}

func (b *stalledBody) Read(p []byte) (int, error) {
	b.once.Do(func() { close(b.reading) })
	<-b.release
	if len(b.rest) == 0 {
		return 0, io.EOF
	}
	n := copy(p, b.rest)
	b.rest = b.rest[n:]
	return n, nil
}

// stall starts an append of body to upload id and returns once the store is
// reading the body; the append's result arrives on the channel.
func stall(t *testing.T, st *Store, repo, id string, start int64, body *stalledBody) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	t.Cleanup(func() { // before the store closes: no append left blocked
		select {
		case <-body.release:
		default:
			close(body.release)
		}
	})
	go func() {
		_, err := st.AppendUpload(repo, id, start, body)
		done <- err
	}()
	testutil.Recv(t, body.reading, "the append to start reading its body")
	return done
}

// promptly runs fn and fails the test unless it returns within a generous
// bound: it must not be waiting for a stalled request.
func promptly(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("%s waited for a stalled request", what)
	}
}

// Stalled request bodies hold only their own upload: pushes to other
// uploads go on, and a second request on a stalled upload fails at once.
func TestStalledAppendBlocksOnlyItsUpload(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	const stalled = 16
	type pending struct {
		id      string
		content []byte
		body    *stalledBody
		done    <-chan error
	}
	var ps []pending
	for i := range stalled {
		content := []byte(fmt.Sprintf("stalled upload %d: head|tail", i))
		head := bytes.IndexByte(content, '|')
		u, err := st.NewUpload("a")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.AppendUpload("a", u.ID, 0, bytes.NewReader(content[:head])); err != nil {
			t.Fatal(err)
		}
		body := newStalledBody(content[head:])
		ps = append(ps, pending{u.ID, content, body, stall(t, st, "a", u.ID, int64(head), body)})
	}

	// Another upload is pushed, chunked, and committed.
	content := []byte("an unrelated push goes on")
	d := digest.FromBytes(content)
	var appendErr, commitErr error
	promptly(t, "a push to another upload", func() {
		u, err := st.NewUpload("b")
		if err != nil {
			appendErr = err
			return
		}
		if _, appendErr = st.AppendUpload("b", u.ID, 0, bytes.NewReader(content[:5])); appendErr == nil {
			_, commitErr = st.CommitUpload("b", u.ID, d, bytes.NewReader(content[5:]))
		}
	})
	if appendErr != nil || commitErr != nil {
		t.Fatalf("push beside stalled uploads: append %v, commit %v", appendErr, commitErr)
	}
	assertBlob(t, st, "b", d, content)

	// A second request on a stalled upload is refused at once, with the
	// committed state; reading that state does not wait either.
	a := ps[0]
	head := int64(bytes.IndexByte(a.content, '|'))
	var (
		got                 Upload
		appendErr2, commErr error
		state               Upload
		stateErr            error
	)
	promptly(t, "a second request on a stalled upload", func() {
		got, appendErr2 = st.AppendUpload("a", a.id, head, strings.NewReader("racing chunk"))
		_, commErr = st.CommitUpload("a", a.id, digest.FromBytes(a.content), nil)
		state, stateErr = st.GetUpload("a", a.id)
	})
	if !errors.Is(appendErr2, ErrUploadBusy) || !errors.Is(appendErr2, ErrOffset) || got.Offset != head || got.ID != a.id {
		t.Errorf("second AppendUpload = %+v, %v; want offset %d, ErrUploadBusy (an ErrOffset)", got, appendErr2, head)
	}
	if !errors.Is(commErr, ErrUploadBusy) {
		t.Errorf("CommitUpload during an append = %v, want ErrUploadBusy", commErr)
	}
	if stateErr != nil || state.Offset != head {
		t.Errorf("GetUpload during an append = %+v, %v; want offset %d", state, stateErr, head)
	}
	// Busy is not a way to learn of another repository's upload.
	if _, err := st.AppendUpload("b", a.id, -1, strings.NewReader("x")); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("AppendUpload of a stalled upload from another repo = %v, want ErrUploadUnknown", err)
	}

	// Once the bodies arrive, every stalled upload completes intact.
	for _, p := range ps {
		close(p.body.release)
		if err := testutil.Recv(t, p.done, "a stalled append to end"); err != nil {
			t.Fatalf("stalled append: %v", err)
		}
		d := digest.FromBytes(p.content)
		if n, err := st.CommitUpload("a", p.id, d, nil); err != nil || n != int64(len(p.content)) {
			t.Fatalf("CommitUpload after the stall = %d, %v", n, err)
		}
		assertBlob(t, st, "a", d, p.content)
	}
	assertNoStaging(t, st)
	st.uploadMu.Lock()
	if n := len(st.uploading); n != 0 {
		t.Errorf("%d uploads still marked busy after every request ended", n)
	}
	st.uploadMu.Unlock()
}

// A client may cancel an upload whose earlier chunk is stalled: the cancel
// does not wait, and the stalled append then fails and records nothing.
func TestCancelDuringStalledAppend(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	u, err := st.NewUpload("a")
	if err != nil {
		t.Fatal(err)
	}
	body := newStalledBody([]byte("late bytes"))
	done := stall(t, st, "a", u.ID, 0, body)
	var cancelErr error
	promptly(t, "CancelUpload", func() { cancelErr = st.CancelUpload("a", u.ID) })
	if cancelErr != nil {
		t.Fatalf("CancelUpload = %v", cancelErr)
	}
	close(body.release)
	if err := testutil.Recv(t, done, "the stalled append to end"); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("append of a cancelled upload = %v, want ErrUploadUnknown", err)
	}
	if _, err := st.GetUpload("a", u.ID); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("GetUpload after cancel = %v, want ErrUploadUnknown", err)
	}
	assertNoStaging(t, st)
}
