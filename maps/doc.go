// Package maps owns the BPF maps of meshredirect: their specs, the exact byte
// layout of every key and value, typed accessors, and their pins under bpffs.
//
// The layouts are defined once, here, as Go structs. The programs in package
// asm read fields by the offsets exported from this package (for example
// [EndpointOffMAC]), so the kernel side and the Go side cannot drift apart.
// [LayoutVersion] names the layout; pins of another version are replaced.
//
// Seven maps exist (DESIGN.md §1, §5, §6):
//
//	endpoints  hash          [Key] (16-byte IP, IPv4 v4-mapped)  -> [Endpoint]
//	epcache    array[65536]  [SlotOf] the key                    -> [Slot]
//	ztunnel    array[1]      0                                   -> [Ztunnel]
//	relays     array[1]      0                                   -> [RelayPorts]
//	stats      percpu        [Verdict]                           -> [Counter]
//	dnsorig    LRU hash      [SockAddr] a pod's DNS client socket -> [SockAddr] its query's destination
//	dnstcp     LRU hash      [SockAddr] a pod's DNS-over-TCP client  -> [SockAddr] its connection's destination
//
// endpoints holds every address of this node the programs must know: the
// ambient pods' (with their veth, MAC and policy), the node's own (the
// source of kubelet probes, the destination of node-local agents) and the
// DNS resolvers of the strict UDP policy. epcache is a copy of it that the
// programs can read without a helper call: each address goes to the slot
// its key hashes to; when two addresses share a slot, one is in the slot,
// and Overflow tells the programs to ask the hash map for the other. The
// Go side ([Endpoints]) writes both, the map first and the slot last, so a
// program never finds a slot that names an address the map does not have;
// [Endpoints.Sync] rebuilds the cache from the map (on reopening pins).
// relays is a bitmap of the node's tunnel ports (VXLAN, Geneve, FOU), which
// pods' UDP must not reach.
//
// dnsorig is in-pod mode's (written and read by pod_loopback only): ztunnel's
// DNS proxy listens on 127.0.0.1:15053 and answers from there, while the
// client's socket is connected to the resolver it asked; pod_loopback
// records where each captured query was going and gives the reply that
// source back. dnstcp does the same for DNS over TCP, where pod_loopback
// also rewrites the client's segments to 127.0.0.1:15053 or [::1]:15053
// (a NAT per connection: the kernel cannot answer a connection to a
// foreign address from a socket that is not transparent).
//
// Integers in values are in host byte order (as cilium/ebpf marshals them);
// addresses and MACs are in network byte order, as they appear in packets, so
// the programs compare them with packet bytes without swapping.
package maps
