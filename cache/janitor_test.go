package cache

import (
	"io"
	"testing"

	"github.com/berth-dev/berth/internal/testutil"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// The janitor leaves alone the staging file of a monolithic push that is
// still being received.
func TestCleanIngestKeepsBlobsBeingWritten(t *testing.T) {
	t.Parallel()
	s, err := Open(t.TempDir(), Options{Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	content := []byte("hello world, a monolithic push")
	d := digest.FromBytes(content)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.PutBlob("team/app", "", d, int64(len(content)), pr) }()
	if _, err := pw.Write(content[:10]); err != nil { // returns once PutBlob has read it: staging exists
		t.Fatal(err)
	}
	if err := s.CleanIngest(); err != nil {
		t.Fatal(err)
	}
	if _, err := pw.Write(content[10:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := testutil.Recv(t, done, "the push to end"); err != nil {
		t.Errorf("push failed after a janitor pass: %v", err)
	}
}
