package agent_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/cni"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/scenario"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// TestCNIDelWhilePodRunning: the kubelet tears a sandbox down (CNI DEL:
// meshredirect-cni first, then the primary plugin, which deletes the veth)
// while the pod object stays Running with the sandbox's IPs, as when it
// recreates the sandbox or before a deleted pod's object is gone. The agent
// must not capture the pod again from the informer or a resync: no map
// entry or program on the veth that goes, no "interface not found" retries,
// no enrolment error; one log line says why the pod is skipped. The new
// sandbox's ADD captures the pod again (a flow goes through ztunnel), also
// when the new sandbox has the IPs of the one torn down, and the IPs of a
// sandbox whose ADD the agent missed are captured too.
func TestCNIDelWhilePodRunning(t *testing.T) {
	for _, plugin := range []string{"ptp", "bridge"} {
		t.Run(plugin, func(t *testing.T) { testCNIDelWhilePodRunning(t, plugin) })
	}
}

func testCNIDelWhilePodRunning(t *testing.T, plugin string) {
	e := newCNIEnvOn(t, plugin)
	e.labelNamespace(e.ns, agent.ModeAmbient)
	reg := agent.NewRegistry()
	// A resync every second: the DEL is watched through more than one.
	a := e.env.startAgent(func(c *agent.Config) {
		c.CNI.Socket = e.socket
		c.Metrics = reg
		c.ResyncPeriod = time.Second
	})
	metricsURL := newMetricsServer(t, a, reg)
	set := e.maps()
	b := e.box
	b.Echo(b.Remote, scenario.EchoPort)

	const name = "recreated"
	key := e.ns + "/" + name
	e.createPodObject(t, e.ns, name)

	// The first sandbox: ADD, then the kubelet reports its IPs.
	sb1 := e.newSandbox(t)
	ips1, err := e.add(t, sb1, e.ns, name)
	must(t, err)
	must(t, e.setStatusIPs(e.ns, name, strs(ips1)...))
	veth1 := e.capturedAt(set, ips1)
	e.waitFor("the enrolment annotation", 10*time.Second, func() bool { return e.annotation(e.ns, name) == agent.RedirectionEnabled })

	// The DEL, the pod object still Running with ips1.
	errorsBefore := enrolErrors(scrape(t, metricsURL))
	mark := e.logMark()
	start := time.Now()
	must(t, e.del(t, sb1, e.ns, name))
	if linkExists(t, b.Node, veth1) {
		t.Fatalf("the primary plugin's DEL left veth ifindex %d", veth1)
	}
	// Watched over 3 s, three resyncs.
	for time.Since(start) < 3*time.Second {
		if bad := e.entriesOf(set, ips1, veth1); len(bad) > 0 {
			t.Fatalf("%s after the DEL: map entries %v still point at the deleted veth (ifindex %d)",
				time.Since(start).Round(time.Millisecond), bad, veth1)
		}
		attachments, err := e.attachments()
		must(t, err)
		for _, at := range attachments {
			if at.Ifindex == int(veth1) {
				t.Fatalf("%s after the DEL: %v on the deleted veth", time.Since(start).Round(time.Millisecond), at)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, l := range e.logSince(mark) {
		if strings.Contains(l, "pod="+key+" ") && (strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") || strings.Contains(l, `msg="enrolled pod"`)) {
			t.Errorf("after the DEL: %s", l)
		}
	}
	if n := e.countLogged(mark, `msg="skipped pod"`, "pod="+key+" ", sb1.ID); n != 1 {
		t.Errorf("%d log lines say the pod is skipped for its torn-down sandbox %s, want 1", n, sb1.ID)
	}
	if got := enrolErrors(scrape(t, metricsURL)); got != errorsBefore {
		t.Errorf("meshredirect_enrol_errors_total: %v before the DEL, %v after", errorsBefore, got)
	}
	for _, reason := range []string{"InterfaceNotFound", "EnrolFailed"} {
		if msg := e.eventMessage(name, reason); msg != "" {
			t.Errorf("event %s on the pod: %s", reason, msg)
		}
	}
	if a := e.annotation(e.ns, name); a != "" {
		t.Errorf("annotation %s=%q on the pod whose sandbox is gone", agent.RedirectionAnnotation, a)
	}

	// The kubelet recreates the sandbox: ADD, then it reports the new IPs.
	sb2 := e.newSandbox(t)
	ips2, err := e.add(t, sb2, e.ns, name)
	must(t, err)
	t.Cleanup(func() { e.del(t, sb2, e.ns, name) })
	must(t, e.setStatusIPs(e.ns, name, strs(ips2)...))
	veth2 := e.capturedAt(set, ips2)
	e.waitFor("the enrolment annotation", 10*time.Second, func() bool { return e.annotation(e.ns, name) == agent.RedirectionEnabled })
	time.Sleep(1500 * time.Millisecond) // a resync: the capture stays
	e.capturedAt(set, ips2)
	for _, v6 := range []bool{false, true} {
		o := scenario.Observe(b, &sb2.Namespace, v6, addr(b.Remote, v6, scenario.EchoPort))
		if o.Err != nil || o.Path != scenario.ViaZtunnel(ztunnel.PortOutbound) {
			t.Errorf("flow of the recreated sandbox (%s): path %q, %v", scenario.Family(v6), o.Path, o.Err)
		}
	}
	t.Logf("first sandbox %v on ifindex %d, torn down; second %v on ifindex %d, captured", ips1, veth1, ips2, veth2)

	// The second sandbox is torn down too, and the pod's IPs then change
	// to those of a sandbox whose ADD the agent never saw (a pod wired by
	// testenv itself): they are captured, the torn-down sandbox does not
	// hold the pod back.
	must(t, e.del(t, sb2, e.ns, name))
	missed := b.Node.AddPod("missed-add", testenv.NotAmbient)
	must(t, e.setStatusIPs(e.ns, name, missed.IPv4.String(), missed.IPv6.String()))
	e.waitFor("the IPs of the missed sandbox captured", 10*time.Second, func() bool {
		return len(e.entriesOf(set, []netip.Addr{missed.IPv4, missed.IPv6}, uint32(missed.HostVethIndex))) == 2
	})

	// A DEL and then an ADD of sandboxes with the same IPs (host-local may
	// give a new sandbox the addresses its predecessor released), told
	// over the socket at the missed sandbox's interface, which stays: after
	// the DEL the pod is not captured although its interface is there;
	// after the ADD it is, and it stays so through a resync.
	client := cni.NewClient(e.socket)
	missedIPs := []netip.Addr{missed.IPv4, missed.IPv6}
	req := cni.PodRequest{Namespace: e.ns, Name: name, ContainerID: "ctr-same-ips-1", IPs: strs(missedIPs)}
	mark = e.logMark()
	do(t, client, cni.PathDel, req)
	time.Sleep(1500 * time.Millisecond) // a resync
	if bad := e.entriesOf(set, missedIPs, uint32(missed.HostVethIndex)); len(bad) > 0 {
		t.Errorf("after a DEL at an interface that stays: entries %v", bad)
	}
	if n := e.countLogged(mark, `msg="skipped pod"`, "pod="+key+" ", req.ContainerID); n != 1 {
		t.Errorf("%d log lines say the pod is skipped for its torn-down sandbox %s, want 1", n, req.ContainerID)
	}
	req.ContainerID = "ctr-same-ips-2"
	do(t, client, cni.PathAdd, req)
	e.capturedAt(set, missedIPs)
	time.Sleep(1500 * time.Millisecond) // a resync: the ADD's capture stays
	e.capturedAt(set, missedIPs)

	// The pod is deleted: its capture goes.
	must(t, e.deletePodObject(e.ns, name))
	e.waitFor("the deleted pod's entries removed", 10*time.Second, func() bool { return e.absent(set, missed) })
}

// do sends the agent a request as meshredirect-cni would.
func do(t *testing.T, client *cni.Client, path string, req cni.PodRequest) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.Do(ctx, path, req); err != nil {
		t.Fatalf("%s for %s: %v", path, req.ContainerID, err)
	}
}

// capturedAt waits until every one of ips has an entry, all on one veth
// with both programs attached, and returns the veth's ifindex.
func (e *cniEnv) capturedAt(set *maps.Set, ips []netip.Addr) uint32 {
	e.t.Helper()
	var at uint32
	e.waitFor(fmt.Sprintf("%v captured", ips), 10*time.Second, func() bool {
		all, err := set.Endpoints.Pods()
		must(e.t, err)
		ep, ok := all[ips[0]]
		if !ok || ep.Ifindex == 0 {
			return false
		}
		for _, ip := range ips {
			if all[ip].Ifindex != ep.Ifindex {
				return false
			}
		}
		attachments, err := e.attachments()
		must(e.t, err)
		hooks := 0
		for _, a := range attachments {
			if a.Ifindex == int(ep.Ifindex) && !a.Defunct {
				hooks++
			}
		}
		at = ep.Ifindex
		return hooks == 2
	})
	return at
}

// entriesOf returns the pods map's entries of ips, and any other entry on
// the interface ifindex.
func (e *cniEnv) entriesOf(set *maps.Set, ips []netip.Addr, ifindex uint32) map[netip.Addr]maps.Endpoint {
	all, err := set.Endpoints.Pods()
	must(e.t, err)
	out := map[netip.Addr]maps.Endpoint{}
	for ip, ep := range all {
		if ep.Ifindex == ifindex || slices.Contains(ips, ip) {
			out[ip] = ep
		}
	}
	return out
}

// linkExists reports whether node has an interface ifindex.
func linkExists(t *testing.T, node *testenv.Node, ifindex uint32) bool {
	var found bool
	must(t, node.Do(func() error {
		_, err := net.InterfaceByIndex(int(ifindex))
		found = err == nil
		return nil
	}))
	return found
}

// logMark and logSince cut the agent's log at a point in the test.
func (e *env) logMark() int {
	e.log.mu.Lock()
	defer e.log.mu.Unlock()
	return len(e.log.lines)
}

func (e *env) logSince(mark int) []string {
	e.log.mu.Lock()
	defer e.log.mu.Unlock()
	return append([]string(nil), e.log.lines[mark:]...)
}

// countLogged counts the lines since mark that hold every one of parts.
func (e *env) countLogged(mark int, parts ...string) int {
	n := 0
	for _, l := range e.logSince(mark) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			n++
		}
	}
	return n
}

// enrolErrors sums meshredirect_enrol_errors_total over its reasons.
func enrolErrors(samples map[string]float64) float64 {
	sum := 0.0
	for name, v := range samples {
		if strings.HasPrefix(name, "meshredirect_enrol_errors_total{") {
			sum += v
		}
	}
	return sum
}

func strs(ips []netip.Addr) []string {
	var out []string
	for _, ip := range ips {
		out = append(out, ip.String())
	}
	return out
}
