package agent

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

func ztPod(name string, age time.Duration, ready bool, change ...func(*corev1.Pod)) *corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "istio-system", Labels: map[string]string{"app": "ztunnel"},
			CreationTimestamp: metav1.NewTime(time.Unix(1_800_000_000, 0).Add(-age))},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.16.9",
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}},
	}
	for _, c := range change {
		c(p)
	}
	return p
}

func TestChooseZtunnel(t *testing.T) {
	sel := labels.SelectorFromSet(labels.Set{"app": "ztunnel"})
	other := func(p *corev1.Pod) { p.Labels = map[string]string{"app": "web"} }
	noIP := func(p *corev1.Pod) { p.Status.PodIP = "" }
	deleting := func(p *corev1.Pod) { now := metav1.Now(); p.DeletionTimestamp = &now }
	done := func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }
	for _, c := range []struct {
		name      string
		pods      []*corev1.Pod
		want      string
		wantReady bool
	}{
		{"none", nil, "", false},
		{"one ready", []*corev1.Pod{ztPod("a", time.Hour, true)}, "a", true},
		{"one not ready is still chosen, not ready", []*corev1.Pod{ztPod("a", time.Hour, false)}, "a", false},
		{"ready wins over newer not ready", []*corev1.Pod{ztPod("old", time.Hour, true), ztPod("new", time.Minute, false)}, "old", true},
		{"newest ready wins (a rollout)", []*corev1.Pod{ztPod("old", time.Hour, true), ztPod("new", time.Minute, true)}, "new", true},
		{"newest not ready when none is ready", []*corev1.Pod{ztPod("old", time.Hour, false), ztPod("new", time.Minute, false)}, "new", false},
		{"selector must match", []*corev1.Pod{ztPod("web", time.Minute, true, other)}, "", false},
		{"no IP yet: not chosen", []*corev1.Pod{ztPod("a", time.Minute, true, noIP)}, "", false},
		{"being deleted: not chosen", []*corev1.Pod{ztPod("old", time.Hour, true), ztPod("going", time.Minute, true, deleting)}, "old", true},
		{"finished: not chosen", []*corev1.Pod{ztPod("a", time.Minute, true, done)}, "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, ready := chooseZtunnel(c.pods, sel)
			name := ""
			if got != nil {
				name = got.Name
			}
			if name != c.want || ready != c.wantReady {
				t.Errorf("chose %q ready=%v, want %q ready=%v", name, ready, c.want, c.wantReady)
			}
		})
	}
}
