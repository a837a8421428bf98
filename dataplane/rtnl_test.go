package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jsimonetti/rtnetlink/v2"
	"github.com/jsimonetti/rtnetlink/v2/driver"
	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/genetlink/genltest"
	"github.com/mdlayher/netlink"
	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/testenv"
)

// The tests of rtnl.go and fou.go: what is decoded by hand, round-tripped
// against encodings made without this package's code, and every request
// against the kernel, with vishvananda/netlink (the stack this package
// used before) as the independent reader of what the kernel holds.

// fraDSCP is FRA_DSCP (include/uapi/linux/fib_rules.h, kernel 6.11+, not in
// x/sys): the first rule attribute jsimonetti/rtnetlink v2.3.0 does not know.
const fraDSCP = 25

// appendAttrs appends attributes to an encoded message, for those the
// library cannot encode.
func appendAttrs(tb testing.TB, msg []byte, encode func(*netlink.AttributeEncoder)) []byte {
	tb.Helper()
	ae := netlink.NewAttributeEncoder()
	encode(ae)
	b, err := ae.Encode()
	if err != nil {
		tb.Fatal(err)
	}
	return append(msg, b...)
}

func mustMarshal(tb testing.TB, m interface{ MarshalBinary() ([]byte, error) }) []byte {
	tb.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestParseLink: the library's encoding of a link, with what it cannot
// encode appended, decodes to what was encoded.
func TestParseLink(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x2a}
	vni := uint32(42)
	vxlanPort := uint16(8472)
	// IFLA_GENEVE_ID 7, then IFLA_GENEVE_PORT 6081 as the kernel puts it
	// (nla_put_be16: 0x17 0xc1), spelled out rather than encoded by code
	// that could share a mistake with the decoder.
	geneveData := []byte{
		8, 0, unix.IFLA_GENEVE_ID, 0, 7, 0, 0, 0,
		6, 0, unix.IFLA_GENEVE_PORT, 0, 0x17, 0xc1, 0, 0,
	}
	for _, tt := range []struct {
		name  string
		msg   rtnetlink.LinkMessage
		extra func(*netlink.AttributeEncoder)
		want  link
	}{
		{
			name: "veth with its peer in another netns",
			msg: rtnetlink.LinkMessage{Index: 7, Flags: unix.IFF_UP, Attributes: &rtnetlink.LinkAttributes{
				Name: "veth12ab", Address: mac, Type: 3, Info: &rtnetlink.LinkInfo{Kind: "veth"}}},
			extra: func(ae *netlink.AttributeEncoder) { ae.Int32(unix.IFLA_LINK_NETNSID, 5) },
			want:  link{index: 7, name: "veth12ab", flags: unix.IFF_UP, kind: "veth", mac: mac, peer: 3, peerNsid: 5},
		},
		{
			name: "veth with its peer in the same netns",
			msg: rtnetlink.LinkMessage{Index: 8, Attributes: &rtnetlink.LinkAttributes{
				Name: "veth0", Address: mac, Type: 9, Info: &rtnetlink.LinkInfo{Kind: "veth"}}},
			want: link{index: 8, name: "veth0", kind: "veth", mac: mac, peer: 9, peerNsid: -1},
		},
		{
			name: "netns id 0",
			msg:  rtnetlink.LinkMessage{Index: 9, Attributes: &rtnetlink.LinkAttributes{Name: "veth1", Type: 2}},
			extra: func(ae *netlink.AttributeEncoder) {
				ae.Int32(unix.IFLA_LINK_NETNSID, 0)
			},
			want: link{index: 9, name: "veth1", peer: 2, peerNsid: 0},
		},
		{
			name: "loopback",
			msg: rtnetlink.LinkMessage{Index: 1, Flags: unix.IFF_UP | unix.IFF_LOOPBACK, Attributes: &rtnetlink.LinkAttributes{
				Name: "lo", Address: make(net.HardwareAddr, 6)}},
			want: link{index: 1, name: "lo", flags: unix.IFF_UP | unix.IFF_LOOPBACK, mac: make(net.HardwareAddr, 6), peerNsid: -1},
		},
		{
			name: "vxlan",
			msg: rtnetlink.LinkMessage{Index: 10, Attributes: &rtnetlink.LinkAttributes{Name: "vxlan0",
				Info: &rtnetlink.LinkInfo{Kind: "vxlan", Data: &driver.Vxlan{ID: &vni, Port: &vxlanPort}}}},
			want: link{index: 10, name: "vxlan0", kind: "vxlan", peerNsid: -1, udpPort: 8472},
		},
		{
			name: "geneve",
			msg: rtnetlink.LinkMessage{Index: 11, Attributes: &rtnetlink.LinkAttributes{Name: "geneve0",
				Info: &rtnetlink.LinkInfo{Kind: "geneve", Data: &rtnetlink.LinkData{Name: "geneve", Data: geneveData}}}},
			want: link{index: 11, name: "geneve0", kind: "geneve", peerNsid: -1, udpPort: 6081},
		},
		{
			name: "another kind's data is not a port",
			msg: rtnetlink.LinkMessage{Index: 12, Attributes: &rtnetlink.LinkAttributes{Name: "ipip0",
				Info: &rtnetlink.LinkInfo{Kind: "ipip", Data: &rtnetlink.LinkData{Name: "ipip", Data: geneveData}}}},
			want: link{index: 12, name: "ipip0", kind: "ipip", peerNsid: -1},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := mustMarshal(t, &tt.msg)
			if tt.extra != nil {
				b = appendAttrs(t, b, tt.extra)
			}
			got, err := parseLink(b)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", tt.want) {
				t.Errorf("parseLink:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestParseLinkMalformed: a truncated IFLA_LINK_NETNSID, which the
// library's decoder skips, fails the message rather than reading as netns
// id 0.
func TestParseLinkMalformed(t *testing.T) {
	b := mustMarshal(t, &rtnetlink.LinkMessage{Index: 3, Attributes: &rtnetlink.LinkAttributes{Name: "veth0"}})
	b = append(b, 6, 0, unix.IFLA_LINK_NETNSID, 0, 1, 0, 0, 0) // 2 bytes of an s32
	if _, err := parseLink(b); err == nil {
		t.Error("parseLink accepted a 2-byte IFLA_LINK_NETNSID")
	}
}

// TestParseRule: a rule carrying attributes the library does not know,
// before and after the ones read, decodes to its header, priority, mark,
// mask and table.
func TestParseRule(t *testing.T) {
	hdr := mustMarshal(t, &rtnetlink.RuleMessage{Family: unix.AF_INET, Table: 100, Action: unix.FR_ACT_TO_TBL})
	b := appendAttrs(t, hdr, func(ae *netlink.AttributeEncoder) {
		ae.Uint8(fraDSCP, 10)
		ae.Uint32(unix.FRA_TABLE, 100)
		ae.Uint32(unix.FRA_PRIORITY, 32765)
		ae.Uint8(unix.FRA_PROTOCOL, unix.RTPROT_BOOT)
		ae.Uint32(unix.FRA_FWMARK, 0x400)
		ae.Uint32(unix.FRA_FWMASK, 0xfff)
		ae.Uint8(fraDSCP+1, 0) // FRA_FLOWLABEL and later: unknown too
	})
	if err := new(rtnetlink.RuleMessage).UnmarshalBinary(b); err != nil {
		t.Logf("the library's decoder: %v (which is why parseRule reads the attributes itself)", err)
	}
	got, err := parseRule(b)
	if err != nil {
		t.Fatal(err)
	}
	mark, mask := ruleMark(got)
	if got.Family != unix.AF_INET || got.Action != unix.FR_ACT_TO_TBL || ruleTable(got) != 100 ||
		got.Attributes.Priority == nil || *got.Attributes.Priority != 32765 || mark != 0x400 || mask == nil || *mask != 0xfff {
		t.Errorf("parseRule: %+v %+v", got, got.Attributes)
	}

	// Without FRA_FWMASK the mask is absent, not 0; a table of 256 and
	// more is in FRA_TABLE alone.
	b = appendAttrs(t, mustMarshal(t, &rtnetlink.RuleMessage{Family: unix.AF_INET6, Table: unix.RT_TABLE_UNSPEC}), func(ae *netlink.AttributeEncoder) {
		ae.Uint32(unix.FRA_TABLE, 1000)
		ae.Uint32(unix.FRA_FWMARK, 0x400)
	})
	got, err = parseRule(b)
	if err != nil {
		t.Fatal(err)
	}
	if mark, mask := ruleMark(got); mark != 0x400 || mask != nil || ruleTable(got) != 1000 || got.Family != unix.AF_INET6 {
		t.Errorf("parseRule: mark %#x mask %v table %d family %d", mark, mask, ruleTable(got), got.Family)
	}
	if _, err := parseRule(hdr[:8]); err == nil {
		t.Error("parseRule accepted a short header")
	}
}

// TestParseFou: the port of a FOU_CMD_GET reply, in network byte order.
func TestParseFou(t *testing.T) {
	// FOU_ATTR_PORT 5555 (0x15b3, nla_put_be16), FOU_ATTR_AF AF_INET,
	// FOU_ATTR_IPPROTO 4, as fou_fill_info puts them.
	b := []byte{
		6, 0, fouAttrPort, 0, 0x15, 0xb3, 0, 0,
		5, 0, 2, 0, unix.AF_INET, 0, 0, 0,
		5, 0, 3, 0, 4, 0, 0, 0,
	}
	port, err := parseFou(b)
	if err != nil || port != 5555 {
		t.Errorf("parseFou = %d, %v; want 5555", port, err)
	}
}

// TestFouPorts: the fou family is found in the family dump (never asked
// for by name, which loads the module) and its receivers listed with one
// dump; a kernel without the family has no FOU ports.
func TestFouPorts(t *testing.T) {
	const fouID = 0x1d
	family := func(id uint16, name string) genetlink.Message {
		ae := netlink.NewAttributeEncoder()
		ae.Uint16(unix.CTRL_ATTR_FAMILY_ID, id)
		ae.String(unix.CTRL_ATTR_FAMILY_NAME, name)
		ae.Uint32(unix.CTRL_ATTR_VERSION, 1)
		b, err := ae.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return genetlink.Message{Header: genetlink.Header{Command: unix.CTRL_CMD_NEWFAMILY, Version: 2}, Data: b}
	}
	receiver := func(port uint16) genetlink.Message {
		return genetlink.Message{Header: genetlink.Header{Command: fouCmdGet, Version: fouGenlVersion},
			Data: []byte{6, 0, fouAttrPort, 0, byte(port >> 8), byte(port), 0, 0}}
	}
	for _, tt := range []struct {
		name     string
		families []genetlink.Message
		want     []uint16
	}{
		{"fou", []genetlink.Message{family(unix.GENL_ID_CTRL, "nlctrl"), family(fouID, fouGenlName)}, []uint16{5555, 6635}},
		{"no fou", []genetlink.Message{family(unix.GENL_ID_CTRL, "nlctrl")}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := genltest.Dial(func(greq genetlink.Message, nreq netlink.Message) ([]genetlink.Message, error) {
				switch {
				case nreq.Header.Type == unix.GENL_ID_CTRL && greq.Header.Command == unix.CTRL_CMD_GETFAMILY:
					if nreq.Header.Flags&netlink.Dump == 0 || len(greq.Data) != 0 {
						return nil, fmt.Errorf("a family asked for by name (flags %v, %d bytes of attributes)", nreq.Header.Flags, len(greq.Data))
					}
					return tt.families, nil
				case nreq.Header.Type == fouID && greq.Header.Command == fouCmdGet && greq.Header.Version == fouGenlVersion &&
					nreq.Header.Flags&netlink.Dump != 0:
					return []genetlink.Message{receiver(5555), receiver(6635)}, nil
				}
				return nil, fmt.Errorf("unexpected request: %+v %+v", nreq.Header, greq.Header)
			})
			defer c.Close()
			got, err := fouPorts(c)
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("fouPorts = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

// newTestNetns makes an empty network namespace with lo up and eth0 (a
// veth, as not every kernel has the dummy module), and returns its path and
// a handle of the old stack in it.
func newTestNetns(t *testing.T) (string, *vnl.Handle) {
	t.Helper()
	ns := testutil.NewNetns(t)
	h, err := vnl.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	addVeth(t, h, "eth0")
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns)), h
}

// addVeth adds a veth called name (and its peer name+"p"), both up.
func addVeth(t *testing.T, h *vnl.Handle, name string) {
	t.Helper()
	veth := &vnl.Veth{LinkAttrs: vnl.LinkAttrs{Name: name}, PeerName: name + "p"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	for _, n := range []string{name, name + "p"} {
		l, err := h.LinkByName(n)
		if err == nil {
			err = h.LinkSetUp(l)
		}
		if err != nil {
			t.Fatalf("set %s up: %v", n, err)
		}
	}
}

func mustOpenNetns(t *testing.T, path string) *nsLink {
	t.Helper()
	n, err := openNetns(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// markRules returns the rules of family with mark and table TProxyMark and
// TProxyTable, as the old stack reads them.
func markRules(t *testing.T, h *vnl.Handle, family int) []vnl.Rule {
	t.Helper()
	rules, err := h.RuleList(family)
	if err != nil {
		t.Fatal(err)
	}
	var out []vnl.Rule
	for _, r := range rules {
		if r.Mark == mrasm.TProxyMark || r.Table == mrasm.TProxyTable {
			out = append(out, r)
		}
	}
	return out
}

func tproxyRoutes(t *testing.T, h *vnl.Handle, family int) []vnl.Route {
	t.Helper()
	routes, err := h.RouteListFiltered(family, &vnl.Route{Table: mrasm.TProxyTable}, vnl.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	return routes
}

// TestZtunnelRouting: setupZtunnelNetns leaves, in both families, one rule
// `fwmark 0x400/0xfff lookup 100` and one route `local default dev lo table
// 100`, however often it runs and whatever rule of another tool is there
// (one with FRA_DSCP, which the library cannot decode); removeLocalDelivery
// removes them, leaves the other rule, and finds nothing to do the second
// time.
func TestZtunnelRouting(t *testing.T) {
	testutil.RequirePrivileged(t)
	path, h := newTestNetns(t)
	n := mustOpenNetns(t, path)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}

	// Another tool's rule: from all dscp 10 lookup 200, priority 1000.
	prio, table := uint32(1000), uint32(200)
	other := appendAttrs(t, mustMarshal(t, &rtnetlink.RuleMessage{Family: unix.AF_INET, Table: 200, Action: unix.FR_ACT_TO_TBL,
		Attributes: &rtnetlink.RuleAttributes{Priority: &prio, Table: &table}}), func(ae *netlink.AttributeEncoder) { ae.Uint8(fraDSCP, 10) })
	if err := n.execute(unix.RTM_NEWRULE, netlink.Create|netlink.Excl, other); err != nil {
		t.Fatalf("add a rule with FRA_DSCP (kernel 6.11+): %v", err)
	}

	z := Ztunnel{Name: "test/ztunnel", Netns: path}
	for range 2 {
		mac, err := setupZtunnelNetns(DefaultProcSysNet, z)
		if err != nil {
			t.Fatal(err)
		}
		if eth, err := h.LinkByName("eth0"); err != nil || !bytes.Equal(mac, eth.Attrs().HardwareAddr) {
			t.Errorf("setupZtunnelNetns returned MAC %s, eth0 has %v (%v)", mac, eth.Attrs().HardwareAddr, err)
		}
		for _, fam := range []int{vnl.FAMILY_V4, vnl.FAMILY_V6} {
			rules := markRules(t, h, fam)
			if len(rules) != 1 || rules[0].Mark != mrasm.TProxyMark || rules[0].Mask == nil || *rules[0].Mask != mrasm.TProxyMask ||
				rules[0].Table != mrasm.TProxyTable {
				t.Errorf("family %d: rules %+v, want one fwmark 0x400/0xfff lookup 100", fam, rules)
			}
			routes := tproxyRoutes(t, h, fam)
			// IPv6 routes have no scope (rt6_fill_node says universe).
			if len(routes) != 1 || routes[0].Type != unix.RTN_LOCAL || fam == vnl.FAMILY_V4 && routes[0].Scope != vnl.SCOPE_HOST ||
				routes[0].LinkIndex != lo.Attrs().Index || routes[0].Dst == nil {
				t.Errorf("family %d: routes of table 100 %+v, want one local default dev lo", fam, routes)
			} else if ones, _ := routes[0].Dst.Mask.Size(); ones != 0 {
				t.Errorf("family %d: route to %s, want the default", fam, routes[0].Dst)
			}
		}
	}

	for range 2 {
		if err := removeLocalDelivery(path); err != nil {
			t.Fatal(err)
		}
		for _, fam := range []int{vnl.FAMILY_V4, vnl.FAMILY_V6} {
			if rules := markRules(t, h, fam); len(rules) != 0 {
				t.Errorf("family %d: rules left: %+v", fam, rules)
			}
			if routes := tproxyRoutes(t, h, fam); len(routes) != 0 {
				t.Errorf("family %d: routes left in table 100: %+v", fam, routes)
			}
		}
		rules, err := h.RuleList(vnl.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(rules, func(r vnl.Rule) bool { return r.Priority == 1000 && r.Table == 200 }) {
			t.Errorf("the other tool's rule went too: %+v", rules)
		}
	}

	if err := removeLocalDelivery(path + ".gone"); err != nil {
		t.Errorf("removeLocalDelivery of a netns that is gone: %v", err)
	}
}

// TestLinkGone: looking up an index or a name the netns lacks fails with an
// error isGone recognises, and Enroll with ErrInterfaceGone.
func TestLinkGone(t *testing.T) {
	testutil.RequirePrivileged(t)
	path, _ := newTestNetns(t)
	n := mustOpenNetns(t, path)
	if _, err := n.link(1 << 20); !isGone(err) {
		t.Errorf("link of a missing index: %v, not recognised as gone", err)
	}
	if _, err := n.linkByName("missing0"); !isGone(err) {
		t.Errorf("linkByName of a missing name: %v, not recognised as gone", err)
	}
	if _, err := n.linkByName("eth0"); err != nil {
		t.Errorf("linkByName eth0: %v", err)
	}
	if isGone(errors.New("no such device")) || isGone(unix.ENOENT) {
		t.Error("isGone recognises what is not ENODEV")
	}

	d := &Dataplane{nl: n, log: slog.New(slog.DiscardHandler)}
	err := d.Enroll(Pod{Name: "default/gone", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.9")}, HostIfindex: 1 << 20, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}})
	if !errors.Is(err, ErrInterfaceGone) {
		t.Errorf("Enroll of a pod whose host veth is gone: %v, want ErrInterfaceGone", err)
	}
}

// TestLinkVeth: a pod's host veth as the node's netns shows it, and its
// peer's MAC read in the pod's netns, agree with the old stack; its
// counters move with the pod's packets.
func TestLinkVeth(t *testing.T) {
	testutil.RequirePrivileged(t)
	node := testenv.NewNode(t, testenv.NodeOptions{})
	pod := node.AddPod("pod", testenv.NotAmbient)
	n := mustOpenNetns(t, node.Path())

	host, err := n.link(pod.HostVethIndex)
	if err != nil {
		t.Fatal(err)
	}
	h, err := vnl.NewHandleAt(node.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	old, err := h.LinkByIndex(pod.HostVethIndex)
	if err != nil {
		t.Fatal(err)
	}
	if host.name != pod.HostVeth || host.kind != "veth" || !bytes.Equal(host.mac, pod.HostVethMAC) ||
		host.peer != old.Attrs().ParentIndex || host.peer <= 0 || host.peerNsid != old.Attrs().NetNsID || host.peerNsid < 0 {
		t.Errorf("link %d: %+v; the old stack: %+v", pod.HostVethIndex, host, old.Attrs())
	}
	if byName, err := n.linkByName(pod.HostVeth); err != nil || byName.index != pod.HostVethIndex {
		t.Errorf("linkByName %s: index %d, %v; want %d", pod.HostVeth, byName.index, err, pod.HostVethIndex)
	}
	mac, err := podMAC(pod.Path(), host)
	if err != nil || !bytes.Equal(mac, pod.MAC) {
		t.Errorf("podMAC = %s, %v; want %s", mac, err, pod.MAC)
	}

	if host.stats == nil {
		t.Fatal("no statistics")
	}
	before := *host.stats
	// Unconnected, so that the node's port unreachable does not fail the
	// next write.
	conn, err := pod.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(node.IPv4, 9))
	for range 3 {
		if _, err := conn.WriteTo([]byte("count me"), dst); err != nil {
			t.Fatal(err)
		}
	}
	after, err := n.link(pod.HostVethIndex)
	if err != nil {
		t.Fatal(err)
	}
	if after.stats.rxPackets < before.rxPackets+3 {
		t.Errorf("received packets %d, then %d after the pod sent 3", before.rxPackets, after.stats.rxPackets)
	}
	vs := func() *vnl.LinkStatistics {
		l, err := h.LinkByIndex(pod.HostVethIndex)
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().Statistics
	}()
	if vs.RxPackets < after.stats.rxPackets || vs.TxPackets < after.stats.txPackets {
		t.Errorf("counters rx %d tx %d; the old stack, read later: rx %d tx %d", after.stats.rxPackets, after.stats.txPackets, vs.RxPackets, vs.TxPackets)
	}
}

// TestNodeAddresses: every address of the netns but loopback, link-local,
// host scope and kube-ipvs0's, each once.
func TestNodeAddresses(t *testing.T) {
	testutil.RequirePrivileged(t)
	path, h := newTestNetns(t)
	d := &Dataplane{nl: mustOpenNetns(t, path), log: slog.New(slog.DiscardHandler)}
	add := func(ifname, cidr string, scope vnl.Scope) {
		t.Helper()
		l, err := h.LinkByName(ifname)
		if err != nil {
			t.Fatal(err)
		}
		a, err := vnl.ParseAddr(cidr)
		if err != nil {
			t.Fatal(err)
		}
		a.Scope = int(scope)
		a.Flags = unix.IFA_F_NODAD
		if err := h.AddrAdd(l, a); err != nil {
			t.Fatalf("add %s to %s: %v", cidr, ifname, err)
		}
	}
	addVeth(t, h, "kube-ipvs0")
	addVeth(t, h, "d1")
	add("eth0", "198.51.100.1/24", vnl.SCOPE_UNIVERSE)
	add("eth0", "2001:db8::1/64", vnl.SCOPE_UNIVERSE)
	add("eth0", "fe80::99/64", vnl.SCOPE_LINK)
	add("eth0", "198.51.100.9/32", vnl.SCOPE_HOST)
	add("d1", "198.51.100.1/32", vnl.SCOPE_UNIVERSE)
	add("d1", "203.0.113.7/32", vnl.SCOPE_UNIVERSE)
	add("kube-ipvs0", "10.96.0.10/32", vnl.SCOPE_UNIVERSE)
	add("lo", "127.0.0.2/8", vnl.SCOPE_HOST)

	got, err := d.NodeAddresses()
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8::1")}
	if !slices.Equal(got, want) {
		t.Errorf("NodeAddresses = %v, want %v", got, want)
	}
}

// TestWatchNode: a new link and a new address of each family in the netns
// are announced; after ctx ends nothing is, and no warning is logged.
func TestWatchNode(t *testing.T) {
	testutil.RequirePrivileged(t)
	ns := testutil.NewNetns(t)
	// No IPv6 link-local addresses, whose DAD would announce a change of
	// its own a second after each new link.
	testutil.MustDo(t, ns, func() error {
		return sysctlDir(DefaultProcSysNet).write(map[string]string{"ipv6/conf/default/addr_gen_mode": "1"})
	})
	h, err := vnl.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	addVeth(t, h, "eth0")
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}

	logs := &recordHandler{}
	d := &Dataplane{nl: mustOpenNetns(t, fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns))), log: slog.New(logs)}
	changed := make(chan struct{}, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := d.WatchNode(ctx, func() { changed <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	// quiet waits until no change has been announced for a while: a
	// change comes in several messages.
	quiet := func() {
		t.Helper()
		deadline := time.After(3 * time.Second)
		for {
			select {
			case <-changed:
			case <-time.After(300 * time.Millisecond):
				return
			case <-deadline:
				t.Fatal("changes keep being announced")
			}
		}
	}
	announced := func(what string, change func() error) bool {
		t.Helper()
		quiet()
		if err := change(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		select {
		case <-changed:
			return true
		case <-time.After(2 * time.Second):
			return false
		}
	}

	if !announced("add a link", func() error {
		return h.LinkAdd(&vnl.Veth{LinkAttrs: vnl.LinkAttrs{Name: "d1"}, PeerName: "d1p"})
	}) {
		t.Error("a new link was not announced")
	}
	if !announced("add an IPv6 address", func() error {
		return h.AddrAdd(eth, &vnl.Addr{IPNet: &net.IPNet{IP: net.ParseIP("2001:db8::5"), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD})
	}) {
		t.Error("a new IPv6 address was not announced")
	}
	if !announced("add an IPv4 address", func() error {
		return h.AddrAdd(eth, &vnl.Addr{IPNet: &net.IPNet{IP: net.ParseIP("198.51.100.5").To4(), Mask: net.CIDRMask(24, 32)}})
	}) {
		t.Error("a new IPv4 address was not announced")
	}

	cancel()
	if announced("add a link after the end", func() error {
		return h.LinkAdd(&vnl.Veth{LinkAttrs: vnl.LinkAttrs{Name: "d2"}, PeerName: "d2p"})
	}) {
		t.Error("a change was announced after ctx ended")
	}
	if w := logs.warnings(); len(w) > 0 {
		t.Errorf("warnings: %v", w)
	}
}

// recordHandler keeps the messages of warnings and errors.
type recordHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		h.mu.Lock()
		h.msgs = append(h.msgs, r.Message)
		h.mu.Unlock()
	}
	return nil
}

func (h *recordHandler) warnings() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.msgs)
}

// TestFouPortsKernel: the FOU receivers of a netns, over the kernel's
// generic netlink; on a kernel without fou, none and no error.
func TestFouPortsKernel(t *testing.T) {
	testutil.RequirePrivileged(t)
	path, _ := newTestNetns(t)
	n := mustOpenNetns(t, path)
	var want []uint16
	err := n.Do(func() error {
		return vnl.FouAdd(vnl.Fou{Family: vnl.FAMILY_V4, Port: 5555, Protocol: 4})
	})
	if err == nil {
		want = []uint16{5555}
	} else {
		t.Logf("no FOU receiver (%v): checked without one", err)
	}
	got, err := n.fouPorts()
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("fouPorts = %v, %v; want %v", got, err, want)
	}
}
