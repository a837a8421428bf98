// Package testenv builds a Kubernetes node in a box for privileged tests:
// network namespaces and veth pairs made over netlink, or by the reference
// CNI plugins, so that the dataplane under test sees the interfaces, routes
// and addresses it would see on a real node. It never touches the machine's
// own interfaces or the root namespace's routes: every link it makes lives in
// a namespace it made.
//
// The picture, with node1's pods as each Wiring joins them:
//
//	      fabric netns: bridge br0 (the network between the nodes)
//	       |                                     |
//	node1 netns: eth0 198.18.0.1/24          node2 netns: eth0 198.18.0.2/24
//
//	WiringVeth (the default):
//	  veth<hash> -- pod netns: eth0 198.18.16.1/32, fd10:6d72:0:1::1/128
//	  veth<hash> -- pod netns: eth0 198.18.16.2/32, ...
//	WiringPTP:
//	  veth<rand> 198.18.31.254/32, fd10:6d72:0:1::ffe/128
//	      -- pod netns: eth0 198.18.16.1/20, fd10:6d72:0:1::1/64
//	  veth<rand> 198.18.31.254/32, ... -- pod netns: eth0 198.18.16.2/20, ...
//	WiringBridge:
//	  cni0 198.18.31.254/20, fd10:6d72:0:1::ffe/64
//	   +- veth<rand> -- pod netns: eth0 198.18.16.1/20, fd10:6d72:0:1::1/64
//	   +- veth<rand> -- pod netns: eth0 198.18.16.2/20, ...
//
// A node is a namespace with forwarding on (IPv4 and IPv6), loose reverse-path
// filtering and no duplicate address detection. Its eth0 joins the fabric
// bridge and carries the node IPs, the addresses that traffic the node sends
// itself to other nodes comes from. Nodes route each other's pod CIDRs via
// each other's node IP. How a node's pods are joined to it is its Wiring,
// one per cluster (NodeOptions.Wiring, AddPeerNode follows it):
//
//   - WiringVeth, wired the way a point-to-point CNI (Calico) wires pods:
//     each pod is a namespace joined to the node by a veth pair, eth0 in the
//     pod with a /32 and a /128 and default routes via a link-local gateway
//     (169.254.1.1 and the host veth's EUI-64 link-local address, both with
//     permanent neighbour entries), the host side veth<hash> in the node
//     namespace, without address, with host routes <podIP>/32 and
//     <podIPv6>/128. The node reaches its pods from its node IPs.
//   - WiringPTP, the reference ptp plugin with host-local IPAM, run as the
//     kubelet runs it: a veth pair per pod, the pod's eth0 with a /20 and a
//     /64 and everything via the gateway 198.18.31.254 (fd10:6d72:0:1::ffe
//     on node 1), which is on every host veth (/32, /128); host routes to the
//     pods. The node reaches its pods from the gateway addresses.
//   - WiringBridge, the reference bridge plugin (isGateway): every pod's host
//     veth is a port of the bridge cni0, which holds the gateway addresses
//     with the pods' /20 and /64; pods of a node reach each other at layer 2.
//     The node reaches its pods from the bridge's addresses.
//
// On the plugin wirings testenv still picks every pod's addresses (host-local
// gets a range of exactly those), and the plugins' state (host-local's files,
// libcni's cache) is in a directory of the node, never in /var/lib/cni.
//
// Addressing (see addressing.go): node n (1..MaxNodes) has the node IPs
// 198.18.0.n and fd10:6d72::n on the fabric, and the pod CIDRs
// 198.18.0.0+n*4096/20 and fd10:6d72:0:n::/64; its pods are numbered from 1
// in the order they are added. ServiceIPv4 and ServiceIPv6 give addresses that
// nothing owns, for tests that need a destination only a proxy answers.
//
// Everything is removed by t.Cleanup, also when the test fails or panics:
// namespaces are anonymous (a handle per namespace, closed at the end; no
// name under /run/netns, so nothing can outlive the test process either),
// and a node's veths (and bridge) are deleted explicitly, in one batch (they
// share a link group, the plugins' too), before the handles are closed; the
// plugins' state directory goes last. Anything a test opens in a
// namespace (a socket, a process) keeps that namespace alive until it is
// closed, so close it in a cleanup registered after the builder's (cleanups
// run last in, first out); StartEcho's servers do so. The package's tests
// prove that every namespace is destroyed (namespace ids in an observer
// namespace vanish) and that the root namespace's links are unchanged.
//
// SteerToZtunnel routes pods' traffic to the ztunnel pod with policy
// routing, a capture without eBPF for testing ztunnel stand-ins (not on a
// bridge).
//
// The package knows nothing about eBPF: the dataplane enrols a pod by its IP,
// its host veth's ifindex and its eth0 MAC, which Pod exposes with the MAC
// its gateways resolve to; Ambient is a flag the test reads.
package testenv
