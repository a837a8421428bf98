package agent

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Labels and annotations that decide and record ambient mode, as Istio
// names them.
const (
	// DataplaneModeLabel on a pod or its namespace asks for a data plane
	// mode: ModeAmbient or ModeNone.
	DataplaneModeLabel = "istio.io/dataplane-mode"
	ModeAmbient        = "ambient"
	ModeNone           = "none"

	// RedirectionAnnotation records on a pod that its traffic is captured
	// (RedirectionEnabled); RedirectionDisabled set by a user opts the pod out.
	RedirectionAnnotation = "ambient.istio.io/redirection"
	RedirectionEnabled    = "enabled"
	RedirectionDisabled   = "disabled"

	// SidecarStatusAnnotation marks a pod with an Istio sidecar, which
	// captures its own traffic.
	SidecarStatusAnnotation = "sidecar.istio.io/status"
)

// DefaultExcludedNamespaces are never captured.
var DefaultExcludedNamespaces = []string{"kube-system", "istio-system"}

// Policy is what the ambient decision needs besides the pod: the namespaces
// never captured and how ztunnel is recognised.
type Policy struct {
	ExcludedNamespaces map[string]bool
	Ztunnel            labels.Selector
}

// Decision is whether a pod's traffic is captured, and why, in words for the
// log line of an enrol or a skip.
type Decision struct {
	Ambient bool
	Reason  string
}

// Decide applies DESIGN.md §2 to pod in namespace ns (nil if the namespace
// is unknown). It is a pure function: everything it reads is in its
// arguments.
//
// A pod is never captured if it is on the host network (its traffic is the
// node's), has a sidecar (which captures it already), is ztunnel itself, is
// annotated ambient.istio.io/redirection=disabled, is in an excluded
// namespace, or has finished. Otherwise its own istio.io/dataplane-mode label
// decides (ambient in, none out), and without one, its namespace's label.
// Label values are compared exactly, as Istio does: "Ambient" is not
// "ambient". A pod label with another value is ignored (its namespace
// decides) and the reason says so.
func (p Policy) Decide(pod *corev1.Pod, ns *corev1.Namespace) Decision {
	switch {
	case pod.Spec.HostNetwork:
		return Decision{false, "host network pod"}
	case p.Ztunnel != nil && p.Ztunnel.Matches(labels.Set(pod.Labels)):
		return Decision{false, "ztunnel itself"}
	case pod.Annotations[SidecarStatusAnnotation] != "":
		return Decision{false, "pod has a sidecar"}
	case pod.Annotations[RedirectionAnnotation] == RedirectionDisabled:
		return Decision{false, fmt.Sprintf("pod annotation %s=%s", RedirectionAnnotation, RedirectionDisabled)}
	case p.ExcludedNamespaces[pod.Namespace]:
		return Decision{false, fmt.Sprintf("namespace %s is excluded", pod.Namespace)}
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return Decision{false, fmt.Sprintf("pod has finished (%s)", pod.Status.Phase)}
	}

	ignored := ""
	if v, ok := pod.Labels[DataplaneModeLabel]; ok {
		switch v {
		case ModeAmbient:
			return Decision{true, fmt.Sprintf("pod label %s=%s", DataplaneModeLabel, ModeAmbient)}
		case ModeNone:
			return Decision{false, fmt.Sprintf("pod label %s=%s", DataplaneModeLabel, ModeNone)}
		default:
			ignored = fmt.Sprintf(" (pod label %s=%q is not %s or %s: ignored)", DataplaneModeLabel, v, ModeAmbient, ModeNone)
		}
	}
	if ns == nil {
		return Decision{false, "namespace not known yet" + ignored}
	}
	if v := ns.Labels[DataplaneModeLabel]; v == ModeAmbient {
		return Decision{true, fmt.Sprintf("namespace label %s=%s", DataplaneModeLabel, ModeAmbient) + ignored}
	} else if v != "" && v != ModeNone {
		return Decision{false, fmt.Sprintf("namespace label %s=%q is not %s", DataplaneModeLabel, v, ModeAmbient) + ignored}
	}
	return Decision{false, "no ambient label on the pod or its namespace" + ignored}
}
