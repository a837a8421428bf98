// Package cluster mirrors a node in a box into a real API server: each pod
// of the box gets a Pod object bound to the node, with the same name and
// IPs, whose status is set as a kubelet would set it; namespaces are
// created and labelled; ztunnel's network namespace is bind-mounted where
// an agent finds it. The agent tests and the demo drive an agent this way.
package cluster
