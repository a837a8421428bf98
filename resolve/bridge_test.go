package resolve

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/testenv"
)

// bridgePod is a pod wired as the bridge CNI wires one: its host veth is a
// port of the node's bridge, its eth0 holds an address of the bridge's
// subnet, and the node routes the whole subnet to the bridge.
type bridgePod struct {
	hostVeth      string
	hostVethIndex int
	mac           net.HardwareAddr
	ipv4, ipv6    netip.Addr
}

// mustBridge adds the bridge cni0 to the node, with the first address of
// bridgeV4 and bridgeV6: the node's routes to those subnets go to it.
func mustBridge(t *testing.T, h *netlink.Handle) netlink.Link {
	t.Helper()
	br := mustLink(t, h, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cni0"}})
	for _, p := range []netip.Prefix{
		netip.PrefixFrom(nth(bridgeV4, 1), bridgeV4.Bits()),
		netip.PrefixFrom(nth(bridgeV6, 1), bridgeV6.Bits()),
	} {
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(br, a); err != nil {
			t.Fatalf("add %s to cni0: %v", p, err)
		}
	}
	return br
}

// mustBridgePod adds pod number i (from 2) to the bridge br.
func mustBridgePod(t *testing.T, h *netlink.Handle, br netlink.Link, i int) bridgePod {
	t.Helper()
	podNS := testutil.NewNetns(t)
	p := bridgePod{
		hostVeth: "cnivethpod" + string(rune('0'+i%10)),
		mac:      net.HardwareAddr{0x0a, 0x58, 0xc6, 0x13, 0xfa, byte(i)},
		ipv4:     nth(bridgeV4, i),
		ipv6:     nth(bridgeV6, i),
	}
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: p.hostVeth, MasterIndex: br.Attrs().Index},
		PeerName:         "eth0",
		PeerHardwareAddr: p.mac,
		PeerNamespace:    netlink.NsFd(int(podNS)),
	}
	hostEnd := mustLink(t, h, veth)
	p.hostVethIndex = hostEnd.Attrs().Index

	ph := mustHandle(t, podNS)
	eth0, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, pfx := range []netip.Prefix{
		netip.PrefixFrom(p.ipv4, bridgeV4.Bits()),
		netip.PrefixFrom(p.ipv6, bridgeV6.Bits()),
	} {
		if err := ph.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(pfx), Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatalf("add %s to the eth0 of bridge pod %d: %v", pfx, i, err)
		}
	}
	if err := ph.LinkSetUp(eth0); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestResolveBridge(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	ptp := node.AddPod("ptp", testenv.Ambient) // the two wirings side by side
	h := mustHandle(t, node.Netns)
	br := mustBridge(t, h)
	pods := []bridgePod{mustBridgePod(t, h, br, 2), mustBridgePod(t, h, br, 3), mustBridgePod(t, h, br, 4)}
	// A port that is not a veth, which the search passes over.
	notVeth := mustNotVeth(t, h, "cniport0")
	if err := h.LinkSetMaster(notVeth, br); err != nil {
		t.Fatal(err)
	}
	res := mustResolver(t, node, Config{})

	// The node's routes to the pods are the bridge's subnet routes.
	for _, ip := range []netip.Addr{pods[1].ipv4, pods[1].ipv6} {
		routes, err := h.RouteGet(ip.AsSlice())
		if err != nil || len(routes) == 0 || routes[0].LinkIndex != br.Attrs().Index {
			t.Fatalf("route to %s: %v %v, want via cni0", ip, routes, err)
		}
	}

	for _, tc := range []struct {
		name string
		pod  bridgePod
		ips  []netip.Addr
	}{
		{"ipv4", pods[1], []netip.Addr{pods[1].ipv4}},
		{"ipv6", pods[2], []netip.Addr{pods[2].ipv6}},
		{"dual stack", pods[0], []netip.Addr{pods[0].ipv4, pods[0].ipv6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := res.Resolve(tc.ips)
			if err != nil {
				t.Fatal(err)
			}
			if got.Ifindex != tc.pod.hostVethIndex || got.Name != tc.pod.hostVeth {
				t.Errorf("interface %s (ifindex %d), want %s (ifindex %d)", got.Name, got.Ifindex, tc.pod.hostVeth, tc.pod.hostVethIndex)
			}
			if got.PeerMAC.String() != tc.pod.mac.String() {
				t.Errorf("peer MAC %s, want %s", got.PeerMAC, tc.pod.mac)
			}
			if got.Via != ViaPeerAddress {
				t.Errorf("via %q, want %q", got.Via, ViaPeerAddress)
			}
		})
	}

	t.Run("ptp pod beside the bridge", func(t *testing.T) {
		got, err := res.Resolve([]netip.Addr{ptp.IPv4, ptp.IPv6})
		if err != nil {
			t.Fatal(err)
		}
		wantInterface(t, got, ptp, ViaRoute)
	})

	for _, tc := range []struct {
		name    string
		ips     []netip.Addr
		want    error
		mention []string
	}{
		{"no pod holds it", []netip.Addr{nth(bridgeV4, 99), nth(bridgeV6, 99)}, ErrNotFound, []string{"cni0"}},
		{"two bridge pods as one", []netip.Addr{pods[0].ipv4, pods[1].ipv6}, ErrMismatch, []string{pods[0].hostVeth, pods[1].hostVeth}},
		{"a bridge pod and a ptp pod as one", []netip.Addr{pods[0].ipv4, ptp.IPv6}, ErrMismatch, []string{pods[0].hostVeth, ptp.HostVeth}},
		{"the bridge's own address", []netip.Addr{nth(bridgeV4, 1)}, ErrNotVeth, []string{"address of the node"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := res.Resolve(tc.ips)
			t.Log(err)
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			for _, s := range tc.mention {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}

	t.Run("deleted bridge pod", func(t *testing.T) {
		gone := pods[2]
		if err := h.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: gone.hostVethIndex}}); err != nil {
			t.Fatal(err)
		}
		_, err := res.Resolve([]netip.Addr{gone.ipv4, gone.ipv6})
		t.Log(err)
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("error %v, want %v", err, ErrNotFound)
		}
	})
}
