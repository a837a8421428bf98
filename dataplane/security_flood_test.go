package dataplane_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/scenario"
)

// TestBridgeFloodNotCaptured: on a node whose pods are ports of one bridge
// (the reference bridge plugin), a frame for a MAC the bridge has not
// learned is flooded to every port, the ambient pods' host veths included,
// whose egress runs app_inbound. TCP flooded there for another address
// than the pod's is not the pod's: it passes unchanged (the pod's kernel
// drops it as not for it), and never goes to ztunnel, whose kernel would
// answer SYNs for pods outside the mesh, or for addresses no pod has. A pod
// outside the mesh connects to another one, whose port learns nothing (so
// that every frame to it floods), and to a deleted pod's address (whose MAC
// is on no port): the sniffers in the ambient pods see both floods; the
// stand-in records neither flow; nothing answers the deleted pod's address;
// the connection between the two pods outside the mesh works, directly;
// redirected_in does not move.
func TestBridgeFloodNotCaptured(t *testing.T) {
	b := newBox(t, scenario.Options{Wiring: testenv.WiringBridge})
	plain2 := b.Node.AddPod("plain2", testenv.NotAmbient)
	echo := b.Echo(plain2, scenario.EchoPort)
	gone := b.Node.AddPod("gone", testenv.NotAmbient)
	goneIPs, goneMAC := [2]netip.Addr{gone.IPv4, gone.IPv6}, gone.MAC
	gone.Delete()
	// The plain pod still maps the deleted pod's addresses to its MAC, as
	// a client that talked to it just before does: permanent entries, so
	// that it sends without asking.
	must(t, pinNeighbours(&b.Plain.Namespace, goneMAC, goneIPs[:]...))
	forgotten, err := stopLearning(b.Node, plain2)
	must(t, err)
	t.Logf("learning off on %s's port %s; %d learned entries of %s removed", plain2.Name, plain2.HostVeth, forgotten, plain2.MAC)

	targets := []floodTarget{
		{name: "a pod outside the mesh", mac: plain2.MAC, ips: [2]netip.Addr{plain2.IPv4, plain2.IPv6}},
		{name: "an address no pod has (a deleted pod's)", mac: goneMAC, ips: goneIPs},
	}
	var sniffers []*sniffer
	for _, p := range b.AmbientPods() {
		sniffers = append(sniffers, startMatchSniffer(t, &p.Namespace, "eth0", "ambient pod "+p.Name, floodedSYN(targets)))
	}

	for _, v6 := range []bool{false, true} {
		t.Run(scenario.Family(v6), func(t *testing.T) {
			fam, network := 0, "tcp4"
			if v6 {
				fam, network = 1, "tcp6"
			}
			plain, other, vacant := scenario.IP(b.Plain, v6), targets[0].ips[fam], targets[1].ips[fam]
			before := readStats(t, b)

			// To the other pod outside the mesh: it works, directly.
			dst := netip.AddrPortFrom(other, scenario.EchoPort)
			if _, err := scenario.Exchange(&b.Plain.Namespace, v6, dst, 5*time.Second); err != nil {
				t.Errorf("the connection from %s to %s (%s) failed: %v", plain, dst, targets[0].name, err)
			}
			if !scenario.SawAddr(echo, plain) {
				t.Errorf("the echo of %s did not see %s", plain2.Name, plain)
			}

			// To the deleted pod's address: nothing answers.
			vdst := netip.AddrPortFrom(vacant, scenario.EchoPort)
			ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
			c, err := b.Plain.DialContext(ctx, network, vdst.String())
			cancel()
			var ne net.Error
			switch {
			case err == nil:
				c.Close()
				t.Errorf("HOLE: a SYN-ACK came back from %s, %s (ztunnel's kernel answered the flooded SYN)", vdst, targets[1].name)
			case !errors.As(err, &ne) || !ne.Timeout():
				t.Errorf("something answered %s, %s: %v", vdst, targets[1].name, err)
			}

			after := settle(t, b, before)
			if d := after[maps.VerdictRedirectedIn].Packets - before[maps.VerdictRedirectedIn].Packets; d != 0 {
				t.Errorf("HOLE: redirected_in moved by %d for flooded TCP between pods outside the mesh (all moved: %s)", d,
					countersString(deltaOf(before, after)))
			}
			for _, r := range b.Standin.Records() {
				if a := r.OrigDst.Addr().Unmap(); a == other || a == vacant {
					t.Errorf("HOLE: the stand-in recorded a flow to %s, which is not an ambient pod's: %s -> %s (listener %d, error %q)",
						a, r.Source, r.OrigDst, r.Listener, r.Err)
				}
			}

			// The proof that the bridge flooded: the SYNs reached every
			// ambient pod's eth0, unchanged, addressed to the other MAC.
			for k, tg := range targets {
				for _, s := range sniffers {
					n, err := s.seen(2*k + fam)
					if err != nil {
						t.Fatalf("sniffer in %s stopped: %v", s.where, err)
					}
					t.Logf("SYNs to %s (%s, %s) flooded into %s: %d", tg.ips[fam], tg.name, tg.mac, s.where, n)
					if n == 0 {
						t.Errorf("no SYN to %s (%s) reached %s: the bridge did not flood it there (or it was taken on the way)", tg.ips[fam], tg.name, s.where)
					}
				}
			}
		})
	}
}

// floodTarget is what a pod outside the mesh sends to on a bridge whose
// forwarding database does not know the MAC: every frame floods.
type floodTarget struct {
	name string
	mac  net.HardwareAddr
	ips  [2]netip.Addr // IPv4, IPv6
}

// floodedSYN numbers the connection requests (SYN without ACK) to a
// target's MAC and address: 2*k for target k's IPv4, 2*k+1 for its IPv6.
func floodedSYN(targets []floodTarget) func(frame []byte) int {
	return func(f []byte) int {
		hdr, _, ok := parseIP(f)
		if !ok || len(f) < 14 {
			return -1
		}
		var dst netip.Addr
		var l4 []byte
		fam := 0
		switch hdr[0] >> 4 {
		case 4:
			ihl := int(hdr[0]&0x0f) * 4
			if hdr[9] != protoTCP || len(hdr) < ihl+14 {
				return -1
			}
			dst, l4 = netip.AddrFrom4([4]byte(hdr[16:20])), hdr[ihl:]
		case 6:
			if hdr[6] != protoTCP || len(hdr) < 40+14 {
				return -1
			}
			dst, l4, fam = netip.AddrFrom16([16]byte(hdr[24:40])), hdr[40:], 1
		}
		if l4[13]&(tcpSYNFlag|tcpACKFlag) != tcpSYNFlag {
			return -1
		}
		for k, tg := range targets {
			if bytes.Equal(f[:6], tg.mac) && dst == tg.ips[fam] {
				return 2*k + fam
			}
		}
		return -1
	}
}

// pinNeighbours maps ips to mac on eth0 of ns with permanent entries.
func pinNeighbours(ns *testenv.Namespace, mac net.HardwareAddr, ips ...netip.Addr) error {
	return ns.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		for _, ip := range ips {
			family := unix.AF_INET
			if ip.Is6() {
				family = unix.AF_INET6
			}
			n := &netlink.Neigh{LinkIndex: eth0.Attrs().Index, Family: family, State: netlink.NUD_PERMANENT,
				IP: ip.AsSlice(), HardwareAddr: mac}
			if err := netlink.NeighSet(n); err != nil {
				return fmt.Errorf("neighbour %s lladdr %s: %w", ip, mac, err)
			}
		}
		return nil
	})
}

// stopLearning turns MAC learning off on p's bridge port and removes what
// the bridge learned of p's MAC, returning how many entries that was: from
// then on the bridge floods every frame for p to every port. It fails if an
// entry for the MAC remains.
func stopLearning(n *testenv.Node, p *testenv.Pod) (int, error) {
	var removed int
	err := n.Do(func() error {
		port, err := netlink.LinkByIndex(p.HostVethIndex)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetLearning(port, false); err != nil {
			return fmt.Errorf("learning off on %s: %w", p.HostVeth, err)
		}
		learned := func() ([]netlink.Neigh, error) {
			fdb, err := netlink.NeighList(0, unix.AF_BRIDGE)
			if err != nil {
				return nil, fmt.Errorf("list the forwarding database: %w", err)
			}
			var out []netlink.Neigh
			for _, e := range fdb {
				if bytes.Equal(e.HardwareAddr, p.MAC) && e.Flags&netlink.NTF_SELF == 0 {
					out = append(out, e)
				}
			}
			return out, nil
		}
		entries, err := learned()
		if err != nil {
			return err
		}
		for _, e := range entries {
			del := &netlink.Neigh{LinkIndex: e.LinkIndex, Family: unix.AF_BRIDGE, Flags: netlink.NTF_MASTER,
				HardwareAddr: e.HardwareAddr, Vlan: e.Vlan}
			if err := netlink.NeighDel(del); err != nil {
				return fmt.Errorf("delete the forwarding entry of %s: %w", p.MAC, err)
			}
			removed++
		}
		if left, err := learned(); err != nil || len(left) > 0 {
			return fmt.Errorf("the bridge still knows %s of %s: %v %v", p.MAC, p.Name, left, err)
		}
		return nil
	})
	return removed, err
}

// deltaOf is how much each counter moved, in packets.
func deltaOf(before, after map[maps.Verdict]maps.Counter) map[maps.Verdict]uint64 {
	d := map[maps.Verdict]uint64{}
	for v, c := range after {
		if n := c.Packets - before[v].Packets; n != 0 {
			d[v] = n
		}
	}
	return d
}
