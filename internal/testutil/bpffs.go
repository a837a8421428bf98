package testutil

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// BPFFS mounts a fresh bpffs instance on a temporary directory and returns
// its path; it is unmounted when the test ends. Each mount is its own
// instance, so pins made there are seen by no other test and never touch
// the machine's /sys/fs/bpf (which may not even be mounted).
func BPFFS(tb testing.TB) string {
	tb.Helper()
	RequirePrivileged(tb)
	dir, err := os.MkdirTemp("", "meshredirect-bpffs-")
	if err != nil {
		tb.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(dir)
		tb.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmount bpffs %s: %v", dir, err)
		}
		os.Remove(dir)
	})
	return dir
}
