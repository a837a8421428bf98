package main

import "strings"

// nftablesInpodRules are Istio's in-pod rules with nftables, exactly as
// cni/pkg/nftables/testdata/default_ipv6.golden lists them (the dual-stack
// case; default.golden is its IPv4 lines), with the golden file's test
// address for the IPv6 probe source replaced by Istio's default
// (HOST_PROBE_SNAT_IPV6): one ruleset, three inet tables, both families.
const nftablesInpodRules = `add table inet istio-ambient-nat
flush table inet istio-ambient-nat
add chain inet istio-ambient-nat prerouting { type nat hook prerouting priority -100 ; }
add chain inet istio-ambient-nat output { type nat hook output priority -100 ; }
add chain inet istio-ambient-nat istio-prerouting
add chain inet istio-ambient-nat istio-output
add rule inet istio-ambient-nat output jump istio-output
add rule inet istio-ambient-nat prerouting jump istio-prerouting
add rule inet istio-ambient-nat istio-prerouting meta l4proto tcp ip saddr PROBE4 counter accept
add rule inet istio-ambient-nat istio-prerouting meta l4proto tcp ip6 saddr PROBE6 counter accept
add rule inet istio-ambient-nat istio-output meta l4proto tcp ip daddr PROBE4 counter accept
add rule inet istio-ambient-nat istio-output meta l4proto tcp ip6 daddr PROBE6 counter accept
add rule inet istio-ambient-nat istio-prerouting ip daddr != 127.0.0.1/32 tcp dport != 15008 mark and 0xfff  != 0x539 counter redirect to :15006
add rule inet istio-ambient-nat istio-prerouting ip6 daddr != ::1/128 tcp dport != 15008 mark and 0xfff != 0x539 counter redirect to :15006
add rule inet istio-ambient-nat istio-output oifname != lo mark and 0xfff != 0x539 udp dport 53 counter redirect to :15053
add rule inet istio-ambient-nat istio-output ip daddr != 127.0.0.1/32 tcp dport 53 mark and 0xfff != 0x539 counter redirect to :15053
add rule inet istio-ambient-nat istio-output ip6 daddr != ::1/128 tcp dport 53 mark and 0xfff != 0x539 counter redirect to :15053
add rule inet istio-ambient-nat istio-output meta l4proto tcp mark and 0xfff == 0x111 counter accept
add rule inet istio-ambient-nat istio-output oifname lo ip daddr != 127.0.0.1/32 counter accept
add rule inet istio-ambient-nat istio-output oifname lo ip6 daddr != ::1/128 counter accept
add rule inet istio-ambient-nat istio-output meta l4proto tcp ip daddr != 127.0.0.1/32 mark and 0xfff != 0x539 counter redirect to :15001
add rule inet istio-ambient-nat istio-output meta l4proto tcp ip6 daddr != ::1/128 mark and 0xfff != 0x539 counter redirect to :15001
add table inet istio-ambient-mangle
flush table inet istio-ambient-mangle
add chain inet istio-ambient-mangle prerouting { type filter hook prerouting priority -150 ; }
add chain inet istio-ambient-mangle output { type route hook output priority -150 ; }
add chain inet istio-ambient-mangle istio-prerouting
add chain inet istio-ambient-mangle istio-output
add rule inet istio-ambient-mangle prerouting jump istio-prerouting
add rule inet istio-ambient-mangle output jump istio-output
add rule inet istio-ambient-mangle istio-prerouting meta mark & 0xfff == 0x539 counter ct mark set ct mark & 0xfffff000 |  0x111
add rule inet istio-ambient-mangle istio-output ct mark and 0xfff == 0x111 counter meta mark set ct mark
add table inet istio-ambient-raw
flush table inet istio-ambient-raw
add chain inet istio-ambient-raw prerouting { type filter hook prerouting priority -300 ; }
add chain inet istio-ambient-raw output { type filter hook output priority -300 ; }
add chain inet istio-ambient-raw istio-prerouting
add chain inet istio-ambient-raw istio-output
add rule inet istio-ambient-raw prerouting jump istio-prerouting
add rule inet istio-ambient-raw output jump istio-output
add rule inet istio-ambient-raw istio-output udp dport 53 meta mark and 0xfff == 0x539 counter ct zone set 1
add rule inet istio-ambient-raw istio-prerouting udp sport 53 meta mark and 0xfff != 0x539 counter ct zone set 1
`

// nftablesHostProbeRules is the node's side, as
// cni/pkg/nftables/testdata/hostprobe_ipv6.golden lists it, with the sets
// the rules name (nftables.go keeps the pods' IPs in them) declared first,
// and "skuid 0" for the golden file's test uid 1000: kubelet runs as root
// on these nodes. The golden files' other values are Istio's defaults.
const nftablesHostProbeRules = `add table inet istio-ambient-nat
flush table inet istio-ambient-nat
add set inet istio-ambient-nat istio-inpod-probes-v4 { type ipv4_addr ; }
add set inet istio-ambient-nat istio-inpod-probes-v6 { type ipv6_addr ; }
add element inet istio-ambient-nat istio-inpod-probes-v4 { POD4S }
add element inet istio-ambient-nat istio-inpod-probes-v6 { POD6S }
add chain inet istio-ambient-nat postrouting { type nat hook postrouting priority 100 ; }
add rule inet istio-ambient-nat postrouting meta l4proto tcp skuid 0 ip daddr @istio-inpod-probes-v4 counter snat to PROBE4
add rule inet istio-ambient-nat postrouting meta l4proto tcp skuid 0 ip6 daddr @istio-inpod-probes-v6 counter snat to PROBE6
`

// setupNftablesInpod installs Istio's in-pod redirection with nftables
// (istio-cni's nftables backend): in each ambient pod's netns the ruleset
// above with nft -f and the same routing as with iptables; on the node the
// probes' SNAT, with the pods in its sets.
func (c *Copy) setupNftablesInpod(e *env) {
	var pod4, pod6 []string
	for _, p := range c.ambientPods() {
		pod4, pod6 = append(pod4, p.IPv4.String()), append(pod6, p.IPv6.String())
	}
	r := strings.NewReplacer("PROBE4", probeSNATv4, "PROBE6", probeSNATv6,
		"POD4S", strings.Join(pod4, ", "), "POD6S", strings.Join(pod6, ", "))
	scripts := []script{{Where: "node", Steps: []step{{Cmd: "nft -f -", Stdin: r.Replace(nftablesHostProbeRules)}}}}
	for _, pod := range []string{"client", "server"} {
		s := script{Where: pod, Steps: []step{{Cmd: "nft -f -", Stdin: r.Replace(nftablesInpodRules)}}}
		s.Steps = append(s.Steps, inpodRouting()...)
		scripts = append(scripts, s)
	}
	ns := c.namespaces()
	for _, s := range scripts {
		if err := s.run(ns[s.Where]); err != nil {
			e.Fatalf("copy %s: %v", c.Mode, err)
		}
		c.Scripts = append(c.Scripts, s)
	}
	c.flushAtEnd(e, []string{"node", "client", "server"}, "nft flush ruleset")
	c.conntrackForInjection(e, "node", "client", "server")
}
