package dataplane

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/meshredirect/meshredirect/internal/nsrun"
)

// nsLink is a network namespace held open and a netlink handle in it,
// usable from any thread: the one way this package reaches into a netns.
type nsLink struct {
	*netlink.Handle
	ns   netns.NsHandle
	name string // for errors: the path, or "this netns"
}

// openNetns opens the network namespace at path (this thread's when path
// is empty) and a netlink handle in it. Close releases both.
func openNetns(path string) (*nsLink, error) {
	n := &nsLink{name: path}
	var err error
	if path == "" {
		n.name = "this netns"
		n.ns, err = netns.Get()
	} else {
		n.ns, err = netns.GetFromPath(path)
	}
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", n.name, err)
	}
	if n.Handle, err = netlink.NewHandleAt(n.ns); err != nil {
		n.ns.Close()
		return nil, fmt.Errorf("netlink in %s: %w", n.name, err)
	}
	return n, nil
}

// Close closes the handle and the namespace.
func (n *nsLink) Close() {
	n.Handle.Close()
	n.ns.Close()
}

// Do runs fn inside the namespace, for what netlink cannot do from outside
// (writing /proc/sys/net, which shows the netns of the thread that opens
// it).
func (n *nsLink) Do(fn func() error) error { return nsrun.Run(int(n.ns), fn) }

// String names the namespace for errors.
func (n *nsLink) String() string { return n.name }

// retryDump runs a netlink dump until it is not interrupted by a concurrent
// change (NLM_F_DUMP_INTR, which vishvananda/netlink reports as
// ErrDumpInterrupted with partial results), at most five times.
func retryDump(dump func() error) error {
	var err error
	for i := 0; i < 5; i++ {
		if err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}
