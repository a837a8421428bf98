// Package asm generates meshredirect's eBPF programs with
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
// and, for in-pod mode (DESIGN.md §6: ztunnel's listeners inside each ambient
// pod's netns), three programs inside the pod's netns, built per pod with its
// addresses and the node's netns id as immediates (PodCollectionSpec):
//
//	pod_egress    tc egress of eth0: app_outbound's rules; ztunnel's own packets (mark 0x539) pass;
//	              captured packets get TProxyMark and go to lo's ingress (bpf_redirect, BPF_F_INGRESS)
//	pod_loopback  tc ingress of lo: marked packets to ztunnel's sockets (15001, 15053), as ztunnel_assign;
//	              ztunnel's DNS replies from 127.0.0.1:15053 get the source the client asked (dnsorig map);
//	              DNS over TCP goes through a NAT per connection to 127.0.0.1:15053 / [::1]:15053
//	              (dnstcp map; IPv4 needs net.ipv4.conf.lo.route_localnet=1 in the pod)
//	pod_ingress   tc ingress of eth0: §5 "to an ambient pod" in-pod; 15008 passes, the rest to 15006
//
// app_outbound and pod_egress are generated from the same blocks
// (outboundRules: the source check, the probe-reply rule and ztunnel's
// sockets differ only in where they look), app_inbound and pod_ingress share
// what they do with UDP, ICMP and fragments (inboundOther), and the socket
// lookups take the netns to search as a netnsRef (the program's own,
// ztunnel's by the ztunnel map's id, or a fixed id). pod_loopback uses no
// label of the others: its blocks are pl_*, pod_egress's pe_*, pod_ingress's
// pi_*; they use the registers and stack slots of fragments.go and nothing
// more.
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
// The programs call bpf_map_lookup_elem, bpf_map_update_elem (the dnsorig
// and dnstcp maps), bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_csum_diff and
// bpf_skb_store_bytes (pod_loopback's DNS rewrites), bpf_redirect, bpf_redirect_peer
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
