package tc

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// rtnl is the package's own rtnetlink socket, for what go-tc does not do
// the way we need:
//
//   - dumps: go-tc's decoders fail a whole dump on an attribute they do not
//     know (another tool's filter can carry one, and kernels add new ones),
//     and go-tc hides NLM_F_DUMP_INTR; here only what we read is decoded,
//     and an interrupted dump is retried;
//   - replacing a filter: go-tc's Filter.Replace sends NLM_F_CREATE without
//     NLM_F_REPLACE;
//   - interface lookups, which go-tc does not do.
//
// go-tc does the rest (creating and deleting the qdisc, deleting filters).
type rtnl struct {
	c     *netlink.Conn
	retry retrier
}

// ErrNoInterface is wrapped by the errors of operations on an interface
// index that does not exist (any more) in the Manager's netns.
var ErrNoInterface = errors.New("no such interface")

func dialRTNL(ns *netnsRef) (*rtnl, error) {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{NetNS: ns.fd()})
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink socket in %s: %w", ns, err)
	}
	// Keep the kernel's own words ("Exclusivity flag on, cannot modify")
	// in every error.
	if err := c.SetOption(netlink.ExtendedAcknowledge, true); err != nil {
		c.Close()
		return nil, fmt.Errorf("enable extended acknowledgements: %w", err)
	}
	return &rtnl{c: c, retry: defaultRetrier}, nil
}

func (r *rtnl) Close() error { return r.c.Close() }

// netnsCookie returns the cookie of the socket's namespace
// (SO_NETNS_COOKIE, kernel 5.14): unique, never reused while the system
// runs.
func (r *rtnl) netnsCookie() (uint64, error) {
	rc, err := r.c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		cookie uint64
		serr   error
	)
	if err := rc.Control(func(fd uintptr) {
		cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	}); err != nil {
		return 0, err
	}
	return cookie, serr
}

// execute sends a request that the kernel acknowledges, retrying transient
// failures.
func (r *rtnl) execute(typ netlink.HeaderType, flags netlink.HeaderFlags, data []byte) error {
	return r.retry.do(func() error {
		_, err := r.c.Execute(netlink.Message{
			Header: netlink.Header{Type: typ, Flags: netlink.Request | netlink.Acknowledge | flags},
			Data:   data,
		})
		return err
	})
}

// dump runs a dump request, all over again when it fails transiently or
// when the kernel says it was interrupted by a change (NLM_F_DUMP_INTR):
// such a dump may miss or repeat objects.
func (r *rtnl) dump(typ netlink.HeaderType, data []byte) ([]netlink.Message, error) {
	var msgs []netlink.Message
	err := r.retry.do(func() error {
		var err error
		msgs, err = r.c.Execute(netlink.Message{
			Header: netlink.Header{Type: typ, Flags: netlink.Request | netlink.Dump},
			Data:   data,
		})
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Flags&netlink.DumpInterrupted != 0 {
				return errDumpInterrupted
			}
		}
		return nil
	})
	return msgs, err
}

// iface is an interface of the namespace.
type iface struct {
	index int
	name  string
}

// String returns the name, which errors show, or "if<index>" before the
// name is known.
func (i iface) String() string {
	if i.name != "" {
		return i.name
	}
	return fmt.Sprintf("if%d", i.index)
}

// link looks the interface index up (RTM_GETLINK).
func (r *rtnl) link(index int) (iface, error) {
	var msgs []netlink.Message
	err := r.retry.do(func() error {
		var err error
		msgs, err = r.c.Execute(netlink.Message{
			Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request},
			Data:   marshalIfInfomsg(index),
		})
		return err
	})
	if errors.Is(err, unix.ENODEV) {
		return iface{}, fmt.Errorf("interface %d: %w", index, ErrNoInterface)
	}
	if err != nil {
		return iface{}, fmt.Errorf("look up interface %d: %w", index, err)
	}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWLINK {
			continue
		}
		ifc, err := parseLink(m.Data)
		if err != nil {
			return iface{}, fmt.Errorf("look up interface %d: %w", index, err)
		}
		if ifc.index == index {
			return ifc, nil
		}
	}
	return iface{}, fmt.Errorf("interface %d: %w", index, ErrNoInterface)
}

// links lists the interfaces of the namespace.
func (r *rtnl) links() ([]iface, error) {
	msgs, err := r.dump(unix.RTM_GETLINK, marshalIfInfomsg(0))
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []iface
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWLINK {
			continue
		}
		ifc, err := parseLink(m.Data)
		if err != nil {
			return nil, fmt.Errorf("list interfaces: %w", err)
		}
		out = append(out, ifc)
	}
	return out, nil
}

func marshalIfInfomsg(index int) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(b[4:8], uint32(index))
	return b
}

func parseLink(b []byte) (iface, error) {
	if len(b) < unix.SizeofIfInfomsg {
		return iface{}, fmt.Errorf("short ifinfomsg: %d bytes", len(b))
	}
	ifc := iface{index: int(int32(binary.NativeEndian.Uint32(b[4:8])))}
	ad, err := netlink.NewAttributeDecoder(b[unix.SizeofIfInfomsg:])
	if err != nil {
		return iface{}, fmt.Errorf("decode link attributes: %w", err)
	}
	for ad.Next() {
		if ad.Type() == unix.IFLA_IFNAME {
			ifc.name = ad.String()
		}
	}
	if err := ad.Err(); err != nil {
		return iface{}, fmt.Errorf("decode link attributes: %w", err)
	}
	return ifc, nil
}

// tcmsg is struct tcmsg (include/uapi/linux/rtnetlink.h).
type tcmsg struct {
	ifindex int
	handle  uint32
	parent  uint32
	// info is the priority (upper 16 bits) and the protocol in network
	// byte order (lower 16 bits) of a filter.
	info uint32
}

const sizeofTcmsg = 20

func (t tcmsg) marshal() []byte {
	b := make([]byte, sizeofTcmsg)
	b[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(b[4:8], uint32(t.ifindex))
	binary.NativeEndian.PutUint32(b[8:12], t.handle)
	binary.NativeEndian.PutUint32(b[12:16], t.parent)
	binary.NativeEndian.PutUint32(b[16:20], t.info)
	return b
}

func parseTcmsg(b []byte) (tcmsg, []byte, error) {
	if len(b) < sizeofTcmsg {
		return tcmsg{}, nil, fmt.Errorf("short tcmsg: %d bytes", len(b))
	}
	return tcmsg{
		ifindex: int(int32(binary.NativeEndian.Uint32(b[4:8]))),
		handle:  binary.NativeEndian.Uint32(b[8:12]),
		parent:  binary.NativeEndian.Uint32(b[12:16]),
		info:    binary.NativeEndian.Uint32(b[16:20]),
	}, b[sizeofTcmsg:], nil
}
