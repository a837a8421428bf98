package agent_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/cni"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/cnichain"
	"github.com/meshredirect/meshredirect/testenv/scenario"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// TestCNIAddSurvivesResyncBeforeStatus: the kubelet reports a sandbox's IPs
// in the pod's status some time after the chain's ADD returned, and the
// agent resyncs meanwhile. The ADD's capture must stay through the resyncs:
// while the status shows no IPs (a new pod), and while it still shows the
// IPs of the sandbox a CNI DEL tore down (a recreated sandbox); every flow
// of the pod goes through ztunnel, no "interface not found" retry, no
// enrolment error. Once the status shows the ADD's IPs nothing changes, and
// the pod's deletion removes its capture.
func TestCNIAddSurvivesResyncBeforeStatus(t *testing.T) {
	for _, plugin := range []string{"ptp", "bridge"} {
		t.Run(plugin, func(t *testing.T) { testCNIAddSurvivesResyncBeforeStatus(t, plugin) })
	}
}

func testCNIAddSurvivesResyncBeforeStatus(t *testing.T, plugin string) {
	e := newCNIEnvOn(t, plugin)
	e.labelNamespace(e.ns, agent.ModeAmbient)
	reg := agent.NewRegistry()
	a := e.env.startAgent(func(c *agent.Config) {
		c.CNI.Socket = e.socket
		c.Metrics = reg
		c.ResyncPeriod = time.Second
	})
	metricsURL := newMetricsServer(t, a, reg)
	set := e.maps()
	e.box.Echo(e.box.Remote, scenario.EchoPort)

	const name = "slow-status"
	key := e.ns + "/" + name
	e.createPodObject(t, e.ns, name)
	errorsBefore := enrolErrors(scrape(t, metricsURL))
	mark := e.logMark()

	// A new pod: ADD, and no IPs in its status for three resyncs.
	sb1 := e.newSandbox(t)
	ips1, err := e.add(t, sb1, e.ns, name)
	must(t, err)
	veth1 := e.capturedAt(set, ips1)
	e.staysCaptured(set, sb1, ips1, veth1, "no IPs in the status")
	// The plugin's CHECK finds the pod captured.
	client := cni.NewClient(e.socket)
	do(t, client, cni.PathCheck, cni.PodRequest{Namespace: e.ns, Name: name, ContainerID: sb1.ID, IPs: strs(ips1)})
	// The kubelet reports them.
	must(t, e.setStatusIPs(e.ns, name, strs(ips1)...))
	e.staysCaptured(set, sb1, ips1, veth1, "the ADD's IPs in the status")
	e.waitFor("the enrolment annotation", 10*time.Second, func() bool { return e.annotation(e.ns, name) == agent.RedirectionEnabled })

	// The sandbox is recreated: DEL, ADD, and the status still shows the
	// torn-down sandbox's IPs for three resyncs.
	must(t, e.del(t, sb1, e.ns, name))
	sb2 := e.newSandbox(t)
	ips2, err := e.add(t, sb2, e.ns, name)
	must(t, err)
	t.Cleanup(func() { e.del(t, sb2, e.ns, name) })
	if slices.ContainsFunc(ips2, func(ip netip.Addr) bool { return slices.Contains(ips1, ip) }) {
		t.Fatalf("the IPAM gave the new sandbox %v, the torn-down one's %v: the test needs other IPs", ips2, ips1)
	}
	veth2 := e.capturedAt(set, ips2)
	e.staysCaptured(set, sb2, ips2, veth2, "the torn-down sandbox's IPs in the status")
	do(t, client, cni.PathCheck, cni.PodRequest{Namespace: e.ns, Name: name, ContainerID: sb2.ID, IPs: strs(ips2)})
	must(t, e.setStatusIPs(e.ns, name, strs(ips2)...))
	e.staysCaptured(set, sb2, ips2, veth2, "the ADD's IPs in the status")
	t.Logf("first sandbox %v on ifindex %d; second %v on ifindex %d", ips1, veth1, ips2, veth2)

	for _, l := range e.logSince(mark) {
		if strings.Contains(l, "pod="+key+" ") && (strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR")) {
			t.Errorf("agent log: %s", l)
		}
	}
	if got := enrolErrors(scrape(t, metricsURL)); got != errorsBefore {
		t.Errorf("meshredirect_enrol_errors_total: %v before the first ADD, %v after", errorsBefore, got)
	}
	for _, reason := range []string{"InterfaceNotFound", "EnrolFailed"} {
		if msg := e.eventMessage(name, reason); msg != "" {
			t.Errorf("event %s on the pod: %s", reason, msg)
		}
	}

	// The pod is deleted: its capture goes.
	must(t, e.deletePodObject(e.ns, name))
	e.waitFor("the deleted pod's capture removed", 10*time.Second, func() bool {
		return len(e.entriesOf(set, ips2, veth2)) == 0 && e.hooksOn(veth2) == 0
	})
}

// TestCNIAddBeforeStatusEnds: what the agent keeps of a CNI ADD while the
// status has no IPs ends with the sandbox's DEL (nothing is captured again
// on the deleted veth, no "interface not found" retry), and gives way to
// other IPs in the status (a sandbox whose ADD the agent missed: the
// status wins, the ADD's capture goes).
func TestCNIAddBeforeStatusEnds(t *testing.T) {
	e := newCNIEnv(t)
	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.env.startAgent(func(c *agent.Config) {
		c.CNI.Socket = e.socket
		c.ResyncPeriod = time.Second
	})
	set := e.maps()
	mark := e.logMark()

	// ADD, then DEL before the kubelet ever reported the IPs.
	const early = "deleted-early"
	e.createPodObject(t, e.ns, early)
	sb := e.newSandbox(t)
	ips, err := e.add(t, sb, e.ns, early)
	must(t, err)
	veth := e.capturedAt(set, ips)
	must(t, e.del(t, sb, e.ns, early))
	resyncs := e.logMark()
	e.waitFor("two resyncs", 10*time.Second, func() bool { return e.countLogged(resyncs, `msg="reconciled the node"`) >= 2 })
	if bad := e.entriesOf(set, ips, veth); len(bad) > 0 {
		t.Errorf("after the DEL: entries %v", bad)
	}
	for _, l := range e.logSince(mark) {
		if strings.Contains(l, "pod="+e.ns+"/"+early+" ") && (strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR")) {
			t.Errorf("after the DEL: %s", l)
		}
	}

	// ADD, then the status shows the IPs of another sandbox.
	const other = "other-ips"
	e.createPodObject(t, e.ns, other)
	sb = e.newSandbox(t)
	ips, err = e.add(t, sb, e.ns, other)
	must(t, err)
	t.Cleanup(func() { e.del(t, sb, e.ns, other) })
	veth = e.capturedAt(set, ips)
	missed := e.box.Node.AddPod("missed-add", testenv.NotAmbient)
	missedIPs := []netip.Addr{missed.IPv4, missed.IPv6}
	must(t, e.setStatusIPs(e.ns, other, strs(missedIPs)...))
	e.capturedAt(set, missedIPs)
	e.waitFor("the ADD's capture removed", 10*time.Second, func() bool {
		return len(e.entriesOf(set, ips, veth)) == 0 && e.hooksOn(veth) == 0
	})
}

// TestRestartBeforeStatus: an agent captures a new pod at its CNI ADD and
// stops before the kubelet reports the pod's IPs. The next agent, which
// knows nothing of the ADD, keeps the capture through its first reconcile
// and its resyncs, since the entries' veth is still there and the IPs are
// no other pod's; the status then comes and nothing changes.
func TestRestartBeforeStatus(t *testing.T) {
	e := newCNIEnv(t)
	e.labelNamespace(e.ns, agent.ModeAmbient)
	_, stop := e.env.runAgent(func(c *agent.Config) { c.CNI.Socket = e.socket })
	set := e.maps()
	e.box.Echo(e.box.Remote, scenario.EchoPort)

	const name = "restart-before-status"
	key := e.ns + "/" + name
	e.createPodObject(t, e.ns, name)
	sb := e.newSandbox(t)
	ips, err := e.add(t, sb, e.ns, name)
	must(t, err)
	t.Cleanup(func() { e.del(t, sb, e.ns, name) })
	veth := e.capturedAt(set, ips)
	stop()

	mark := e.logMark()
	e.env.startAgent(func(c *agent.Config) {
		c.CNI.Socket = e.socket
		c.ResyncPeriod = time.Second
	})
	e.staysCaptured(set, sb, ips, veth, "a new agent, no IPs in the status")
	must(t, e.setStatusIPs(e.ns, name, strs(ips)...))
	e.staysCaptured(set, sb, ips, veth, "a new agent, the ADD's IPs in the status")
	for _, l := range e.logSince(mark) {
		if strings.Contains(l, "pod="+key+" ") && (strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR")) {
			t.Errorf("agent log: %s", l)
		}
	}

	must(t, e.deletePodObject(e.ns, name))
	e.waitFor("the deleted pod's capture removed", 10*time.Second, func() bool {
		return len(e.entriesOf(set, ips, veth)) == 0 && e.hooksOn(veth) == 0
	})
}

// staysCaptured watches the capture of the pod of sandbox sb, with ips on
// the veth ifindex veth, through three resyncs of an agent that resyncs
// every second: its entries stay on the veth, both programs stay on it,
// and a flow from the pod, each family, reaches the ztunnel stand-in; no
// resync removes anything, not even for a moment.
func (e *cniEnv) staysCaptured(set *maps.Set, sb *cnichain.Sandbox, ips []netip.Addr, veth uint32, while string) {
	e.t.Helper()
	mark := e.logMark()
	start := time.Now()
	defer func() {
		for _, l := range e.logSince(mark) {
			if strings.Contains(l, `msg="reconciled the node"`) && !strings.Contains(l, "removed_attachments=0 removed_entries=0") {
				e.t.Errorf("%s: %s", while, l)
			}
		}
	}()
	for e.countLogged(mark, `msg="reconciled the node"`) < 3 {
		at := time.Since(start).Round(time.Millisecond)
		if at > 10*time.Second {
			e.t.Fatalf("%s: %d resyncs in %s, want 3", while, e.countLogged(mark, `msg="reconciled the node"`), at)
		}
		all, err := set.Endpoints.Pods()
		must(e.t, err)
		for _, ip := range ips {
			if ep, ok := all[ip]; !ok || ep.Ifindex != veth {
				e.t.Fatalf("%s, %s in: the entry of %s is %+v (present: %v), want one on ifindex %d", while, at, ip, ep, ok, veth)
			}
		}
		if n := e.hooksOn(veth); n != 2 {
			e.t.Fatalf("%s, %s in: %d programs on the pod's veth (ifindex %d), want 2", while, at, n, veth)
		}
		for _, v6 := range []bool{false, true} {
			o := scenario.Observe(e.box, &sb.Namespace, v6, addr(e.box.Remote, v6, scenario.EchoPort))
			if o.Err != nil || o.Path != scenario.ViaZtunnel(ztunnel.PortOutbound) {
				e.t.Fatalf("%s, %s in: flow of the pod (%s): path %q, want %q: %v", while, at, scenario.Family(v6),
					o.Path, scenario.ViaZtunnel(ztunnel.PortOutbound), o.Err)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// hooksOn counts the programs attached to the interface ifindex.
func (e *cniEnv) hooksOn(ifindex uint32) int {
	e.t.Helper()
	attachments, err := e.attachments()
	must(e.t, err)
	n := 0
	for _, a := range attachments {
		if a.Ifindex == int(ifindex) && !a.Defunct {
			n++
		}
	}
	return n
}
