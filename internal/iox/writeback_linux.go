package iox

import (
	"os"

	"golang.org/x/sys/unix"
)

// StartWriteback asks the kernel to begin writing [off, off+n) of f to
// disk now, without waiting for it (sync_file_range SYNC_FILE_RANGE_WRITE).
// A blob's fsync at commit then finds most of it already on disk, instead
// of flushing all of it at once: the disk works while the bytes arrive, as
// it would not by itself until the dirty pages reach the kernel's
// background threshold (gigabytes on a large machine). Where the file
// system does not support it, nothing happens: the fsync at commit is what
// makes the blob durable either way.
func StartWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
