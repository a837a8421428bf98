// Package cni is the contract between meshredirect's chained CNI plugin
// (cmd/meshredirect-cni) and the agent, which serves it on a Unix socket:
// the plugin asks the agent to capture a new pod before the pod's first
// packet, and to let it go when the pod is torn down. It also installs the
// plugin into the node's CNI configuration, after the primary CNI, and
// takes it out again (install.go).
//
// While the agent cannot be reached, the plugin decides from the API server
// itself (apiclient.go), with a kubeconfig the agent installs next to the
// conflist (kubeconfig.go), and with the agent's own label rule
// (AmbientRequested, ambient.go): both sides of the contract read the
// istio.io/dataplane-mode labels through this one function. Nothing here
// imports client-go: the plugin runs once per pod, and would start slower
// for its megabytes.
package cni
