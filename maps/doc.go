// Package maps owns the BPF maps of meshredirect: their specs, the exact byte
// layout of every key and value, typed accessors, and their pins under bpffs.
//
// The layouts are defined once, here, as Go structs. The programs in package
// asm read fields by the offsets exported from this package (for example
// [PodOffMAC]), so the kernel side and the Go side cannot drift apart.
//
// Four maps exist (DESIGN.md §1):
//
//	pods     hash      16-byte IP (IPv4 as v4-mapped)  -> [Pod]
//	ztunnel  array[1]  0                               -> [Ztunnel]
//	node     array[2]  0 = IPv4, 1 = IPv6              -> [NodeAddr]
//	stats    percpu    [Verdict]                       -> [Counter]
//
// Integers in values are in host byte order (as cilium/ebpf marshals them);
// addresses and MACs are in network byte order, as they appear in packets, so
// the programs compare them with packet bytes without swapping.
package maps
