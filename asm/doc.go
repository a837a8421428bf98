// Package asm generates meshredirect's four eBPF programs with
// github.com/cilium/ebpf/asm: no C, no clang, no object files. The same Go
// code builds the programs for every kernel, so the bytecode always matches
// the map layouts of package maps, whose offsets it reads.
//
// The programs (DESIGN.md §1), all of type BPF_PROG_TYPE_SCHED_CLS in
// direct-action mode:
//
//	app_outbound     tc ingress of an ambient pod's host veth: the pod's traffic to ztunnel
//	app_inbound      tc egress of an ambient pod's host veth: traffic for the pod to ztunnel
//	ztunnel_ingress  tc ingress of ztunnel's host veth: ztunnel's traffic straight to the pod
//	ztunnel_assign   tc ingress of ztunnel's eth0: captured packets to ztunnel's sockets
//
// Each program is composed of fragments (parseEthernet, parseIPv4, ipv6L4,
// matchNode, rewriteDstMAC, countVerdict, ...), one Go function per step,
// with the register conventions written down in fragments.go. Parsing reads
// packet memory directly, bounds-checked against data_end before every read;
// IPv4 headers of any length, and up to six IPv6 extension headers, are
// walked to the L4 header.
//
// No tag travels with a packet. The direction of a captured packet is
// derived where it is needed: app_inbound knows ztunnel's packets by the
// interface they entered the node through (skb->ingress_ifindex), and
// ztunnel_assign knows outbound from inbound by the source (an enrolled pod of
// this node captured on its way out). A tag in skb->cb or skb->mark would have
// to survive a trip between network namespaces, which scrubs the mark and,
// with GRO on a veth, reuses the control block.
//
// # Helpers and the licence string
//
// The programs call bpf_map_lookup_elem, bpf_redirect, bpf_redirect_peer
// (kernel 5.10), bpf_skc_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release and
// bpf_sk_assign (kernel 5.7). None of them is GPL-only in the kernel (the
// helper protos have gpl_only = false), and bpf_trace_printk, which is, is
// not used: counters in the stats map say what the programs did. The kernel
// therefore loads the programs under any licence string, and they carry the
// project's own: "Apache-2.0". A test loads every program with it, so a
// GPL-only helper added later fails at once ("cannot call GPL-restricted
// function from non-GPL compatible program").
package asm
