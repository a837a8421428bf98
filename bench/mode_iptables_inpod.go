package main

import (
	"strings"
)

// Istio's in-pod capture (istio-cni, ambient in-pod redirection, since 1.24
// by nat REDIRECT: istio/istio #52622; the TPROXY variant was removed in
// 1.25), read in istio/istio at commit 86c9f01fd735 (cni/pkg/config,
// cni/pkg/iptables, cni/pkg/nftables).
const (
	// (The rules' 0x539 is the mark in-pod ztunnel sets on its sockets,
	// SO_MARK 1337: config.InpodMark; the stand-in with -zds sets it.)

	// probeSNATv4 and probeSNATv6 are the node's source for kubelet's
	// probes (HOST_PROBE_SNAT_IP, HOST_PROBE_SNAT_IPV6 defaults,
	// cni/README.md), which the pod's rules let through.
	probeSNATv4 = "169.254.7.127"
	probeSNATv6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
	// inpodRoutes is the table of ip rule fwmark 0x111/0xfff pref
	// 32764 lookup 100, ip route add local 0.0.0.0/0 dev lo table 100
	// (config.RouteTableInbound, iptables_linux.go
	// forEachInpodMarkIPRule, forEachLoopbackRoute): replies to ztunnel's
	// transparent connections (connmark 0x111) go back to its sockets.
	inpodRoutes = "100"
)

// iptablesInpodRules are Istio's in-pod rules for one family, exactly as
// cni/pkg/iptables/testdata/default.golden (IPv4) and the second half of
// default_ipv6.golden (IPv6) list them, with the golden files' test
// address for the IPv6 probe source replaced by Istio's default and
// "* table" written "*table" for iptables-restore. LOOPBACK is 127.0.0.1/32
// or ::1/128, PROBE the family's probe source.
const iptablesInpodRules = `*mangle
-N ISTIO_PRERT
-N ISTIO_OUTPUT
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
-N ISTIO_PRERT
-N ISTIO_OUTPUT
-A OUTPUT -j ISTIO_OUTPUT
-A PREROUTING -j ISTIO_PRERT
-A ISTIO_PRERT -s PROBE -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT -d PROBE -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d LOOPBACK -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-port 15053
-A ISTIO_OUTPUT ! -d LOOPBACK -p tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d LOOPBACK -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d LOOPBACK -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
*raw
-N ISTIO_OUTPUT
-N ISTIO_PRERT
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1
-A ISTIO_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1
COMMIT
`

// hostProbeRules is the node's side (cni/pkg/iptables/testdata/
// hostprobe.golden, and iptables.go AppendHostRules for IPv6): kubelet's
// probes to the ambient pods leave the node from the probe source. It
// is the only rule on the node, and puts conntrack and NAT on its
// forwarding path. FAMILY is v4 or v6.
const hostProbeRules = `*nat
-N ISTIO_POSTRT
-I POSTROUTING 1 -j ISTIO_POSTRT
-A ISTIO_POSTRT -m owner --socket-exists -p tcp -m set --match-set istio-inpod-probes-FAMILY dst -j SNAT --to-source PROBE
COMMIT
`

// family is what the in-pod rules need of one IP family.
type family struct {
	name, loopback, probe, any, ipFlag, restore string
}

var inpodFamilies = []family{
	{name: "v4", loopback: "127.0.0.1/32", probe: probeSNATv4, any: "0.0.0.0/0", ipFlag: "ip", restore: "iptables-restore"},
	{name: "v6", loopback: "::1/128", probe: probeSNATv6, any: "::/0", ipFlag: "ip -6", restore: "ip6tables-restore"},
}

func (f family) rules(tmpl string) string {
	return strings.NewReplacer("LOOPBACK", f.loopback, "PROBE", f.probe, "FAMILY", f.name).Replace(tmpl)
}

// inpodRouting is what Istio's CNI adds in each pod's netns beside the
// rules, for each family (iptables_linux.go): the mark 0x111 (connmark of
// ztunnel's connections, restored on the replies) routes to lo.
func inpodRouting() []step {
	var out []step
	for _, f := range inpodFamilies {
		out = append(out,
			step{Cmd: f.ipFlag + " route add local " + f.any + " dev lo table " + inpodRoutes},
			step{Cmd: f.ipFlag + " rule add fwmark 0x111/0xfff pref 32764 lookup " + inpodRoutes})
	}
	return out
}

// setupIptablesInpod installs Istio's current in-pod redirection with
// iptables (the default): in each ambient pod's netns the rules above for
// both families and the routing, to the listeners the stand-in opens there
// (run with -zds, it marks its sockets 0x539 itself); on the node only the
// SNAT of kubelet's probes, with the pods in its ipsets.
func (c *Copy) setupIptablesInpod(e *env) {
	node := script{Where: "node"}
	for _, f := range inpodFamilies {
		set := "istio-inpod-probes-" + f.name
		create := "ipset create " + set + " hash:ip"
		if f.name == "v6" {
			create += " family inet6"
		}
		node.Steps = append(node.Steps, step{Cmd: create})
		for _, p := range c.ambientPods() {
			node.Steps = append(node.Steps, step{Cmd: "ipset add " + set + " " + podAddr(p, f).String()})
		}
		node.Steps = append(node.Steps, step{Cmd: f.restore + " -w 10", Stdin: f.rules(hostProbeRules)})
	}
	scripts := []script{node}
	for _, pod := range []string{"client", "server"} {
		s := script{Where: pod}
		for _, f := range inpodFamilies {
			s.Steps = append(s.Steps, step{Cmd: f.restore + " -w 10", Stdin: f.rules(iptablesInpodRules)})
		}
		s.Steps = append(s.Steps, inpodRouting()...)
		scripts = append(scripts, s)
	}
	c.install(e, scripts...)
	c.flushAtEnd(e, []string{"node", "client", "server"},
		"iptables -w 10 -t raw -F", "iptables -w 10 -t raw -X",
		"ip6tables -w 10 -t mangle -F", "ip6tables -w 10 -t mangle -X",
		"ip6tables -w 10 -t nat -F", "ip6tables -w 10 -t nat -X",
		"ip6tables -w 10 -t raw -F", "ip6tables -w 10 -t raw -X")
	c.conntrackForInjection(e, "node", "client", "server")
}

// flushAtEnd runs cmds in the named namespaces of the copy at the end,
// reporting failures (install's own flush covers IPv4's mangle and nat).
func (c *Copy) flushAtEnd(e *env, where []string, cmds ...string) {
	ns := c.namespaces()
	for _, w := range where {
		s := script{Where: w}
		for _, cmd := range cmds {
			s.Steps = append(s.Steps, step{Cmd: cmd})
		}
		target := ns[w]
		e.Cleanup(func() {
			if err := s.run(target); err != nil {
				e.Errorf("copy %s: %v", c.Mode, err)
			}
		})
	}
}
