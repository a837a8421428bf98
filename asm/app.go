package asm

import (
	"github.com/cilium/ebpf/asm"

	"github.com/meshredirect/meshredirect/maps"
)

// appOutbound builds the program on the ingress of an ambient pod's host
// veth, which sees every packet the pod sends. It keeps DESIGN §5's table
// "from an ambient pod":
//
//   - Whatever can start a flow (a TCP SYN, UDP, ICMP, a fragment) must
//     carry a source address that the endpoints map gives to an ambient pod
//     on this very veth (skb->ifindex), or it is dropped (dropped_spoofed):
//     ztunnel knows a client by its address. So must ARP (its sender
//     address) and a neighbour advertisement (its target), which claim an
//     address on the link.
//   - TCP goes to ztunnel, to every destination: other pods, other hosts,
//     the node itself. A segment of an established flow needs no source
//     check on that way: it only reaches a socket that exists already.
//   - Except: a TCP segment to one of the node's own addresses that belongs
//     to a connection the node opened (a kubelet probe's reply). The node
//     holds a socket that is not a listener for the segment's tuple
//     (bpf_skc_lookup_tcp in the node's netns) and ztunnel holds none (its
//     connections to the node carry the pod's address too). Never by
//     address or flags alone: an ACK to the node must not reach a NodePort
//     DNAT or any other relay on the node; nor with IP options or IPv6
//     extension headers, which could route it on.
//   - UDP to port 53 with DNS capture on (and the pod not opted out) goes to
//     ztunnel's DNS proxy; other UDP passes (ztunnel proxies no UDP), or
//     under the strict policy is dropped (dropped_policy) unless it is DNS
//     to a configured resolver. Later fragments of UDP follow the same
//     policy, by destination.
//   - ICMP and ICMPv6 pass; ICMPv6 from a link-local or unspecified source
//     (neighbour discovery, MLD) without the source check, since the node
//     never forwards those, but a pod sends no router advertisement or
//     redirect.
//   - Any other IP protocol, and any other EtherType than IPv4, IPv6 and
//     ARP, is dropped (dropped_protocol): no proxy carries it, and each
//     could tunnel out of the mesh; so are later fragments of TCP
//     (dropped_fragment), and frames that cannot be parsed (parse_error).
//
// With ztunnel not ready, what would go to ztunnel is dropped (fail closed)
// or, with ZtunnelFailOpen, passed.
func appOutbound(opts Options) asm.Instructions {
	return concat(
		loadPacket(),
		nodeOutbound().program(),
		// To ztunnel: its eth0 MAC as destination, then straight into its
		// netns (redirect_peer from this ingress hook).
		at(labelCapture,
			loadZtunnel(asm.R2),
			asm.LoadMem(asm.R3, asm.R2, maps.ZtunnelOffFlags, asm.Half),
			asm.And.Imm(asm.R3, int32(maps.ZtunnelReady)),
			asm.JEq.Imm(asm.R3, 0, labelNotReady),
		),
		rewriteDstMAC(asm.R2, maps.ZtunnelOffMAC),
		asm.Instructions{asm.LoadMem(regL4, asm.R2, maps.ZtunnelOffIfindex, asm.Word)},
		redirectTo(maps.VerdictRedirectedOut, opts.RedirectPeer),
		failClosed(labelNotReady),
		appExits(),
		exit(labelDroppedRelay, maps.VerdictDroppedRelay, ActShot),
	)
}

// outboundRules are what differs between the two programs that keep §5's
// table "from an ambient pod": app_outbound on the pod's host veth (node
// mode) and pod_egress on the pod's eth0 (in-pod mode). Both generate the
// same blocks from them; each ends them with its own labelCapture.
type outboundRules struct {
	// prefix starts every label of the program's own blocks.
	prefix string
	// checkSource jumps to spoofed unless the packet's source address (the
	// fixed IP header must be in the frame) is the pod's own; on the way on,
	// the pod's endpoint flags are in the stackFlags slot. Clobbers R0-R5.
	checkSource func(f family, prefix, spoofed string) asm.Instructions
	// own jumps to other unless the address at field (an offset from the
	// L3 header, bounds-checked on this path) is the pod's own. Clobbers
	// R0-R5.
	own func(f family, prefix string, field int16, other string) asm.Instructions
	// ztunnel and node are where ztunnel's and the node's sockets are.
	ztunnel, node netnsRef
}

// nodeOutbound are app_outbound's rules: the pod's addresses are the ones the
// endpoints map gives to an ambient pod on this very veth (skb->ifindex);
// ztunnel's sockets are in the netns whose id the ztunnel map holds, the
// node's in the netns of the host veth.
func nodeOutbound() outboundRules {
	return outboundRules{
		prefix:      "out",
		checkSource: family.checkSource,
		own: func(f family, prefix string, field int16, other string) asm.Instructions {
			return concat(f.lookupEndpoint(prefix, field, other), ownInterface(other))
		},
		ztunnel: netnsRef{kind: netnsZtunnelMap},
		node:    netnsRef{kind: netnsCurrent},
	}
}

// program is the classification of the outbound programs, from the packet's
// first byte to the verdicts; what goes to ztunnel jumps to labelCapture.
func (r outboundRules) program() asm.Instructions {
	insns := concat(
		parseEthernet(ethLabels{v4: r.prefix + "_v4", v6: r.prefix + "_v6", arp: r.prefix + "_arp",
			other: labelDroppedProtocol, vlan: labelParseErr, short: labelParseErr}),
		r.arp(),
	)
	for _, f := range families {
		insns = append(insns, r.family(f)...)
	}
	return insns
}

// arp passes an ARP message whose sender is this pod (or nobody: an address
// probe, RFC 5227), so that no pod claims another's address on a shared
// link.
func (r outboundRules) arp() asm.Instructions {
	return concat(
		at(r.prefix+"_arp",
			asm.Mov.Reg(asm.R0, regData),
			asm.Add.Imm(asm.R0, ethHlen+arpLen),
			asm.JGT.Reg(asm.R0, regDataEnd, labelParseErr),
			asm.LoadMem(asm.R1, regData, ethHlen+arpOffPtype, asm.Half),
			asm.JNE.Imm(asm.R1, be16(ethPIPv4), labelDroppedProtocol),
			asm.LoadMem(asm.R1, regData, ethHlen+arpOffHlen, asm.Byte),
			asm.JNE.Imm(asm.R1, 6, labelDroppedProtocol),
			asm.LoadMem(asm.R1, regData, ethHlen+arpOffPlen, asm.Byte),
			asm.JNE.Imm(asm.R1, 4, labelDroppedProtocol),
			asm.LoadMem(asm.R1, regData, ethHlen+arpOffSpa, asm.Word),
			asm.JEq.Imm(asm.R1, 0, labelPass),
		),
		r.own(ipv4, r.prefix+"_arp_spa", arpOffSpa, labelSpoofed),
		asm.Instructions{asm.Ja.Label(labelPass)},
	)
}

// ownInterface jumps to other unless R0 points at an ambient pod's
// endpoint on this veth (skb->ifindex). Clobbers R1, R2.
func ownInterface(other string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffFlags, asm.Half),
		asm.And.Imm(asm.R1, int32(maps.EndpointPod)),
		asm.JEq.Imm(asm.R1, 0, other),
		asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffIfindex, asm.Word),
		asm.LoadMem(asm.R2, regCtx, skbIfindex, asm.Word),
		asm.JNE.Reg(asm.R1, asm.R2, other),
	}
}

// family is the outbound code for one address family.
func (r outboundRules) family(f family) asm.Instructions {
	l := func(name string) string { return f.label(r.prefix, name) }
	icmp := l("icmp")
	if f.v6 {
		icmp = l("icmp6")
	}
	return concat(
		at(r.prefix+"_"+f.name, f.parse(labelParseErr)...),
		f.l4(l("ext"), l4Labels{icmp: icmp, l4: l("l4"), fragment: l("frag"), bad: labelParseErr}),

		// R3 = protocol, R9 = its header.
		at(l("l4"), tcpOrUDP(l("tcp"), l("udp"))...),

		// TCP. A connection request (SYN without ACK) is a new flow: its
		// source is checked. Any other segment goes to ztunnel unless it
		// is for the node.
		at(l("tcp"), l4Bounds(tcpOffFlags+1, labelParseErr)...),
		jumpIfSYN(l("syn")),
		f.lookupEndpoint(l("tcp_dst"), f.daddr, l("tcp_bypass")),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffFlags, asm.Half),
			asm.And.Imm(asm.R1, int32(maps.EndpointNode)),
			asm.JEq.Imm(asm.R1, 0, l("tcp_bypass")),
		},
		// To the node: a reply of the node's own connection passes, unless
		// ztunnel holds the tuple (the pod's connection to the node, which
		// ztunnel proxies with the pod's address).
		f.jumpIfOptions(labelCapture),
		r.checkSource(f, l("tcp_src"), labelSpoofed),
		f.tupleFromPacket(false),
		f.socketIn(l("tcp_zt"), r.ztunnel, labelCapture),
		f.socketIn(l("tcp_node"), r.node, labelPass),
		asm.Instructions{asm.Ja.Label(labelCapture)},

		at(l("syn"), r.checkSource(f, l("syn_src"), labelSpoofed)...),
		asm.Instructions{asm.Ja.Label(labelCapture)},

		// A pod that bypasses inbound capture answers its direct inbound
		// connections directly (Istio's rules let such replies out as
		// conntrack's ESTABLISHED): its segments pass unless ztunnel holds
		// their tuple (its own connections through ztunnel). Any other
		// pod's go to ztunnel.
		at(l("tcp_bypass"), r.checkSource(f, l("tcp_bypass_src"), labelCapture)...),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.RFP, stackFlags, asm.Word),
			asm.And.Imm(asm.R1, int32(maps.EndpointBypassInbound)),
			asm.JEq.Imm(asm.R1, 0, labelCapture),
		},
		f.tupleFromPacket(false),
		f.socketIn(l("tcp_bypass_zt"), r.ztunnel, labelCapture),
		asm.Instructions{asm.Ja.Label(labelPass)},

		// UDP: DNS to ztunnel when captured, the rest by the UDP policy.
		at(l("udp"), r.checkSource(f, l("udp_src"), labelSpoofed)...),
		l4Bounds(l4PortsLen, labelParseErr),
		// To the node: never to one of its tunnels, which would forward
		// what the datagram carries.
		f.lookupEndpoint(l("udp_dst"), f.daddr, l("udp_dns")),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffFlags, asm.Half),
			asm.And.Imm(asm.R1, int32(maps.EndpointNode)),
			asm.JEq.Imm(asm.R1, 0, l("udp_dns")),
		},
		relayPort(labelDroppedRelay),
		at(l("udp_dns"),
			asm.LoadMem(asm.R1, regL4, l4OffDport, asm.Half),
			asm.JNE.Imm(asm.R1, be16(portDNS), l("udp_policy")),
			loadZtunnel(asm.R1),
			asm.LoadMem(asm.R1, asm.R1, maps.ZtunnelOffFlags, asm.Half),
			asm.And.Imm(asm.R1, int32(maps.ZtunnelCaptureDNS)),
			asm.JEq.Imm(asm.R1, 0, l("udp_policy")),
			asm.LoadMem(asm.R1, asm.RFP, stackFlags, asm.Word),
			asm.And.Imm(asm.R1, int32(maps.EndpointBypassDNS)),
			asm.JEq.Imm(asm.R1, 0, labelCapture),
		),
		at(l("udp_policy"), strictUDP(l("udp_strict"))...),
		asm.Instructions{asm.Ja.Label(labelPass)},
		at(l("udp_strict"), f.resolverDNS(l("udp_resolver"), l4OffDport, f.daddr)...),

		// A later fragment: UDP by the UDP policy, ICMP passes, the rest
		// (TCP, whose first fragment went to ztunnel) is dropped.
		f.laterFragment(r.prefix, r.checkSource(f, l("frag_udp_src"), labelSpoofed), f.daddr),
		at(l("frag_icmp"), r.checkSource(f, l("frag_icmp_src"), labelSpoofed)...),
		asm.Instructions{asm.Ja.Label(labelPass)},

		r.icmp(f, icmp),
	)
}

// icmp is the ICMP block of the outbound programs for f.
func (r outboundRules) icmp(f family, label string) asm.Instructions {
	l := func(name string) string { return f.label(r.prefix, name) }
	if !f.v6 {
		return concat(
			at(label, r.checkSource(f, l("icmp_src"), labelSpoofed)...),
			asm.Instructions{asm.Ja.Label(labelPass)},
		)
	}
	const (
		src = ethHlen + ipv6OffSaddr
	)
	check := l("icmp6_type")
	return concat(
		at(label, l4Bounds(1, labelParseErr)...),
		asm.Instructions{
			// fe80::/10 or :: as source: link-scope, never forwarded.
			asm.LoadMem(asm.R1, regData, src, asm.Half),
			asm.And.Imm(asm.R1, be16(0xffc0)),
			asm.JEq.Imm(asm.R1, be16(0xfe80), check),
			asm.LoadMem(asm.R1, regData, src, asm.DWord),
			asm.LoadMem(asm.R2, regData, src+8, asm.DWord),
			asm.Or.Reg(asm.R1, asm.R2),
			asm.JEq.Imm(asm.R1, 0, check),
		},
		r.checkSource(f, l("icmp6_src"), labelSpoofed),
		at(check,
			asm.LoadMem(asm.R1, regL4, 0, asm.Byte),
			asm.JEq.Imm(asm.R1, icmp6RouterAdvert, labelSpoofed),
			asm.JEq.Imm(asm.R1, icmp6Redirect, labelSpoofed),
			asm.JNE.Imm(asm.R1, icmp6NeighAdvert, labelPass),
			// A neighbour advertisement: right after the fixed header
			// (neighbour discovery never has extension headers), its
			// target link-local or this pod's own address.
		),
		f.jumpIfOptions(labelSpoofed),
		asm.Instructions{
			asm.Mov.Reg(asm.R0, regData),
			asm.Add.Imm(asm.R0, ethHlen+ipv6Hlen+icmp6NDTargetOff+16),
			asm.JGT.Reg(asm.R0, regDataEnd, labelParseErr),
			asm.LoadMem(asm.R1, regData, ethHlen+ipv6Hlen+icmp6NDTargetOff, asm.Half),
			asm.And.Imm(asm.R1, be16(0xffc0)),
			asm.JEq.Imm(asm.R1, be16(0xfe80), labelPass),
		},
		r.own(f, l("na_target"), ipv6Hlen+icmp6NDTargetOff, labelSpoofed),
		asm.Instructions{asm.Ja.Label(labelPass)},
	)
}

// icmpProto is the family's ICMP: ICMP for IPv4, ICMPv6 for IPv6.
func (f family) icmpProto() int32 {
	if f.v6 {
		return ipprotoICMPv6
	}
	return ipprotoICMP
}

// relayPort jumps to relay when the UDP destination port (R9: the ports,
// bounds-checked) is one of the node's tunnel ports in the relays map.
// Clobbers R1-R3.
func relayPort(relay string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R2, regL4, l4OffDport, asm.Half),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.And.Imm(asm.R2, 0xffff),
		asm.Mov.Reg(asm.R3, asm.R2),
		asm.RSh.Imm(asm.R3, 3),
		asm.LoadMapValue(asm.R1, 0, 0).WithReference(maps.RelaysName),
		asm.Add.Reg(asm.R1, asm.R3),
		asm.LoadMem(asm.R1, asm.R1, 0, asm.Byte),
		asm.And.Imm(asm.R2, 7),
		asm.RSh.Reg(asm.R1, asm.R2),
		asm.And.Imm(asm.R1, 1),
		asm.JNE.Imm(asm.R1, 0, relay),
	}
}

// strictUDP jumps to strict when the strict UDP policy applies: the node's
// (ZtunnelUDPDrop) or the endpoint's whose flags are in stackFlags
// (EndpointUDPDrop). Clobbers R1.
func strictUDP(strict string) asm.Instructions {
	return asm.Instructions{
		loadZtunnel(asm.R1),
		asm.LoadMem(asm.R1, asm.R1, maps.ZtunnelOffFlags, asm.Half),
		asm.And.Imm(asm.R1, int32(maps.ZtunnelUDPDrop)),
		asm.JNE.Imm(asm.R1, 0, strict),
		asm.LoadMem(asm.R1, asm.RFP, stackFlags, asm.Word),
		asm.And.Imm(asm.R1, int32(maps.EndpointUDPDrop)),
		asm.JNE.Imm(asm.R1, 0, strict),
	}
}

// toResolver passes the packet when the address at field is a configured
// DNS resolver, and drops it by the strict policy otherwise.
func (f family) toResolver(prefix string, field int16) asm.Instructions {
	return concat(
		f.checkBounds(labelParseErr),
		f.lookupEndpoint(prefix, field, labelDroppedPolicy),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffFlags, asm.Half),
			asm.And.Imm(asm.R1, int32(maps.EndpointResolver)),
			asm.JEq.Imm(asm.R1, 0, labelDroppedPolicy),
			asm.Ja.Label(labelPass),
		},
	)
}

// resolverDNS is what the strict UDP policy lets through: DNS with a
// configured resolver, port 53 at portOff (from R9, bounds-checked) and the
// resolver's address at field (from the L3 header), without IP options.
// Anything else is dropped (dropped_policy). prefix names toResolver's
// labels.
func (f family) resolverDNS(prefix string, portOff, field int16) asm.Instructions {
	return concat(
		asm.Instructions{
			asm.LoadMem(asm.R1, regL4, portOff, asm.Half),
			asm.JNE.Imm(asm.R1, be16(portDNS), labelDroppedPolicy),
		},
		f.jumpIfOptions(labelDroppedPolicy),
		f.toResolver(prefix, field),
	)
}

// laterFragment is the code for a later fragment (no ports to read) of the
// program whose labels start with prefix, from <prefix>_<family>_frag on:
// UDP goes through check and then by the UDP policy, whose strict form
// passes only a fragment with the resolver at field and no options; ICMP
// jumps to _frag_icmp, which the caller writes; the rest (TCP, whose first
// fragment went to ztunnel) is dropped (dropped_fragment).
func (f family) laterFragment(prefix string, check asm.Instructions, field int16) asm.Instructions {
	l := func(name string) string { return f.label(prefix, name) }
	return concat(
		at(l("frag"),
			asm.JEq.Imm(regProto, ipprotoUDP, l("frag_udp")),
			asm.JEq.Imm(regProto, f.icmpProto(), l("frag_icmp")),
			asm.Ja.Label(labelDroppedFragment),
		),
		at(l("frag_udp"), check...),
		strictUDP(l("frag_strict")),
		asm.Instructions{asm.Ja.Label(labelPass)},
		at(l("frag_strict"), f.jumpIfFragmentOptions(labelDroppedPolicy)...),
		f.toResolver(l("frag_resolver"), field),
	)
}

// jumpIfFragmentOptions is jumpIfOptions for a later fragment: IPv4 options
// are copied into every fragment; an IPv6 one may carry nothing but its
// fragment header, which R9 points past.
func (f family) jumpIfFragmentOptions(label string) asm.Instructions {
	want := int32(ethHlen + f.hlen)
	if f.v6 {
		want += ipv6FragHlen
	}
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, regL4),
		asm.Sub.Reg(asm.R1, regData),
		asm.JNE.Imm(asm.R1, want, label),
	}
}

// appInbound builds the program on the egress of an ambient pod's host veth,
// which sees every packet going into the pod. It keeps DESIGN §5's table
// "to an ambient pod":
//
//   - What ztunnel sends passes: it entered the node through ztunnel's host
//     veth (skb->ingress_ifindex), no tag needed.
//   - TCP for another address than the pod's is not the pod's: on a bridge,
//     every port sees the frames flooded to unknown MACs. It passes
//     untouched (the pod's stack discards it), unless it is for an IPv6
//     link-local address, which only the link can reach: that goes to
//     ztunnel like the pod's own.
//   - TCP from an address the endpoints map gives to an ambient pod of this
//     node is dropped (dropped_spoofed): those pods' TCP always goes through
//     ztunnel, which hands it over itself.
//   - TCP the node itself sent (ingress_ifindex 0: nothing forwarded, so no
//     pod can forge it) passes: kubelet probes, whatever source address the
//     kernel picked (the node IP, a CNI gateway). Unless ztunnel's netns
//     holds a socket for its tuple: then it answers a connection ztunnel
//     opened to the node with the pod's address, and goes back to ztunnel.
//   - TCP to port 15008 (HBONE) goes to ztunnel; any other TCP too, unless
//     the pod bypasses inbound capture.
//   - UDP and ICMP pass; under the strict policy they are dropped, except
//     DNS replies from the resolvers and neighbour discovery.
//   - Other IP protocols, other EtherTypes than IPv4, IPv6 and ARP, later
//     fragments of TCP and unparseable frames are dropped.
//
// An egress hook cannot use bpf_redirect_peer, so a captured packet leaves
// through ztunnel's host veth with ztunnel's MAC.
func appInbound() asm.Instructions {
	insns := concat(
		loadPacket(),
		asm.Instructions{
			loadZtunnel(asm.R1),
			asm.LoadMem(asm.R2, asm.R1, maps.ZtunnelOffIfindex, asm.Word),
			asm.JEq.Imm(asm.R2, 0, "in_parse"),
			asm.LoadMem(asm.R3, regCtx, skbIngressIfindex, asm.Word),
			asm.JEq.Reg(asm.R3, asm.R2, labelPass),
		},
		at("in_parse", parseEthernet(ethLabels{v4: "in_v4", v6: "in_v6", arp: labelPass,
			other: labelDroppedProtocol, vlan: labelParseErr, short: labelParseErr})...),
	)
	for _, f := range families {
		insns = append(insns, inboundFamily(f)...)
	}
	return concat(
		insns,
		at(labelCapture,
			loadZtunnel(asm.R2),
			asm.LoadMem(asm.R3, asm.R2, maps.ZtunnelOffFlags, asm.Half),
			asm.And.Imm(asm.R3, int32(maps.ZtunnelReady)),
			asm.JEq.Imm(asm.R3, 0, labelNotReady),
		),
		rewriteDstMAC(asm.R2, maps.ZtunnelOffMAC),
		asm.Instructions{asm.LoadMem(regL4, asm.R2, maps.ZtunnelOffIfindex, asm.Word)},
		redirectTo(maps.VerdictRedirectedIn, false),
		failClosed(labelNotReady),
		appExits(),
	)
}

// inboundFamily is app_inbound's code for one address family.
func inboundFamily(f family) asm.Instructions {
	l := func(name string) string { return f.label("in", name) }
	notMine := asm.Instructions{asm.Ja.Label(labelPass)}
	if f.v6 {
		// fe80::/10: only the link reaches it.
		notMine = asm.Instructions{
			asm.LoadMem(asm.R1, regData, ethHlen+ipv6OffDaddr, asm.Half),
			asm.And.Imm(asm.R1, be16(0xffc0)),
			asm.JNE.Imm(asm.R1, be16(0xfe80), labelPass),
			asm.StoreImm(asm.RFP, stackFlags, 0, asm.Word),
			asm.Ja.Label(l("mine")),
		}
	}
	return concat(
		at("in_"+f.name, f.parse(labelParseErr)...),
		f.l4(l("ext"), l4Labels{icmp: l("icmp"), l4: l("l4"), fragment: l("frag"), bad: labelParseErr}),

		at(l("l4"), tcpOrUDP(l("tcp"), l("udp"))...),

		// TCP: for this pod?
		at(l("tcp"), l4Bounds(l4PortsLen, labelParseErr)...),
		f.lookupEndpoint(l("tcp_dst"), f.daddr, l("not_mine")),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffFlags, asm.Half),
			asm.StoreMem(asm.RFP, stackFlags, asm.R1, asm.Word),
		},
		ownInterface(l("not_mine")),
		asm.Instructions{asm.Ja.Label(l("mine"))},
		at(l("not_mine"), notMine...),

		// From an ambient pod of this node, not through ztunnel: forged.
		at(l("mine"), f.checkBounds(labelParseErr)...),
		f.lookupEndpoint(l("tcp_src"), f.saddr, l("src_ok")),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffFlags, asm.Half),
			asm.And.Imm(asm.R1, int32(maps.EndpointPod)),
			asm.JNE.Imm(asm.R1, 0, labelSpoofed),
		},
		at(l("src_ok"),
			asm.LoadMem(asm.R1, regCtx, skbIngressIfindex, asm.Word),
			asm.JEq.Imm(asm.R1, 0, l("from_node")),
			asm.LoadMem(asm.R1, regL4, l4OffDport, asm.Half),
			asm.JEq.Imm(asm.R1, be16(PortHBONE), labelCapture),
			asm.LoadMem(asm.R1, asm.RFP, stackFlags, asm.Word),
			asm.And.Imm(asm.R1, int32(maps.EndpointBypassInbound)),
			asm.JNE.Imm(asm.R1, 0, labelPass),
			asm.Ja.Label(labelCapture),
		),
		// From the node: a probe, or the reply to ztunnel's connection.
		at(l("from_node"), f.tupleFromPacket(false)...),
		f.socketIn(l("node_zt"), netnsRef{kind: netnsZtunnelMap}, labelCapture),
		asm.Instructions{asm.Ja.Label(labelPass)},

		inboundOther(f, "in"),
	)
}

// inboundOther is what the inbound programs do with what is not TCP, from
// the labels <prefix>_<family>_udp, _frag and _icmp on: UDP and ICMP pass
// unless the strict policy applies; later fragments of TCP and the rest
// are dropped.
func inboundOther(f family, prefix string) asm.Instructions {
	l := func(name string) string { return f.label(prefix, name) }
	return concat(
		// UDP passes unless the strict policy applies: the node's, or the
		// destination pod's.
		at(l("udp"), f.dstPolicy(l("udp_dst"))...),
		strictUDP(l("udp_strict")),
		asm.Instructions{asm.Ja.Label(labelPass)},
		at(l("udp_strict"), l4Bounds(l4PortsLen, labelParseErr)...),
		f.resolverDNS(l("udp_resolver"), l4OffSport, f.saddr),

		f.laterFragment(prefix, f.dstPolicy(l("frag_udp_dst")), f.saddr),
		at(l("frag_icmp"), f.dstPolicy(l("frag_icmp_dst"))...),
		strictUDP(labelDroppedPolicy),
		asm.Instructions{asm.Ja.Label(labelPass)},

		// ICMP passes unless the strict policy applies; neighbour discovery
		// (hop limit 255: it crossed no router) always does.
		at(l("icmp"), f.dstPolicy(l("icmp_dst"))...),
		strictUDP(l("icmp_strict")),
		asm.Instructions{asm.Ja.Label(labelPass)},
		inboundICMPStrict(f, l("icmp_strict")),
	)
}

// inboundICMPStrict is what the strict policy lets in of ICMP: neighbour
// discovery (IPv6), nothing else.
func inboundICMPStrict(f family, label string) asm.Instructions {
	if !f.v6 {
		return at(label, asm.Ja.Label(labelDroppedPolicy))
	}
	return concat(
		at(label, l4Bounds(1, labelParseErr)...),
		asm.Instructions{
			asm.LoadMem(asm.R1, regL4, 0, asm.Byte),
			asm.JLT.Imm(asm.R1, icmp6RouterSolicit, labelDroppedPolicy),
			asm.JGT.Imm(asm.R1, icmp6Redirect, labelDroppedPolicy),
			asm.LoadMem(asm.R1, regData, ethHlen+ipv6OffHopLim, asm.Byte),
			asm.JNE.Imm(asm.R1, ndHopLimit, labelDroppedPolicy),
			asm.Ja.Label(labelPass),
		},
	)
}

// dstPolicy puts the destination's endpoint flags in the stackFlags slot
// (zero for an address the endpoints map does not hold), for strictUDP.
func (f family) dstPolicy(prefix string) asm.Instructions {
	return f.flagsOf(prefix, f.daddr)
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

// appExits are the verdict blocks of the app programs.
func appExits() asm.Instructions {
	return concat(
		exit(labelPass, maps.VerdictPassed, ActUnspec),
		exit(labelParseErr, maps.VerdictParseError, ActShot),
		exit(labelNoZtunnel, maps.VerdictDroppedNoZtunnel, ActShot),
		exit(labelSpoofed, maps.VerdictDroppedSpoofed, ActShot),
		exit(labelDroppedProtocol, maps.VerdictDroppedProtocol, ActShot),
		exit(labelDroppedFragment, maps.VerdictDroppedFragment, ActShot),
		exit(labelDroppedPolicy, maps.VerdictDroppedPolicy, ActShot),
	)
}
