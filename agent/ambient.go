package agent

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/meshredirect/meshredirect/cni"
	"github.com/meshredirect/meshredirect/dataplane"
)

// Labels and annotations that decide and record ambient mode, as Istio
// names them.
const (
	// DataplaneModeLabel on a pod or its namespace asks for a data plane
	// mode: ModeAmbient or ModeNone (cni.AmbientRequested reads it).
	DataplaneModeLabel = cni.DataplaneModeLabel
	ModeAmbient        = cni.ModeAmbient
	ModeNone           = cni.ModeNone

	// RedirectionAnnotation records on a pod that its traffic is captured
	// (RedirectionEnabled); RedirectionDisabled set by a user opts the pod out.
	RedirectionAnnotation = "ambient.istio.io/redirection"
	RedirectionEnabled    = "enabled"
	RedirectionDisabled   = "disabled"

	// SidecarStatusAnnotation marks a pod with an Istio sidecar, which
	// captures its own traffic.
	SidecarStatusAnnotation = "sidecar.istio.io/status"

	// BypassInboundAnnotation "true" on an ambient pod leaves its inbound
	// plaintext TCP uncaptured (HBONE still goes to ztunnel), as in Istio.
	BypassInboundAnnotation = "ambient.istio.io/bypass-inbound-capture"
	// BypassDNSAnnotation "true" keeps an ambient pod's DNS away from
	// ztunnel's DNS proxy when DNS capture is on, as in Istio.
	BypassDNSAnnotation = "ambient.istio.io/bypass-dns-capture"
	// UDPAnnotation "drop" applies the strict UDP policy to a pod on a node
	// that passes UDP: only DNS to the resolvers leaves it. It tightens the
	// node's policy, never loosens it.
	UDPAnnotation = "meshredirect.io/udp"
	UDPDrop       = "drop"
	UDPPass       = "pass"
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
// log line of an enrol or a skip; for an ambient pod, its own capture
// policy from its annotations.
type Decision struct {
	Ambient bool
	Reason  string
	Policy  dataplane.Policy
}

// Decide applies DESIGN.md §2 to pod in namespace ns (nil if the namespace
// is unknown). It is a pure function: everything it reads is in its
// arguments.
//
// A pod is never captured if it is on the host network (its traffic is the
// node's), has a sidecar (which captures it already), is ztunnel itself, is
// annotated ambient.istio.io/redirection=disabled, is in an excluded
// namespace, or has finished. Otherwise its own istio.io/dataplane-mode label
// decides (ambient in, none out), and without one, its namespace's label
// (cni.AmbientRequested, the rule the CNI plugin applies while the agent is
// down).
// Label values are compared exactly, as Istio does: "Ambient" is not
// "ambient". A pod label with another value is ignored (its namespace
// decides) and the reason says so.
//
// An ambient pod's own policy comes from its annotations:
// ambient.istio.io/bypass-inbound-capture and
// ambient.istio.io/bypass-dns-capture "true" (Istio's), and
// meshredirect.io/udp "drop". Other values are ignored, and the reason
// says so.
func (p Policy) Decide(pod *corev1.Pod, ns *corev1.Namespace) Decision {
	d := p.decideAmbient(pod, ns)
	if d.Ambient {
		d.Policy, d.Reason = podPolicy(pod, d.Reason)
	}
	return d
}

// podPolicy reads an ambient pod's own capture policy from its annotations
// and adds what it found, or ignored, to reason.
func podPolicy(pod *corev1.Pod, reason string) (dataplane.Policy, string) {
	var pol dataplane.Policy
	var notes []string
	flag := func(key string, set *bool) {
		v, ok := pod.Annotations[key]
		switch {
		case !ok:
		case v == "true":
			*set = true
			notes = append(notes, key)
		default:
			notes = append(notes, fmt.Sprintf("%s=%q ignored (only \"true\" counts)", key, v))
		}
	}
	flag(BypassInboundAnnotation, &pol.BypassInbound)
	flag(BypassDNSAnnotation, &pol.BypassDNS)
	switch v, ok := pod.Annotations[UDPAnnotation]; {
	case !ok:
	case v == UDPDrop:
		pol.UDPDrop = true
		notes = append(notes, UDPAnnotation+"="+UDPDrop)
	case v == UDPPass:
		notes = append(notes, UDPAnnotation+"="+UDPPass+" (the node's policy applies: a pod can only tighten it)")
	default:
		notes = append(notes, fmt.Sprintf("%s=%q ignored (want %s)", UDPAnnotation, v, UDPDrop))
	}
	if len(notes) > 0 {
		reason += "; " + strings.Join(notes, ", ")
	}
	return pol, reason
}

func (p Policy) decideAmbient(pod *corev1.Pod, ns *corev1.Namespace) Decision {
	switch {
	case pod.Spec.HostNetwork:
		return Decision{Ambient: false, Reason: "host network pod"}
	case p.Ztunnel != nil && p.Ztunnel.Matches(labels.Set(pod.Labels)):
		return Decision{Ambient: false, Reason: "ztunnel itself"}
	case pod.Annotations[SidecarStatusAnnotation] != "":
		return Decision{Ambient: false, Reason: "pod has a sidecar"}
	case pod.Annotations[RedirectionAnnotation] == RedirectionDisabled:
		return Decision{Ambient: false, Reason: fmt.Sprintf("pod annotation %s=%s", RedirectionAnnotation, RedirectionDisabled)}
	case p.ExcludedNamespaces[pod.Namespace]:
		return Decision{Ambient: false, Reason: fmt.Sprintf("namespace %s is excluded", pod.Namespace)}
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return Decision{Ambient: false, Reason: fmt.Sprintf("pod has finished (%s)", pod.Status.Phase)}
	}

	// The label rule is the plugin's too, while the agent is down.
	var nsLabels map[string]string
	if ns != nil {
		nsLabels = ns.Labels
	}
	ambient, reason := cni.AmbientRequested(pod.Labels, nsLabels, ns != nil)
	return Decision{Ambient: ambient, Reason: reason}
}
