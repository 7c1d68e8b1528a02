package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/oci"
	"github.com/opencontainers/go-digest"
)

// fakeDisk makes the store see free bytes of free space (an atomic, so a
// test changes it while the store runs); every Free re-reads it.
type fakeDisk struct{ free atomic.Int64 }

func withFakeDisk(t *testing.T, st *Store, free int64) *fakeDisk {
	t.Helper()
	d := &fakeDisk{}
	d.free.Store(free)
	st.space.mu.Lock()
	st.space.statfs = func(string) (int64, error) { return d.free.Load(), nil }
	st.space.checked = time.Time{}
	st.space.mu.Unlock()
	return d
}

func (d *fakeDisk) set(st *Store, free int64) {
	st.space.mu.Lock()
	d.free.Store(free)
	st.space.checked = time.Time{}
	st.space.mu.Unlock()
}

func openReserved(t *testing.T, reserve int64) *Store {
	t.Helper()
	st, err := Open(t.TempDir(), Options{DiskReserve: reserve})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func assertNoSpace(t *testing.T, what string, err error) {
	t.Helper()
	var oe *oci.Error
	if !errors.Is(err, ErrNoSpace) || !errors.As(err, &oe) || oe.Status() != 507 || oe.Code != oci.CodeUnavailable {
		t.Fatalf("%s: got %v, want ErrNoSpace as a 507 UNAVAILABLE", what, err)
	}
}

func TestReserveRefusesPushesAndRecovers(t *testing.T) {
	t.Parallel()
	const reserve = 1 << 20
	st := openReserved(t, reserve)
	disk := withFakeDisk(t, st, reserve+100) // room for 100 bytes
	content := bytes.Repeat([]byte("x"), 1000)
	d := digest.FromBytes(content)

	assertNoSpace(t, "PutBlob past the reserve", st.PutBlob("team/a", "", d, int64(len(content)), bytes.NewReader(content)))
	assertNoStaging(t, st)
	assertNoBlob(t, st, "team/a", d)

	// A chunked upload: the start is admitted, a chunk past the reserve
	// ends the upload and removes its file.
	u, err := st.NewUpload("team/a")
	if err != nil {
		t.Fatalf("NewUpload with 100 bytes spare: %v", err)
	}
	_, err = st.AppendUpload("team/a", u.ID, 0, bytes.NewReader(content))
	assertNoSpace(t, "AppendUpload past the reserve", err)
	if _, err := st.GetUpload("team/a", u.ID); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("upload after running out of space: %v, want ErrUploadUnknown", err)
	}
	assertNoStaging(t, st)

	// Below the reserve nothing starts: uploads, fills, manifests.
	disk.set(st, reserve-1)
	if _, err := st.NewUpload("team/a"); err == nil {
		t.Fatal("NewUpload below the reserve succeeded")
	} else {
		assertNoSpace(t, "NewUpload", err)
	}
	_, _, err = st.Fill(d, int64(len(content)), "up/a", "up", func(context.Context) (io.ReadCloser, error) {
		t.Error("a refused fill fetched")
		return io.NopCloser(bytes.NewReader(content)), nil
	}, nil)
	assertNoSpace(t, "Fill", err)
	assertNoSpace(t, "Admit (a manifest push)", st.Admit(20))
	// A mirrored manifest (Store.PutManifest) may go down to half the reserve.
	body := []byte(`{"schemaVersion":2}`)
	if err := st.PutManifest("up/a", "up", ManifestRecord{Digest: digest.FromBytes(body), Size: int64(len(body))}, body, "v1", time.Now()); err != nil {
		t.Errorf("PutManifest of a mirrored manifest above half the reserve: %v", err)
	}
	disk.set(st, reserve/2)
	err = st.PutManifest("up/a", "up", ManifestRecord{Digest: digest.FromBytes(body), Size: int64(len(body))}, body, "v2", time.Now())
	assertNoSpace(t, "PutManifest at half the reserve", err)
	if _, err := st.Tag("up/a", "v2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("tag after a refused manifest: %v", err)
	}
	disk.set(st, reserve-1)
	if st.Space().Writable || st.Space().NoSpace == 0 {
		t.Errorf("Space() = %+v, want not writable with refusals counted", st.Space())
	}

	// Space freed: the same push works, no restart.
	disk.set(st, 10*reserve)
	if err := st.PutBlob("team/a", "", d, int64(len(content)), bytes.NewReader(content)); err != nil {
		t.Fatalf("PutBlob once space is freed: %v", err)
	}
	assertBlob(t, st, "team/a", d, content)
}

func TestIndexKeepsHalfTheReserve(t *testing.T) {
	t.Parallel()
	const reserve = 1 << 20
	st := openReserved(t, reserve)
	content := []byte("pushed before the disk filled")
	d := digest.FromBytes(content)
	if err := st.PutBlob("team/a", "", d, int64(len(content)), bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	disk := withFakeDisk(t, st, reserve*3/4)
	// Between half and the whole reserve, index-only writes go on.
	if err := st.Link("team/b", "", d); err != nil {
		t.Fatalf("Link above half the reserve: %v", err)
	}
	disk.set(st, reserve/2-1)
	assertNoSpace(t, "Link below half the reserve", st.Link("team/c", "", d))
	// Reads never stop.
	assertBlob(t, st, "team/a", d, content)
}

func TestFillStopsWhenTheDiskIsTakenUnderIt(t *testing.T) {
	t.Parallel()
	const reserve = 1 << 20
	st := openReserved(t, reserve)
	disk := withFakeDisk(t, st, 100*reserve)
	content := testContent(4 << 20)
	d := digest.FromBytes(content)
	release := make(chan struct{})
	f, _, err := st.Fill(d, int64(len(content)), "up/a", "up", gatedFetch(release, chunked(content, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.space.pending.Load(); got != int64(len(content)) {
		t.Errorf("pending after the fill started = %d, want its size %d", got, len(content))
	}
	disk.set(st, reserve/4) // another process filled the disk
	close(release)
	if err := f.Wait(t.Context()); !errors.Is(err, ErrNoSpace) || !errors.Is(err, ErrFillFailed) {
		t.Fatalf("fill on a disk taken under it: %v, want ErrFillFailed and ErrNoSpace", err)
	}
	assertNoBlob(t, st, "up/a", d)
	// The fill removes its file just after its waiters are told.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(10 * time.Second); len(files(t, st.Root(), "ingest")) > 0; <-tick.C {
		if time.Now().After(deadline) {
			assertNoStaging(t, st)
			break
		}
	}
	if got := st.space.pending.Load(); got != 0 {
		t.Errorf("pending after the fill ended = %d, want 0", got)
	}
}

func TestReplacedDataDirectoryRefusesWrites(t *testing.T) {
	t.Parallel()
	st := openReserved(t, -1)
	body := []byte(`{"schemaVersion":2}`)
	rec := ManifestRecord{Digest: digest.FromBytes(body), Size: int64(len(body))}
	if err := st.PutManifest("team/a", "", rec, body, "v1", time.Now()); err != nil {
		t.Fatal(err)
	}
	// rm -rf and mkdir: the path is there, the directory is another one.
	moved := st.Root() + ".old"
	if err := os.Rename(st.Root(), moved); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(moved) })
	if err := os.Mkdir(st.Root(), 0o755); err != nil {
		t.Fatal(err)
	}
	err := st.PutManifest("team/a", "", rec, body, "v2", time.Now())
	var oe *oci.Error
	if !errors.Is(err, ErrStorageUnavailable) || !errors.As(err, &oe) || oe.Status() != 503 {
		t.Fatalf("PutManifest into a replaced directory: %v, want ErrStorageUnavailable (503)", err)
	}
	if st.Healthy() == nil {
		t.Error("Healthy() = nil after the data directory was replaced")
	}
	// The probe cannot clear it: the index lives in the old directory.
	_ = st.space.probe()
	if st.Healthy() == nil {
		t.Error("the probe cleared a replaced data directory")
	}
}

func TestProbeClearsATransientFailure(t *testing.T) {
	t.Parallel()
	st := openReserved(t, -1)
	err := st.space.classify(&os.PathError{Op: "write", Path: "x", Err: syscall.EROFS})
	if !errors.Is(err, ErrStorageUnavailable) || st.Healthy() == nil {
		t.Fatalf("EROFS on a staging write: %v, Healthy %v; want the storage marked unavailable", err, st.Healthy())
	}
	if _, err := st.NewUpload("team/a"); !errors.Is(err, ErrStorageUnavailable) {
		t.Errorf("NewUpload while unavailable: %v", err)
	}
	if err := st.space.probe(); err != nil {
		t.Fatalf("probe of a working directory: %v", err)
	}
	if err := st.Healthy(); err != nil {
		t.Errorf("Healthy after a good probe: %v", err)
	}
	if _, err := st.NewUpload("team/a"); err != nil {
		t.Errorf("NewUpload after recovery: %v", err)
	}
}

func TestOpenRefusesAFullDisk(t *testing.T) {
	t.Parallel()
	free, err := statfsFree(t.TempDir())
	if err != nil {
		t.Skip("statfs:", err)
	}
	dir := t.TempDir()
	_, err = Open(dir, Options{DiskReserve: 4 * free})
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Open with a reserve of 4x the free space: %v, want ErrNoSpace", err)
	}
	if _, err := os.Stat(dir + "/meta/MANIFEST"); err == nil {
		t.Error("the index was created on a disk below half the reserve")
	}
}
