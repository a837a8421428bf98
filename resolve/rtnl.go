package resolve

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/jsimonetti/rtnetlink/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/nlmsg"
)

// This file holds the rtnetlink requests the package makes, one function per
// request, over a mdlayher/netlink Conn opened in the node's netns with
// strict checking on (NETLINK_GET_STRICT_CHK, kernel 4.20+). Strict checking
// is not only hygiene: without it the kernel ignores IFA_TARGET_NETNSID in an
// address dump (inet_dump_ifaddr reads it in inet_valid_dump_ifaddr_req, which
// runs only for strict sockets) and would list the node's own addresses.
//
// The messages are github.com/jsimonetti/rtnetlink/v2's (LinkMessage,
// AddressMessage, RouteMessage), encoded and decoded by the library. The
// socket is not the library's Conn: its Execute returns only what its types
// decode, and its requests carry only attributes its types have. What v2.3.0
// lacks is added by hand, at the request that needs it, with appendAttrs and
// nlmsg.ScanAttrs:
//
//   - IFLA_TARGET_NETNSID in RTM_GETLINK and IFA_TARGET_NETNSID in
//     RTM_GETADDR: LinkAttributes and AddressAttributes have no field for
//     them (and an AddressMessage with attributes always sends IFA_UNSPEC,
//     IFA_ADDRESS and IFA_FLAGS, which a strict dump request may not carry);
//   - IFLA_LINK_NETNSID in RTM_NEWLINK: LinkAttributes does not decode it;
//   - RTA_NH_ID in RTM_NEWROUTE: RouteAttributes does not decode it;
//   - RTM_GETNSID and RTM_NEWNSID (nsidMessage): the library has no netns
//     id messages at all.

// rtaNhID is RTA_NH_ID (kernel 5.3+, not in x/sys): the route uses a
// nexthop object.
const rtaNhID = 30

// sizeofRtGenmsg is struct rtgenmsg (one byte, the family) padded to the
// 4-byte alignment the kernel parses attributes from.
const sizeofRtGenmsg = 4

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
	req := rtnetlink.RouteMessage{
		Family:     unix.AF_INET,
		DstLength:  uint8(ip.BitLen()),
		Flags:      unix.RTM_F_FIB_MATCH,
		Attributes: rtnetlink.RouteAttributes{Dst: ip.AsSlice()},
	}
	if ip.Is6() {
		req.Family = unix.AF_INET6
	}
	data, err := req.MarshalBinary()
	if err != nil {
		return route{}, fmt.Errorf("encode RTM_GETROUTE for %s: %w", ip, err)
	}
	msgs, err := execute(c, unix.RTM_GETROUTE, netlink.Request, data)
	if err != nil {
		return route{}, err
	}
	if len(msgs) != 1 || msgs[0].Header.Type != unix.RTM_NEWROUTE {
		return route{}, fmt.Errorf("unexpected reply to RTM_GETROUTE (%d messages)", len(msgs))
	}
	return parseRoute(msgs[0].Data)
}

// parseRoute decodes an RTM_NEWROUTE message.
func parseRoute(b []byte) (route, error) {
	var m rtnetlink.RouteMessage
	if err := m.UnmarshalBinary(b); err != nil {
		return route{}, fmt.Errorf("decode RTM_NEWROUTE: %w", err)
	}
	a := m.Attributes
	r := route{
		typ:       m.Type,
		table:     uint32(m.Table),
		oif:       int(a.OutIface),
		multipath: len(a.Multipath) > 0,
	}
	if a.Table != 0 { // RTA_TABLE: rtm_table holds only ids below 256
		r.table = a.Table
	}
	if gw, ok := netip.AddrFromSlice(a.Gateway); ok {
		r.gateway = gw
	}
	if a.Via != nil { // RTA_VIA: an IPv4 route via an IPv6 gateway
		if gw, ok := netip.AddrFromSlice(a.Via.Addr); ok {
			r.gateway = gw
		}
	}
	dst := netip.IPv4Unspecified()
	if m.Family == unix.AF_INET6 {
		dst = netip.IPv6Unspecified()
	}
	if d, ok := netip.AddrFromSlice(a.Dst); ok {
		dst = d
	}
	r.dst = netip.PrefixFrom(dst.Unmap(), int(m.DstLength))
	err := nlmsg.ScanAttrs(b, unix.SizeofRtMsg, func(ad *netlink.AttributeDecoder) {
		if ad.Type() == rtaNhID {
			r.nhid = ad.Uint32()
		}
	})
	if err != nil {
		return route{}, fmt.Errorf("decode RTM_NEWROUTE: %w", err)
	}
	return r, nil
}

// getLink reads one interface by index: RTM_GETLINK with ifi_index, in the
// node's netns (nsid < 0) or, with IFLA_TARGET_NETNSID, in the netns that
// has id nsid in the node's netns (kernel 4.15+, as IFLA_IF_NETNSID). The
// latter reads a pod's eth0 without entering or even naming its netns.
func getLink(c *netlink.Conn, index, nsid int) (link, error) {
	data, err := linkRequest(rtnetlink.LinkMessage{Index: uint32(index)}, nil, nsid)
	if err != nil {
		return link{}, fmt.Errorf("encode RTM_GETLINK for ifindex %d: %w", index, err)
	}
	msgs, err := execute(c, unix.RTM_GETLINK, netlink.Request, data)
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
	filter := uint32(master)
	data, err := linkRequest(rtnetlink.LinkMessage{}, &filter, -1)
	if err != nil {
		return nil, fmt.Errorf("encode RTM_GETLINK for the ports of ifindex %d: %w", master, err)
	}
	msgs, err := execute(c, unix.RTM_GETLINK, netlink.Request|netlink.Dump, data)
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

// linkRequest encodes an RTM_GETLINK request for m without the per-family
// statistics, filtered on master if it is not nil, in the netns with id
// nsid if nsid >= 0.
func linkRequest(m rtnetlink.LinkMessage, master *uint32, nsid int) ([]byte, error) {
	data, err := nlmsg.LinkRequest(m.Index, rtnetlink.LinkAttributes{Master: master})
	if err != nil || nsid < 0 {
		return data, err
	}
	return appendAttrs(data, func(ae *netlink.AttributeEncoder) {
		ae.Int32(unix.IFLA_TARGET_NETNSID, int32(nsid))
	})
}

func parseLink(m netlink.Message) (link, error) {
	if m.Header.Type != unix.RTM_NEWLINK {
		return link{}, fmt.Errorf("unexpected reply to RTM_GETLINK (type %d, %d bytes)", m.Header.Type, len(m.Data))
	}
	// The library fails a message with an attribute of a size it does not
	// expect, which no request can leave out: IFLA_STATS64 from a kernel
	// whose struct rtnl_link_stats64 grew past 5.19's (v2.3.0 knows those
	// sizes), or the IFLA_ADDRESS of a device whose hardware address is
	// under 4 bytes (ARCnet, Phonet).
	var lm rtnetlink.LinkMessage
	if err := lm.UnmarshalBinary(m.Data); err != nil {
		return link{}, fmt.Errorf("decode RTM_NEWLINK: %w", err)
	}
	l := link{
		arphrd:   lm.Type,
		index:    int(int32(lm.Index)),
		up:       lm.Flags&unix.IFF_UP != 0,
		peerNsid: -1,
	}
	if a := lm.Attributes; a != nil {
		l.name = a.Name
		l.mac = a.Address
		l.peer = int(int32(a.Type)) // the library's name for IFLA_LINK
		if a.Master != nil {
			l.master = int(*a.Master)
		}
		if a.Info != nil {
			l.kind = a.Info.Kind
		}
	}
	err := nlmsg.ScanAttrs(m.Data, unix.SizeofIfInfomsg, func(ad *netlink.AttributeDecoder) {
		if ad.Type() == unix.IFLA_LINK_NETNSID {
			l.peerNsid = int(ad.Int32())
		}
	})
	if err != nil {
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
	data, err := addressRequest(family, nsid)
	if err != nil {
		return nil, fmt.Errorf("encode RTM_GETADDR for netns id %d: %w", nsid, err)
	}
	msgs, err := execute(c, unix.RTM_GETADDR, netlink.Request|netlink.Dump, data)
	if err != nil {
		return nil, err
	}
	addrs := make([]netip.Addr, 0, len(msgs))
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWADDR {
			return nil, fmt.Errorf("unexpected reply to RTM_GETADDR (type %d, %d bytes)", m.Header.Type, len(m.Data))
		}
		var am rtnetlink.AddressMessage
		if err := am.UnmarshalBinary(m.Data); err != nil {
			return nil, fmt.Errorf("decode RTM_NEWADDR: %w", err)
		}
		if am.Attributes == nil {
			continue
		}
		// IFA_LOCAL is the interface's own address where it differs from
		// IFA_ADDRESS (the far end of a point-to-point address); IPv6
		// sends IFA_ADDRESS alone.
		if a, ok := netip.AddrFromSlice(am.Attributes.Local); ok {
			addrs = append(addrs, a.Unmap())
		} else if a, ok := netip.AddrFromSlice(am.Attributes.Address); ok {
			addrs = append(addrs, a.Unmap())
		}
	}
	return addrs, nil
}

// addressRequest encodes an RTM_GETADDR dump request for the addresses of
// family in the netns with id nsid.
func addressRequest(family uint8, nsid int) ([]byte, error) {
	// The header alone: the library's attributes would include
	// IFA_ADDRESS, which inet_valid_dump_ifaddr_req refuses.
	data, err := (&rtnetlink.AddressMessage{Family: family}).MarshalBinary()
	if err != nil {
		return nil, err
	}
	return appendAttrs(data, func(ae *netlink.AttributeEncoder) {
		ae.Int32(unix.IFA_TARGET_NETNSID, int32(nsid))
	})
}

// nsidOf returns the id that the node's netns gives the netns fd refers to,
// or unix.NETNSA_NSID_NOT_ASSIGNED (-1) if it has none: RTM_GETNSID with
// NETNSA_FD (rtnl_net_getid, kernel 4.0+). It never assigns one.
func nsidOf(c *netlink.Conn, fd int) (int, error) {
	data, err := nsidMessage{fd: fd, nsid: unix.NETNSA_NSID_NOT_ASSIGNED}.marshal()
	if err != nil {
		return 0, fmt.Errorf("encode RTM_GETNSID for fd %d: %w", fd, err)
	}
	msgs, err := execute(c, unix.RTM_GETNSID, netlink.Request, data)
	if err != nil {
		return 0, err
	}
	if len(msgs) != 1 || msgs[0].Header.Type != unix.RTM_NEWNSID {
		return 0, fmt.Errorf("unexpected reply to RTM_GETNSID (%d messages)", len(msgs))
	}
	m, err := parseNsidMessage(msgs[0].Data)
	if err != nil {
		return 0, err
	}
	return m.nsid, nil
}

// nsidMessage is an RTM_GETNSID request or an RTM_NEWNSID reply: struct
// rtgenmsg, then NETNSA_* attributes (rtnl_net_getid and rtnl_net_fill in
// net/core/net_namespace.c). Hand-written: jsimonetti/rtnetlink v2.3.0 has
// no netns id messages.
type nsidMessage struct {
	// fd is NETNSA_FD, a descriptor of the netns asked about; not sent
	// when negative.
	fd int
	// nsid is NETNSA_NSID, the id; not sent when NETNSA_NSID_NOT_ASSIGNED,
	// the value the kernel also replies with for a netns without one.
	nsid int
}

func (m nsidMessage) marshal() ([]byte, error) {
	hdr := make([]byte, sizeofRtGenmsg)
	hdr[0] = unix.AF_UNSPEC
	return appendAttrs(hdr, func(ae *netlink.AttributeEncoder) {
		if m.fd >= 0 {
			ae.Uint32(unix.NETNSA_FD, uint32(m.fd))
		}
		if m.nsid != unix.NETNSA_NSID_NOT_ASSIGNED {
			ae.Int32(unix.NETNSA_NSID, int32(m.nsid))
		}
	})
}

func parseNsidMessage(b []byte) (nsidMessage, error) {
	m := nsidMessage{fd: -1, nsid: unix.NETNSA_NSID_NOT_ASSIGNED}
	err := nlmsg.ScanAttrs(b, sizeofRtGenmsg, func(ad *netlink.AttributeDecoder) {
		switch ad.Type() {
		case unix.NETNSA_FD:
			m.fd = int(ad.Uint32())
		case unix.NETNSA_NSID:
			m.nsid = int(ad.Int32())
		}
	})
	if err != nil {
		return nsidMessage{}, fmt.Errorf("decode RTM_NEWNSID: %w", err)
	}
	return m, nil
}

// appendAttrs appends attributes the library cannot encode to a message's
// fixed header or to a message it encoded: both end on the 4-byte boundary
// (NLMSG_ALIGN, NLA_ALIGN) where the kernel reads the next attribute.
func appendAttrs(msg []byte, encode func(*netlink.AttributeEncoder)) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	encode(ae)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	return append(msg, attrs...), nil
}

func execute(c *netlink.Conn, typ netlink.HeaderType, flags netlink.HeaderFlags, data []byte) ([]netlink.Message, error) {
	return c.Execute(netlink.Message{
		Header: netlink.Header{Type: typ, Flags: flags},
		Data:   data,
	})
}
