package dataplane_test

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/scenario"
)

// TestSemantics runs every flow of DESIGN §5 that involves a socket
// (scenario.Semantics) on nodes of the three wirings: hand-made veths, the
// reference ptp plugin (a gateway address on every host veth) and the
// reference bridge plugin (pods and ztunnel ports of one bridge), both
// families, with the dataplane driven directly. The agent's test of the
// same name drives it through the real API server.
func TestSemantics(t *testing.T) {
	for _, w := range testenv.Wirings {
		t.Run(w.String(), func(t *testing.T) {
			b := newBox(t, scenario.Options{Wiring: w, PolicyPods: true, DNSAnswer: dnsAnswers,
				Dataplane: dataplane.Config{CaptureDNS: true}})
			for _, f := range scenario.Semantics() {
				t.Run(f.ID+" "+f.Name, func(t *testing.T) { runFlow(t, b, f) })
			}
		})
	}
}

// TestRelayPorts: the node's tunnel ports are those of its VXLAN and Geneve
// devices and FOU receivers, and a pod's UDP to one of them is dropped
// while UDP to another port of the node passes.
func TestRelayPorts(t *testing.T) {
	b := newBox(t, scenario.Options{})
	var want []uint16
	must(t, b.Node.Do(func() error {
		for _, l := range []struct {
			link     netlink.Link
			port     uint16
			optional bool
		}{
			{&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vxlan0"}, VxlanId: 42, Port: 4789}, 4789, false},
			// Geneve is a module some kernels (this VM's) lack.
			{&netlink.Geneve{LinkAttrs: netlink.LinkAttrs{Name: "geneve0"}, ID: 7, Remote: net.ParseIP("198.19.255.1"), Dport: 6081}, 6081, true},
		} {
			if err := netlink.LinkAdd(l.link); err != nil {
				if l.optional {
					t.Logf("no %s (%v): checked without one", l.link.Type(), err)
					continue
				}
				return fmt.Errorf("add %s: %w", l.link.Attrs().Name, err)
			}
			if err := netlink.LinkSetUp(l.link); err != nil {
				return err
			}
			want = append(want, l.port)
		}
		if err := netlink.FouAdd(netlink.Fou{Family: netlink.FAMILY_V4, Port: 5555, Protocol: 4}); err == nil {
			want = append(want, 5555)
		} else {
			t.Logf("no FOU receiver (%v): checked without one", err)
		}
		return nil
	}))
	must(t, b.SyncNode())
	got, err := b.DP.RelayPorts()
	must(t, err)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("relay ports %v, want %v", got, want)
	}
	stored, err := b.DP.Maps().Relays.Get()
	must(t, err)
	if !slices.Equal(stored, want) {
		t.Errorf("relays map %v, want %v", stored, want)
	}
	echo := b.EchoIn(&b.Node.Namespace, "node", 8125)
	for _, v6 := range []bool{false, true} {
		node := b.Node.IPv4
		if v6 {
			node = b.Node.IPv6
		}
		before := readStats(t, b)
		for _, port := range want {
			send(t, &b.Client.Namespace, v6, netip.AddrPortFrom(node, port))
		}
		send(t, &b.Client.Namespace, v6, netip.AddrPortFrom(node, 8125))
		time.Sleep(100 * time.Millisecond)
		after := readStats(t, b)
		if d := after[maps.VerdictDroppedRelay].Packets - before[maps.VerdictDroppedRelay].Packets; d != uint64(len(want)) {
			t.Errorf("%s: dropped_relay moved by %d, want %d", scenario.Family(v6), d, len(want))
		}
		if !scenario.SawAddr(echo, scenario.IP(b.Client, v6)) {
			t.Errorf("%s: the datagram to the node's port 8125 did not arrive", scenario.Family(v6))
		}
	}
}

// send sends one datagram from ns to dst.
func send(t *testing.T, ns *testenv.Namespace, v6 bool, dst netip.AddrPort) {
	t.Helper()
	network := "udp4"
	if v6 {
		network = "udp6"
	}
	c, err := ns.Dial(network, dst.String())
	must(t, err)
	defer c.Close()
	if _, err := c.Write([]byte("relay?")); err != nil {
		t.Fatal(err)
	}
}
