package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/bpffs"
)

var sweepOnce sync.Once

// BPFFS mounts a fresh bpffs instance on a temporary directory and returns
// its path; it is unmounted when the test ends. Each mount is its own
// instance, so pins made there are seen by no other test and never touch
// the machine's /sys/fs/bpf (which may not even be mounted).
//
// The directory's name carries the test process's pid: mounts left by a
// test binary that crashed (a crash runs no cleanup) are swept by the next
// one.
func BPFFS(tb testing.TB) string {
	tb.Helper()
	RequirePrivileged(tb)
	sweepOnce.Do(sweepBPFFS)
	dir, unmount, err := bpffs.MountPrivate(fmt.Sprintf("meshredirect-bpffs-%d-", os.Getpid()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := unmount(); err != nil {
			tb.Error(err)
		}
	})
	return dir
}

// sweepBPFFS unmounts and removes the bpffs directories of test processes
// that are gone.
func sweepBPFFS() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "meshredirect-bpffs-*"))
	for _, dir := range dirs {
		fields := strings.SplitN(strings.TrimPrefix(filepath.Base(dir), "meshredirect-bpffs-"), "-", 2)
		pid, err := strconv.Atoi(fields[0])
		if err != nil || pid == os.Getpid() || unix.Kill(pid, 0) == nil {
			continue
		}
		unix.Unmount(dir, unix.MNT_DETACH)
		os.Remove(dir)
	}
}
