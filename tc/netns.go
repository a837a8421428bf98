package tc

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/nsrun"
)

// netnsRef is the network namespace a Manager works in, held open so that
// it stays the same namespace for the Manager's life, whatever happens to
// the path it was opened from or to the threads of the process.
type netnsRef struct {
	file *os.File
	dev  uint64
	ino  uint64
	// id names the namespace in pin names: "nsc<cookie>", or "nsi<inode>"
	// on kernels without SO_NETNS_COOKIE (before 5.14).
	id string
}

// openNetns opens the namespace at path, duplicates fd, or, with neither,
// opens the calling thread's namespace.
func openNetns(path string, fd int) (*netnsRef, error) {
	var (
		f   *os.File
		err error
	)
	switch {
	case path != "" && fd != 0:
		return nil, errors.New("open netns: both a path and a descriptor given")
	case fd != 0:
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open netns: duplicate descriptor %d: %w", fd, err)
		}
		f = os.NewFile(uintptr(dup), fmt.Sprintf("netns fd %d", fd))
		if err := nsrun.Check(f); err != nil {
			f.Close()
			return nil, err
		}
	default:
		if f, err = nsrun.Open(path); err != nil {
			return nil, err
		}
	}
	ns := &netnsRef{file: f}
	var st unix.Stat_t
	if err := unix.Fstat(ns.fd(), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("open netns %s: %w", f.Name(), err)
	}
	ns.dev, ns.ino = st.Dev, st.Ino
	return ns, nil
}

// identify sets the namespace's id from the cookie of a socket in it.
func (ns *netnsRef) identify(r *rtnl) error {
	cookie, err := r.netnsCookie()
	switch {
	case err == nil:
		ns.id = fmt.Sprintf("nsc%d", cookie)
	case errors.Is(err, unix.ENOPROTOOPT):
		ns.id = fmt.Sprintf("nsi%d", ns.ino)
	default:
		return fmt.Errorf("identify netns %s: %w", ns.file.Name(), err)
	}
	return nil
}

func (ns *netnsRef) fd() int { return int(ns.file.Fd()) }

func (ns *netnsRef) String() string {
	return fmt.Sprintf("netns %s", ns.file.Name())
}

func (ns *netnsRef) Close() error { return ns.file.Close() }

// run calls fn on a locked OS thread inside the namespace. Calls that
// resolve an interface index in the caller's namespace need it:
// BPF_LINK_CREATE for tcx (dev_get_by_index(current->nsproxy->net_ns, ...)
// in kernel/bpf/tcx.c) and BPF_PROG_QUERY.
func (ns *netnsRef) run(fn func() error) error {
	if err := nsrun.Run(ns.fd(), fn); err != nil {
		return fmt.Errorf("in %s: %w", ns, err)
	}
	return nil
}
