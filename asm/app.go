package asm

import (
	"github.com/cilium/ebpf/asm"

	"github.com/meshredirect/meshredirect/maps"
)

// appOutbound builds the program on the ingress of an ambient pod's host
// veth, which sees every packet the pod sends.
//
// Passed: non-IP frames (ARP), ICMP and ICMPv6 (neighbour discovery, path
// MTU), TCP segments with ACK to the node's own address (replies to kubelet
// probes: nothing the pod starts, so no NodePort DNAT or overlay device on
// the node becomes a way around the mesh), and DNS (UDP to port 53) unless
// DNS capture is on. Everything else goes to ztunnel: TCP, UDP, later
// fragments, and any other protocol, which a pod could otherwise use to
// tunnel past the mesh. Frames that cannot be parsed (a truncated IP header,
// a truncated or too long IPv6 extension chain, a VLAN tag) are dropped.
//
// ztunnel knows a client by its source address, so what could start a new
// flow there (a TCP SYN without ACK, UDP, any other protocol) must carry a
// source that the pods map gives to this very veth; a forged one is dropped
// (dropped_spoofed). Segments of established flows skip the lookup: they
// only reach a socket that exists already.
//
// With ztunnel not ready, what would go to ztunnel is dropped (fail closed)
// or, with ZtunnelFailOpen, passed.
func appOutbound(opts Options) asm.Instructions {
	const (
		v4       = "out_v4"
		v6       = "out_v6"
		l4       = "out_l4"
		udp      = "out_udp"
		checkSrc = "out_check_src"
		capture  = "out_capture"
		notRdy   = "out_not_ready"
		spoofed  = "verdict_spoofed"
	)
	labels := l4Labels{icmp: labelPass, l4: l4, fragment: checkSrc, bad: labelParseErr}
	return concat(
		loadPacket(),
		lookupZtunnel(labelNoZtunnel),
		parseEthernet(ethLabels{v4: v4, v6: v6, other: labelPass, vlan: labelParseErr, short: labelParseErr}),

		at(v4, parseIPv4(labelParseErr)...),
		asm.Instructions{asm.StoreImm(asm.RFP, stackFamily, 4, asm.Word)},
		flagNode("out_v4", false, ipv4OffDaddr),
		ipv4L4(labels),

		at(v6, parseIPv6(labelParseErr)...),
		asm.Instructions{asm.StoreImm(asm.RFP, stackFamily, 6, asm.Word)},
		flagNode("out_v6", true, ipv6OffDaddr),
		ipv6L4("out_v6", labels),

		// R3 = protocol, R9 = L4 header. A TCP segment with ACK belongs to
		// a flow: to the node it passes (a probe reply), elsewhere it goes
		// to ztunnel unchecked. A SYN without ACK starts a flow.
		at(l4,
			asm.JNE.Imm(regProto, ipprotoTCP, udp),
			asm.Mov.Reg(asm.R0, regL4),
			asm.Add.Imm(asm.R0, tcpOffFlags+1),
			asm.JGT.Reg(asm.R0, regDataEnd, checkSrc),
			asm.LoadMem(asm.R1, regL4, tcpOffFlags, asm.Byte),
			asm.Mov.Reg(asm.R2, asm.R1),
			asm.And.Imm(asm.R2, tcpFlagACK),
			asm.JEq.Imm(asm.R2, 0, l4+"_noack"),
			asm.LoadMem(asm.R2, asm.RFP, stackToNode, asm.Word),
			asm.JNE.Imm(asm.R2, 0, labelPass),
			asm.Ja.Label(capture),
		),
		at(l4+"_noack",
			asm.And.Imm(asm.R1, tcpFlagSYN),
			asm.JNE.Imm(asm.R1, 0, checkSrc),
			asm.Ja.Label(capture),
		),
		// Only DNS can still pass, and only when its port is readable:
		// what cannot be shown to be DNS is captured.
		at(udp,
			asm.JNE.Imm(regProto, ipprotoUDP, checkSrc),
			asm.Mov.Reg(asm.R0, regL4),
			asm.Add.Imm(asm.R0, l4PortsLen),
			asm.JGT.Reg(asm.R0, regDataEnd, checkSrc),
			asm.LoadMem(asm.R1, regL4, l4OffDport, asm.Half),
			asm.JNE.Imm(asm.R1, be16(portDNS), checkSrc),
			loadZtunnel(asm.R1),
			asm.LoadMem(asm.R1, asm.R1, maps.ZtunnelOffFlags, asm.Half),
			asm.And.Imm(asm.R1, int32(maps.ZtunnelCaptureDNS)),
			asm.JEq.Imm(asm.R1, 0, labelPass),
		),
		checkSource(checkSrc, capture, spoofed),

		// To ztunnel: its eth0 MAC as destination, then straight into its
		// netns (redirect_peer from this ingress hook).
		at(capture,
			loadZtunnel(asm.R2),
			asm.LoadMem(asm.R3, asm.R2, maps.ZtunnelOffFlags, asm.Half),
			asm.And.Imm(asm.R3, int32(maps.ZtunnelReady)),
			asm.JEq.Imm(asm.R3, 0, notRdy),
		),
		rewriteDstMAC(asm.R2, maps.ZtunnelOffMAC),
		asm.Instructions{asm.LoadMem(regL4, asm.R2, maps.ZtunnelOffIfindex, asm.Word)},
		redirectTo(maps.VerdictRedirectedOut, opts.RedirectPeer),

		failClosed(notRdy),
		exit(spoofed, maps.VerdictDroppedSpoofed, ActShot),
		exits(),
	)
}

// flagNode sets the stackToNode slot to 1 when the address at field is the
// node's, 0 otherwise.
func flagNode(prefix string, v6 bool, field int16) asm.Instructions {
	isNode := prefix + "_to_node"
	done := prefix + "_node_done"
	return concat(
		asm.Instructions{asm.StoreImm(asm.RFP, stackToNode, 0, asm.Word)},
		matchNode(prefix, v6, field, isNode),
		asm.Instructions{asm.Ja.Label(done)},
		at(isNode, asm.StoreImm(asm.RFP, stackToNode, 1, asm.Word)),
		at(done, asm.Mov.Reg(asm.R0, asm.R0)),
	)
}

// checkSource jumps to ok when the packet's source address is in the pods
// map with this veth (skb->ifindex) as its interface, to spoofed otherwise.
// The family is in the stackFamily slot. Clobbers R0-R5.
func checkSource(label, ok, spoofed string) asm.Instructions {
	v6 := label + "_v6"
	lookup := label + "_lookup"
	// The verifier does not tie the family in the stack to the bounds the
	// parser checked on that path: each branch checks its header again.
	return concat(
		at(label,
			asm.LoadMem(asm.R1, asm.RFP, stackFamily, asm.Word),
			asm.JEq.Imm(asm.R1, 6, v6),
		),
		podKeyOfFamily(label+"_v4", v6, lookup, spoofed, ipv4OffSaddr, ipv6OffSaddr),
		at(lookup, lookupPod()...),
		asm.Instructions{
			asm.JEq.Imm(asm.R0, 0, spoofed),
			asm.LoadMem(asm.R1, asm.R0, maps.PodOffIfindex, asm.Word),
			asm.LoadMem(asm.R2, regCtx, skbIfindex, asm.Word),
			asm.JNE.Reg(asm.R1, asm.R2, spoofed),
			asm.Ja.Label(ok),
		},
	)
}

// appInbound builds the program on the egress of an ambient pod's host veth,
// which sees every packet going into the pod.
//
// Passed: packets that ztunnel sent (they entered the node through ztunnel's
// host veth: skb->ingress_ifindex tells, no tag needed), packets the node
// itself sent from its own address (ingress_ifindex 0: kubelet probes; a pod
// forging the node's address enters through its veth and is captured), non-IP
// frames, ICMP and ICMPv6, and DNS replies (UDP from port 53) unless DNS
// capture is on. Everything else goes to ztunnel, which listens on 15006
// (plaintext) and 15008 (HBONE). An egress hook cannot use bpf_redirect_peer,
// so the packet leaves through ztunnel's host veth with ztunnel's MAC.
func appInbound(opts Options) asm.Instructions {
	const (
		v4      = "in_v4"
		v4L4    = "in_v4_l4"
		v6      = "in_v6"
		v6L4    = "in_v6_l4"
		l4      = "in_l4"
		parse   = "in_parse"
		capture = "in_capture"
		notRdy  = "in_not_ready"
	)
	labels := l4Labels{icmp: labelPass, l4: l4, fragment: capture, bad: labelParseErr}
	return concat(
		loadPacket(),
		lookupZtunnel(labelNoZtunnel),

		// From ztunnel's host veth: ztunnel is handing the packet over.
		asm.Instructions{
			loadZtunnel(asm.R1),
			asm.LoadMem(asm.R2, asm.R1, maps.ZtunnelOffIfindex, asm.Word),
			asm.JEq.Imm(asm.R2, 0, parse),
			asm.LoadMem(asm.R3, regCtx, skbIngressIfindex, asm.Word),
			asm.JEq.Reg(asm.R3, asm.R2, labelPass),
		},
		at(parse, parseEthernet(ethLabels{v4: v4, v6: v6, other: labelPass, vlan: labelParseErr, short: labelParseErr})...),

		at(v4, parseIPv4(labelParseErr)...),
		asm.Instructions{
			asm.LoadMem(asm.R1, regCtx, skbIngressIfindex, asm.Word),
			asm.JNE.Imm(asm.R1, 0, v4L4),
		},
		matchNode("in_v4", false, ipv4OffSaddr, labelPass),
		at(v4L4, ipv4L4(labels)...),

		at(v6, parseIPv6(labelParseErr)...),
		asm.Instructions{
			asm.LoadMem(asm.R1, regCtx, skbIngressIfindex, asm.Word),
			asm.JNE.Imm(asm.R1, 0, v6L4),
		},
		matchNode("in_v6", true, ipv6OffSaddr, labelPass),
		at(v6L4, ipv6L4("in_v6", labels)...),

		// R3 = protocol, R9 = L4 header: a DNS reply passes unless DNS
		// capture is on (then the replies come from ztunnel).
		at(l4,
			asm.JNE.Imm(regProto, ipprotoUDP, capture),
			asm.Mov.Reg(asm.R0, regL4),
			asm.Add.Imm(asm.R0, l4PortsLen),
			asm.JGT.Reg(asm.R0, regDataEnd, capture),
			asm.LoadMem(asm.R1, regL4, l4OffSport, asm.Half),
			asm.JNE.Imm(asm.R1, be16(portDNS), capture),
			loadZtunnel(asm.R1),
			asm.LoadMem(asm.R1, asm.R1, maps.ZtunnelOffFlags, asm.Half),
			asm.And.Imm(asm.R1, int32(maps.ZtunnelCaptureDNS)),
			asm.JEq.Imm(asm.R1, 0, labelPass),
		),

		at(capture,
			loadZtunnel(asm.R2),
			asm.LoadMem(asm.R3, asm.R2, maps.ZtunnelOffFlags, asm.Half),
			asm.And.Imm(asm.R3, int32(maps.ZtunnelReady)),
			asm.JEq.Imm(asm.R3, 0, notRdy),
		),
		rewriteDstMAC(asm.R2, maps.ZtunnelOffMAC),
		asm.Instructions{asm.LoadMem(regL4, asm.R2, maps.ZtunnelOffIfindex, asm.Word)},
		redirectTo(maps.VerdictRedirectedIn, false),

		failClosed(notRdy),
		exits(),
	)
}

// failClosed decides for a captured packet while ztunnel is not ready: drop,
// or pass with ZtunnelFailOpen. R2 holds the ztunnel map value.
func failClosed(label string) asm.Instructions {
	return at(label,
		asm.LoadMem(asm.R3, asm.R2, maps.ZtunnelOffFlags, asm.Half),
		asm.And.Imm(asm.R3, int32(maps.ZtunnelFailOpen)),
		asm.JNE.Imm(asm.R3, 0, labelPass),
		asm.Ja.Label(labelNoZtunnel),
	)
}

// exits are the verdict blocks of the app programs.
func exits() asm.Instructions {
	return concat(
		exit(labelPass, maps.VerdictPassed, ActUnspec),
		exit(labelParseErr, maps.VerdictParseError, ActShot),
		exit(labelNoZtunnel, maps.VerdictDroppedNoZtunnel, ActShot),
	)
}
