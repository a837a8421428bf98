package dataplane

import (
	"errors"
	"fmt"
	"os"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/nlmsg"
	"github.com/meshredirect/meshredirect/internal/nsrun"
)

// nsLink is a network namespace held open and a route netlink socket in
// it, usable from any thread: the one way this package reaches into a
// netns. Its requests are in rtnl.go.
//
// The socket is a github.com/mdlayher/netlink Conn carrying
// github.com/jsimonetti/rtnetlink/v2's messages, as in packages tc and
// resolve, rather than the library's own Conn: that one's Execute decodes
// every reply with the library's types and fails them all on one it cannot
// decode (a rule with an attribute it does not know), drops the
// NLM_F_DUMP_INTR flag, and its LinkService.Get replaces the kernel's
// ENODEV, which isGone looks for, with "too many/little matches".
type nsLink struct {
	c    *netlink.Conn
	ns   *os.File
	name string // for errors: the path, or "this netns"
}

// openNetns opens the network namespace at path (this thread's when path
// is empty) and a route netlink socket in it. Close releases both.
func openNetns(path string) (*nsLink, error) {
	n := &nsLink{name: path}
	if path == "" {
		n.name = "this netns"
	}
	var err error
	if n.ns, err = nsrun.Open(path); err != nil {
		return nil, err // it names the path
	}
	if n.c, err = n.dial(unix.NETLINK_ROUTE, 0); err != nil {
		n.ns.Close()
		return nil, err
	}
	// Keep the kernel's own words ("FIB table does not exist") in every
	// error (kernel 4.12+).
	if err := n.c.SetOption(netlink.ExtendedAcknowledge, true); err != nil {
		n.Close()
		return nil, fmt.Errorf("enable extended acknowledgements on rtnetlink in %s: %w", n.name, err)
	}
	return n, nil
}

// dial opens a netlink socket of protocol in the namespace, a member of
// the multicast groups in the bitmask groups (none when 0).
func (n *nsLink) dial(protocol int, groups uint32) (*netlink.Conn, error) {
	c, err := netlink.Dial(protocol, &netlink.Config{NetNS: n.fd(), Groups: groups})
	if err != nil {
		return nil, fmt.Errorf("open netlink socket (protocol %d) in %s: %w", protocol, n.name, err)
	}
	return c, nil
}

// subscribe opens a route netlink socket in the namespace that receives
// the notifications of the rtnetlink multicast groups (RTNLGRP_*).
func (n *nsLink) subscribe(groups ...uint32) (*netlink.Conn, error) {
	var mask uint32
	for _, g := range groups {
		// Config.Groups is the bind(2) bitmask, where group g is bit g-1
		// (RTMGRP_LINK is 1<<(RTNLGRP_LINK-1)).
		mask |= 1 << (g - 1)
	}
	return n.dial(unix.NETLINK_ROUTE, mask)
}

// generic opens a generic netlink socket in the namespace: families such
// as fou answer for the namespace of the socket, not of the thread.
func (n *nsLink) generic() (*genetlink.Conn, error) {
	c, err := n.dial(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return nil, err
	}
	return genetlink.NewConn(c), nil
}

// Close closes the socket and the namespace.
func (n *nsLink) Close() {
	if n.c != nil {
		n.c.Close()
	}
	n.ns.Close()
}

func (n *nsLink) fd() int { return int(n.ns.Fd()) }

// Do runs fn inside the namespace, for what netlink cannot do from outside
// (writing /proc/sys/net, which shows the netns of the thread that opens
// it).
func (n *nsLink) Do(fn func() error) error { return nsrun.Run(n.fd(), fn) }

// String names the namespace for errors.
func (n *nsLink) String() string { return n.name }

// retryDump runs a netlink dump until it is not interrupted by a concurrent
// change (errDumpInterrupted), at most five times.
func retryDump(dump func() error) error {
	var err error
	for i := 0; i < 5; i++ {
		if err = dump(); !errors.Is(err, nlmsg.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

// execute sends a request that the kernel acknowledges.
func (n *nsLink) execute(typ netlink.HeaderType, flags netlink.HeaderFlags, data []byte) error {
	_, err := n.c.Execute(netlink.Message{
		Header: netlink.Header{Type: typ, Flags: netlink.Request | netlink.Acknowledge | flags},
		Data:   data,
	})
	return err
}

// get sends a request for one object and returns the kernel's answer.
func (n *nsLink) get(typ netlink.HeaderType, data []byte) ([]netlink.Message, error) {
	return n.c.Execute(netlink.Message{
		Header: netlink.Header{Type: typ, Flags: netlink.Request},
		Data:   data,
	})
}

// dump runs a dump request, again (retryDump) when the kernel flags a
// message of it NLM_F_DUMP_INTR. mdlayher/netlink consumes the closing
// NLMSG_DONE without showing its flags, so an interruption that the kernel
// reports on that message alone goes unseen here (tc's dumps share this).
// For the node's links and addresses, the change that interrupted the dump
// is also announced to WatchNode, whose caller reads them again.
func (n *nsLink) dump(typ netlink.HeaderType, data []byte) ([]netlink.Message, error) {
	var msgs []netlink.Message
	err := retryDump(func() (err error) {
		msgs, err = nlmsg.Dump(n.c, typ, data)
		return err
	})
	return msgs, err
}
