package testenv

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/testutil"
)

// NodeOptions configures NewNode.
type NodeOptions struct {
	// Name names the node ("node1" if empty). It appears in error messages
	// and in the host veth names' hash.
	Name string
	// Wiring says how the node's pods are joined to it: WiringVeth (the
	// zero value), WiringPTP or WiringBridge. The plugin wirings need the
	// reference plugins (`make cni-bins`): without them a test skips, or
	// fails under CI=true.
	Wiring Wiring
}

// Node is a Kubernetes node in a box: a network namespace with forwarding
// on, joined to the fabric through eth0, holding the host side of its pods'
// veth pairs.
type Node struct {
	Namespace

	// Name is the node's name.
	Name string
	// Index numbers the node in its cluster, from 1; it picks the addresses.
	Index int
	// Wiring is how the node's pods are joined to it.
	Wiring Wiring
	// IPv4 and IPv6 are the node IPs, on eth0: what traffic the node sends
	// itself to other nodes comes from, and to its own pods on WiringVeth
	// (a kubelet probe); on the other wirings the node reaches its pods
	// from GatewayIPv4 and GatewayIPv6.
	IPv4, IPv6 netip.Addr
	// PodCIDRv4 and PodCIDRv6 hold the node's pods' addresses.
	PodCIDRv4, PodCIDRv6 netip.Prefix
	// GatewayIPv4 and GatewayIPv6 are, on WiringPTP and WiringBridge, the
	// node's addresses on its pods' side, their default gateways: host-local's
	// "gateway", the last host addresses of the pod CIDRs that the address
	// plan has (so such a node has room for MaxPodsPerNode-1 pods), on
	// every host veth (ptp) or on the bridge (bridge). They are the source
	// of the node's own connections to its pods (a kubelet probe), the
	// kernel's choice for the outgoing interface. Not valid on WiringVeth.
	GatewayIPv4, GatewayIPv6 netip.Addr
	// Bridge is BridgeName on WiringBridge, "" otherwise. The plugin makes
	// the bridge at the first pod's ADD.
	Bridge string

	cluster *cluster
	nl      *netlink.Handle // in the node's namespace
	cni     *cniNode        // nil on WiringVeth

	mu       sync.Mutex
	pods     []*Pod
	byName   map[string]*Pod
	vethName map[string]bool
	ztunnel  *Pod
	// podsAdded counts AddPod calls: the next pod's number.
	podsAdded int
	podNetns  map[netns.NsHandle]bool // open pod namespaces, closed at teardown
}

// cluster is what the nodes of one test share: the fabric namespace with
// the bridge their eth0s are plugged into.
type cluster struct {
	tb       TB
	plugins  string // ReferencePlugins, once a node needs them
	fabric   netns.NsHandle
	fabricNL *netlink.Handle
	bridge   netlink.Link

	mu         sync.Mutex
	nodes      []*Node
	namespaces []netns.NsHandle // every namespace made, for leak checks
}

// TB is what the builder needs of a test: *testing.T and *testing.B are
// TBs, and so is anything else that runs cleanups and stops on a fatal
// error, such as the demo program.
type TB interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// NewNode builds a node in a box and returns it; it is torn down when the
// test ends. Call it, and the methods that add to it, from the test's
// goroutine: they fail the test on error.
func NewNode(tb TB, opts NodeOptions) *Node {
	tb.Helper()
	if t, ok := tb.(testing.TB); ok {
		testutil.RequirePrivileged(t)
	}
	var plugins string
	switch opts.Wiring {
	case WiringVeth:
	case WiringPTP, WiringBridge:
		// Before anything is made: a missing plugin skips the test.
		plugins = requirePlugins(tb, opts.Wiring)
	default:
		tb.Fatalf("new node: unknown wiring %s", opts.Wiring)
	}
	c := newCluster(tb)
	c.plugins = plugins
	return c.addNode(opts.Name, opts.Wiring)
}

// AddPeerNode adds another node to n's cluster, on the same fabric, with
// routes between every node's pod CIDRs: traffic between pods of different
// nodes crosses both nodes' namespaces and the fabric. Its pods are wired
// as n's, one CNI for the cluster as in Kubernetes.
func (n *Node) AddPeerNode(name string) *Node {
	n.cluster.tb.Helper()
	return n.cluster.addNode(name, n.Wiring)
}

// Peers returns the other nodes of n's cluster.
func (n *Node) Peers() []*Node {
	n.cluster.mu.Lock()
	defer n.cluster.mu.Unlock()
	var peers []*Node
	for _, m := range n.cluster.nodes {
		if m != n {
			peers = append(peers, m)
		}
	}
	return peers
}

// Pods returns the node's pods (the ztunnel pod included) in the order they
// were added.
func (n *Node) Pods() []*Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.pods)
}

// Pod returns the node's pod with that name, or nil.
func (n *Node) Pod(name string) *Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.byName[name]
}

// Ztunnel returns the node's ztunnel pod, or nil before AddZtunnel.
func (n *Node) Ztunnel() *Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ztunnel
}

func newCluster(tb TB) *cluster {
	tb.Helper()
	c := &cluster{tb: tb}
	c.fabric, c.fabricNL = newNetns(tb)
	c.namespaces = append(c.namespaces, c.fabric)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", Flags: net.FlagUp}}
	// Registered first, so run last: after every node's teardown.
	tb.Cleanup(func() {
		if c.bridge != nil {
			if err := c.fabricNL.LinkDel(br); err != nil {
				tb.Errorf("delete bridge br0 of the fabric: %v", err)
			}
		}
		c.fabricNL.Close()
		c.fabric.Close()
	})
	if err := c.fabricNL.LinkAdd(br); err != nil {
		tb.Fatalf("add bridge br0 to fabric: %v", err)
	}
	c.bridge = br
	return c
}

func (c *cluster) addNode(name string, wiring Wiring) *Node {
	tb := c.tb
	tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	idx := len(c.nodes) + 1
	if idx > MaxNodes {
		tb.Fatalf("add node: the address plan has room for %d nodes", MaxNodes)
	}
	if name == "" {
		name = fmt.Sprintf("node%d", idx)
	}
	for _, m := range c.nodes {
		if m.Name == name {
			tb.Fatalf("add node %s: a node with that name exists", name)
		}
	}
	n := &Node{
		Name:     name,
		Index:    idx,
		Wiring:   wiring,
		cluster:  c,
		byName:   map[string]*Pod{},
		vethName: map[string]bool{},
		podNetns: map[netns.NsHandle]bool{},
	}
	n.IPv4, n.IPv6 = NodeIPs(idx)
	n.PodCIDRv4, n.PodCIDRv6 = PodCIDRs(idx)

	ns, nlh := newNetns(tb)
	c.namespaces = append(c.namespaces, ns)
	n.Namespace = Namespace{Netns: ns, tb: tb, what: "node " + name}
	n.nl = nlh
	// Registered before anything is added to the node, so that it runs
	// after the cleanups of whatever the test opens in its pods.
	tb.Cleanup(n.teardown)
	if wiring != WiringVeth {
		n.GatewayIPv4, n.GatewayIPv6 = gatewayIPs(idx)
		if wiring == WiringBridge {
			n.Bridge = BridgeName
		}
		cn, err := newCNINode(c.plugins)
		if err != nil {
			tb.Fatalf("on %s: %v", n.what, err)
		}
		n.cni = cn
	}

	// Forwarding on; reverse-path filtering loose, because ztunnel sends
	// with its clients' addresses as source from its own veth (strict
	// filtering would drop those); no DAD, so that IPv6 addresses, the
	// host veths' link-local ones included, are usable at once. "default"
	// applies to the interfaces made from now on.
	if err := n.Do(func() error {
		return sysctls(
			"net/ipv4/ip_forward", "1",
			"net/ipv6/conf/all/forwarding", "1",
			"net/ipv4/conf/all/rp_filter", "2",
			"net/ipv4/conf/default/rp_filter", "2",
			"net/ipv6/conf/all/accept_dad", "0",
			"net/ipv6/conf/default/accept_dad", "0",
		)
	}); err != nil {
		tb.Fatal(err)
	}

	// eth0, with its peer plugged into the fabric's bridge.
	peerName := fmt.Sprintf("node%d", idx)
	eth0 := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name:         "eth0",
			HardwareAddr: macFor(podMACPrefix, n.IPv4),
			Group:        linkGroup,
		},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(int(c.fabric)),
	}
	if err := nlh.LinkAdd(eth0); err != nil {
		tb.Fatalf("add veth eth0 to %s: %v", n.what, err)
	}
	peer, err := c.fabricNL.LinkByName(peerName)
	if err != nil {
		tb.Fatalf("find %s in fabric: %v", peerName, err)
	}
	if err := c.fabricNL.LinkSetMaster(peer, c.bridge); err != nil {
		tb.Fatalf("plug %s into br0: %v", peerName, err)
	}
	if err := c.fabricNL.LinkSetUp(peer); err != nil {
		tb.Fatalf("set %s up: %v", peerName, err)
	}
	for _, a := range []netip.Prefix{
		netip.PrefixFrom(n.IPv4, NodeNetworkV4.Bits()),
		netip.PrefixFrom(n.IPv6, NodeNetworkV6.Bits()),
	} {
		if err := nlh.AddrAdd(eth0, nlAddr(a)); err != nil {
			tb.Fatalf("add %s to eth0 of %s: %v", a, n.what, err)
		}
	}
	if err := nlh.LinkSetUp(eth0); err != nil {
		tb.Fatalf("set eth0 of %s up: %v", n.what, err)
	}
	if err := waitIPv6(nlh, eth0, n.IPv6); err != nil {
		tb.Fatalf("on %s: %v", n.what, err)
	}

	// Each node routes the others' pod CIDRs via their node IPs.
	for _, m := range c.nodes {
		m.routeVia(n)
		n.routeVia(m)
	}
	c.nodes = append(c.nodes, n)
	return n
}

// routeVia adds routes on n to m's pod CIDRs via m's node IPs.
func (n *Node) routeVia(m *Node) {
	tb := n.tb
	tb.Helper()
	eth0, err := n.nl.LinkByName("eth0")
	if err != nil {
		tb.Fatalf("find eth0 of %s: %v", n.what, err)
	}
	for _, r := range []struct {
		dst netip.Prefix
		gw  netip.Addr
	}{{m.PodCIDRv4, m.IPv4}, {m.PodCIDRv6, m.IPv6}} {
		route := &netlink.Route{
			LinkIndex: eth0.Attrs().Index,
			Dst:       ipNet(r.dst),
			Gw:        r.gw.AsSlice(),
		}
		if err := n.nl.RouteAdd(route); err != nil {
			tb.Fatalf("route %s via %s on %s: %v", r.dst, r.gw, n.what, err)
		}
	}
}

// nlAddr is a netlink address without duplicate address detection (the
// node and the pods have nobody to race for their addresses).
func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

// linkGroup is the link group (IFLA_GROUP) of every veth testenv makes in a
// node: the node's eth0 and its pods' host veths. Teardown deletes the group
// in one request, which the kernel does as one batch (rtnl_group_dellink):
// deleting veths one by one costs two RCU grace periods each, about 40 ms
// here, 4 s for 100 pods.
const linkGroup = 0x6d72

// teardown removes the node: its veths (and so their peers in the pods and
// the fabric) and bridge in one batch, then its namespaces and the plugins'
// state. It runs no DEL: what DEL would remove goes with the links, the
// namespaces and the node's CNI directory.
func (n *Node) teardown() {
	err := testutil.Do(n.Netns, func() error {
		req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
		req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
		req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(linkGroup)))
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	})
	if err != nil {
		n.tb.Errorf("delete the veths of %s: %v", n.what, err)
	}
	// A link outside the group is one a plugin made in an ADD that failed
	// before wireCNI could add it (a veth, the bridge): one by one.
	if links, err := n.nl.LinkList(); err != nil {
		n.tb.Errorf("list the links of %s: %v", n.what, err)
	} else {
		for _, l := range links {
			if l.Attrs().Index == 1 { // lo
				continue
			}
			if err := n.nl.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				n.tb.Errorf("delete %s of %s: %v", l.Attrs().Name, n.what, err)
			}
		}
	}
	if n.cni != nil {
		if err := os.RemoveAll(n.cni.dir); err != nil {
			n.tb.Errorf("remove the CNI state of %s: %v", n.what, err)
		}
	}
	n.mu.Lock()
	for ns := range n.podNetns {
		ns.Close()
	}
	n.podNetns = nil
	n.mu.Unlock()
	n.nl.Close()
	n.Netns.Close()
}
