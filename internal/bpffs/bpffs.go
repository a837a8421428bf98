// Package bpffs mounts bpf filesystems: the one place that knows how, for
// the agent (which may mount the node's /sys/fs/bpf) and for the tests, the
// benchmark and the demo (which pin in private instances, so that the
// machine's /sys/fs/bpf is never touched).
package bpffs

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Mount mounts a new bpffs instance on dir, readable by root only.
func Mount(dir string) error {
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return nil
}

// Is reports whether dir is on a bpffs.
func Is(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// MountPrivate mounts a fresh bpffs instance on a new temporary directory
// whose name starts with prefix, and returns it with a function that
// unmounts and removes it. Each mount is its own instance: pins made there
// are seen by nobody else.
func MountPrivate(prefix string) (dir string, unmount func() error, err error) {
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, fmt.Errorf("create a directory for a bpffs: %w", err)
	}
	if err := Mount(dir); err != nil {
		os.Remove(dir)
		return "", nil, err
	}
	return dir, func() error {
		// Detached: a pinned object still open elsewhere must not keep
		// the mount, and with it the directory, in place.
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount bpffs %s: %w", dir, err)
		}
		return os.Remove(dir)
	}, nil
}
