package cni

import "fmt"

// The label that asks for ambient mode, as Istio names it. The agent
// (agent.Decide) and the plugin (while the agent is down) read it through
// AmbientRequested, so that the two cannot disagree on what it means.
const (
	// DataplaneModeLabel on a pod or its namespace asks for a data plane
	// mode: ModeAmbient or ModeNone.
	DataplaneModeLabel = "istio.io/dataplane-mode"
	ModeAmbient        = "ambient"
	ModeNone           = "none"
)

// AmbientRequested applies the label rule of ambient mode to a pod's
// labels and its namespace's (nsKnown false: the namespace is not known,
// which never asks for ambient). The pod's own istio.io/dataplane-mode
// decides (ambient in, none out); without one, or with another value, its
// namespace's does. Values are compared exactly, as Istio does: "Ambient"
// is not "ambient". The reason says which label decided, and notes a pod
// label that was ignored.
//
// It is only the request: agent.Decide leaves out pods that ask for
// ambient but are not captured (host network, a sidecar, ztunnel itself,
// redirection disabled, excluded namespaces).
func AmbientRequested(pod, ns map[string]string, nsKnown bool) (bool, string) {
	ignored := ""
	if v, ok := pod[DataplaneModeLabel]; ok {
		switch v {
		case ModeAmbient:
			return true, fmt.Sprintf("pod label %s=%s", DataplaneModeLabel, ModeAmbient)
		case ModeNone:
			return false, fmt.Sprintf("pod label %s=%s", DataplaneModeLabel, ModeNone)
		default:
			ignored = fmt.Sprintf(" (pod label %s=%q is not %s or %s: ignored)", DataplaneModeLabel, v, ModeAmbient, ModeNone)
		}
	}
	if !nsKnown {
		return false, "namespace not known yet" + ignored
	}
	if v := ns[DataplaneModeLabel]; v == ModeAmbient {
		return true, fmt.Sprintf("namespace label %s=%s", DataplaneModeLabel, ModeAmbient) + ignored
	} else if v != "" && v != ModeNone {
		return false, fmt.Sprintf("namespace label %s=%q is not %s", DataplaneModeLabel, v, ModeAmbient) + ignored
	}
	return false, "no ambient label on the pod or its namespace" + ignored
}
