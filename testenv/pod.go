package testenv

import (
	"crypto/sha1"
	"encoding/hex"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Mode says whether a pod is in the ambient mesh. testenv only records it;
// the test decides what it means (typically: enrol the pod).
type Mode int

const (
	// NotAmbient is a pod outside the mesh.
	NotAmbient Mode = iota
	// Ambient is a pod whose traffic goes through ztunnel.
	Ambient
)

// String returns "ambient" or "not-ambient".
func (m Mode) String() string {
	if m == Ambient {
		return "ambient"
	}
	return "not-ambient"
}

// ZtunnelName is the name AddZtunnel gives the ztunnel pod.
const ZtunnelName = "ztunnel"

// Pod is a pod in a box: a network namespace with eth0, joined to its node
// by a veth pair.
type Pod struct {
	Namespace

	// Name is the pod's name, unique on its node.
	Name string
	// Node is the node the pod runs on.
	Node *Node
	// Ambient says whether the pod was added as Ambient.
	Ambient bool
	// Ztunnel says whether this is the node's ztunnel pod.
	Ztunnel bool

	// IPv4 and IPv6 are the pod's addresses, on its eth0 (/32 and /128).
	IPv4, IPv6 netip.Addr
	// MAC is the MAC address of the pod's eth0.
	MAC net.HardwareAddr

	// HostVeth is the name of the host side of the pod's veth pair, in the
	// node's namespace ("veth" and 11 hex digits of a hash of the node and
	// pod names, as Calico names its "cali..." interfaces).
	HostVeth string
	// HostVethIndex is HostVeth's ifindex in the node's namespace.
	HostVethIndex int
	// HostVethMAC is HostVeth's MAC address: the pod's gateways resolve to
	// it.
	HostVethMAC net.HardwareAddr
	// GatewayV6 is the pod's IPv6 default gateway: HostVeth's link-local
	// address. The IPv4 one is GatewayV4 for every pod.
	GatewayV6 netip.Addr
}

// AddPod adds a pod to the node and returns it. Pods are numbered in the
// order they are added, which picks their addresses; a number is never
// reused, also after Delete.
func (n *Node) AddPod(name string, mode Mode) *Pod {
	n.tb.Helper()
	return n.addPod(name, mode, false)
}

// AddZtunnel adds the node's ztunnel pod, named ZtunnelName: an ordinary pod
// (not ambient) from the network's point of view, whose namespace the
// ztunnel stand-in (package testenv/ztunnel) runs in.
func (n *Node) AddZtunnel() *Pod {
	n.tb.Helper()
	if n.Ztunnel() != nil {
		n.tb.Fatalf("add ztunnel to %s: it has one", n.what)
	}
	return n.addPod(ZtunnelName, NotAmbient, true)
}

// hostVethName names the host side of a pod's veth pair.
func hostVethName(node, pod string) string {
	h := sha1.Sum([]byte(node + "." + pod))
	return "veth" + hex.EncodeToString(h[:])[:11]
}

func (n *Node) addPod(name string, mode Mode, ztunnel bool) *Pod {
	tb := n.tb
	tb.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if name == "" || n.byName[name] != nil {
		tb.Fatalf("add pod %q to %s: the name is empty or taken", name, n.what)
	}
	idx := n.podsAdded + 1 // never reused, also after Delete
	if idx > MaxPodsPerNode {
		tb.Fatalf("add pod %s to %s: the address plan has room for %d pods", name, n.what, MaxPodsPerNode)
	}
	p := &Pod{
		Name:     name,
		Node:     n,
		Ambient:  mode == Ambient,
		Ztunnel:  ztunnel,
		HostVeth: hostVethName(n.Name, name),
	}
	if n.vethName[p.HostVeth] {
		tb.Fatalf("add pod %s to %s: host veth name %s collides", name, n.what, p.HostVeth)
	}
	p.IPv4, p.IPv6 = podIPs(n.Index, idx)
	p.MAC = macFor(podMACPrefix, p.IPv4)
	p.HostVethMAC = macFor(hostMACPrefix, p.IPv4)
	p.GatewayV6 = linkLocalEUI64(p.HostVethMAC)

	ns, podNL := newNetns(tb)
	defer podNL.Close()
	n.podNetns[ns] = true
	n.cluster.mu.Lock()
	n.cluster.namespaces = append(n.cluster.namespaces, ns)
	n.cluster.mu.Unlock()
	p.Namespace = Namespace{Netns: ns, tb: tb, what: "pod " + name + " on " + n.Name}

	// The pair is made from the node's side with its peer created straight
	// in the pod's namespace as eth0: no interface ever appears in the root
	// namespace.
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name:         p.HostVeth,
			HardwareAddr: p.HostVethMAC,
			Flags:        net.FlagUp,
			Group:        linkGroup,
		},
		PeerName:         "eth0",
		PeerHardwareAddr: p.MAC,
		PeerNamespace:    netlink.NsFd(int(ns)),
	}
	if err := n.nl.LinkAdd(veth); err != nil {
		tb.Fatalf("add veth %s for %s: %v", p.HostVeth, p.what, err)
	}
	p.HostVethIndex = veth.Attrs().Index

	// Host routes to the pod, as ptp and Calico add them.
	for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
		r := &netlink.Route{
			LinkIndex: p.HostVethIndex,
			Dst:       ipNet(netip.PrefixFrom(a, a.BitLen())),
			Scope:     netlink.SCOPE_LINK,
		}
		if err := n.nl.RouteAdd(r); err != nil {
			tb.Fatalf("route %s dev %s on %s: %v", a, p.HostVeth, n.Name, err)
		}
	}

	// The pod's side: addresses, gateways with permanent neighbour
	// entries (so the pod never needs an answer to ARP or ND for them),
	// default routes.
	eth0, err := podNL.LinkByName("eth0")
	if err != nil {
		tb.Fatalf("find eth0 of %s: %v", p.what, err)
	}
	for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
		if err := podNL.AddrAdd(eth0, nlAddr(netip.PrefixFrom(a, a.BitLen()))); err != nil {
			tb.Fatalf("add %s to eth0 of %s: %v", a, p.what, err)
		}
	}
	if err := podNL.LinkSetUp(eth0); err != nil {
		tb.Fatalf("set eth0 of %s up: %v", p.what, err)
	}
	for _, gw := range []netip.Addr{GatewayV4, p.GatewayV6} {
		family := unix.AF_INET
		if gw.Is6() {
			family = unix.AF_INET6
		}
		neigh := &netlink.Neigh{
			LinkIndex:    eth0.Attrs().Index,
			Family:       family,
			State:        netlink.NUD_PERMANENT,
			IP:           gw.AsSlice(),
			HardwareAddr: p.HostVethMAC,
		}
		if err := podNL.NeighAdd(neigh); err != nil {
			tb.Fatalf("add neighbour %s to %s: %v", gw, p.what, err)
		}
		r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice(), Family: family}
		if gw.Is4() {
			// 169.254.1.1 is on no subnet of the pod's: onlink.
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := podNL.RouteAdd(r); err != nil {
			tb.Fatalf("add default route via %s to %s: %v", gw, p.what, err)
		}
	}

	if err := waitIPv6(podNL, nil, p.IPv6); err != nil {
		tb.Fatalf("in %s: %v", p.what, err)
	}
	if err := waitIPv6(n.nl, veth); err != nil {
		tb.Fatalf("on %s: %v", n.what, err)
	}

	n.podsAdded++
	n.pods = append(n.pods, p)
	n.byName[name] = p
	n.vethName[p.HostVeth] = true
	if ztunnel {
		n.ztunnel = p
	}
	return p
}

// Delete removes the pod from its node now, as Kubernetes deleting it
// would: its veth pair goes, with its host routes, and its namespace is
// closed (it is destroyed once nothing else holds it). Close what the test
// opened in the pod first.
func (p *Pod) Delete() {
	n := p.Node
	n.tb.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byName[p.Name] != p {
		n.tb.Fatalf("delete %s: not on the node", p.what)
	}
	link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: p.HostVethIndex}}
	if err := n.nl.LinkDel(link); err != nil {
		n.tb.Fatalf("delete veth %s of %s: %v", p.HostVeth, p.what, err)
	}
	// Forget the handle before closing it: Close sets p.Netns to -1, and a
	// handle left in podNetns would be closed again at teardown, closing
	// whatever the process has opened with that number since.
	delete(n.podNetns, p.Netns)
	p.Netns.Close()
	delete(n.byName, p.Name)
	delete(n.vethName, p.HostVeth)
	n.pods = slices.DeleteFunc(n.pods, func(q *Pod) bool { return q == p })
	if n.ztunnel == p {
		n.ztunnel = nil
	}
}
