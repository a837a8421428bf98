package testenv

import (
	"fmt"
	"net"
	"net/netip"
)

// The address plan. Every address testenv hands out is in ClusterV4
// (198.18.0.0/15, RFC 2544 benchmarking space) or ClusterV6 (a ULA), and is
// only ever configured inside namespaces testenv made.
var (
	// ClusterV4 holds every IPv4 address of the environment.
	ClusterV4 = netip.MustParsePrefix("198.18.0.0/15")
	// ClusterV6 holds every IPv6 address of the environment.
	ClusterV6 = netip.MustParsePrefix("fd10:6d72::/32")

	// NodeNetworkV4 is the fabric between nodes; node n is 198.18.0.n.
	NodeNetworkV4 = netip.MustParsePrefix("198.18.0.0/24")
	// NodeNetworkV6 is the fabric between nodes; node n is fd10:6d72::n.
	NodeNetworkV6 = netip.MustParsePrefix("fd10:6d72::/64")

	// ServiceV4 holds addresses that no pod or node owns (ServiceIPv4).
	ServiceV4 = netip.MustParsePrefix("198.19.255.0/24")
	// ServiceV6 holds addresses that no pod or node owns (ServiceIPv6).
	ServiceV6 = netip.MustParsePrefix("fd10:6d72:0:ffff::/64")

	// GatewayV4 is the link-local address the IPv4 default route of every
	// pod of a WiringVeth node points at, as in Calico: nothing owns it,
	// the pod has a permanent neighbour entry mapping it to its host
	// veth's MAC. (The plugin wirings have Node.GatewayIPv4.)
	GatewayV4 = netip.MustParseAddr("169.254.1.1")
)

// MaxNodes is the number of nodes the address plan has room for: pod CIDRs
// are /20s after the fabric's, below ServiceV4.
const MaxNodes = 30

// MaxPodsPerNode is the number of pods a node's /20 has room for. A node
// wired by a plugin (WiringPTP, WiringBridge) has room for one less: its
// gateways take the addresses of pod number MaxPodsPerNode.
const MaxPodsPerNode = 4094

// PodCIDRs returns the pod CIDRs of node n (1..MaxNodes):
// 198.18.0.0 + n*4096 /20 and fd10:6d72:0:n::/64.
func PodCIDRs(n int) (v4, v6 netip.Prefix) {
	if n < 1 || n > MaxNodes {
		panic(fmt.Sprintf("testenv: node index %d out of range 1..%d", n, MaxNodes))
	}
	v4 = netip.PrefixFrom(addV4(ClusterV4.Addr(), uint32(n)<<12), 20)
	b := ClusterV6.Addr().As16()
	b[6], b[7] = byte(n>>8), byte(n)
	v6 = netip.PrefixFrom(netip.AddrFrom16(b), 64)
	return v4, v6
}

// NodeIPs returns the node IPs of node n on the fabric.
func NodeIPs(n int) (v4, v6 netip.Addr) {
	return addV4(NodeNetworkV4.Addr(), uint32(n)), addV6(NodeNetworkV6.Addr(), uint64(n))
}

// ServiceIPv4 returns the i-th address (1..254) of ServiceV4.
func ServiceIPv4(i int) netip.Addr { return addV4(ServiceV4.Addr(), uint32(i)) }

// ServiceIPv6 returns the i-th address of ServiceV6.
func ServiceIPv6(i int) netip.Addr { return addV6(ServiceV6.Addr(), uint64(i)) }

// podIPs returns the addresses of the i-th pod (from 1) of node n.
func podIPs(n, i int) (v4, v6 netip.Addr) {
	p4, p6 := PodCIDRs(n)
	return addV4(p4.Addr(), uint32(i)), addV6(p6.Addr(), uint64(i))
}

func addV4(a netip.Addr, n uint32) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func addV6(a netip.Addr, n uint64) netip.Addr {
	b := a.As16()
	for i := 15; i >= 8 && n > 0; i-- {
		s := uint64(b[i]) + n&0xff
		b[i] = byte(s)
		n = n>>8 + s>>8
	}
	return netip.AddrFrom16(b)
}

// macFor derives a locally administered unicast MAC from an IPv4 address
// (prefix, then the four address bytes), so that MACs are stable and a MAC
// in a packet dump names its interface.
func macFor(prefix [2]byte, a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{prefix[0], prefix[1], b[0], b[1], b[2], b[3]}
}

var (
	// podMACPrefix starts every pod eth0 MAC (as kubenet's 0a:58).
	podMACPrefix = [2]byte{0x0a, 0x58}
	// hostMACPrefix starts every host veth MAC (as Calico's ee:ee).
	hostMACPrefix = [2]byte{0xee, 0xee}
)

// linkLocalEUI64 returns the link-local address the kernel gives an
// interface with this MAC (addr_gen_mode eui64, the default).
func linkLocalEUI64(mac net.HardwareAddr) netip.Addr {
	var b [16]byte
	b[0], b[1] = 0xfe, 0x80
	b[8] = mac[0] ^ 0x02
	b[9], b[10] = mac[1], mac[2]
	b[11], b[12] = 0xff, 0xfe
	b[13], b[14], b[15] = mac[3], mac[4], mac[5]
	return netip.AddrFrom16(b)
}
