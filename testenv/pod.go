package testenv

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"

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
// by a veth pair (see Wiring for the rest of the picture on each wiring).
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

	// IPv4 and IPv6 are the pod's addresses, on its eth0: /32 and /128 on
	// WiringVeth, the pod CIDRs' lengths (/20 and /64) on the plugin
	// wirings.
	IPv4, IPv6 netip.Addr
	// MAC is the MAC address of the pod's eth0: derived from IPv4 on
	// WiringVeth, the kernel's random one on the plugin wirings.
	MAC net.HardwareAddr

	// HostVeth is the name of the host side of the pod's veth pair, in the
	// node's namespace: on WiringVeth "veth" and 11 hex digits of a hash
	// of the node and pod names (as Calico names its "cali..." interfaces),
	// on the plugin wirings the plugin's "veth" and 8 random hex digits,
	// found as eth0's peer. On WiringBridge it is a port of the bridge.
	HostVeth string
	// HostVethIndex is HostVeth's ifindex in the node's namespace.
	HostVethIndex int
	// HostVethMAC is HostVeth's MAC address. On WiringVeth and WiringPTP
	// the pod's gateways resolve to it; on WiringBridge the pod's traffic
	// does not carry it (the bridge forwards frames unchanged, and the
	// gateways are the bridge's): see GatewayMAC.
	HostVethMAC net.HardwareAddr
	// GatewayV4 is the pod's IPv4 default gateway: GatewayV4, the
	// link-local address nothing owns, on WiringVeth; the node's
	// GatewayIPv4 on the plugin wirings.
	GatewayV4 netip.Addr
	// GatewayV6 is the pod's IPv6 default gateway: HostVeth's EUI-64
	// link-local address on WiringVeth; the node's GatewayIPv6 on the
	// plugin wirings.
	GatewayV6 netip.Addr
	// GatewayMAC is the MAC address the pod's gateways resolve to, the
	// destination of what the pod sends off its subnet: HostVethMAC on
	// WiringVeth and WiringPTP, the bridge's MAC on WiringBridge.
	GatewayMAC net.HardwareAddr

	cni *cniPod // nil on WiringVeth
}

// AddPod adds a pod to the node and returns it. Pods are numbered in the
// order they are added, which picks their addresses; a number is never
// reused, also after Delete.
func (n *Node) AddPod(name string, mode Mode) *Pod {
	n.tb.Helper()
	return n.addPods(mode, false, name)[0]
}

// AddPods adds a pod per name, as AddPod would one after the other, and
// returns them in the order of names. On the plugin wirings the plugins'
// ADDs run concurrently, a few at a time, as a kubelet starting many pods
// runs them: an ADD spends much of its time waiting (ptp polls every 50 ms
// for the pod's IPv6 addresses to settle, bridge as long again for its port
// to come up), and the rest starting two processes, so that a hundred pods
// take about 4 s instead of 10 on two busy cores.
func (n *Node) AddPods(mode Mode, names ...string) []*Pod {
	n.tb.Helper()
	return n.addPods(mode, false, names...)
}

// AddZtunnel adds the node's ztunnel pod, named ZtunnelName: an ordinary pod
// (not ambient) from the network's point of view, whose namespace the
// ztunnel stand-in (package testenv/ztunnel) runs in.
func (n *Node) AddZtunnel() *Pod {
	n.tb.Helper()
	if n.Ztunnel() != nil {
		n.tb.Fatalf("add ztunnel to %s: it has one", n.what)
	}
	return n.addPods(NotAmbient, true, ZtunnelName)[0]
}

// hostVethName names the host side of a pod's veth pair.
func hostVethName(node, pod string) string {
	h := sha1.Sum([]byte(node + "." + pod))
	return "veth" + hex.EncodeToString(h[:])[:11]
}

// maxConcurrentADDs bounds the plugin ADDs AddPods runs at once.
const maxConcurrentADDs = 16

func (n *Node) addPods(mode Mode, ztunnel bool, names ...string) []*Pod {
	tb := n.tb
	tb.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, name := range names {
		if name == "" || n.byName[name] != nil || slices.Contains(names[:i], name) {
			tb.Fatalf("add pod %q to %s: the name is empty or taken", name, n.what)
		}
	}
	room := MaxPodsPerNode
	if n.Wiring != WiringVeth {
		room-- // the gateways have the last addresses
	}
	if n.podsAdded+len(names) > room {
		tb.Fatalf("add pods %v to %s: the address plan has room for %d pods", names, n.what, room)
	}

	pods := make([]*Pod, len(names))
	var nls []*netlink.Handle // the pods' for wireCNI
	defer func() {
		for _, h := range nls {
			h.Close()
		}
	}()
	for i, name := range names {
		p := &Pod{
			Name:    name,
			Node:    n,
			Ambient: mode == Ambient,
			Ztunnel: ztunnel,
		}
		// Numbers are never reused, also after Delete.
		p.IPv4, p.IPv6 = podIPs(n.Index, n.podsAdded+1+i)
		ns, podNL := newNetns(tb)
		n.podNetns[ns] = true
		n.cluster.mu.Lock()
		n.cluster.namespaces = append(n.cluster.namespaces, ns)
		n.cluster.mu.Unlock()
		p.Namespace = Namespace{Netns: ns, tb: tb, what: "pod " + name + " on " + n.Name}
		pods[i] = p
		if n.Wiring == WiringVeth {
			n.wireVeth(p, podNL)
			podNL.Close()
		} else {
			nls = append(nls, podNL)
		}
	}
	if n.Wiring != WiringVeth {
		errs := make([]error, len(pods))
		wire := func(i int) {
			// No duplicate address detection in the pod, as the container
			// runtime of cnichain.NewSandbox: ptp waits for IPv6
			// addresses to settle, a second per ADD with DAD on.
			errs[i] = pods[i].Do(func() error {
				return sysctls(
					"net/ipv6/conf/all/accept_dad", "0",
					"net/ipv6/conf/default/accept_dad", "0",
				)
			})
			if errs[i] == nil {
				errs[i] = n.wireCNI(pods[i], nls[i], n.podsAdded+1+i)
			}
		}
		first := 0
		if n.Wiring == WiringBridge && n.podsAdded == 0 {
			// The node's first ADD alone: it makes the bridge and sets
			// the bridge's MAC, which concurrent first ADDs could each
			// set differently, after some pod read it as its GatewayMAC.
			if wire(0); errs[0] != nil {
				tb.Fatal(errs[0])
			}
			first = 1
		}
		sem := make(chan struct{}, maxConcurrentADDs)
		var wg sync.WaitGroup
		for i := first; i < len(pods); i++ {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				wire(i)
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			tb.Fatal(err)
		}
	}

	for _, p := range pods {
		n.podsAdded++
		n.pods = append(n.pods, p)
		n.byName[p.Name] = p
		if ztunnel {
			n.ztunnel = p
		}
	}
	return pods
}

// wireVeth joins p to n with a veth pair of testenv's making (WiringVeth).
func (n *Node) wireVeth(p *Pod, podNL *netlink.Handle) {
	tb := n.tb
	tb.Helper()
	p.HostVeth = hostVethName(n.Name, p.Name)
	if n.vethName[p.HostVeth] {
		tb.Fatalf("add pod %s to %s: host veth name %s collides", p.Name, n.what, p.HostVeth)
	}
	p.MAC = macFor(podMACPrefix, p.IPv4)
	p.HostVethMAC = macFor(hostMACPrefix, p.IPv4)
	p.GatewayMAC = p.HostVethMAC
	p.GatewayV4 = GatewayV4
	p.GatewayV6 = linkLocalEUI64(p.HostVethMAC)

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
		PeerNamespace:    netlink.NsFd(int(p.Netns)),
	}
	if err := n.nl.LinkAdd(veth); err != nil {
		tb.Fatalf("add veth %s for %s: %v", p.HostVeth, p.what, err)
	}
	n.vethName[p.HostVeth] = true
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
	for _, gw := range []netip.Addr{p.GatewayV4, p.GatewayV6} {
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
}

// Delete removes the pod from its node now, as Kubernetes deleting it
// would: its veth pair goes, with its host routes, and its namespace is
// closed (it is destroyed once nothing else holds it). On the plugin
// wirings the plugin's DEL does the first part, and host-local releases
// the pod's addresses (a later pod still gets new ones: pods are never
// renumbered). Close what the test opened in the pod first.
func (p *Pod) Delete() {
	n := p.Node
	n.tb.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byName[p.Name] != p {
		n.tb.Fatalf("delete %s: not on the node", p.what)
	}
	if p.cni != nil {
		if err := n.unwireCNI(p); err != nil {
			n.tb.Fatal(err)
		}
	} else {
		link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: p.HostVethIndex}}
		if err := n.nl.LinkDel(link); err != nil {
			n.tb.Fatalf("delete veth %s of %s: %v", p.HostVeth, p.what, err)
		}
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
