// Package cni is the contract between meshredirect's chained CNI plugin
// (cmd/meshredirect-cni) and the agent, which serves it on a Unix socket:
// the plugin asks the agent to capture a new pod before the pod's first
// packet, and to let it go when the pod is torn down. It also installs the
// plugin into the node's CNI configuration, after the primary CNI, and
// takes it out again (install.go).
package cni
