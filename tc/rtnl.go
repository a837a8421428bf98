package tc

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/jsimonetti/rtnetlink/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/nlmsg"
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
//   - interface lookups, which go-tc does not do. Their messages are
//     github.com/jsimonetti/rtnetlink/v2's LinkMessage, sent on this socket
//     rather than on the library's Conn: that would be one socket more, its
//     Execute drops the NLM_F_DUMP_INTR flag, and its LinkService.Get
//     replaces the kernel's ENODEV with "too many/little matches".
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
	err := r.retry.do(func() (err error) {
		msgs, err = nlmsg.Dump(r.c, typ, data)
		return err
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
	req, err := linkRequest(index)
	if err != nil {
		return iface{}, fmt.Errorf("look up interface %d: %w", index, err)
	}
	var msgs []netlink.Message
	err = r.retry.do(func() error {
		var err error
		msgs, err = r.c.Execute(netlink.Message{
			Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request},
			Data:   req,
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
	req, err := linkRequest(0)
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	msgs, err := r.dump(unix.RTM_GETLINK, req)
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

// linkRequest encodes an RTM_GETLINK request for the interface index, or a
// dump request with index 0.
func linkRequest(index int) ([]byte, error) {
	return nlmsg.LinkRequest(uint32(index), rtnetlink.LinkAttributes{})
}

// parseLink decodes an RTM_NEWLINK message. The library fails a message
// with an attribute of a size it does not expect, which no request can
// leave out, and with it the whole dump: IFLA_STATS64 from a kernel whose
// struct rtnl_link_stats64 grew past 5.19's (v2.3.0 knows those sizes), or
// the IFLA_ADDRESS of a device whose hardware address is under 4 bytes
// (ARCnet, Phonet).
func parseLink(b []byte) (iface, error) {
	var m rtnetlink.LinkMessage
	if err := m.UnmarshalBinary(b); err != nil {
		return iface{}, fmt.Errorf("decode RTM_NEWLINK: %w", err)
	}
	ifc := iface{index: int(int32(m.Index))}
	if m.Attributes != nil {
		ifc.name = m.Attributes.Name
	}
	return ifc, nil
}

// tcmsg is struct tcmsg (include/uapi/linux/rtnetlink.h), the header of
// qdisc and filter messages. Hand-written: jsimonetti/rtnetlink v2.3.0 has
// no traffic control messages, and go-tc encodes and decodes its tc.Msg only
// inside its own requests (marshalStruct is unexported), whose dumps we
// cannot use (see rtnl).
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
