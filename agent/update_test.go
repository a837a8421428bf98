package agent

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
)

// TestOwnAnnotationIsNotResynced: the update that only writes the
// enrolment annotation onto a pod this process enrolled (its own patch
// coming back) queues nothing; every other update queues the pod: another
// change beside the annotation, the annotation's removal or another value,
// a pod not enrolled, another pod of the same name.
func TestOwnAnnotationIsNotResynced(t *testing.T) {
	base := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "ns", UID: "u1", ResourceVersion: "10",
			Labels: map[string]string{"app": "a"}, Annotations: map[string]string{"other": "x"}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.0.10"},
	}
	annotated := func(change ...func(*corev1.Pod)) *corev1.Pod {
		p := base.DeepCopy()
		p.ResourceVersion = "11"
		p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "meshredirect", Subresource: "status"}}
		p.Annotations[RedirectionAnnotation] = RedirectionEnabled
		for _, c := range change {
			c(p)
		}
		return p
	}
	noAnnotations := base.DeepCopy()
	noAnnotations.Annotations = nil
	for _, tc := range []struct {
		name     string
		old, new *corev1.Pod
		enrolled string // its UID in the agent's record; "" not enrolled
		queued   bool
	}{
		{"own annotation", base, annotated(), "u1", false},
		{"own annotation, no other annotation", noAnnotations, annotated(func(p *corev1.Pod) { delete(p.Annotations, "other") }), "u1", false},
		{"not enrolled", base, annotated(), "", true},
		{"another pod of the name", base, annotated(), "u0", true},
		{"and a label", base, annotated(func(p *corev1.Pod) { p.Labels["app"] = "b" }), "u1", true},
		{"and another annotation", base, annotated(func(p *corev1.Pod) { p.Annotations[UDPAnnotation] = UDPDrop }), "u1", true},
		{"and an IP", base, annotated(func(p *corev1.Pod) { p.Status.PodIP = "198.18.0.11" }), "u1", true},
		{"and deleted", base, annotated(func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{} }), "u1", true},
		{"disabled", base, annotated(func(p *corev1.Pod) { p.Annotations[RedirectionAnnotation] = "disabled" }), "u1", true},
		{"removed", annotated(), base, "u1", true},
		{"already there", annotated(), annotated(func(p *corev1.Pod) { p.ResourceVersion = "12" }), "u1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &Agent{
				policy:   Policy{Ztunnel: labels.Nothing()},
				enrolled: map[string]enrolledPod{},
				queue:    workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
			}
			defer a.queue.ShutDown()
			if tc.enrolled != "" {
				a.enrolled["ns/app"] = enrolledPod{uid: k8stypes.UID(tc.enrolled)}
			}
			a.podUpdated(tc.old, tc.new)
			if got := a.queue.Len() == 1; got != tc.queued {
				t.Errorf("queued %v, want %v (queue length %d)", got, tc.queued, a.queue.Len())
			}
		})
	}
}
