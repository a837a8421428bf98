package agent_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vishvananda/netlink"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/scenario"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// TestNamespaceLabel: labelling a namespace ambient enrols its pods on
// this node, their traffic goes through ztunnel and they get the
// annotation; a pod labelled none leaves; a deleted pod's entries and
// programs go.
func TestNamespaceLabel(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	set := e.maps()
	b := e.box
	if !e.absent(set, b.Client) || e.annotation(e.ns, b.Client.Name) != "" {
		t.Fatal("a pod of an unlabelled namespace was enrolled")
	}

	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.waitFor("client and server enrolled", 10*time.Second, func() bool { return e.enrolled(set, b.Client) && e.enrolled(set, b.Server) })
	e.waitFor("the enrolment annotation", 10*time.Second, func() bool {
		return e.annotation(e.ns, b.Client.Name) == agent.RedirectionEnabled && e.annotation(e.ns, b.Server.Name) == agent.RedirectionEnabled
	})
	if !e.absent(set, b.Plain) || e.annotation(e.plainNS, b.Plain.Name) != "" {
		t.Error("the pod of the other namespace was enrolled")
	}
	for _, id := range []string{"1", "2", "4"} {
		runFlow(t, b, id)
	}

	e.labelPod(e.ns, b.Server.Name, agent.ModeNone)
	e.waitFor("server unenrolled", 10*time.Second, func() bool { return e.absent(set, b.Server) })
	e.waitFor("server's annotation removed", 10*time.Second, func() bool { return e.annotation(e.ns, b.Server.Name) == "" })
	b.Echo(b.Server, scenario.EchoPort)
	for _, v6 := range []bool{false, true} {
		if o := scenario.Observe(b, &b.Plain.Namespace, v6, addr(b.Server, v6, scenario.EchoPort)); o.Path != scenario.Direct || o.Err != nil {
			t.Errorf("to a pod labelled none: path %q, %v", o.Path, o.Err)
		}
	}

	clientVeth := b.Client.HostVethIndex
	e.deletePod(b.Client, e.ns)
	e.waitFor("the deleted pod's entries removed", 10*time.Second, func() bool { return e.absent(set, b.Client) })
	all, err := e.attachments()
	must(t, err)
	for _, a := range all {
		if a.Ifindex == clientVeth {
			t.Errorf("still attached to the deleted pod's veth: %s", a)
		}
	}
}

// TestZtunnelLifecycle: without a Ready ztunnel the ambient pods fail
// closed and the config says so; Ready, it serves; replaced by a newer
// one, the new one serves.
func TestZtunnelLifecycle(t *testing.T) {
	e := newEnv(t)
	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.setReady(e.plainNS, e.box.Ztunnel.Name, false)
	e.startAgent()
	set := e.maps()
	b := e.box
	e.waitFor("client enrolled", 10*time.Second, func() bool { return e.enrolled(set, b.Client) })
	if got := e.ambientConfig(); got != `{"ztunnelReady":false,"redirectMode":"eBPF"}` {
		t.Errorf("ambient config %q", got)
	}
	b.Echo(b.Remote, scenario.EchoPort)
	for _, v6 := range []bool{false, true} {
		if _, err := scenario.Exchange(&b.Client.Namespace, v6, addr(b.Remote, v6, scenario.EchoPort), time.Second); err == nil {
			t.Error("an ambient pod got through while ztunnel was not Ready")
		}
	}

	e.setReady(e.plainNS, b.Ztunnel.Name, true)
	e.waitFor("ztunnelReady:true", 10*time.Second, func() bool { return strings.Contains(e.ambientConfig(), `"ztunnelReady":true`) })
	runFlow(t, b, "4")

	// A newer ztunnel (a rollout that starts the new pod first): an
	// ordinary pod of the box running a second stand-in.
	newZt := b.Node.AddPod("ztunnel-new", testenv.NotAmbient)
	e.bindNetns(newZt, "ztunnel-new")
	zts2, err := ztunnel.Start(ztunnel.Options{Netns: newZt.Netns, DialTimeout: 3 * time.Second})
	must(t, err)
	t.Cleanup(func() { zts2.Close() })
	time.Sleep(1100 * time.Millisecond) // creation timestamps have a resolution of a second
	e.createPod(newZt, e.plainNS, map[string]string{"app": "ztunnel"})
	e.waitFor("the ztunnel map pointing at the new ztunnel", 10*time.Second, func() bool {
		zt, err := set.Ztunnel.Get()
		return err == nil && int(zt.Ifindex) == newZt.HostVethIndex
	})
	old := b.Standin
	b.Standin = zts2
	runFlow(t, b, "4")
	b.Standin = old
	if n := len(zts2.Records()); n == 0 {
		t.Error("the new ztunnel carried nothing")
	}
}

// TestEnrolmentRetriesUntilInterface: a pod whose interface cannot be
// found yet (the CNI has not added its route) is reported (event, metric)
// and retried with backoff; once the route is there, it is enrolled.
func TestEnrolmentRetriesUntilInterface(t *testing.T) {
	e := newEnv(t)
	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.startAgent()
	set := e.maps()

	late := e.box.Node.AddPod("late", testenv.NotAmbient)
	routes := hostRoutes(t, e.box.Node, late)
	for _, r := range routes {
		must(t, e.box.Node.Do(func() error { return netlink.RouteDel(&r) }))
	}
	e.createPod(late, e.ns, nil)
	e.waitFor("an InterfaceNotFound event", 10*time.Second, func() bool { return e.hasEvent("late", "InterfaceNotFound") })
	if e.enrolled(set, late) {
		t.Fatal("enrolled without an interface")
	}
	for _, r := range routes {
		must(t, e.box.Node.Do(func() error { return netlink.RouteAdd(&r) }))
	}
	e.waitFor("late pod enrolled", 30*time.Second, func() bool { return e.enrolled(set, late) })
	e.waitFor("an Enrolled event", 10*time.Second, func() bool { return e.hasEvent("late", "Enrolled") })
}

// hostRoutes returns the node's routes to pod (its /32 and /128).
func hostRoutes(t *testing.T, node *testenv.Node, pod *testenv.Pod) []netlink.Route {
	t.Helper()
	var out []netlink.Route
	must(t, node.Do(func() error {
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			rs, err := netlink.RouteListFiltered(fam, &netlink.Route{LinkIndex: pod.HostVethIndex}, netlink.RT_FILTER_OIF)
			if err != nil {
				return err
			}
			for _, r := range rs {
				if r.Dst != nil && (r.Dst.IP.Equal(pod.IPv4.AsSlice()) || r.Dst.IP.Equal(pod.IPv6.AsSlice())) {
					out = append(out, r)
				}
			}
		}
		return nil
	}))
	if len(out) != 2 {
		t.Fatalf("found %d host routes to %s, want 2", len(out), pod.Name)
	}
	return out
}

func (e *env) hasEvent(pod, reason string) bool { return e.eventMessage(pod, reason) != "" }

// eventMessage returns the message of pod's event with reason, or "".
func (e *env) eventMessage(pod, reason string) string {
	events, err := e.admin.CoreV1().Events(e.ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return ""
	}
	for _, ev := range events.Items {
		if ev.InvolvedObject.Name == pod && ev.Reason == reason {
			return ev.Message
		}
	}
	return ""
}

// TestBurst: 200 pods created and deleted in a burst leave the node's
// datapath exactly as the API says: nothing of theirs.
func TestBurst(t *testing.T) {
	e := newEnv(t)
	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.startAgent()
	set := e.maps()
	b := e.box

	start := time.Now()
	var pods []*testenv.Pod
	for i := 0; i < 200; i++ {
		p := b.Node.AddPod(fmt.Sprintf("burst%03d", i), testenv.NotAmbient)
		e.createPod(p, e.ns, nil)
		pods = append(pods, p)
	}
	e.waitFor("200 pods enrolled", 60*time.Second, func() bool {
		all, _ := set.Endpoints.Pods()
		return len(all) == 2*(200+2)
	})
	t.Logf("200 pods created and enrolled in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	for _, p := range pods {
		e.deletePod(p, e.ns)
	}
	e.waitFor("200 pods unenrolled", 60*time.Second, func() bool {
		all, _ := set.Endpoints.Pods()
		return len(all) == 2*2
	})
	t.Logf("200 pods deleted and unenrolled in %s", time.Since(start).Round(time.Millisecond))
	all, err := e.attachments()
	must(t, err)
	// What is left: the client's and server's two programs, and ztunnel's.
	want := map[int]int{b.Client.HostVethIndex: 2, b.Server.HostVethIndex: 2, b.Ztunnel.HostVethIndex: 2}
	got := map[int]int{}
	for _, a := range all {
		got[a.Ifindex]++
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("attachments after the burst: %v, want %v", all, want)
	}
}

func (e *env) attachments() ([]dataplane.Attachment, error) {
	return dataplane.ListAttachments(dataplane.Config{NodeNetns: e.box.Node.Path(), PinDir: e.pinDir}, "")
}

func runFlow(t *testing.T, b *scenario.Box, id string) {
	t.Helper()
	for _, f := range scenario.Flows() {
		if f.ID != id {
			continue
		}
		for _, v6 := range []bool{false, true} {
			if o := f.Run(b, v6); !f.OK(o) {
				t.Errorf("flow %s (%s) %s: path %q, want %q: %v", f.ID, f.Name, scenario.Family(v6), o.Path, f.Expect, o.Err)
			}
		}
		return
	}
	t.Fatalf("no flow %s", id)
}
