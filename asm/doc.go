// Package asm generates meshredirect's five eBPF programs with
// github.com/cilium/ebpf/asm: no C, no clang, no object files. The same Go
// code builds the programs for every kernel, so the bytecode always matches
// the map layouts of package maps, whose offsets it reads.
//
// The programs (DESIGN.md §1, §5), all of type BPF_PROG_TYPE_SCHED_CLS in
// direct-action mode:
//
//	app_outbound     tc ingress of an ambient pod's host veth: the pod's traffic to ztunnel
//	app_inbound      tc egress of an ambient pod's host veth: traffic for the pod to ztunnel
//	ztunnel_ingress  tc ingress of ztunnel's host veth: ztunnel's traffic straight to the pod
//	ztunnel_egress   tc egress of ztunnel's host veth: an ambient pod's address reaches ztunnel only from its own veth
//	ztunnel_assign   tc ingress of ztunnel's eth0: captured packets to ztunnel's sockets
//
// What each kind of packet becomes is DESIGN.md §5; model_test.go states it
// again in plain Go, and the packet tables, the attack corpus and the fuzz
// targets hold the programs to it. The README's "what is captured" table is
// generated from the packet tables (readme_test.go).
//
// Each program is composed of fragments (parseEthernet, parseIPv4, ipv6L4,
// lookupEndpoint, checkSource, rewriteDstMAC, countVerdict, ...), one Go
// function per step, with the register conventions written down in
// fragments.go; the steps that depend on the address family are generated
// once per family (endpoint.go). Parsing reads packet memory directly,
// bounds-checked against data_end before every read; IPv4 headers of any
// length, and up to six IPv6 extension headers, are walked to the L4 header.
//
// An address is looked up in the endpoints cache first (an array the
// verifier inlines, indexed by a fold of the address's words the program
// computes itself) and in the endpoints hash map only when the slot holds
// another address and says it overflowed: a source check on every new flow
// and a lookup on every segment from ztunnel cost a few instructions, not a
// helper call.
//
// No tag travels with a packet. The direction of a captured packet is
// derived where it is needed: app_inbound knows ztunnel's packets by the
// interface they entered the node through (skb->ingress_ifindex), and
// ztunnel_assign knows outbound from inbound by the source (an enrolled pod of
// this node captured on its way out; ztunnel_egress makes sure no other
// interface can deliver a packet with that source to ztunnel). A tag in
// skb->cb or skb->mark would have to survive a trip between network
// namespaces, which scrubs the mark and, with GRO on a veth, reuses the
// control block.
//
// # Helpers and the licence string
//
// The programs call bpf_map_lookup_elem, bpf_redirect, bpf_redirect_peer
// (kernel 5.10) with bpf_skb_change_type before it, bpf_skc_lookup_tcp and
// bpf_sk_lookup_udp (in the caller's netns, or in ztunnel's by its netns
// id), bpf_sk_release and bpf_sk_assign (kernel 5.7). None of them is GPL-only in the kernel (the
// helper protos have gpl_only = false), and bpf_trace_printk, which is, is
// not used: counters in the stats map say what the programs did. The kernel
// therefore loads the programs under any licence string, and they carry the
// project's own: "Apache-2.0". A test loads every program with it, so a
// GPL-only helper added later fails at once ("cannot call GPL-restricted
// function from non-GPL compatible program").
package asm
