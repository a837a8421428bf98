package resolve

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jsimonetti/rtnetlink/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/nlmsg"
	"github.com/meshredirect/meshredirect/testenv"
)

// The unit tests here cover what rtnl.go adds by hand to the library's
// messages, each encoded and decoded again; the tests that resolve pods
// cover it against the kernel, and TestRouteNexthopObject RTA_NH_ID.

// attrsOf returns the attributes after a message's fixed header, by type.
func attrsOf(t *testing.T, msg []byte, hdr int) map[uint16][]byte {
	t.Helper()
	attrs := map[uint16][]byte{}
	err := nlmsg.ScanAttrs(msg, hdr, func(ad *netlink.AttributeDecoder) {
		attrs[ad.Type()] = ad.Bytes()
	})
	if err != nil {
		t.Fatal(err)
	}
	return attrs
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func TestLinkRequest(t *testing.T) {
	for _, tc := range []struct {
		name   string
		index  int
		master int // 0 for none
		nsid   int
		want   map[uint16][]byte
	}{
		{"node's netns", 7, 0, -1, map[uint16][]byte{unix.IFLA_EXT_MASK: u32(nlmsg.SkipStats)}},
		{"by netns id", 7, 0, 0, map[uint16][]byte{unix.IFLA_EXT_MASK: u32(nlmsg.SkipStats), unix.IFLA_TARGET_NETNSID: u32(0)}},
		{"bridge ports", 0, 9, -1, map[uint16][]byte{unix.IFLA_EXT_MASK: u32(nlmsg.SkipStats), unix.IFLA_MASTER: u32(9)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var master *uint32
			if tc.master != 0 {
				m := uint32(tc.master)
				master = &m
			}
			b, err := linkRequest(rtnetlink.LinkMessage{Index: uint32(tc.index)}, master, tc.nsid)
			if err != nil {
				t.Fatal(err)
			}
			var m rtnetlink.LinkMessage
			if err := m.UnmarshalBinary(b); err != nil {
				t.Fatal(err)
			}
			if int(m.Index) != tc.index || m.Family != unix.AF_UNSPEC || m.Type != 0 || m.Flags != 0 || m.Change != 0 {
				t.Errorf("header %+v, want ifindex %d and zeros (strict checking refuses others)", m, tc.index)
			}
			if diff := cmp.Diff(tc.want, attrsOf(t, b, unix.SizeofIfInfomsg)); diff != "" {
				t.Errorf("attributes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseLink(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x2a}
	master, peer := uint32(4), uint32(2)
	lm := rtnetlink.LinkMessage{
		Type:  unix.ARPHRD_ETHER,
		Index: 12,
		Flags: unix.IFF_UP | unix.IFF_BROADCAST,
		Attributes: &rtnetlink.LinkAttributes{
			Name:    "veth12ab",
			Address: mac,
			Type:    peer, // IFLA_LINK
			Master:  &master,
			Info:    &rtnetlink.LinkInfo{Kind: "veth"},
		},
	}
	b, err := lm.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	want := link{index: 12, name: "veth12ab", kind: "veth", arphrd: unix.ARPHRD_ETHER, up: true, mac: mac, master: 4, peer: 2, peerNsid: -1}

	parse := func(b []byte) link {
		t.Helper()
		l, err := parseLink(netlink.Message{Header: netlink.Header{Type: unix.RTM_NEWLINK}, Data: b})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	if diff := cmp.Diff(want, parse(b), cmp.AllowUnexported(link{})); diff != "" {
		t.Errorf("without IFLA_LINK_NETNSID (-want +got):\n%s", diff)
	}

	for _, nsid := range []int{0, 5} {
		withNsid, err := appendAttrs(bytes.Clone(b), func(ae *netlink.AttributeEncoder) {
			ae.Int32(unix.IFLA_LINK_NETNSID, int32(nsid))
		})
		if err != nil {
			t.Fatal(err)
		}
		w := want
		w.peerNsid = nsid
		if diff := cmp.Diff(w, parse(withNsid), cmp.AllowUnexported(link{})); diff != "" {
			t.Errorf("IFLA_LINK_NETNSID %d (-want +got):\n%s", nsid, diff)
		}
	}

	// An attribute whose length runs past the message, which the library's
	// LinkMessage would let pass.
	if _, err := parseLink(netlink.Message{Header: netlink.Header{Type: unix.RTM_NEWLINK}, Data: append(bytes.Clone(b), 0xff, 0, 1, 0)}); err == nil {
		t.Error("a malformed attribute decodes")
	}
	if _, err := parseLink(netlink.Message{Header: netlink.Header{Type: unix.RTM_NEWADDR}, Data: b}); err == nil {
		t.Error("an RTM_NEWADDR decodes as a link")
	}
}

func TestParseRoute(t *testing.T) {
	v4 := func(s string) net.IP { return net.IP(netip.MustParseAddr(s).AsSlice()) }
	for _, tc := range []struct {
		name string
		msg  rtnetlink.RouteMessage
		nhid uint32 // RTA_NH_ID, appended by hand when not 0
		want route
	}{
		{
			"device route",
			rtnetlink.RouteMessage{Family: unix.AF_INET, DstLength: 32, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST,
				Attributes: rtnetlink.RouteAttributes{Dst: v4("198.19.0.5"), OutIface: 7, Table: unix.RT_TABLE_MAIN}},
			0,
			route{dst: netip.MustParsePrefix("198.19.0.5/32"), typ: unix.RTN_UNICAST, table: unix.RT_TABLE_MAIN, oif: 7},
		},
		{
			"via gateway, table above 255",
			rtnetlink.RouteMessage{Family: unix.AF_INET, DstLength: 24, Table: unix.RT_TABLE_COMPAT, Type: unix.RTN_UNICAST,
				Attributes: rtnetlink.RouteAttributes{Dst: v4("198.19.1.0"), Gateway: v4("198.18.0.2"), OutIface: 2, Table: 1000}},
			0,
			route{dst: netip.MustParsePrefix("198.19.1.0/24"), typ: unix.RTN_UNICAST, table: 1000, oif: 2, gateway: netip.MustParseAddr("198.18.0.2")},
		},
		{
			"ipv4 via ipv6 (RTA_VIA)",
			rtnetlink.RouteMessage{Family: unix.AF_INET, DstLength: 24, Type: unix.RTN_UNICAST,
				Attributes: rtnetlink.RouteAttributes{Dst: v4("198.19.2.0"), OutIface: 2,
					Via: &rtnetlink.RouteVia{Family: unix.AF_INET6, Addr: net.ParseIP("fe80::1")}}},
			0,
			route{dst: netip.MustParsePrefix("198.19.2.0/24"), typ: unix.RTN_UNICAST, oif: 2, gateway: netip.MustParseAddr("fe80::1")},
		},
		{
			"multipath",
			rtnetlink.RouteMessage{Family: unix.AF_INET, DstLength: 24, Type: unix.RTN_UNICAST,
				Attributes: rtnetlink.RouteAttributes{Dst: v4("198.19.3.0"), Multipath: []rtnetlink.NextHop{
					{Hop: rtnetlink.RTNextHop{IfIndex: 2}, Gateway: v4("198.18.0.2")},
					{Hop: rtnetlink.RTNextHop{IfIndex: 3}, Gateway: v4("198.18.1.2")},
				}}},
			0,
			route{dst: netip.MustParsePrefix("198.19.3.0/24"), typ: unix.RTN_UNICAST, multipath: true},
		},
		{
			"nexthop object",
			rtnetlink.RouteMessage{Family: unix.AF_INET6, DstLength: 128, Type: unix.RTN_UNICAST,
				Attributes: rtnetlink.RouteAttributes{Dst: net.ParseIP("fd10::5")}},
			77,
			route{dst: netip.MustParsePrefix("fd10::5/128"), typ: unix.RTN_UNICAST, nhid: 77},
		},
		{
			"ipv6 default, no RTA_DST",
			rtnetlink.RouteMessage{Family: unix.AF_INET6, Type: unix.RTN_UNICAST,
				Attributes: rtnetlink.RouteAttributes{OutIface: 2, Gateway: net.ParseIP("fe80::1")}},
			0,
			route{dst: netip.MustParsePrefix("::/0"), typ: unix.RTN_UNICAST, oif: 2, gateway: netip.MustParseAddr("fe80::1")},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.msg.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if tc.nhid != 0 {
				b, err = appendAttrs(b, func(ae *netlink.AttributeEncoder) { ae.Uint32(rtaNhID, tc.nhid) })
				if err != nil {
					t.Fatal(err)
				}
			}
			got, err := parseRoute(b)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(route{}), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
				cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestAddressRequest(t *testing.T) {
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		b, err := addressRequest(family, 3)
		if err != nil {
			t.Fatal(err)
		}
		var m rtnetlink.AddressMessage
		if err := m.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		if m.Family != family || m.PrefixLength != 0 || m.Flags != 0 || m.Scope != 0 || m.Index != 0 {
			t.Errorf("header %+v, want family %d and zeros (strict checking refuses others)", m, family)
		}
		// IFA_TARGET_NETNSID alone: inet_valid_dump_ifaddr_req refuses any
		// other attribute in a strict dump request.
		want := map[uint16][]byte{unix.IFA_TARGET_NETNSID: u32(3)}
		if diff := cmp.Diff(want, attrsOf(t, b, unix.SizeofIfAddrmsg)); diff != "" {
			t.Errorf("family %d: attributes (-want +got):\n%s", family, diff)
		}
	}
}

func TestNsidMessageRoundTrip(t *testing.T) {
	// A request (by fd), then replies (an id, none).
	for _, want := range []nsidMessage{
		{fd: 5, nsid: unix.NETNSA_NSID_NOT_ASSIGNED},
		{fd: -1, nsid: 0},
		{fd: -1, nsid: 1<<31 - 1},
		{fd: -1, nsid: unix.NETNSA_NSID_NOT_ASSIGNED},
	} {
		b, err := want.marshal()
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < sizeofRtGenmsg || b[0] != unix.AF_UNSPEC {
			t.Errorf("%+v: header %x", want, b)
		}
		got, err := parseNsidMessage(b)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%+v decodes as %+v", want, got)
		}
	}
	if _, err := parseNsidMessage([]byte{0, 0}); err == nil {
		t.Error("a short rtgenmsg decodes")
	}
}

// TestRouteNexthopObject reads a route through a nexthop object from the
// kernel: RTA_NH_ID, which the library does not decode, with the object's
// device (net.ipv4.nexthop_compat_mode=1, the default) and without it.
func TestRouteNexthopObject(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	h := mustHandle(t, node.Netns)
	dev := mustNotVeth(t, h, "nh0")
	res := mustResolver(t, node, Config{})
	v4, v6 := nth(spareV4, 77), nth(spareV6, 77)
	ipIn(t, node, "-4", "nexthop", "add", "id", "77", "dev", "nh0")
	ipIn(t, node, "-6", "nexthop", "add", "id", "78", "dev", "nh0")
	ipIn(t, node, "-4", "route", "add", host(v4).String(), "nhid", "77")
	ipIn(t, node, "-6", "route", "add", host(v6).String(), "nhid", "78")

	for _, compat := range []bool{true, false} {
		if !compat {
			if err := node.Do(func() error {
				return os.WriteFile("/proc/sys/net/ipv4/nexthop_compat_mode", []byte("0"), 0)
			}); err != nil {
				t.Fatal(err)
			}
		}
		for ip, nhid := range map[netip.Addr]uint32{v4: 77, v6: 78} {
			rt, err := getRoute(res.conn, ip)
			if err != nil {
				t.Fatal(err)
			}
			wantOif := 0
			if compat {
				wantOif = dev.Attrs().Index
			}
			if rt.nhid != nhid || rt.oif != wantOif || rt.dst != host(ip) {
				t.Errorf("compat mode %v: route to %s is %s via nexthop object %d on ifindex %d, want %s, %d, %d",
					compat, ip, rt.dst, rt.nhid, rt.oif, host(ip), nhid, wantOif)
			}
			_, err = res.Resolve([]netip.Addr{ip})
			want := "nh0"
			if !compat {
				want = "nexthop object"
			}
			if !errors.Is(err, ErrNotVeth) || !strings.Contains(err.Error(), want) {
				t.Errorf("compat mode %v: resolve %s: %v, want %v mentioning %q", compat, ip, err, ErrNotVeth, want)
			}
		}
	}
}

// ipIn runs ip(8) with args in the node's netns.
func ipIn(t *testing.T, node *testenv.Node, args ...string) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := node.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out.String())
	}
}
