package main

import (
	"fmt"
	"strings"
)

// Addresses of Istio's node-level tunnels (cni/pkg/ambient/constants).
const (
	inboundTunIP         = "192.168.126.1"
	ztunnelInboundTunIP  = "192.168.126.2"
	outboundTunIP        = "192.168.127.1"
	ztunnelOutboundTunIP = "192.168.127.2"
	// tunnelPort is Geneve's port, which Istio's rules skip: the VXLAN
	// devices that stand in for Geneve use it, so the rule still means
	// what it meant.
	tunnelPort = 6081
)

// setupIptablesNode installs Istio's original node-level ambient
// redirection (istio-cni 1.18–1.20, redirectMode iptables; the rules of
// istio/ztunnel's scripts/node-redirect.sh and ztunnel-redirect.sh, which
// reproduce what istio-cni installed): on the node an ipset of the ambient
// pods' IPs, mangle marks and connmarks, policy routing into two tunnels
// (istioin, istioout) to ztunnel; in ztunnel's netns TPROXY from the
// tunnels to its listeners and a mark that delivers replies to its
// transparent sockets.
//
// What differs: VXLAN (same VNIs 1000/1001, same port 6081) stands in for
// Geneve, which this kernel lacks; IPv4 only; the kube-proxy and
// kind-specific chains around Istio's are absent (no Service here).
func (c *Copy) setupIptablesNode(e *env) {
	node, zt := c.Node, c.Ztunnel
	nodeIP, ztIP, ztVeth := ip4(node.IPv4), ip4(zt.IPv4), zt.HostVeth

	nodeRules := strings.NewReplacer("HOST_IP", nodeIP, "ZTUNNEL_IP", ztIP, "ZTUNNEL_INTERFACE", ztVeth).Replace(`*mangle
:ztunnel-FORWARD - [0:0]
:ztunnel-INPUT - [0:0]
:ztunnel-OUTPUT - [0:0]
:ztunnel-POSTROUTING - [0:0]
:ztunnel-PREROUTING - [0:0]
-A PREROUTING -j ztunnel-PREROUTING
-A INPUT -j ztunnel-INPUT
-A FORWARD -j ztunnel-FORWARD
-A OUTPUT -j ztunnel-OUTPUT
-A POSTROUTING -j ztunnel-POSTROUTING
-A ztunnel-FORWARD -m mark --mark 0x220/0x220 -j CONNMARK --save-mark --nfmask 0x220 --ctmask 0x220
-A ztunnel-FORWARD -m mark --mark 0x210/0x210 -j CONNMARK --save-mark --nfmask 0x210 --ctmask 0x210
-A ztunnel-INPUT -m mark --mark 0x220/0x220 -j CONNMARK --save-mark --nfmask 0x220 --ctmask 0x220
-A ztunnel-INPUT -m mark --mark 0x210/0x210 -j CONNMARK --save-mark --nfmask 0x210 --ctmask 0x210
-A ztunnel-OUTPUT -s HOST_IP/32 -j MARK --set-xmark 0x220/0xffffffff
-A ztunnel-PREROUTING -i istioin -j MARK --set-xmark 0x200/0x200
-A ztunnel-PREROUTING -i istioin -j RETURN
-A ztunnel-PREROUTING -i istioout -j MARK --set-xmark 0x200/0x200
-A ztunnel-PREROUTING -i istioout -j RETURN
-A ztunnel-PREROUTING -p udp -m udp --dport 6081 -j RETURN
-A ztunnel-PREROUTING -m connmark --mark 0x220/0x220 -j MARK --set-xmark 0x200/0x200
-A ztunnel-PREROUTING -m mark --mark 0x200/0x200 -j RETURN
-A ztunnel-PREROUTING ! -i ZTUNNEL_INTERFACE -m connmark --mark 0x210/0x210 -j MARK --set-xmark 0x40/0x40
-A ztunnel-PREROUTING -m mark --mark 0x40/0x40 -j RETURN
-A ztunnel-PREROUTING ! -s ZTUNNEL_IP/32 -i ZTUNNEL_INTERFACE -j MARK --set-xmark 0x210/0x210
-A ztunnel-PREROUTING -m mark --mark 0x200/0x200 -j RETURN
-A ztunnel-PREROUTING -i ZTUNNEL_INTERFACE -j MARK --set-xmark 0x220/0x220
-A ztunnel-PREROUTING -p udp -j MARK --set-xmark 0x220/0x220
-A ztunnel-PREROUTING -m mark --mark 0x200/0x200 -j RETURN
-A ztunnel-PREROUTING -p tcp -m set --match-set ztunnel-pods-ips src -j MARK --set-xmark 0x100/0x100
COMMIT
*nat
:ztunnel-POSTROUTING - [0:0]
:ztunnel-PREROUTING - [0:0]
-A PREROUTING -j ztunnel-PREROUTING
-A POSTROUTING -j ztunnel-POSTROUTING
-A ztunnel-POSTROUTING -m mark --mark 0x100/0x100 -j ACCEPT
-A ztunnel-PREROUTING -m mark --mark 0x100/0x100 -j ACCEPT
COMMIT
`)
	vx := func(name string, vni int, remote, local string) string {
		return fmt.Sprintf("ip link add name %s type vxlan id %d remote %s local %s dstport %d", name, vni, remote, local, tunnelPort)
	}
	nodeScript := script{Where: "node", Steps: []step{
		{Cmd: "ipset create ztunnel-pods-ips hash:ip"},
		{Cmd: "ipset add ztunnel-pods-ips " + ip4(c.Client.IPv4)},
		{Cmd: "ipset add ztunnel-pods-ips " + ip4(c.Server.IPv4)},
		{Cmd: vx("istioin", 1000, ztIP, nodeIP)},
		{Cmd: "ip addr add " + inboundTunIP + "/30 dev istioin"},
		{Cmd: "ip link set istioin up"},
		{Cmd: vx("istioout", 1001, ztIP, nodeIP)},
		{Cmd: "ip addr add " + outboundTunIP + "/30 dev istioout"},
		{Cmd: "ip link set istioout up"},
		{Cmd: "sysctl -w net.ipv4.conf.istioin.rp_filter=0"},
		{Cmd: "sysctl -w net.ipv4.conf.istioout.rp_filter=0"},
		{Cmd: "iptables-restore -w 10", Stdin: nodeRules},
		{Cmd: "ip route add table 101 " + ztIP + " dev " + ztVeth + " scope link"},
		{Cmd: "ip route add table 101 0.0.0.0/0 via " + ztunnelOutboundTunIP + " dev istioout"},
		{Cmd: "ip route add table 102 " + ztIP + " dev " + ztVeth + " scope link"},
		{Cmd: "ip route add table 102 0.0.0.0/0 via " + ztIP + " dev " + ztVeth + " onlink"},
		{Cmd: "ip route add table 100 " + ztIP + " dev " + ztVeth + " scope link"},
		// Each ambient pod, as istio-cni's AddPodToMesh added it: traffic
		// to it from outside the mesh enters ztunnel through istioin.
		{Cmd: "ip route add table 100 " + ip4(c.Client.IPv4) + " via " + ztunnelInboundTunIP + " dev istioin src " + nodeIP},
		{Cmd: "ip route add table 100 " + ip4(c.Server.IPv4) + " via " + ztunnelInboundTunIP + " dev istioin src " + nodeIP},
		{Cmd: "ip rule add priority 100 fwmark 0x200/0x200 goto 32766"},
		{Cmd: "ip rule add priority 101 fwmark 0x100/0x100 lookup 101"},
		{Cmd: "ip rule add priority 102 fwmark 0x040/0x040 lookup 102"},
		{Cmd: "ip rule add priority 103 table 100"},
	}}
	ztRules := strings.NewReplacer("INSTANCE_IP", ztIP).Replace(`*mangle
-A PREROUTING -p tcp -i pistioin -m tcp --dport 15008 -j TPROXY --on-port 15008 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff
-A PREROUTING -p tcp -i pistioout -j TPROXY --on-port 15001 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff
-A PREROUTING -p tcp -i pistioin -j TPROXY --on-port 15006 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff
-A PREROUTING -p tcp -i eth0 ! -d INSTANCE_IP/32 -j MARK --set-xmark 0x4d3/0xfff
COMMIT
`)
	ztScript := script{Where: "ztunnel", Steps: []step{
		{Cmd: vx("pistioin", 1000, nodeIP, ztIP)},
		{Cmd: "ip addr add " + ztunnelInboundTunIP + "/30 dev pistioin"},
		{Cmd: vx("pistioout", 1001, nodeIP, ztIP)},
		{Cmd: "ip addr add " + ztunnelOutboundTunIP + "/30 dev pistioout"},
		{Cmd: "ip link set pistioin up"},
		{Cmd: "ip link set pistioout up"},
		{Cmd: "sysctl -w net.ipv4.conf.pistioin.rp_filter=0"},
		{Cmd: "sysctl -w net.ipv4.conf.pistioout.rp_filter=0"},
		{Cmd: "ip rule add priority 20000 fwmark 0x400/0xfff lookup 100"},
		{Cmd: "ip rule add priority 20003 fwmark 0x4d3/0xfff lookup 100"},
		{Cmd: "ip route add local 0.0.0.0/0 dev lo table 100"},
		{Cmd: "ip route add table 101 " + nodeIP + " dev eth0 scope link"},
		{Cmd: "ip route add table 101 0.0.0.0/0 via " + outboundTunIP + " dev pistioout"},
		{Cmd: "ip route add table 102 " + nodeIP + " dev eth0 scope link"},
		{Cmd: "ip route add table 102 0.0.0.0/0 via " + inboundTunIP + " dev pistioin"},
		{Cmd: "iptables-restore -w 10", Stdin: ztRules},
	}}
	c.install(e, nodeScript, ztScript)
	c.conntrackForInjection(e, "node")
}

// install runs the scripts in their namespaces, records them for the
// report, and flushes the iptables rules and ipsets they made at the end
// (the namespaces go after, with whatever else they hold).
func (c *Copy) install(e *env, scripts ...script) {
	ns := c.namespaces()
	for _, s := range scripts {
		target := ns[s.Where]
		if err := s.run(target); err != nil {
			e.Fatalf("copy %s: %v", c.Mode, err)
		}
		c.Scripts = append(c.Scripts, s)
		where := s.Where
		e.Cleanup(func() {
			flush := script{Where: where, Steps: []step{
				{Cmd: "iptables -w 10 -t mangle -F"}, {Cmd: "iptables -w 10 -t mangle -X"},
				{Cmd: "iptables -w 10 -t nat -F"}, {Cmd: "iptables -w 10 -t nat -X"},
			}}
			if err := flush.run(target); err != nil {
				e.Errorf("copy %s: flush iptables: %v", c.Mode, err)
			}
			// Fails harmlessly where the script made no ipset.
			script{Where: where, Steps: []step{{Cmd: "ipset destroy"}}}.run(target)
		})
	}
}

// conntrackForInjection sets, in the named namespaces of the copy, the
// conntrack settings under which injected packets are counted as the
// established flow they copy: no checksum verification (the kernel path
// sends TCP segments with a bad checksum so that they die at the
// destination's TCP layer, and real segments from a local veth carry
// CHECKSUM_PARTIAL, which conntrack does not verify either), and liberal
// window tracking (the injected segments' sequence numbers are not the
// flow's). Without them every injected segment would be INVALID: a
// conntrack entry allocated and freed per packet, and no connmark.
func (c *Copy) conntrackForInjection(e *env, where ...string) {
	ns := c.namespaces()
	for _, w := range where {
		s := script{Where: w, Steps: []step{
			{Cmd: "sysctl -w net.netfilter.nf_conntrack_checksum=0"},
			{Cmd: "sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1"},
		}}
		if err := s.run(ns[w]); err != nil {
			e.Fatalf("copy %s: %v", c.Mode, err)
		}
		c.Scripts = append(c.Scripts, s)
	}
}
