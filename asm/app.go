package asm

import (
	"github.com/cilium/ebpf/asm"

	"github.com/meshredirect/meshredirect/maps"
)

// appOutbound builds the program on the ingress of an ambient pod's host
// veth, which sees every packet the pod sends.
//
// Passed: non-IP frames (ARP), ICMP and ICMPv6 (neighbour discovery, path
// MTU), packets to the node's own address, and DNS (UDP to port 53) unless
// DNS capture is on. Everything else goes to ztunnel: TCP, UDP, later
// fragments, and any other protocol, which a pod could otherwise use to
// tunnel past the mesh. Frames that cannot be parsed (a truncated IP header,
// a truncated or too long IPv6 extension chain, a VLAN tag) are dropped.
// With ztunnel not ready, what would go to ztunnel is dropped (fail closed)
// or, with ZtunnelFailOpen, passed.
func appOutbound(opts Options) asm.Instructions {
	const (
		v4      = "out_v4"
		v6      = "out_v6"
		l4      = "out_l4"
		capture = "out_capture"
		notRdy  = "out_not_ready"
	)
	labels := l4Labels{icmp: labelPass, l4: l4, fragment: capture, bad: labelParseErr}
	return concat(
		loadPacket(),
		lookupZtunnel(labelNoZtunnel),
		parseEthernet(ethLabels{v4: v4, v6: v6, other: labelPass, vlan: labelParseErr, short: labelParseErr}),

		at(v4, parseIPv4(labelParseErr)...),
		matchNode("out_v4", false, ipv4OffDaddr, labelPass),
		ipv4L4(labels),

		at(v6, parseIPv6(labelParseErr)...),
		matchNode("out_v6", true, ipv6OffDaddr, labelPass),
		ipv6L4("out_v6", labels),

		// R3 = protocol, R9 = L4 header. Only DNS can still pass, and only
		// when its port is readable: what cannot be shown to be DNS is
		// captured.
		at(l4,
			asm.JNE.Imm(regProto, ipprotoUDP, capture),
			asm.Mov.Reg(asm.R0, regL4),
			asm.Add.Imm(asm.R0, l4PortsLen),
			asm.JGT.Reg(asm.R0, regDataEnd, capture),
			asm.LoadMem(asm.R1, regL4, l4OffDport, asm.Half),
			asm.JNE.Imm(asm.R1, be16(portDNS), capture),
			loadZtunnel(asm.R1),
			asm.LoadMem(asm.R1, asm.R1, maps.ZtunnelOffFlags, asm.Half),
			asm.And.Imm(asm.R1, int32(maps.ZtunnelCaptureDNS)),
			asm.JEq.Imm(asm.R1, 0, labelPass),
		),

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
		exits(),
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
