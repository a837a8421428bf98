// Package agent is the node agent: it watches the Kubernetes API for the
// pods of its node and their namespaces, decides which are ambient
// (ambient.go), finds their interfaces (package resolve), tracks the
// node's ztunnel (ztunnel.go), and drives package dataplane to capture the
// ambient pods' traffic and stop when they leave (reconcile.go). It records
// its work on the pods (an annotation), in Kubernetes events, in metrics and
// in the ambient config file, and it restarts without a gap: the dataplane's
// pins and attachments outlive the process, and a new agent reconciles
// against them.
package agent
