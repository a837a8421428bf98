package testenv

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Routing tables of SteerToZtunnel.
const (
	// SteerTable is the node's table that routes everything to ztunnel.
	SteerTable = 200
	// LocalTable is ztunnel's table that makes every destination local,
	// the table DESIGN.md gives the TPROXY mark (100).
	LocalTable = 100
	// steerPriority is the priority of SteerToZtunnel's rules.
	steerPriority = 100
)

// SteerToZtunnel sends traffic to the node's ztunnel pod with policy routing
// alone, no eBPF and no iptables: a stand-in for capture, for tests of
// ztunnel (or its stand-in) and for a routing-only baseline.
//
//   - On the node, what the given pods send (rules "iif <host veth> lookup
//     SteerTable") and what arrives from the fabric for the node's pods
//     (rule "iif eth0 to <pod CIDR> lookup SteerTable") goes to ztunnel
//     (SteerTable: default via ztunnel's IP, onlink).
//   - In ztunnel's namespace, everything that arrives on eth0 is local
//     (rule "iif eth0 lookup LocalTable", LocalTable "local default dev
//     lo"), as the TPROXY mark makes it with redirection. The rule matches
//     input only, so ztunnel's own connections are routed normally.
//
// Unlike bpf_sk_assign or TPROXY, routing cannot change the destination
// port: a connection to a pod's port 80 reaches ztunnel's port 80, where
// nothing listens. Tests dial the port of the listener they mean (a server
// listening on 15001, a client dialling 15008). The original destination
// address is still one ztunnel does not own, which is what IP_TRANSPARENT
// is for: without it on an IPv4 listener the SYN-ACK, from a non-local
// address, cannot leave.
//
// The node must have its ztunnel pod (AddZtunnel) and a veth per pod
// (WiringVeth or WiringPTP). Call it once per node; the rules go with the
// namespaces.
//
// On WiringBridge it fails the test: the pods share the bridge as input
// interface, so no rule tells a pod's packets from ztunnel's forwarding of
// them (which keeps the pod's address as source), and the node's pods
// reach each other across the bridge without routing.
func (n *Node) SteerToZtunnel(pods ...*Pod) {
	n.tb.Helper()
	if n.Wiring == WiringBridge {
		n.tb.Fatalf("steer to ztunnel on %s: policy routing cannot steer the pods of a bridge (wiring %s); use WiringVeth or WiringPTP", n.Name, n.Wiring)
	}
	zt := n.Ztunnel()
	if zt == nil {
		n.tb.Fatalf("steer to ztunnel on %s: no ztunnel pod (AddZtunnel)", n.Name)
	}
	type family struct {
		family  int
		all     netip.Prefix
		gw      netip.Addr
		podCIDR netip.Prefix
	}
	families := []family{
		{unix.AF_INET, netip.MustParsePrefix("0.0.0.0/0"), zt.IPv4, n.PodCIDRv4},
		{unix.AF_INET6, netip.MustParsePrefix("::/0"), zt.IPv6, n.PodCIDRv6},
	}
	rule := func(f family, iif string, dst netip.Prefix, table int) *netlink.Rule {
		r := netlink.NewRule()
		r.Family, r.IifName, r.Table, r.Priority = f.family, iif, table, steerPriority
		if dst.IsValid() {
			r.Dst = ipNet(dst)
		}
		return r
	}
	for _, f := range families {
		route := &netlink.Route{
			Table: SteerTable, Dst: ipNet(f.all), Gw: f.gw.AsSlice(),
			LinkIndex: zt.HostVethIndex, Flags: int(netlink.FLAG_ONLINK),
		}
		if err := n.nl.RouteAdd(route); err != nil {
			n.tb.Fatalf("route %s via %s in table %d on %s: %v", f.all, f.gw, SteerTable, n.Name, err)
		}
		rules := []*netlink.Rule{rule(f, "eth0", f.podCIDR, SteerTable)}
		for _, p := range pods {
			rules = append(rules, rule(f, p.HostVeth, netip.Prefix{}, SteerTable))
		}
		for _, r := range rules {
			if err := n.nl.RuleAdd(r); err != nil {
				n.tb.Fatalf("add rule %v on %s: %v", r, n.Name, err)
			}
		}
	}
	err := zt.Do(func() error {
		for _, f := range families {
			route := &netlink.Route{
				Table: LocalTable, Type: unix.RTN_LOCAL, Dst: ipNet(f.all),
				LinkIndex: 1, Scope: netlink.SCOPE_HOST, // lo
			}
			if err := netlink.RouteAdd(route); err != nil {
				return fmt.Errorf("route local %s in table %d: %w", f.all, LocalTable, err)
			}
			if err := netlink.RuleAdd(rule(f, "eth0", netip.Prefix{}, LocalTable)); err != nil {
				return fmt.Errorf("add rule iif eth0 lookup %d: %w", LocalTable, err)
			}
		}
		return nil
	})
	if err != nil {
		n.tb.Fatal(err)
	}
}
