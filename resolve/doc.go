// Package resolve finds where a pod is on the node: given the pod's IPs (all
// of status.podIPs, IPv4 and IPv6), the host-side veth in the node's network
// namespace that the pod's traffic crosses, and the MAC of the pod's end of
// it (its eth0), which is what the dataplane enrols the pod with. It also
// turns the id the node gives a pod's network namespace into a path, to set
// up ztunnel's namespace.
//
// It owns the lookups and nothing else: it reads the node's routes and
// links and never changes them, and knows nothing of Kubernetes or eBPF.
//
// Everything is read over rtnetlink from the node's namespace, without
// entering or even naming a pod's: a veth's IFLA_LINK and IFLA_LINK_NETNSID
// name its peer and the peer's namespace (by the id the node's namespace
// gives it), and RTM_GETLINK and RTM_GETADDR read links and addresses of
// another namespace by that id (IFLA_TARGET_NETNSID, IFA_TARGET_NETNSID).
// How a pod is found:
//
//   - by route (ptp-style CNIs): the node's FIB entry for each pod IP
//     (RTM_GETROUTE, RTM_F_FIB_MATCH) has a veth as its output device;
//   - by peer address (bridge CNIs): the route leads to a bridge, and the
//     pod's veth is the bridge port whose peer's namespace holds the IP.
//
// Either way the veth's peer namespace must hold the IP, and all the pod's
// IPs must lead to one veth.
//
// Minimum kernel: Linux 4.20 (strict rtnetlink checking, which the target
// namespace id of an address dump needs). The project as a whole needs 5.10.
package resolve
