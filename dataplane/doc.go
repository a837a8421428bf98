// Package dataplane is the Kubernetes-free core of the node agent and the
// one door into the kernel: the only product package that imports tc, maps,
// asm, resolve, cilium/ebpf or a netlink library (internal/layers checks
// it). It loads the programs of package asm once, opens or creates the
// pinned maps of package maps, attaches programs through package tc, finds
// pods' interfaces through package resolve, and offers the verbs the agent
// (and the demo) speak:
//
//	dp, err := dataplane.Open(dataplane.Config{StrictUDP: false})
//	addrs, err := dp.NodeAddresses()       // every address of the node's netns but lo, link-local, kube-ipvs0
//	err = dp.SetNodeAddresses(addrs)       // the source of probes, the node-local agents' destination
//	ports, err := dp.RelayPorts()          // the node's VXLAN, Geneve and FOU ports
//	err = dp.SetRelayPorts(ports)
//	err = dp.SetResolvers(resolvers)       // DNS servers of the strict UDP policy
//	err = dp.WatchNode(ctx, changed)       // netlink: addresses or links changed
//	err = dp.SetZtunnel(dataplane.Ztunnel{Netns: path, HostIfindex: idx, IPs: ips})
//	err = dp.SetZtunnelReady(true)
//	err = dp.Enroll(dataplane.Pod{Name: "ns/name", IPs: ips, HostIfindex: idx, Netns: path, Policy: policy})
//	err = dp.Unenroll(pod)
//	res, err := dp.Reconcile(desired, keep)
//
// and, for the CLI, functions that need no loaded programs and work whether
// or not an agent runs: Inspect (what `status` shows), ListAttachments and
// Detach (`list`, `detach`), DescribePrograms (`dump`), FindZtunnelNetns,
// FindInPodNetns and Uninstall. The pins' layout is spelled once: the maps in the pin
// directory, the tcx links and qdisc markers in TCPinDir of it.
//
// Everything it makes lives in the kernel: the maps are pinned, legacy
// filters stay on their hooks and tcx links are pinned, so a Dataplane
// opened by a new process finds what the previous one made, re-attaches the
// programs it loaded (an atomic replacement, never a moment without a
// program) and reconciles the rest. Close releases file descriptors only;
// capture stays in place. Uninstall removes everything.
//
// ztunnel's network namespace gets the policy routing that delivers marked
// packets locally (fwmark TProxyMark/TProxyMask lookup TProxyTable, with
// `local 0.0.0.0/0 dev lo` and `local ::/0 dev lo` in that table), reverse
// path filtering off on its interface, no TIME_WAIT sockets
// (net.ipv4.tcp_max_tw_buckets=0: since Linux 6.11 a SYN assigned to a
// listener is dropped while a TIME_WAIT socket holds its tuple, so a client
// reconnecting from the same port would wait for a retransmission), the
// ztunnel_assign program on the ingress of its eth0, and ztunnel_ingress and
// ztunnel_egress on its host veth. The map records ztunnel's netns id as the
// node sees it, so the programs on the node's side look up ztunnel's sockets.
package dataplane
