package resolve

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// This file holds the raw rtnetlink requests the package makes, one function
// per request, over a mdlayher/netlink Conn opened in the node's netns with
// strict checking on (NETLINK_GET_STRICT_CHK, kernel 4.20+). Strict checking
// is not only hygiene: without it the kernel ignores IFA_TARGET_NETNSID in an
// address dump (inet_dump_ifaddr reads it in inet_valid_dump_ifaddr_req, which
// runs only for strict sockets) and would list the node's own addresses.

// rtextFilterSkipStats is RTEXT_FILTER_SKIP_STATS (include/uapi/linux/rtnetlink.h,
// not in x/sys): leave IFLA_STATS and IFLA_STATS64 out of link replies, which
// are most of their size and of no use here. Older kernels ignore the bit.
const rtextFilterSkipStats = 1 << 3

// rtaNhID is RTA_NH_ID (kernel 5.3+, not in x/sys): the route uses a
// nexthop object.
const rtaNhID = 30

// Wire sizes of the fixed headers (unix.Sizeof*), and of rtgenmsg padded to
// the 4-byte alignment the kernel parses attributes from.
const (
	sizeofIfInfomsg = unix.SizeofIfInfomsg // family, pad, type u16, index s32, flags u32, change u32
	sizeofIfAddrmsg = unix.SizeofIfAddrmsg // family, prefixlen, flags, scope, index u32
	sizeofRtMsg     = unix.SizeofRtMsg     // family, dst_len, src_len, tos, table, protocol, scope, type, flags u32
	sizeofRtGenmsg  = 4
)

// link is what the package reads of an interface from RTM_NEWLINK.
type link struct {
	index  int
	name   string           // IFLA_IFNAME
	kind   string           // IFLA_LINKINFO/IFLA_INFO_KIND; "" for devices without one (NICs, lo)
	arphrd uint16           // ifi_type
	up     bool             // IFF_UP in ifi_flags
	mac    net.HardwareAddr // IFLA_ADDRESS
	master int              // IFLA_MASTER: the bridge a port is enslaved to
	// peer is IFLA_LINK: for a veth, its peer's ifindex in the peer's
	// netns (veth_get_iflink).
	peer int
	// peerNsid is IFLA_LINK_NETNSID, the id (in the netns the request
	// was made in) of the netns holding the peer, or -1: the kernel puts
	// it only when that netns is another one (rtnl_fill_link_netnsid),
	// allocating an id if it had none.
	peerNsid int
}

// describe names a link's type for error messages: its link kind, else its
// hardware type.
func (l *link) describe() string {
	if l.kind != "" {
		if strings.ContainsRune("aeiou", rune(l.kind[0])) {
			return "an " + l.kind
		}
		return "a " + l.kind
	}
	switch l.arphrd {
	case unix.ARPHRD_LOOPBACK:
		return "the loopback"
	case unix.ARPHRD_ETHER:
		return "an Ethernet device without a link kind (a NIC)"
	default:
		return fmt.Sprintf("a device of hardware type %d without a link kind", l.arphrd)
	}
}

// routeType names an rtm_type for error messages.
func routeType(t uint8) string {
	switch t {
	case unix.RTN_UNICAST:
		return "a unicast route"
	case unix.RTN_LOCAL:
		return "a local route"
	case unix.RTN_BROADCAST:
		return "a broadcast route"
	case unix.RTN_ANYCAST:
		return "an anycast route"
	case unix.RTN_MULTICAST:
		return "a multicast route"
	case unix.RTN_BLACKHOLE:
		return "a blackhole route"
	case unix.RTN_UNREACHABLE:
		return "an unreachable route"
	case unix.RTN_PROHIBIT:
		return "a prohibit route"
	case unix.RTN_THROW:
		return "a throw route"
	default:
		return fmt.Sprintf("a route of type %d", t)
	}
}

// route is what the package reads of the FIB entry that matches an address.
type route struct {
	dst       netip.Prefix
	typ       uint8 // rtm_type: RTN_UNICAST, RTN_LOCAL, ...
	table     uint32
	oif       int        // RTA_OIF
	gateway   netip.Addr // RTA_GATEWAY or RTA_VIA
	multipath bool       // RTA_MULTIPATH: several next hops, no single RTA_OIF
	nhid      uint32     // RTA_NH_ID: a nexthop object
}

// getRoute returns the FIB entry the node would use to reach ip, as
// `ip route get fibmatch ADDR` does: RTM_GETROUTE with RTA_DST and
// RTM_F_FIB_MATCH (kernel 4.13+), which returns the matching route as it is
// stored (its prefix, type, output device and gateway) instead of a resolved
// /32 or /128. The lookup goes through the policy rules like an output
// packet without a mark would.
func getRoute(c *netlink.Conn, ip netip.Addr) (route, error) {
	family, bits := uint8(unix.AF_INET), uint8(32)
	if ip.Is6() {
		family, bits = unix.AF_INET6, 128
	}
	hdr := make([]byte, sizeofRtMsg)
	hdr[0] = family
	hdr[1] = bits // rtm_dst_len
	binary.NativeEndian.PutUint32(hdr[8:], unix.RTM_F_FIB_MATCH)
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(unix.RTA_DST, ip.AsSlice())
	msgs, err := execute(c, unix.RTM_GETROUTE, netlink.Request, hdr, ae)
	if err != nil {
		return route{}, err
	}
	if len(msgs) != 1 || msgs[0].Header.Type != unix.RTM_NEWROUTE || len(msgs[0].Data) < sizeofRtMsg {
		return route{}, fmt.Errorf("unexpected reply to RTM_GETROUTE (%d messages)", len(msgs))
	}
	b := msgs[0].Data
	r := route{typ: b[7], table: uint32(b[4])}
	dstLen := int(b[1])
	ad, err := netlink.NewAttributeDecoder(b[sizeofRtMsg:])
	if err != nil {
		return route{}, err
	}
	dst := netip.IPv4Unspecified()
	if family == unix.AF_INET6 {
		dst = netip.IPv6Unspecified()
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.RTA_DST:
			if a, ok := netip.AddrFromSlice(ad.Bytes()); ok {
				dst = a
			}
		case unix.RTA_OIF:
			r.oif = int(ad.Uint32())
		case unix.RTA_GATEWAY:
			r.gateway, _ = netip.AddrFromSlice(ad.Bytes())
		case unix.RTA_VIA:
			// struct rtvia: family u16, then the address.
			if v := ad.Bytes(); len(v) > 2 {
				r.gateway, _ = netip.AddrFromSlice(v[2:])
			}
		case unix.RTA_MULTIPATH:
			r.multipath = true
		case rtaNhID:
			r.nhid = ad.Uint32()
		case unix.RTA_TABLE:
			r.table = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return route{}, fmt.Errorf("decode RTM_NEWROUTE: %w", err)
	}
	r.dst = netip.PrefixFrom(dst.Unmap(), dstLen)
	return r, nil
}

// getLink reads one interface by index: RTM_GETLINK with ifi_index, in the
// node's netns (nsid < 0) or, with IFLA_TARGET_NETNSID, in the netns that
// has id nsid in the node's netns (kernel 4.15+, as IFLA_IF_NETNSID). The
// latter reads a pod's eth0 without entering or even naming its netns.
func getLink(c *netlink.Conn, index, nsid int) (link, error) {
	hdr := make([]byte, sizeofIfInfomsg)
	hdr[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(hdr[4:], uint32(index))
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(unix.IFLA_EXT_MASK, rtextFilterSkipStats)
	if nsid >= 0 {
		ae.Int32(unix.IFLA_TARGET_NETNSID, int32(nsid))
	}
	msgs, err := execute(c, unix.RTM_GETLINK, netlink.Request, hdr, ae)
	if err != nil {
		return link{}, err
	}
	if len(msgs) != 1 {
		return link{}, fmt.Errorf("unexpected reply to RTM_GETLINK (%d messages)", len(msgs))
	}
	return parseLink(msgs[0])
}

// bridgePorts lists the interfaces enslaved to the bridge with index
// master: an RTM_GETLINK dump filtered by the kernel on IFLA_MASTER
// (rtnl_dump_ifinfo, kernel 4.6+), so that a node with many interfaces
// sends only the bridge's ports.
func bridgePorts(c *netlink.Conn, master int) ([]link, error) {
	hdr := make([]byte, sizeofIfInfomsg)
	hdr[0] = unix.AF_UNSPEC
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(unix.IFLA_EXT_MASK, rtextFilterSkipStats)
	ae.Uint32(unix.IFLA_MASTER, uint32(master))
	msgs, err := execute(c, unix.RTM_GETLINK, netlink.Request|netlink.Dump, hdr, ae)
	if err != nil {
		return nil, err
	}
	links := make([]link, 0, len(msgs))
	for _, m := range msgs {
		l, err := parseLink(m)
		if err != nil {
			return nil, err
		}
		if l.master == master { // the kernel filters; this guards older ones
			links = append(links, l)
		}
	}
	return links, nil
}

func parseLink(m netlink.Message) (link, error) {
	if m.Header.Type != unix.RTM_NEWLINK || len(m.Data) < sizeofIfInfomsg {
		return link{}, fmt.Errorf("unexpected reply to RTM_GETLINK (type %d, %d bytes)", m.Header.Type, len(m.Data))
	}
	b := m.Data
	l := link{
		arphrd:   binary.NativeEndian.Uint16(b[2:]),
		index:    int(int32(binary.NativeEndian.Uint32(b[4:]))),
		up:       binary.NativeEndian.Uint32(b[8:])&unix.IFF_UP != 0,
		peerNsid: -1,
	}
	ad, err := netlink.NewAttributeDecoder(b[sizeofIfInfomsg:])
	if err != nil {
		return link{}, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.IFLA_IFNAME:
			l.name = ad.String()
		case unix.IFLA_ADDRESS:
			l.mac = net.HardwareAddr(ad.Bytes())
		case unix.IFLA_LINK:
			l.peer = int(int32(ad.Uint32()))
		case unix.IFLA_LINK_NETNSID:
			l.peerNsid = int(ad.Int32())
		case unix.IFLA_MASTER:
			l.master = int(ad.Uint32())
		case unix.IFLA_LINKINFO:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() == unix.IFLA_INFO_KIND {
						l.kind = nad.String()
					}
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return link{}, fmt.Errorf("decode RTM_NEWLINK: %w", err)
	}
	return l, nil
}

// addresses lists the addresses of one family held by any interface of the
// netns with id nsid in the node's netns: an RTM_GETADDR dump with
// IFA_TARGET_NETNSID (kernel 4.20+, strict checking). One request per
// family rather than AF_UNSPEC, whose dump also asks every other family
// that registered one (MCTP, ...) to accept the target attribute.
func addresses(c *netlink.Conn, nsid int, family uint8) ([]netip.Addr, error) {
	hdr := make([]byte, sizeofIfAddrmsg)
	hdr[0] = family
	ae := netlink.NewAttributeEncoder()
	ae.Int32(unix.IFA_TARGET_NETNSID, int32(nsid))
	msgs, err := execute(c, unix.RTM_GETADDR, netlink.Request|netlink.Dump, hdr, ae)
	if err != nil {
		return nil, err
	}
	addrs := make([]netip.Addr, 0, len(msgs))
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWADDR || len(m.Data) < sizeofIfAddrmsg {
			return nil, fmt.Errorf("unexpected reply to RTM_GETADDR (type %d, %d bytes)", m.Header.Type, len(m.Data))
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[sizeofIfAddrmsg:])
		if err != nil {
			return nil, err
		}
		// IFA_LOCAL is the interface's own address where it differs from
		// IFA_ADDRESS (the far end of a point-to-point address); IPv6
		// sends IFA_ADDRESS alone.
		var local, address netip.Addr
		for ad.Next() {
			switch ad.Type() {
			case unix.IFA_LOCAL:
				local, _ = netip.AddrFromSlice(ad.Bytes())
			case unix.IFA_ADDRESS:
				address, _ = netip.AddrFromSlice(ad.Bytes())
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decode RTM_NEWADDR: %w", err)
		}
		if local.IsValid() {
			addrs = append(addrs, local.Unmap())
		} else if address.IsValid() {
			addrs = append(addrs, address.Unmap())
		}
	}
	return addrs, nil
}

// nsidOf returns the id that the node's netns gives the netns fd refers to,
// or unix.NETNSA_NSID_NOT_ASSIGNED (-1) if it has none: RTM_GETNSID with
// NETNSA_FD (rtnl_net_getid, kernel 4.0+). It never assigns one.
func nsidOf(c *netlink.Conn, fd int) (int, error) {
	hdr := make([]byte, sizeofRtGenmsg)
	hdr[0] = unix.AF_UNSPEC
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(unix.NETNSA_FD, uint32(fd))
	msgs, err := execute(c, unix.RTM_GETNSID, netlink.Request, hdr, ae)
	if err != nil {
		return 0, err
	}
	if len(msgs) != 1 || msgs[0].Header.Type != unix.RTM_NEWNSID || len(msgs[0].Data) < sizeofRtGenmsg {
		return 0, fmt.Errorf("unexpected reply to RTM_GETNSID (%d messages)", len(msgs))
	}
	ad, err := netlink.NewAttributeDecoder(msgs[0].Data[sizeofRtGenmsg:])
	if err != nil {
		return 0, err
	}
	nsid := unix.NETNSA_NSID_NOT_ASSIGNED
	for ad.Next() {
		if ad.Type() == unix.NETNSA_NSID {
			nsid = int(ad.Int32())
		}
	}
	if err := ad.Err(); err != nil {
		return 0, fmt.Errorf("decode RTM_NEWNSID: %w", err)
	}
	return nsid, nil
}

func execute(c *netlink.Conn, typ netlink.HeaderType, flags netlink.HeaderFlags, hdr []byte, ae *netlink.AttributeEncoder) ([]netlink.Message, error) {
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	return c.Execute(netlink.Message{
		Header: netlink.Header{Type: typ, Flags: flags},
		Data:   append(hdr, attrs...),
	})
}
