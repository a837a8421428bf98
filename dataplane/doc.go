// Package dataplane is the Kubernetes-free core of the node agent: it loads
// the programs of package asm once, opens or creates the pinned maps of
// package maps, attaches programs through package tc, and offers the verbs
// the agent (and the demo) speak:
//
//	dp, err := dataplane.Open(dataplane.Config{})
//	addrs, err := dp.NodeAddresses()
//	err = dp.SetNodeAddresses(addrs)
//	err = dp.SetZtunnel(dataplane.Ztunnel{Netns: path, HostIfindex: idx, IPs: ips})
//	err = dp.SetZtunnelReady(true)
//	err = dp.Enroll(dataplane.Pod{Name: "ns/name", IPs: ips, HostIfindex: idx, Netns: path})
//	err = dp.Unenroll(pod)
//	res, err := dp.Reconcile(desired)
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
// path filtering off on its interface, the ztunnel_assign program on the
// ingress of its eth0, and ztunnel_ingress on the ingress of its host veth.
package dataplane
