package nsrun

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Open opens the network namespace at path (a bind mount, /proc/<pid>/ns/net)
// or, when path is empty, the calling thread's, and checks that the file is
// a network namespace. The caller closes it; while it is open, the
// namespace stays the same whatever happens to the path or to the threads
// of the process. It is the one way the product code opens a netns, for a
// netlink socket in it (netlink.Config.NetNS) or for Run.
func Open(path string) (*os.File, error) {
	var (
		f   *os.File
		err error
	)
	if path == "" {
		// The thread, not the process: a goroutine may run on a thread
		// that someone moved to another namespace (and locked).
		runtime.LockOSThread()
		f, err = os.Open("/proc/thread-self/ns/net")
		runtime.UnlockOSThread()
		if err != nil {
			return nil, fmt.Errorf("open netns of the current thread: %w", err)
		}
	} else if f, err = os.Open(path); err != nil {
		return nil, fmt.Errorf("open netns: %w", err)
	}
	if err := Check(f); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Check makes sure f is a network namespace.
func Check(f *os.File) error {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		return fmt.Errorf("open netns %s: %w", f.Name(), err)
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("open netns %s: not a namespace file", f.Name())
	}
	// NS_GET_NSTYPE is 4.11+; where it fails, nsfs is taken at its word.
	typ, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err == nil && typ != unix.CLONE_NEWNET {
		return fmt.Errorf("open netns %s: a namespace, but not a network namespace", f.Name())
	}
	return nil
}
