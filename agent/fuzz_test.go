package agent

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Bits of FuzzDecide's flags argument.
const (
	fuzzHostNetwork = 1 << iota
	fuzzNoNamespace // the namespace is not known yet (nil)
	fuzzExcluded    // the pod's namespace is in ExcludedNamespaces
)

// fuzzPhases are the pod phases FuzzDecide picks from, and one that is
// none of them.
var fuzzPhases = []corev1.PodPhase{corev1.PodRunning, corev1.PodPending, corev1.PodSucceeded, corev1.PodFailed, corev1.PodUnknown, "", "Weird"}

// fuzzPairs reads "k=v" lines into a map: labels and annotations as the
// fuzzer writes them, valid or not (Decide must not care).
func fuzzPairs(s string) map[string]string {
	if s == "" {
		return nil
	}
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		k, v, _ := strings.Cut(line, "=")
		m[k] = v
	}
	return m
}

// FuzzDecide runs Policy.Decide on random pod labels and annotations,
// namespace labels, phase, host network and ztunnel selector. It must not
// panic nor change its arguments; the "never" rules win whatever the labels
// say; otherwise the pod's label decides, then its namespace's, as an
// oracle written from DESIGN.md §2 says; and the decision is a function of
// what Decide reads: the same for a copy of the pod and namespace, and for
// a pod and namespace that differ only in what it does not read (names,
// UIDs, the namespace's own name and annotations).
func FuzzDecide(f *testing.F) {
	f.Add("istio.io/dataplane-mode=ambient", "", "istio.io/dataplane-mode=ambient", "app=ztunnel", uint8(0), uint8(0))
	f.Add("", "", "istio.io/dataplane-mode=ambient", "app=ztunnel", uint8(0), uint8(0))
	f.Add("istio.io/dataplane-mode=none", "", "istio.io/dataplane-mode=ambient", "app=ztunnel", uint8(0), uint8(0))
	f.Add("istio.io/dataplane-mode=Ambient", "", "istio.io/dataplane-mode=ambient", "app=ztunnel", uint8(0), uint8(0))
	f.Add("app=ztunnel\nistio.io/dataplane-mode=ambient", "", "", "app=ztunnel", uint8(0), uint8(0))
	f.Add("istio.io/dataplane-mode=ambient", "sidecar.istio.io/status={}", "", "app=ztunnel", uint8(0), uint8(0))
	f.Add("istio.io/dataplane-mode=ambient", "ambient.istio.io/redirection=disabled", "", "app=ztunnel", uint8(0), uint8(0))
	f.Add("istio.io/dataplane-mode=ambient", "", "", "app=ztunnel", uint8(fuzzHostNetwork), uint8(0))
	f.Add("istio.io/dataplane-mode=ambient", "", "", "app=ztunnel", uint8(fuzzExcluded), uint8(0))
	f.Add("istio.io/dataplane-mode=ambient", "", "", "app=ztunnel", uint8(0), uint8(2))
	f.Add("", "", "istio.io/dataplane-mode=ambient", "app in (ztunnel,ztunnel-v2),!canary", uint8(fuzzNoNamespace), uint8(3))
	f.Add("istio.io/dataplane-mode=", "ambient.istio.io/redirection=enabled", "istio.io/dataplane-mode=none", "app", uint8(0), uint8(6))

	f.Fuzz(func(t *testing.T, podLabels, podAnnotations, nsLabels, selector string, flags, phase uint8) {
		sel, err := labels.Parse(selector)
		if err != nil {
			return // the agent refuses it at start (Config.policy)
		}
		pol := Policy{ExcludedNamespaces: map[string]bool{"kube-system": true}, Ztunnel: sel}
		nsName := "apps"
		if flags&fuzzExcluded != 0 {
			nsName = "kube-system"
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: nsName, UID: "u1", Labels: fuzzPairs(podLabels), Annotations: fuzzPairs(podAnnotations)},
			Spec:       corev1.PodSpec{HostNetwork: flags&fuzzHostNetwork != 0, NodeName: "n1"},
			Status:     corev1.PodStatus{Phase: fuzzPhases[int(phase)%len(fuzzPhases)]},
		}
		var ns *corev1.Namespace
		if flags&fuzzNoNamespace == 0 {
			ns = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName, UID: "n1", Labels: fuzzPairs(nsLabels)}}
		}
		podCopy, nsCopy := pod.DeepCopy(), ns.DeepCopy()

		d := pol.Decide(pod, ns)
		if d.Reason == "" {
			t.Errorf("a decision without a reason: %+v", d)
		}
		if !samePod(pod, podCopy) || !sameNamespace(ns, nsCopy) {
			t.Fatalf("Decide changed its arguments")
		}

		never := pod.Spec.HostNetwork || sel.Matches(labels.Set(pod.Labels)) || pod.Annotations[SidecarStatusAnnotation] != "" ||
			pod.Annotations[RedirectionAnnotation] == RedirectionDisabled || pol.ExcludedNamespaces[pod.Namespace] ||
			pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
		want := false
		if !never {
			switch v, ok := pod.Labels[DataplaneModeLabel]; {
			case ok && v == ModeAmbient:
				want = true
			case ok && v == ModeNone:
				want = false
			default:
				want = ns != nil && ns.Labels[DataplaneModeLabel] == ModeAmbient
			}
		}
		if d.Ambient != want {
			t.Errorf("Decide = %+v, want ambient %v (never rule: %v)\npod labels %q annotations %q\nnamespace %v\nselector %q", d, want, never, pod.Labels, pod.Annotations, ns, selector)
		}

		// A function of its inputs: a copy gives the same decision, and so
		// does a pod that differs only in what Decide does not read.
		if d2 := pol.Decide(podCopy, nsCopy); d2 != d {
			t.Errorf("the same inputs decided %+v, then %+v", d, d2)
		}
		other := podCopy.DeepCopy()
		other.Name, other.UID, other.Spec.NodeName, other.ResourceVersion = "q", "u2", "n2", "7"
		var otherNS *corev1.Namespace
		if nsCopy != nil {
			otherNS = nsCopy.DeepCopy()
			otherNS.UID, otherNS.Annotations = "n2", map[string]string{DataplaneModeLabel: ModeAmbient}
		}
		if d3 := pol.Decide(other, otherNS); d3 != d {
			t.Errorf("what Decide does not read changed the decision: %+v, then %+v", d, d3)
		}
	})
}

func samePod(a, b *corev1.Pod) bool {
	return a.Spec.HostNetwork == b.Spec.HostNetwork && a.Status.Phase == b.Status.Phase && a.Namespace == b.Namespace &&
		labels.Equals(a.Labels, b.Labels) && labels.Equals(a.Annotations, b.Annotations)
}

func sameNamespace(a, b *corev1.Namespace) bool {
	if a == nil || b == nil {
		return a == b
	}
	return labels.Equals(a.Labels, b.Labels)
}
