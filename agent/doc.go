// Package agent is the node agent: it watches the Kubernetes API for the
// pods of its node and their namespaces, decides which are ambient
// (ambient.go), finds their interfaces (dataplane's Locator), tracks the
// node's ztunnel (ztunnel.go), and drives package dataplane to capture the
// ambient pods' traffic and stop when they leave (reconcile.go). It records
// its work on the pods (an annotation), in Kubernetes events, in metrics and
// in the ambient config file, and it restarts without a gap: the dataplane's
// pins and attachments outlive the process, and a new agent reconciles
// against them.
//
// It keeps Kubernetes and nothing of the kernel: every program, map, link
// and filter is reached through package dataplane (internal/layers checks
// that no import goes around it). `meshredirect status` is
// dataplane.Inspect with the pods named from the API (NodeStatus);
// uninstall is dataplane.Uninstall plus the annotations (RemoveAnnotations).
package agent
