package agent_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/testenv"
)

// setStatusIPs sets a pod's status IPs as a kubelet would (Running, Ready).
func (e *env) setStatusIPs(ns, name string, ips ...string) error {
	pod, err := e.admin.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIPs = nil
	for _, ip := range ips {
		pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		pod.Status.PodIP = ips[0]
	}
	_, err = e.admin.CoreV1().Pods(ns).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{})
	return err
}

// TestBadInput: odd labels, pods without IPs or with odd IPs, a host-network
// pod labelled ambient, a namespace deleted before its pods. Each has the
// behaviour README's "Failure behaviour" documents, a clear log line, and
// no crash: the agent stays ready throughout and its datapath keeps
// matching the API.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	b := e.box
	a := e.startAgent()
	set := e.maps()
	ctx := context.Background()

	t.Run("label values in odd case are not ambient", func(t *testing.T) {
		odd := b.Node.AddPod("odd", testenv.NotAmbient)
		e.createPod(odd, e.plainNS, map[string]string{agent.DataplaneModeLabel: "Ambient"})
		e.waitFor("the skip's log line", 10*time.Second, func() bool {
			return e.log.logged("skipped pod", "/odd", `\"Ambient\" is not ambient or none: ignored`)
		})
		if !e.absent(set, odd) {
			t.Error("a pod labelled Ambient was captured")
		}
	})

	t.Run("label values with spaces are refused by the API", func(t *testing.T) {
		_, err := e.PodObject(e.plainNS, "spaced", map[string]string{agent.DataplaneModeLabel: " ambient"})
		if err == nil || !strings.Contains(err.Error(), "a valid label must be") {
			t.Errorf("the API took a label value with a space: %v", err)
		}
	})

	t.Run("a pod without an IP waits, then is enrolled", func(t *testing.T) {
		e.labelNamespace(e.ns, agent.ModeAmbient)
		e.waitFor("client enrolled", 10*time.Second, func() bool { return e.enrolled(set, b.Client) })
		later := b.Node.AddPod("later", testenv.NotAmbient)
		_, err := e.PodObject(e.ns, "later", nil)
		must(t, err)
		e.waitFor("the wait's log line", 10*time.Second, func() bool { return e.log.logged("waiting for the pod's IP", "/later") })
		must(t, e.setStatusIPs(e.ns, "later", later.IPv4.String(), later.IPv6.String()))
		e.waitFor("later enrolled", 10*time.Second, func() bool { return e.enrolled(set, later) })
	})

	t.Run("three IPs are refused by the API", func(t *testing.T) {
		three := b.Node.AddPod("three", testenv.NotAmbient)
		_, err := e.PodObject(e.ns, "three", nil)
		must(t, err)
		err = e.setStatusIPs(e.ns, "three", three.IPv4.String(), three.IPv6.String(), "198.19.255.3")
		if err == nil {
			t.Error("the API took three pod IPs")
		} else {
			t.Logf("the API refuses three pod IPs: %v", err)
		}
	})

	t.Run("an IPv6-only pod is enrolled by its IPv6 address", func(t *testing.T) {
		v6only := b.Node.AddPod("v6only", testenv.NotAmbient)
		_, err := e.PodObject(e.ns, "v6only", nil)
		must(t, err)
		must(t, e.setStatusIPs(e.ns, "v6only", v6only.IPv6.String()))
		e.waitFor("v6only's IPv6 entry", 10*time.Second, func() bool {
			all, _ := set.Endpoints.Pods()
			_, v6 := all[v6only.IPv6]
			_, v4 := all[v6only.IPv4]
			return v6 && !v4
		})
	})

	t.Run("IPs that belong to no local interface are retried and reported", func(t *testing.T) {
		_, err := e.PodObject(e.ns, "elsewhere", nil)
		must(t, err)
		must(t, e.setStatusIPs(e.ns, "elsewhere", "198.19.255.7"))
		e.waitFor("an InterfaceNotFound event", 10*time.Second, func() bool { return e.hasEvent("elsewhere", "InterfaceNotFound") })
		e.waitFor("the retry's log line", 10*time.Second, func() bool {
			return e.log.logged("pod's interface not found yet; retrying", "/elsewhere", "198.19.255.7")
		})
	})

	t.Run("a host-network pod labelled ambient is skipped", func(t *testing.T) {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "hostnet", Namespace: e.ns, Labels: map[string]string{agent.DataplaneModeLabel: agent.ModeAmbient}},
			Spec: corev1.PodSpec{NodeName: e.nodeName, HostNetwork: true, Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}}}
		_, err := e.admin.CoreV1().Pods(e.ns).Create(ctx, pod, metav1.CreateOptions{})
		must(t, err)
		must(t, e.setStatusIPs(e.ns, "hostnet", b.Node.IPv4.String(), b.Node.IPv6.String()))
		e.waitFor("the skip's log line", 10*time.Second, func() bool { return e.log.logged("skipped pod", "/hostnet", "host network pod") })
		all, _ := set.Endpoints.Pods()
		if _, ok := all[b.Node.IPv4]; ok {
			t.Error("the node's IP went into the pods map")
		}
	})

	t.Run("a namespace deleted before its pods", func(t *testing.T) {
		ns := e.createNamespace("doomed-", map[string]string{agent.DataplaneModeLabel: agent.ModeAmbient})
		doomed := b.Node.AddPod("doomed", testenv.NotAmbient)
		e.createPod(doomed, ns, nil)
		e.waitFor("doomed enrolled", 10*time.Second, func() bool { return e.enrolled(set, doomed) })
		// Without a namespace controller the namespace stays Terminating,
		// labels and all: its pods stay captured until they go.
		must(t, e.admin.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}))
		time.Sleep(time.Second)
		if !e.enrolled(set, doomed) {
			t.Error("a pod of a Terminating namespace lost its capture before it went")
		}
		e.deletePod(doomed, ns)
		e.waitFor("doomed unenrolled", 10*time.Second, func() bool { return e.absent(set, doomed) })
	})

	if !a.Ready() {
		t.Error("the agent is not ready after the bad input")
	}
	runFlow(t, b, "1")
}
