package agent

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

func testPolicy() Policy {
	excluded := map[string]bool{}
	for _, ns := range DefaultExcludedNamespaces {
		excluded[ns] = true
	}
	return Policy{ExcludedNamespaces: excluded, Ztunnel: labels.SelectorFromSet(labels.Set{"app": "ztunnel"})}
}

// podIn builds a running pod in namespace ns with the given changes.
func podIn(ns string, change ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: ns, Labels: map[string]string{}, Annotations: map[string]string{}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, c := range change {
		c(p)
	}
	return p
}

func nsLabelled(name, mode string) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}}
	if mode != "" {
		ns.Labels[DataplaneModeLabel] = mode
	}
	return ns
}

func podLabel(mode string) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Labels[DataplaneModeLabel] = mode }
}

var (
	hostNetwork = func(p *corev1.Pod) { p.Spec.HostNetwork = true }
	sidecar     = func(p *corev1.Pod) { p.Annotations[SidecarStatusAnnotation] = `{"containers":["istio-proxy"]}` }
	optedOut    = func(p *corev1.Pod) { p.Annotations[RedirectionAnnotation] = RedirectionDisabled }
	isZtunnel   = func(p *corev1.Pod) { p.Labels["app"] = "ztunnel" }
	finished    = func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }
	failed      = func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }
	pending     = func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }
)

// TestDecide has a row per rule of DESIGN.md §2, then every "never" rule
// combined with every way of asking for ambient.
func TestDecide(t *testing.T) {
	pol := testPolicy()
	rows := []struct {
		name    string
		pod     *corev1.Pod
		ns      *corev1.Namespace
		ambient bool
		reason  string
	}{
		{"namespace label ambient captures its pods", podIn("shop"), nsLabelled("shop", "ambient"), true, "namespace label"},
		{"pod label ambient captures in a plain namespace", podIn("shop", podLabel("ambient")), nsLabelled("shop", ""), true, "pod label"},
		{"pod label none opts out of an ambient namespace", podIn("shop", podLabel("none")), nsLabelled("shop", "ambient"), false, "pod label istio.io/dataplane-mode=none"},
		{"pod label wins over namespace label none", podIn("shop", podLabel("ambient")), nsLabelled("shop", "none"), true, "pod label"},
		{"no label anywhere: not captured", podIn("shop"), nsLabelled("shop", ""), false, "no ambient label"},
		{"namespace label none: not captured", podIn("shop"), nsLabelled("shop", "none"), false, "no ambient label"},
		{"unknown namespace: not captured yet", podIn("shop"), nil, false, "namespace not known"},
		{"unknown namespace, pod label ambient: captured", podIn("shop", podLabel("ambient")), nil, true, "pod label"},
		{"host network pods never", podIn("shop", hostNetwork), nsLabelled("shop", "ambient"), false, "host network"},
		{"pods with a sidecar never", podIn("shop", sidecar), nsLabelled("shop", "ambient"), false, "sidecar"},
		{"ztunnel never", podIn("shop", isZtunnel), nsLabelled("shop", "ambient"), false, "ztunnel itself"},
		{"redirection=disabled never", podIn("shop", optedOut), nsLabelled("shop", "ambient"), false, "redirection=disabled"},
		{"kube-system never", podIn("kube-system"), nsLabelled("kube-system", "ambient"), false, "excluded"},
		{"istio-system never", podIn("istio-system", podLabel("ambient")), nsLabelled("istio-system", ""), false, "excluded"},
		{"finished pods never", podIn("shop", finished), nsLabelled("shop", "ambient"), false, "finished"},
		{"failed pods never", podIn("shop", failed), nsLabelled("shop", "ambient"), false, "finished"},
		{"pending pods are captured (before their first packet)", podIn("shop", pending), nsLabelled("shop", "ambient"), true, "namespace label"},
		{"label values are exact: Ambient on the pod is ignored", podIn("shop", podLabel("Ambient")), nsLabelled("shop", ""), false, `"Ambient" is not ambient or none: ignored`},
		{"an ignored pod label leaves it to the namespace", podIn("shop", podLabel("AMBIENT")), nsLabelled("shop", "ambient"), true, "ignored"},
		{"label values are exact: Ambient on the namespace is not ambient", podIn("shop"), nsLabelled("shop", "Ambient"), false, `"Ambient" is not ambient`},
		{"other redirection annotation values change nothing", podIn("shop", func(p *corev1.Pod) { p.Annotations[RedirectionAnnotation] = RedirectionEnabled }), nsLabelled("shop", "ambient"), true, "namespace label"},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			d := pol.Decide(r.pod, r.ns)
			if d.Ambient != r.ambient {
				t.Errorf("ambient = %v (%s), want %v", d.Ambient, d.Reason, r.ambient)
			}
			if !strings.Contains(d.Reason, r.reason) {
				t.Errorf("reason %q does not say %q", d.Reason, r.reason)
			}
		})
	}

	// Every "never" rule beats every way of asking for ambient.
	nevers := map[string]func(*corev1.Pod){"host network": hostNetwork, "sidecar": sidecar, "ztunnel itself": isZtunnel,
		"redirection=disabled": optedOut, "finished": finished}
	for neverName, never := range nevers {
		for _, ask := range []struct {
			name string
			pod  *corev1.Pod
			ns   *corev1.Namespace
		}{
			{"pod label", podIn("shop", podLabel("ambient"), never), nsLabelled("shop", "")},
			{"namespace label", podIn("shop", never), nsLabelled("shop", "ambient")},
			{"both labels", podIn("shop", podLabel("ambient"), never), nsLabelled("shop", "ambient")},
		} {
			t.Run(fmt.Sprintf("%s beats %s", neverName, ask.name), func(t *testing.T) {
				if d := pol.Decide(ask.pod, ask.ns); d.Ambient || !strings.Contains(d.Reason, neverName) {
					t.Errorf("decision %+v", d)
				}
			})
		}
	}
	for _, excluded := range DefaultExcludedNamespaces {
		if d := pol.Decide(podIn(excluded, podLabel("ambient")), nsLabelled(excluded, "ambient")); d.Ambient {
			t.Errorf("excluded namespace %s captured: %+v", excluded, d)
		}
	}
}
