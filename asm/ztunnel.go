package asm

import (
	"github.com/cilium/ebpf/asm"

	"github.com/meshredirect/meshredirect/maps"
)

// ztunnelIngress builds the program on the ingress of ztunnel's host veth,
// which sees every packet ztunnel sends. A packet for an ambient pod of this
// node is handed straight to that pod (its eth0 MAC as destination,
// bpf_redirect_peer into its netns): it must not be captured again on its
// way in. Anything else (other nodes, the API server, the node itself, pods
// outside the mesh) follows normal routing.
func ztunnelIngress(opts Options) asm.Instructions {
	insns := concat(
		loadPacket(),
		parseEthernet(ethLabels{v4: "zi_v4", v6: "zi_v6", arp: labelPass, other: labelPass, vlan: labelPass, short: labelPass}),
	)
	for _, f := range families {
		insns = append(insns, concat(
			at("zi_"+f.name, f.checkBounds(labelPass)...),
			f.lookupEndpoint(f.label("zi", "dst"), f.daddr, labelPass),
			asm.Instructions{
				asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffFlags, asm.Half),
				asm.And.Imm(asm.R1, int32(maps.EndpointPod)),
				asm.JEq.Imm(asm.R1, 0, labelPass),
				asm.Ja.Label("zi_redirect"),
			},
		)...)
	}
	return concat(
		insns,
		at("zi_redirect", rewriteDstMAC(asm.R0, maps.EndpointOffMAC)...),
		asm.Instructions{asm.LoadMem(regL4, asm.R0, maps.EndpointOffIfindex, asm.Word)},
		redirectTo(maps.VerdictBypass, opts.RedirectPeer),
		exit(labelPass, maps.VerdictPassed, ActUnspec),
	)
}

// ztunnelEgress builds the program on the egress of ztunnel's host veth,
// which sees what the node routes (or a bridge forwards) into ztunnel's
// netns: everything but what app_outbound hands over with
// bpf_redirect_peer. A packet there whose source is an ambient pod of this
// node must have entered the node through that pod's own veth
// (skb->ingress_ifindex): a pod that forged it, or a frame another pod on
// the bridge addressed to ztunnel's MAC, would otherwise reach ztunnel's
// listeners as that pod, and ztunnel_assign, which takes the direction from
// the source, would proxy it with that pod's identity. Dropped
// (dropped_spoofed); everything else passes.
func ztunnelEgress() asm.Instructions {
	insns := concat(
		loadPacket(),
		parseEthernet(ethLabels{v4: "ze_v4", v6: "ze_v6", arp: labelPass, other: labelPass, vlan: labelPass, short: labelPass}),
	)
	for _, f := range families {
		insns = append(insns, concat(
			at("ze_"+f.name, f.checkBounds(labelPass)...),
			f.lookupEndpoint(f.label("ze", "src"), f.saddr, labelPass),
			asm.Instructions{
				asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffFlags, asm.Half),
				asm.And.Imm(asm.R1, int32(maps.EndpointPod)),
				asm.JEq.Imm(asm.R1, 0, labelPass),
				asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffIfindex, asm.Word),
				asm.LoadMem(asm.R2, regCtx, skbIngressIfindex, asm.Word),
				asm.JNE.Reg(asm.R1, asm.R2, labelSpoofed),
				asm.Ja.Label(labelPass),
			},
		)...)
	}
	return concat(
		insns,
		exit(labelPass, maps.VerdictPassed, ActUnspec),
		exit(labelSpoofed, maps.VerdictDroppedSpoofed, ActShot),
	)
}

// ztunnelAssign builds the program on the ingress of eth0 inside ztunnel's
// netns. It gives each captured packet to one of ztunnel's sockets, so that
// an unmodified ztunnel receives traffic for addresses that are not its own:
//
//   - A packet addressed to ztunnel's own IP was not captured: passed.
//   - A TCP segment that is not a connection request (SYN without ACK) is
//     only marked: ztunnel's stack finds the socket of its flow itself (its
//     TIME_WAIT socket too, which answers a late FIN).
//   - A connection request goes to the socket that holds its tuple
//     (bpf_skc_lookup_tcp: a retransmitted SYN finds its request socket),
//     unless that is a listener or in TIME_WAIT: a client that reuses a
//     port must reach a listener at once, as without the mesh, not a
//     TIME_WAIT socket that answers with an ACK (and, with tcp_rfc1337,
//     ignores the client's RST).
//   - Else to a listener, found with a wildcard tuple (any address, the
//     listener's port) and required to be one: from an ambient pod of this
//     node (captured on its way out; ztunnel_egress and app_inbound see to
//     it that no other packet with such a source gets here) -> 15001, or
//     15053 for DNS (TCP or UDP to port 53) with capture on and the pod
//     not opted out; any other was captured on its way in -> 15008 if sent
//     to 15008 (HBONE), else 15006.
//
// The socket is bpf_sk_assign'ed and the packet marked TProxyMark, which the
// netns' policy routing delivers locally. A captured packet that gets no
// socket (no listener, other UDP, a protocol other than TCP and UDP, a later
// fragment, a truncated header) is dropped: passed on, a netns that
// forwards (it inherits the host's ip_forward when created) would route it
// to its destination unproxied.
func ztunnelAssign() asm.Instructions {
	insns := concat(
		loadPacket(),
		parseEthernet(ethLabels{v4: "za_v4", v6: "za_v6", arp: labelPass, other: labelPass, vlan: labelPass, short: labelPass}),
	)
	for _, f := range families {
		insns = append(insns, assignFamily(f)...)
	}
	return concat(
		insns,
		assignSocket("za", true),
		at("za_marked", setMark()...),
		exit("za_marked_count", maps.VerdictMarked, ActOK),
		exit(labelPass, maps.VerdictPassed, ActUnspec),
		exit(labelNoSocket, maps.VerdictNoSocket, ActShot),
	)
}

// assignFamily is ztunnel_assign's code for one address family. It ends by
// jumping to za_assign (R0 = socket, stackProto = 1 for an established
// socket, 0 for a listener) or to a verdict.
func assignFamily(f family) asm.Instructions {
	l := func(name string) string { return f.label("za", name) }

	// Addressed to ztunnel itself: not captured.
	ztIP := maps.ZtunnelOffIPv4 + 12
	if f.v6 {
		ztIP = maps.ZtunnelOffIPv6
	}
	own := asm.Instructions{loadZtunnel(asm.R1)}
	for off := int16(0); off < f.addrLen(); off += 4 {
		own = append(own,
			asm.LoadMem(asm.R2, asm.R1, ztIP+off, asm.Word),
			asm.LoadMem(asm.R3, regData, ethHlen+f.daddr+off, asm.Word),
			asm.JNE.Reg(asm.R2, asm.R3, l("captured")),
		)
	}
	own = append(own, asm.Ja.Label(labelPass))

	// Past the own-address check every packet was captured: one that gets
	// no socket is dropped, never passed on.
	labels := l4Labels{icmp: labelPass, l4: l("l4"), fragment: labelNoSocket, bad: labelNoSocket}
	return concat(
		at("za_"+f.name, f.parse(labelPass)...),
		own,
		at(l("captured"), f.l4(l("ext"), labels)...),

		at(l("l4"),
			asm.JEq.Imm(regProto, ipprotoUDP, l("udp")),
			asm.JNE.Imm(regProto, ipprotoTCP, labelNoSocket),
		),
		l4Bounds(tcpOffFlags+1, labelNoSocket),
		// Not a connection request: ztunnel's stack finds its socket by
		// the tuple once the mark makes the packet local, as with TPROXY.
		// No lookup keeps an established flow's cost at a few
		// instructions.
		jumpUnlessSYN("za_marked"),
		f.exactSocket(l("listener"), l("release"), l("release")),
		asm.Instructions{asm.Ja.Label("za_assign")},
		at(l("release"),
			asm.Mov.Reg(asm.R1, asm.R0),
			asm.FnSkRelease.Call(),
		),

		// A listener: the direction from the source.
		at(l("listener"), f.checkBounds(labelNoSocket)...),
		f.lookupEndpoint(l("src"), f.saddr, l("inbound")),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffFlags, asm.Half),
			asm.StoreMem(asm.RFP, stackFlags, asm.R1, asm.Word),
			asm.And.Imm(asm.R1, int32(maps.EndpointPod)),
			asm.JEq.Imm(asm.R1, 0, l("inbound")),
		},
		dnsCaptured(l("tcp_dns")),
		f.listener(l("tcp_outbound"), false, PortOutbound),
		at(l("tcp_dns"), f.listener(l("tcp_dns_lookup"), false, PortDNS)...),
		at(l("inbound"),
			asm.LoadMem(asm.R1, regL4, l4OffDport, asm.Half),
			asm.JEq.Imm(asm.R1, be16(PortHBONE), l("hbone")),
		),
		f.listener(l("tcp_inbound"), false, PortInbound),
		at(l("hbone"), f.listener(l("tcp_hbone"), false, PortHBONE)...),

		// UDP: only an ambient pod's DNS, when captured.
		at(l("udp"), l4Bounds(l4PortsLen, labelNoSocket)...),
		f.checkBounds(labelNoSocket),
		f.lookupEndpoint(l("udp_src"), f.saddr, labelNoSocket),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffFlags, asm.Half),
			asm.StoreMem(asm.RFP, stackFlags, asm.R1, asm.Word),
			asm.And.Imm(asm.R1, int32(maps.EndpointPod)),
			asm.JEq.Imm(asm.R1, 0, labelNoSocket),
		},
		dnsCaptured(l("udp_dns")),
		asm.Instructions{asm.Ja.Label(labelNoSocket)},
		at(l("udp_dns"), f.listener(l("udp_dns_lookup"), true, PortDNS)...),
	)
}

// dnsCaptured jumps to dns when the packet (R9: its ports) goes to port 53,
// DNS capture is on and the source pod, whose flags are in stackFlags, has
// not opted out. Clobbers R1.
func dnsCaptured(dns string) asm.Instructions {
	not := dns + "_not"
	return concat(
		asm.Instructions{
			asm.LoadMem(asm.R1, regL4, l4OffDport, asm.Half),
			asm.JNE.Imm(asm.R1, be16(portDNS), not),
			loadZtunnel(asm.R1),
			asm.LoadMem(asm.R1, asm.R1, maps.ZtunnelOffFlags, asm.Half),
			asm.And.Imm(asm.R1, int32(maps.ZtunnelCaptureDNS)),
			asm.JEq.Imm(asm.R1, 0, not),
			asm.LoadMem(asm.R1, asm.RFP, stackFlags, asm.Word),
			asm.And.Imm(asm.R1, int32(maps.EndpointBypassDNS)),
			asm.JEq.Imm(asm.R1, 0, dns),
		},
		at(not, asm.Mov.Reg(asm.R0, asm.R0)),
	)
}

// listener looks up ztunnel's listener on port (TCP, or UDP) with a wildcard
// tuple and jumps to za_assign with it; no socket, or a TCP socket that is
// not a listener, drops the packet.
func (f family) listener(prefix string, udp bool, port uint16) asm.Instructions {
	return f.listenerAt(prefix, "za_assign", udp, port, false)
}

// listenerAt looks up a listener on port (TCP, or UDP) and jumps to assign
// with it in R0 (stackProto = 0); no socket, or a TCP socket that is not a
// listener, drops the packet (no_socket). The tuple's local address is the
// wildcard, or with loopback the family's loopback address: the kernel's
// listener lookups (__inet_lookup_listener, __udp4_lib_lookup and their
// IPv6 twins) try the address and then the wildcard, so that lookup finds
// a socket bound to the loopback address as well as one bound to the
// wildcard (or, for IPv4, a dual-stack [::]).
func (f family) listenerAt(prefix, assign string, udp bool, port uint16, loopback bool) asm.Instructions {
	lookup := f.skLookupUDP()
	if !udp {
		lookup = concat(asm.Instructions{asm.Mov.Imm(asm.R4, bpfCurrentNetns)}, f.skcLookupTCP())
	}
	check := asm.Instructions{asm.JEq.Imm(asm.R0, 0, labelNoSocket)}
	if !udp {
		check = append(check,
			asm.LoadMem(asm.R1, asm.R0, sockState, asm.Word),
			asm.JNE.Imm(asm.R1, tcpListen, prefix+"_not_listener"),
		)
	}
	check = append(check,
		asm.StoreImm(asm.RFP, stackProto, 0, asm.Word),
		asm.Ja.Label(assign),
	)
	tuple := f.wildcardTuple(port)
	if loopback {
		tuple = append(tuple, f.loopbackDaddr())
	}
	out := concat(tuple, lookup, check)
	if !udp {
		out = append(out, at(prefix+"_not_listener",
			asm.Mov.Reg(asm.R1, asm.R0),
			asm.FnSkRelease.Call(),
			asm.Ja.Label(labelNoSocket),
		)...)
	}
	return out
}

// loopbackDaddr writes the family's loopback address (127.0.0.1, ::1) as
// the local address of the tuple at stackTuple: its last word, the others
// being zero already.
func (f family) loopbackDaddr() asm.Instruction {
	last := stackTuple + 2*f.addrLen() - 4
	return asm.StoreImm(asm.RFP, last, int64(nativeWord(f.loopbackLastWord())), asm.Word)
}

func (f family) loopbackLastWord() [4]byte {
	if f.v6 {
		return [4]byte{0, 0, 0, 1}
	}
	return [4]byte{127, 0, 0, 1}
}

// assignSocket assigns the socket in R0 to the packet and releases the
// lookup's reference; its labels start with prefix (prefix_assign is the
// entry). stackProto = 1 for an established socket: if the kernel refuses
// the assignment, the packet goes on (marked, with mark) and the stack's
// own lookup finds that socket. A packet refused by a listener (before
// Linux 6.5, one with SO_REUSEPORT) is dropped: marked it would reach
// whatever listens on its original port, unmarked it could be forwarded.
// With mark, an assigned packet gets TProxyMark.
func assignSocket(prefix string, mark bool) asm.Instructions {
	markInsns := func() asm.Instructions {
		if mark {
			return setMark()
		}
		return asm.Instructions{asm.Mov.Reg(asm.R0, asm.R0)}
	}
	return concat(
		at(prefix+"_assign",
			asm.Mov.Reg(regL4, asm.R0),
			asm.Mov.Reg(asm.R1, regCtx),
			asm.Mov.Reg(asm.R2, regL4),
			asm.Mov.Imm(asm.R3, 0),
			asm.FnSkAssign.Call(),
			// R7 is free now: it keeps the result across the release.
			asm.Mov.Reg(regData, asm.R0),
			asm.Mov.Reg(asm.R1, regL4),
			asm.FnSkRelease.Call(),
			asm.JEq.Imm(regData, 0, prefix+"_mark"),
		),
		countVerdict(maps.VerdictAssignFailed),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.RFP, stackProto, asm.Word),
			asm.JEq.Imm(asm.R1, 0, prefix+"_refused"),
		},
		markInsns(),
		report(prefix+"_assign_failed", maps.VerdictAssignFailed, false),
		asm.Instructions{asm.Mov.Imm(asm.R0, ActOK), asm.Return()},
		at(prefix+"_refused", report(prefix+"_refused", maps.VerdictAssignFailed, true)...),
		asm.Instructions{asm.Mov.Imm(asm.R0, ActShot), asm.Return()},
		at(prefix+"_mark", markInsns()...),
		report(prefix+"_assigned", maps.VerdictAssigned, false),
		countVerdict(maps.VerdictAssigned),
		asm.Instructions{asm.Mov.Imm(asm.R0, ActOK), asm.Return()},
	)
}

// setMark sets TProxyMark in the bits of TProxyMask, keeping the others.
func setMark() asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R1, regCtx, skbMark, asm.Word),
		asm.And.Imm(asm.R1, ^int32(TProxyMask)),
		asm.Or.Imm(asm.R1, TProxyMark),
		asm.StoreMem(regCtx, skbMark, asm.R1, asm.Word),
	}
}
