package dataplane

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/jsimonetti/rtnetlink/v2"
	"github.com/jsimonetti/rtnetlink/v2/driver"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/nlmsg"
)

// This file holds the rtnetlink requests the package makes, one method of
// nsLink per request. The messages are github.com/jsimonetti/rtnetlink/v2's
// (LinkMessage, AddressMessage, RouteMessage, RuleMessage), encoded and
// decoded by the library, VXLAN's IFLA_INFO_DATA by its driver package.
// What v2.3.0 lacks is read by hand with nlmsg.ScanAttrs, at the message that
// needs it:
//
//   - IFLA_LINK_NETNSID in RTM_NEWLINK: LinkAttributes does not decode it;
//   - Geneve's IFLA_INFO_DATA: the driver package has no geneve driver, so
//     the library hands its attributes over undecoded (LinkData);
//   - the attributes of RTM_NEWRULE: RuleAttributes fails a whole message on
//     an attribute it does not know, FRA_DSCP (kernel 6.11+) and every later
//     one, and with it the whole dump, so one rule of another tool would make
//     ours unreadable. The library decodes the header (struct fib_rule_hdr);
//     the four attributes read here are scanned by hand.
//
// The driver package, once imported, decodes the IFLA_INFO_DATA of the kinds
// it knows in every package of the binary (tc and resolve read only the
// kind, before it).

// sizeofFibRuleHdr is struct fib_rule_hdr (include/uapi/linux/fib_rules.h),
// the header of rule messages.
const sizeofFibRuleHdr = 12

// link is what the package reads of an interface from RTM_NEWLINK.
type link struct {
	index int
	name  string // IFLA_IFNAME
	flags uint32 // ifi_flags: IFF_UP, IFF_LOOPBACK, ...
	kind  string // IFLA_LINKINFO/IFLA_INFO_KIND; "" for devices without one (NICs, lo)
	mac   net.HardwareAddr
	// peer is IFLA_LINK: for a veth, its peer's ifindex in the peer's
	// netns (veth_get_iflink).
	peer int
	// peerNsid is IFLA_LINK_NETNSID, the id (in this netns) of the netns
	// holding the peer, or -1: the kernel puts it only when that netns is
	// another one (rtnl_fill_link_netnsid), allocating an id if it had
	// none.
	peerNsid int
	// stats are the packet counters (IFLA_STATS64, else IFLA_STATS); nil
	// without either.
	stats *linkStats
	// udpPort is the destination port of a VXLAN (IFLA_VXLAN_PORT) or
	// Geneve (IFLA_GENEVE_PORT) device, 0 for other kinds.
	udpPort uint16
}

// linkStats are an interface's packet counters.
type linkStats struct {
	rxPackets, txPackets uint64
}

// typ names the link's kind for errors, "device" for one without a kind
// (a NIC, lo).
func (l link) typ() string {
	if l.kind == "" {
		return "device"
	}
	return l.kind
}

// link looks the interface with index up: RTM_GETLINK with ifi_index. An
// index the netns lacks fails with the kernel's ENODEV (isGone).
func (n *nsLink) link(index int) (link, error) {
	return n.getLink(rtnetlink.LinkMessage{Index: uint32(index)}, "")
}

// linkByName looks the interface called name up: RTM_GETLINK with
// IFLA_IFNAME (which also finds alternative names). A name the netns lacks
// fails with the kernel's ENODEV.
func (n *nsLink) linkByName(name string) (link, error) {
	return n.getLink(rtnetlink.LinkMessage{}, name)
}

func (n *nsLink) getLink(m rtnetlink.LinkMessage, name string) (link, error) {
	data, err := linkRequest(m, name)
	if err != nil {
		return link{}, err
	}
	msgs, err := n.get(unix.RTM_GETLINK, data)
	if err != nil {
		return link{}, err
	}
	if len(msgs) != 1 || msgs[0].Header.Type != unix.RTM_NEWLINK {
		return link{}, fmt.Errorf("unexpected reply to RTM_GETLINK (%d messages)", len(msgs))
	}
	return parseLink(msgs[0].Data)
}

// links lists the interfaces of the netns.
func (n *nsLink) links() ([]link, error) {
	data, err := linkRequest(rtnetlink.LinkMessage{}, "")
	if err != nil {
		return nil, err
	}
	msgs, err := n.dump(unix.RTM_GETLINK, data)
	if err != nil {
		return nil, err
	}
	links := make([]link, 0, len(msgs))
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWLINK {
			continue
		}
		l, err := parseLink(m.Data)
		if err != nil {
			return nil, err
		}
		links = append(links, l)
	}
	return links, nil
}

// linkRequest encodes an RTM_GETLINK request for m, by name if name is not
// empty, without the per-family statistics.
func linkRequest(m rtnetlink.LinkMessage, name string) ([]byte, error) {
	return nlmsg.LinkRequest(m.Index, rtnetlink.LinkAttributes{Name: name})
}

// parseLink decodes an RTM_NEWLINK message. The library fails a message
// with an attribute of a size it does not expect, which no request can
// leave out, and with it a whole dump: IFLA_STATS64 from a kernel whose
// struct rtnl_link_stats64 grew past 5.19's (v2.3.0 knows those sizes), or
// the IFLA_ADDRESS of a device whose hardware address is under 4 bytes
// (ARCnet, Phonet).
func parseLink(b []byte) (link, error) {
	var m rtnetlink.LinkMessage
	if err := m.UnmarshalBinary(b); err != nil {
		return link{}, fmt.Errorf("decode RTM_NEWLINK: %w", err)
	}
	l := link{index: int(int32(m.Index)), flags: m.Flags, peerNsid: -1}
	if a := m.Attributes; a != nil {
		l.name = a.Name
		l.mac = a.Address
		l.peer = int(int32(a.Type)) // the library's name for IFLA_LINK
		switch {
		case a.Stats64 != nil:
			l.stats = &linkStats{rxPackets: a.Stats64.RXPackets, txPackets: a.Stats64.TXPackets}
		case a.Stats != nil:
			l.stats = &linkStats{rxPackets: uint64(a.Stats.RXPackets), txPackets: uint64(a.Stats.TXPackets)}
		}
		if a.Info != nil {
			l.kind = a.Info.Kind
			switch data := a.Info.Data.(type) {
			case *driver.Vxlan:
				if data.Port != nil {
					l.udpPort = *data.Port
				}
			case *rtnetlink.LinkData:
				if l.kind == "geneve" {
					port, err := genevePort(data.Data)
					if err != nil {
						return link{}, fmt.Errorf("decode RTM_NEWLINK of %s: %w", l.name, err)
					}
					l.udpPort = port
				}
			}
		}
	}
	err := nlmsg.ScanAttrs(b, unix.SizeofIfInfomsg, func(ad *netlink.AttributeDecoder) {
		if ad.Type() == unix.IFLA_LINK_NETNSID {
			l.peerNsid = int(ad.Int32())
		}
	})
	if err != nil {
		return link{}, fmt.Errorf("decode RTM_NEWLINK: %w", err)
	}
	return l, nil
}

// genevePort reads IFLA_GENEVE_PORT, a __be16 (geneve_fill_info), from the
// attributes of a Geneve device's IFLA_INFO_DATA.
func genevePort(data []byte) (uint16, error) {
	var port uint16
	err := nlmsg.ScanAttrs(data, 0, func(ad *netlink.AttributeDecoder) {
		if ad.Type() == unix.IFLA_GENEVE_PORT {
			ad.ByteOrder = binary.BigEndian
			port = ad.Uint16()
			ad.ByteOrder = binary.NativeEndian
		}
	})
	if err != nil {
		return 0, fmt.Errorf("decode geneve IFLA_INFO_DATA: %w", err)
	}
	return port, nil
}

// address is what the package reads of an address from RTM_NEWADDR.
type address struct {
	ip    netip.Addr
	index int   // ifa_index
	scope uint8 // ifa_scope: RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST
}

// addresses lists the addresses of one family (AF_INET or AF_INET6) in the
// netns. One dump per family rather than AF_UNSPEC, whose dump also asks
// every other family that registered one (MCTP, ...).
func (n *nsLink) addresses(family uint8) ([]address, error) {
	data, err := (&rtnetlink.AddressMessage{Family: family}).MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encode RTM_GETADDR: %w", err)
	}
	msgs, err := n.dump(unix.RTM_GETADDR, data)
	if err != nil {
		return nil, err
	}
	addrs := make([]address, 0, len(msgs))
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWADDR {
			continue
		}
		var am rtnetlink.AddressMessage
		if err := am.UnmarshalBinary(m.Data); err != nil {
			return nil, fmt.Errorf("decode RTM_NEWADDR: %w", err)
		}
		if am.Attributes == nil {
			continue
		}
		a := address{index: int(int32(am.Index)), scope: am.Scope}
		// IFA_LOCAL is the interface's own address where it differs from
		// IFA_ADDRESS (the far end of a point-to-point address); IPv6
		// sends IFA_ADDRESS alone.
		if ip, ok := netip.AddrFromSlice(am.Attributes.Local); ok {
			a.ip = ip.Unmap()
		} else if ip, ok := netip.AddrFromSlice(am.Attributes.Address); ok {
			a.ip = ip.Unmap()
		} else {
			continue
		}
		addrs = append(addrs, a)
	}
	return addrs, nil
}

// replaceRoute adds the route m, or replaces the one of its table with its
// destination (NLM_F_CREATE|NLM_F_REPLACE, as `ip route replace`).
func (n *nsLink) replaceRoute(m *rtnetlink.RouteMessage) error {
	data, err := m.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encode RTM_NEWROUTE: %w", err)
	}
	return n.execute(unix.RTM_NEWROUTE, netlink.Create|netlink.Replace, data)
}

// routes lists the routes of one family in the routing table with id
// table. The kernel filters a dump by table only for strict sockets (and
// then fails on a table that does not exist), so the dump holds every
// table and is filtered here. Cached routes (RTM_F_CLONED: IPv6 exceptions)
// are left out.
func (n *nsLink) routes(family uint8, table uint32) ([]rtnetlink.RouteMessage, error) {
	data, err := (&rtnetlink.RouteMessage{Family: family}).MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encode RTM_GETROUTE: %w", err)
	}
	msgs, err := n.dump(unix.RTM_GETROUTE, data)
	if err != nil {
		return nil, err
	}
	var routes []rtnetlink.RouteMessage
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWROUTE {
			continue
		}
		var rm rtnetlink.RouteMessage
		if err := rm.UnmarshalBinary(m.Data); err != nil {
			return nil, fmt.Errorf("decode RTM_NEWROUTE: %w", err)
		}
		if rm.Flags&unix.RTM_F_CLONED != 0 || routeTable(rm) != table {
			continue
		}
		routes = append(routes, rm)
	}
	return routes, nil
}

// routeTable returns a route's table: RTA_TABLE, as rtm_table holds only
// ids below 256.
func routeTable(m rtnetlink.RouteMessage) uint32 {
	if m.Attributes.Table != 0 {
		return m.Attributes.Table
	}
	return uint32(m.Table)
}

// routeDst returns a route's destination prefix.
func routeDst(m rtnetlink.RouteMessage) netip.Prefix {
	dst := netip.IPv4Unspecified()
	if m.Family == unix.AF_INET6 {
		dst = netip.IPv6Unspecified()
	}
	if d, ok := netip.AddrFromSlice(m.Attributes.Dst); ok {
		dst = d.Unmap()
	}
	return netip.PrefixFrom(dst, int(m.DstLength))
}

// deleteRoute deletes the route m, as listed by routes: its key (family,
// destination, tos, table), and what tells it apart from others of that
// key (type, scope, protocol, device, metric). A route with a priority of
// 0 or no device matches any (fib_table_delete, ip6_route_del).
func (n *nsLink) deleteRoute(m rtnetlink.RouteMessage) error {
	req := rtnetlink.RouteMessage{
		Family:    m.Family,
		DstLength: m.DstLength,
		Tos:       m.Tos,
		Table:     m.Table,
		Protocol:  m.Protocol,
		Scope:     m.Scope,
		Type:      m.Type,
		Attributes: rtnetlink.RouteAttributes{
			Dst:      m.Attributes.Dst,
			OutIface: m.Attributes.OutIface,
			Priority: m.Attributes.Priority,
			Table:    m.Attributes.Table,
		},
	}
	data, err := req.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encode RTM_DELROUTE: %w", err)
	}
	return n.execute(unix.RTM_DELROUTE, 0, data)
}

// rules lists the policy routing rules of one family.
func (n *nsLink) rules(family uint8) ([]rtnetlink.RuleMessage, error) {
	data, err := (&rtnetlink.RuleMessage{Family: family}).MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encode RTM_GETRULE: %w", err)
	}
	msgs, err := n.dump(unix.RTM_GETRULE, data)
	if err != nil {
		return nil, err
	}
	var rules []rtnetlink.RuleMessage
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWRULE {
			continue
		}
		r, err := parseRule(m.Data)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// parseRule decodes an RTM_NEWRULE message: its header by the library, and
// by hand (see the top of the file) the attributes the package reads:
// FRA_PRIORITY, FRA_FWMARK, FRA_FWMASK and FRA_TABLE.
func parseRule(b []byte) (rtnetlink.RuleMessage, error) {
	var m rtnetlink.RuleMessage
	if len(b) < sizeofFibRuleHdr {
		return m, fmt.Errorf("decode RTM_NEWRULE: %d bytes, shorter than struct fib_rule_hdr", len(b))
	}
	if err := m.UnmarshalBinary(b[:sizeofFibRuleHdr]); err != nil {
		return m, fmt.Errorf("decode RTM_NEWRULE: %w", err)
	}
	a := &rtnetlink.RuleAttributes{}
	err := nlmsg.ScanAttrs(b, sizeofFibRuleHdr, func(ad *netlink.AttributeDecoder) {
		var v *uint32
		switch ad.Type() {
		case unix.FRA_PRIORITY:
			v = new(uint32)
			a.Priority = v
		case unix.FRA_FWMARK:
			v = new(uint32)
			a.FwMark = v
		case unix.FRA_FWMASK:
			v = new(uint32)
			a.FwMask = v
		case unix.FRA_TABLE:
			v = new(uint32)
			a.Table = v
		default:
			return
		}
		*v = ad.Uint32()
	})
	if err != nil {
		return m, fmt.Errorf("decode RTM_NEWRULE: %w", err)
	}
	m.Attributes = a
	return m, nil
}

// ruleTable returns a rule's table: FRA_TABLE, as the header holds only
// ids below 256.
func ruleTable(m rtnetlink.RuleMessage) uint32 {
	if m.Attributes != nil && m.Attributes.Table != nil {
		return *m.Attributes.Table
	}
	return uint32(m.Table)
}

// ruleMark returns a rule's fwmark and its mask (nil without FRA_FWMASK).
func ruleMark(m rtnetlink.RuleMessage) (mark uint32, mask *uint32) {
	if m.Attributes == nil {
		return 0, nil
	}
	if m.Attributes.FwMark != nil {
		mark = *m.Attributes.FwMark
	}
	return mark, m.Attributes.FwMask
}

// setUp brings the interface index up (`ip link set dev X up`).
func (n *nsLink) setUp(index int) error {
	m := rtnetlink.LinkMessage{Family: unix.AF_UNSPEC, Index: uint32(index), Flags: unix.IFF_UP, Change: unix.IFF_UP}
	data, err := m.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encode RTM_NEWLINK: %w", err)
	}
	return n.execute(unix.RTM_NEWLINK, 0, data)
}

// addRule adds the rule m, failing with EEXIST when an identical one is
// there (NLM_F_EXCL, as `ip rule add`).
func (n *nsLink) addRule(m *rtnetlink.RuleMessage) error {
	data, err := m.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encode RTM_NEWRULE: %w", err)
	}
	return n.execute(unix.RTM_NEWRULE, netlink.Create|netlink.Excl, data)
}

// deleteRule deletes the first rule that has the selectors m has (rule_find
// in net/core/fib_rules.c; those m leaves out match any): with its
// priority, one rule.
func (n *nsLink) deleteRule(m *rtnetlink.RuleMessage) error {
	data, err := m.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encode RTM_DELRULE: %w", err)
	}
	return n.execute(unix.RTM_DELRULE, 0, data)
}
