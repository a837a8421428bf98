package main

// inpodPodRules are Istio's in-pod rules (istio-cni's
// cni/pkg/iptables/iptables.go, testdata/tproxy.golden, marks 0x539 and
// 0x111), with one change, marked CHANGED: outbound capture. Istio
// REDIRECTs outbound TCP to 15001 in nat OUTPUT and ztunnel reads the
// original destination with SO_ORIGINAL_DST; the stand-in, like
// ztunnel's TPROXY listeners, takes it from the accepted socket's local
// address, which REDIRECT rewrites to 127.0.0.1. So outbound packets are
// marked 0x112 in mangle OUTPUT, routed to lo by that mark, and TPROXYed
// to 15001 as they come back in on lo: the usual way to TPROXY locally
// generated traffic. The rest is Istio's, DNS capture (udp 53 to 15053)
// included. The report (bench/report, notes.go) shows Istio's line beside
// the change.
const inpodPodRules = `*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT -i lo -p tcp -m mark --mark 0x112/0xfff -j TPROXY --on-port 15001 --on-ip 127.0.0.1 --tproxy-mark 0x111/0xfff
-A ISTIO_PRERT ! -d 127.0.0.1/32 -i lo -p tcp -j ACCEPT
-A ISTIO_PRERT -p tcp -m tcp --dport 15008 -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15008 --tproxy-mark 0x111/0xfff
-A ISTIO_PRERT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15006 --tproxy-mark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 ! -o lo -p tcp -m mark ! --mark 0x539/0xfff -m mark ! --mark 0x111/0xfff -j MARK --set-xmark 0x112/0xfff
COMMIT
*nat
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT ! -o lo -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
COMMIT
`

// setupIptablesInpod installs Istio's current default (ambient in-pod
// redirection, istio-cni 1.21+): in each ambient pod's netns, iptables
// rules that send its traffic to listeners ztunnel opens in that netns,
// with ztunnel's own sockets marked 0x539 (here: the stand-in runs once in
// each pod's netns, in a cgroup whose sockets a cgroup/sock_create program
// marks 0x539); on the node, only the SNAT of kubelet probes, which
// already puts conntrack and NAT on the node's forwarding path.
func (c *Copy) setupIptablesInpod(e *env) {
	nodeRules := `*nat
:ISTIO_POSTRT - [0:0]
-A POSTROUTING -j ISTIO_POSTRT
-A ISTIO_POSTRT -m owner --socket-exists -p tcp -m set --match-set istio-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127
COMMIT
`
	nodeScript := script{Where: "node", Steps: []step{
		{Cmd: "ipset create istio-inpod-probes-v4 hash:ip"},
		{Cmd: "ipset add istio-inpod-probes-v4 " + ip4(c.Client.IPv4)},
		{Cmd: "ipset add istio-inpod-probes-v4 " + ip4(c.Server.IPv4)},
		{Cmd: "iptables-restore -w 10", Stdin: nodeRules},
	}}
	scripts := []script{nodeScript}
	for _, pod := range []string{"client", "server"} {
		scripts = append(scripts, script{Where: pod, Steps: []step{
			{Cmd: "iptables-restore -w 10", Stdin: inpodPodRules},
			{Cmd: "ip route add local 0.0.0.0/0 dev lo table 100"},
			{Cmd: "ip rule add fwmark 0x111/0xfff pref 32764 lookup 100"},
			{Cmd: "ip rule add fwmark 0x112/0xfff pref 32763 lookup 100"}, // CHANGED: outbound via lo
		}})
	}
	c.install(e, scripts...)
	c.conntrackForInjection(e, "node", "client", "server")
}
