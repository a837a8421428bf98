package asm

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/meshredirect/meshredirect/maps"
)

// The in-pod programs (DESIGN.md §6): names of CollectionSpec.Programs and
// of the kernel's programs.
const (
	PodEgress   = "pod_egress"
	PodIngress  = "pod_ingress"
	PodLoopback = "pod_loopback"
)

// ztunnel (Istio 1.21+) marks every socket it opens with SO_MARK ZtunnelMark
// in the bits of ZtunnelMarkMask (istio/ztunnel src/inpod: its packets are
// not to be captured again).
const (
	ZtunnelMark     = 0x539
	ZtunnelMarkMask = 0xfff
)

// LoopbackIfindex is the ifindex of lo in every network namespace: the
// kernel registers it first (loopback_net_init).
const LoopbackIfindex = 1

// bpfFIngress is BPF_F_INGRESS: bpf_redirect to the device's ingress.
const bpfFIngress = 1

// PodConfig is what the in-pod programs know of their pod.
type PodConfig struct {
	// IPs are the pod's addresses, at most one per family.
	IPs []netip.Addr
	// HostNetnsID is the node's netns id in the pod's netns (the id the
	// pod's netns gives to the node's, RTM_GETNSID); -1 = unknown: no
	// segment is then recognised as the node's own.
	HostNetnsID int32
}

// podAddrs are the pod's addresses by family; an invalid Addr where it has
// none.
type podAddrs struct{ v4, v6 netip.Addr }

func (a podAddrs) of(f family) netip.Addr {
	if f.v6 {
		return a.v6
	}
	return a.v4
}

func (cfg PodConfig) addrs() (podAddrs, error) {
	var a podAddrs
	for _, ip := range cfg.IPs {
		ip = ip.Unmap()
		switch {
		case !ip.IsValid() || ip.IsUnspecified():
			return a, fmt.Errorf("pod address %s: not an address", ip)
		case ip.Is4() && a.v4.IsValid(), ip.Is6() && a.v6.IsValid():
			return a, fmt.Errorf("pod addresses %v: more than one per family", cfg.IPs)
		case ip.Is4():
			a.v4 = ip
		default:
			a.v6 = ip
		}
	}
	return a, nil
}

// PodPrograms lists the three in-pod programs in the order an outbound
// packet meets them. Their Instructions are those of a pod without
// addresses (everything it sends is dropped as spoofed); PodCollectionSpec
// builds them for a pod.
func PodPrograms() []Program {
	none := PodConfig{HostNetnsID: -1}
	return []Program{
		{PodEgress, Egress, "tc egress of eth0 in an ambient pod's netns", func(Options) asm.Instructions { return podEgress(podAddrs{}, none) }},
		{PodLoopback, Ingress, "tc ingress of lo in an ambient pod's netns", func(Options) asm.Instructions { return podLoopback() }},
		{PodIngress, Ingress, "tc ingress of eth0 in an ambient pod's netns", func(Options) asm.Instructions { return podIngress(podAddrs{}, none) }},
	}
}

// PodCollectionSpec returns the three in-pod programs built for the pod of
// cfg, and the maps (maps.Specs) they use. Load it with
// ebpf.NewCollectionWithOptions, with the pinned maps as MapReplacements.
// The programs need Linux 5.7 (bpf_sk_assign); pod_loopback does not depend
// on cfg, so one instance can serve every pod.
func PodCollectionSpec(cfg PodConfig, opts Options) (*ebpf.CollectionSpec, error) {
	a, err := cfg.addrs()
	if err != nil {
		return nil, err
	}
	if !a.v4.IsValid() && !a.v6.IsValid() {
		return nil, fmt.Errorf("build in-pod programs: the pod has no address")
	}
	spec := &ebpf.CollectionSpec{
		Maps:     maps.Specs(opts.PodsMaxEntries),
		Programs: make(map[string]*ebpf.ProgramSpec),
	}
	for name, insns := range map[string]asm.Instructions{
		PodEgress:   podEgress(a, cfg),
		PodLoopback: podLoopback(),
		PodIngress:  podIngress(a, cfg),
	} {
		spec.Programs[name] = &ebpf.ProgramSpec{
			Name:         name,
			Type:         ebpf.SchedCLS,
			Instructions: at(name, numbered(name, insns)...),
			License:      License,
		}
	}
	return spec, nil
}

// podOwn jumps to other unless the address at field (an offset from the L3
// header, its bytes bounds-checked on this path) is the pod's own address
// of family f, compared with the address built into the program. Clobbers
// R1.
func podOwn(a podAddrs, f family, field int16, other string) asm.Instructions {
	ip := a.of(f)
	if !ip.IsValid() {
		// No address of this family: never the pod's. A conditional jump
		// that is always taken (a 32-bit load is never 2^64-1) rather than
		// a plain one, which would leave the blocks after it unreachable,
		// and the verifier refuses unreachable instructions.
		return asm.Instructions{
			asm.LoadMem(asm.R1, regData, ethHlen+field, asm.Word),
			asm.JNE.Imm(asm.R1, -1, other),
		}
	}
	b := ip.AsSlice()
	var insns asm.Instructions
	for off := 0; off < len(b); off += 4 {
		insns = append(insns,
			asm.LoadMem(asm.R1, regData, ethHlen+field+int16(off), asm.Word),
			// A 32-bit compare: a 64-bit one sign-extends the immediate.
			asm.JNE.Imm32(asm.R1, nativeWord([4]byte(b[off:off+4])), other),
		)
	}
	return insns
}

// podOutbound are pod_egress's rules: in the pod's netns skb->ifindex says
// nothing node-wide, so the pod's addresses are built into the program; its
// flags are still those the endpoints map gives its address. ztunnel's
// sockets are in the program's own netns (ztunnel opens them in the pod's),
// the node's in the netns of cfg.HostNetnsID.
func podOutbound(a podAddrs, cfg PodConfig) outboundRules {
	return outboundRules{
		prefix: "pe",
		checkSource: func(f family, prefix, spoofed string) asm.Instructions {
			return concat(
				f.checkBounds(labelParseErr),
				podOwn(a, f, f.saddr, spoofed),
				f.flagsOf(prefix, f.saddr),
			)
		},
		own: func(f family, _ string, field int16, other string) asm.Instructions {
			return podOwn(a, f, field, other)
		},
		ztunnel: netnsRef{kind: netnsCurrent},
		node:    hostNetns(cfg.HostNetnsID),
	}
}

// podEgress builds the program on the egress of eth0 inside an ambient pod's
// netns, which sees everything the pod sends out. It keeps DESIGN §5's table
// "from an ambient pod" with app_outbound's very blocks (outboundRules), but:
//
//   - A packet of ztunnel's own sockets (skb->mark & ZtunnelMarkMask ==
//     ZtunnelMark) passes untouched before anything else.
//   - The source check compares with the pod's addresses, built into the
//     program (PodConfig.IPs); the pod's flags (bypass DNS capture, strict
//     UDP) are those the endpoints map gives its address.
//   - A reply of the node's own connection is recognised in the node's netns
//     by its id as the pod's netns knows it (PodConfig.HostNetnsID; unknown:
//     never), and ztunnel's sockets are looked up in the pod's own netns.
//   - What goes to ztunnel gets TProxyMark and is redirected to the ingress
//     of lo (LoopbackIfindex), where pod_loopback gives it to a socket of
//     ztunnel's. Its destination MAC becomes lo's (all zeros): lo's
//     eth_type_trans then makes it PACKET_HOST, which the IP layer wants
//     (a frame for another MAC is PACKET_OTHERHOST there, and dropped).
//     Replies of the pod to ztunnel's transparent inbound connections go
//     the same way: once the mark makes them local, the stack's own lookup
//     finds ztunnel's socket.
//
// Nothing here depends on ztunnel's readiness: pod_loopback fails closed
// when ztunnel has no listener in the pod.
func podEgress(a podAddrs, cfg PodConfig) asm.Instructions {
	return concat(
		loadPacket(),
		asm.Instructions{
			asm.LoadMem(asm.R1, regCtx, skbMark, asm.Word),
			asm.And.Imm(asm.R1, ZtunnelMarkMask),
			asm.JEq.Imm(asm.R1, ZtunnelMark, labelPass),
		},
		podOutbound(a, cfg).program(),
		at(labelCapture, zeroDstMAC()...),
		setMark(),
		report("pe_redirect", maps.VerdictRedirectedOut, false),
		countVerdict(maps.VerdictRedirectedOut),
		asm.Instructions{
			asm.Mov.Imm(asm.R1, LoopbackIfindex),
			asm.Mov.Imm(asm.R2, bpfFIngress),
			asm.FnRedirect.Call(),
			asm.Return(),
		},
		podExits(),
		exit(labelDroppedRelay, maps.VerdictDroppedRelay, ActShot),
	)
}

// podExits are the verdict blocks both pod_egress and pod_ingress end with:
// app_outbound's and app_inbound's but dropped_no_ztunnel (the verifier
// refuses a block no path reaches).
func podExits() asm.Instructions {
	return concat(
		exit(labelPass, maps.VerdictPassed, ActUnspec),
		exit(labelParseErr, maps.VerdictParseError, ActShot),
		exit(labelSpoofed, maps.VerdictDroppedSpoofed, ActShot),
		exit(labelDroppedProtocol, maps.VerdictDroppedProtocol, ActShot),
		exit(labelDroppedFragment, maps.VerdictDroppedFragment, ActShot),
		exit(labelDroppedPolicy, maps.VerdictDroppedPolicy, ActShot),
	)
}

// zeroDstMAC makes the frame's destination MAC lo's: 00:00:00:00:00:00.
func zeroDstMAC() asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(regData, ethOffDst, 0, asm.Word),
		asm.StoreImm(regData, ethOffDst+4, 0, asm.Half),
	}
}

// podLoopback builds the program on the ingress of lo inside an ambient
// pod's netns. It acts on what pod_egress redirected there (TProxyMark in
// the bits of TProxyMask) and on the replies of ztunnel's DNS proxy
// (dnsReply, poddns.go); everything else on lo passes untouched. It
// knows nothing of its pod, so one instance may serve every pod. As
// ztunnel_assign does for the outbound direction:
//
//   - A TCP segment that is not a connection request stays marked and
//     passes: the stack finds its socket (ztunnel's, or its TIME_WAIT) once
//     the mark makes it local.
//   - A connection request goes to the socket holding its exact tuple
//     (bpf_skc_lookup_tcp: a retransmitted SYN finds its request socket)
//     unless that is a listener or in TIME_WAIT; else to ztunnel's
//     listener on 15001, which must be a listener.
//   - DNS over TCP (to port 53, DNS capture on, the source pod not opted
//     out) goes through a NAT per connection (dnsTCPConnect,
//     dnsTCPSegment, poddns.go): the request's destination is recorded in
//     the dnstcp map and becomes 127.0.0.1:15053 or [::1]:15053, then it
//     goes to the socket of that tuple or to the 15053 listener; every
//     later segment of a recorded connection gets the same destination
//     and stays marked; the proxy's segments get the recorded source back.
//     ztunnel's DNS listener is not transparent: without the NAT, IPv4
//     refuses to route its SYN-ACK from the resolver's address. The
//     rewritten segments reach TCP only with
//     net.ipv4.conf.lo.route_localnet=1 (ip_route_input_slow drops a
//     destination in 127/8 as martian otherwise).
//   - UDP DNS, captured, goes to the 15053 UDP socket, and its original
//     destination is recorded for the reply (recordDNSQuery).
//   - An unmarked UDP datagram from 127.0.0.1:15053 or [::1]:15053 to a
//     client with a record (ztunnel's DNS reply) gets the recorded
//     destination as its source, checksums updated, and passes.
//
// ztunnel binds its DNS proxy to localhost: its dns_proxy_addr defaults to
// Address::Localhost, 127.0.0.1:15053 and [::1]:15053 (istio/ztunnel
// src/config.rs, DNS_PROXY_ADDR overrides it), while 15001, 15006 and 15008
// are bound to the wildcard. So the DNS lookups put the loopback address in
// the tuple: the kernel's listener lookups try that address and then the
// wildcard, which finds either binding in one helper call.
//
// The socket is bpf_sk_assign'ed. A marked packet that gets no socket (no
// listener: ztunnel has not opened its listeners in this pod yet, or is
// gone; other UDP; a protocol other than TCP and UDP; a later fragment; a
// header that cannot be parsed) is dropped (no_socket): fail closed.
func podLoopback() asm.Instructions {
	insns := concat(
		loadPacket(),
		asm.Instructions{
			asm.LoadMem(asm.R1, regCtx, skbMark, asm.Word),
			asm.And.Imm(asm.R1, TProxyMask),
			asm.JNE.Imm(asm.R1, TProxyMark, "pl_reply"),
		},
		parseEthernet(ethLabels{v4: "pl_v4", v6: "pl_v6", arp: labelNoSocket, other: labelNoSocket, vlan: labelNoSocket, short: labelNoSocket}),
	)
	for _, f := range families {
		insns = append(insns, loopbackFamily(f)...)
	}
	return concat(
		insns,
		assignSocket("pl", false),
		dnsReply("pl_reply"),
		exit("pl_marked", maps.VerdictMarked, ActOK),
		exit(labelPass, maps.VerdictPassed, ActUnspec),
		exit(labelNoSocket, maps.VerdictNoSocket, ActShot),
		// flagsOf checks the header it reads again: no packet the parser
		// let through gets here.
		exit(labelParseErr, maps.VerdictParseError, ActShot),
	)
}

// loopbackFamily is pod_loopback's code for one address family; it ends by
// jumping to pl_assign (R0 = socket, stackProto = 1 for an established
// socket, 0 for a listener) or to a verdict.
func loopbackFamily(f family) asm.Instructions {
	l := func(name string) string { return f.label("pl", name) }
	labels := l4Labels{icmp: labelPass, l4: l("l4"), fragment: labelNoSocket, bad: labelNoSocket}
	return concat(
		at("pl_"+f.name, f.parse(labelNoSocket)...),
		f.l4(l("ext"), labels),

		at(l("l4"),
			asm.JEq.Imm(regProto, ipprotoUDP, l("udp")),
			asm.JNE.Imm(regProto, ipprotoTCP, labelNoSocket),
		),
		l4Bounds(tcpOffFlags+1, labelNoSocket),
		asm.Instructions{
			asm.LoadMem(asm.R1, regL4, l4OffDport, asm.Half),
			asm.JEq.Imm(asm.R1, be16(portDNS), l("tcp53")),
		},
		jumpUnlessSYN("pl_marked"),
		f.synSocket(l("tcp"), l("tcp_outbound")),
		at(l("tcp_outbound"), f.listenerAt(l("tcp_outbound_lookup"), "pl_assign", false, PortOutbound, false)...),

		// TCP to port 53: a connection to ztunnel's DNS proxy when it is
		// captured DNS, through the NAT of dnsTCPConnect and dnsTCPSegment.
		at(l("tcp53"), jumpUnlessSYN(l("tcp53_segment"))...),
		f.flagsOf(l("src"), f.saddr),
		dnsCaptured(l("tcp53_dns")),
		asm.Instructions{asm.Ja.Label(l("tcp"))},
		f.dnsTCPConnect(l("tcp53_dns"), l("tcp53_syn")),
		at(l("tcp53_syn"), f.synSocket(l("tcp53_exact"), l("tcp53_listener"))...),
		at(l("tcp53_listener"), f.listenerAt(l("tcp_dns_lookup"), "pl_assign", false, PortDNS, true)...),
		f.dnsTCPSegment(l("tcp53_segment")),

		// UDP: only captured DNS.
		at(l("udp"), l4Bounds(l4PortsLen, labelNoSocket)...),
		f.flagsOf(l("udp_src"), f.saddr),
		dnsCaptured(l("udp_dns")),
		asm.Instructions{asm.Ja.Label(labelNoSocket)},
		at(l("udp_dns"), f.listenerAt(l("udp_dns_lookup"), l("udp_record"), true, PortDNS, true)...),
		f.recordDNSQuery(l("udp_record"), "pl_assign"),
	)
}

// synSocket is entered at label with a connection request, its TCP flags
// bounds-checked from R9: the socket holding its exact tuple in this netns
// (bpf_skc_lookup_tcp: a retransmitted SYN finds its request socket) goes
// to pl_assign (stackProto = 1) unless it is a listener or in TIME_WAIT;
// else it jumps to next.
func (f family) synSocket(label, next string) asm.Instructions {
	return concat(
		at(label, f.exactSocket(next, label+"_release", label+"_release")...),
		asm.Instructions{asm.Ja.Label("pl_assign")},
		at(label+"_release",
			asm.Mov.Reg(asm.R1, asm.R0),
			asm.FnSkRelease.Call(),
			asm.Ja.Label(next),
		),
	)
}

// podIngress builds the program on the ingress of eth0 inside an ambient
// pod's netns, which sees what arrives for the pod. It keeps DESIGN §5's
// table "to an ambient pod" for in-pod mode:
//
//   - TCP to 15008 passes: HBONE, to ztunnel's own listener in this netns.
//   - A TCP segment whose exact tuple has a socket in this netns that is
//     not a listener passes (replies to ztunnel's connections, inbound
//     connections ztunnel accepted): the stack delivers it to that socket
//     only. A connection request is given to that socket instead (a
//     retransmitted SYN to its request socket), unless it is in TIME_WAIT:
//     a SYN that meets a TIME_WAIT socket would be handed by the stack to
//     the listener of the original port (tcp_timewait_state_process,
//     TCP_TW_SYN), the application's, past ztunnel; it goes to 15006 like
//     any new connection. Any other segment on a TIME_WAIT tuple passes:
//     the TIME_WAIT socket answers it and never hands it on.
//   - TCP from the node itself passes (kubelet probes): the node's netns
//     (PodConfig.HostNetnsID) holds a socket for the reversed tuple that is
//     not a listener, and for a SYN not in TIME_WAIT either (the node never
//     sends a SYN from one). A pod cannot forge that, whatever source it
//     writes, bridge or routed CNI alike: the socket must exist in the
//     node's netns, with the node's address and port as its local end.
//   - TCP from an address the endpoints map gives an ambient pod of this
//     node is dropped (dropped_spoofed): in-pod, ztunnel reaches every
//     local pod through HBONE (15008, above).
//   - A pod annotated bypass-inbound-capture (its own address's endpoint
//     flag) gets the rest of its TCP directly.
//   - Any other TCP goes to ztunnel's 15006 listener (wildcard tuple, must
//     be a listener), bpf_sk_assign'ed; none: dropped (no_socket). That
//     includes a segment that is no connection request and has no socket:
//     passed, it would reach the application's listener, which a bare ACK
//     can open with a SYN cookie issued by 15006 for the same tuple (the
//     cookie depends on the tuple, not on the listener); 15006 answers it
//     with a reset instead.
//   - UDP to 15053 is dropped (dropped_policy): ztunnel's DNS proxy serves
//     the pod's own queries only. UDP and ICMP pass as app_inbound lets
//     them (strict policy: dropped, except DNS replies from the resolvers
//     and neighbour discovery); other protocols, other EtherTypes and later
//     fragments of TCP are dropped as app_inbound drops them.
func podIngress(a podAddrs, cfg PodConfig) asm.Instructions {
	insns := concat(
		loadPacket(),
		parseEthernet(ethLabels{v4: "pi_v4", v6: "pi_v6", arp: labelPass,
			other: labelDroppedProtocol, vlan: labelParseErr, short: labelParseErr}),
	)
	for _, f := range families {
		insns = append(insns, ingressFamily(f, a, hostNetns(cfg.HostNetnsID))...)
	}
	return concat(
		insns,
		assignSocket("pi", false),
		podExits(),
		exit(labelNoSocket, maps.VerdictNoSocket, ActShot),
	)
}

// ingressFamily is pod_ingress's code for one address family.
func ingressFamily(f family, a podAddrs, node netnsRef) asm.Instructions {
	l := func(name string) string { return f.label("pi", name) }
	return concat(
		at("pi_"+f.name, f.parse(labelParseErr)...),
		f.l4(l("ext"), l4Labels{icmp: l("icmp"), l4: l("l4"), fragment: l("frag"), bad: labelParseErr}),

		at(l("l4"), tcpOrUDP(l("tcp"), l("udp_port"))...),

		// TCP: HBONE passes.
		at(l("tcp"), l4Bounds(tcpOffFlags+1, labelParseErr)...),
		asm.Instructions{
			asm.LoadMem(asm.R1, regL4, l4OffDport, asm.Half),
			asm.JEq.Imm(asm.R1, be16(PortHBONE), labelPass),
		},
		f.checkBounds(labelParseErr),
		// A socket of this netns for the exact tuple.
		f.exactSocket(l("no_socket"), l("release"), l("time_wait")),
		jumpIfSYN("pi_assign"),
		asm.Instructions{
			asm.Mov.Reg(asm.R1, asm.R0),
			asm.FnSkRelease.Call(),
			asm.Ja.Label(labelPass),
		},
		at(l("time_wait"),
			asm.Mov.Reg(asm.R1, asm.R0),
			asm.FnSkRelease.Call(),
		),
		jumpIfSYN(l("no_socket")),
		asm.Instructions{asm.Ja.Label(labelPass)},
		at(l("release"),
			asm.Mov.Reg(asm.R1, asm.R0),
			asm.FnSkRelease.Call(),
		),

		// No socket of its own: from the node itself?
		at(l("no_socket"), f.nodeConnection(l("node"), node, labelPass)...),

		// From an ambient pod of this node, not through HBONE: forged.
		f.checkBounds(labelParseErr),
		f.lookupEndpoint(l("src"), f.saddr, l("src_ok")),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffFlags, asm.Half),
			asm.And.Imm(asm.R1, int32(maps.EndpointPod)),
			asm.JNE.Imm(asm.R1, 0, labelSpoofed),
		},
		// The pod bypasses inbound capture: its flags, when the packet is
		// for its own address.
		at(l("src_ok"), f.checkBounds(labelParseErr)...),
		podOwn(a, f, f.daddr, l("inbound")),
		f.flagsOf(l("self"), f.daddr),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.RFP, stackFlags, asm.Word),
			asm.And.Imm(asm.R1, int32(maps.EndpointBypassInbound)),
			asm.JNE.Imm(asm.R1, 0, labelPass),
		},
		at(l("inbound"), f.listenerAt(l("tcp_inbound"), "pi_assign", false, PortInbound, false)...),

		// UDP: never to ztunnel's DNS proxy; the rest as app_inbound.
		at(l("udp_port"), l4Bounds(l4PortsLen, labelParseErr)...),
		asm.Instructions{
			asm.LoadMem(asm.R1, regL4, l4OffDport, asm.Half),
			asm.JEq.Imm(asm.R1, be16(PortDNS), labelDroppedPolicy),
			asm.Ja.Label(l("udp")),
		},
		inboundOther(f, "pi"),
	)
}

// nodeConnection jumps to found when the node's netns (node) holds a socket
// for the packet's reversed tuple (the node's end of the connection) that
// is not a listener and, for a connection request, not in TIME_WAIT.
// Needs the TCP flags bounds-checked from R9. Clobbers R0-R5.
func (f family) nodeConnection(prefix string, node netnsRef, found string) asm.Instructions {
	none := prefix + "_none"
	if node.kind == netnsUnknown {
		return at(none, asm.Mov.Reg(asm.R0, asm.R0))
	}
	return concat(
		f.tupleFromPacket(true),
		asm.Instructions{asm.Mov.Imm(asm.R4, node.id)},
		f.socketState(none),
		asm.Instructions{
			asm.JEq.Imm(asm.R2, tcpListen, none),
			asm.JNE.Imm(asm.R2, tcpTimeWait, found),
		},
		jumpUnlessSYN(found),
		at(none, asm.Mov.Reg(asm.R0, asm.R0)),
	)
}
