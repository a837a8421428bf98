package agent_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/cnichain"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
	"github.com/meshredirect/meshredirect/testenv/scenario"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// newInPodEnv is newEnvWith for in-pod mode: the stand-in dials the ZDS
// socket the agent will listen on, and every ambient pod's netns is bound
// in the netns directory, where the agent finds the pods it did not see
// through a CNI ADD.
func newInPodEnv(t *testing.T, srv *kubeapi.Server, o scenario.Options) *env {
	t.Helper()
	o.InPod = true
	e := newEnvWith(t, srv, o)
	for _, p := range e.box.AmbientPods() {
		e.bindNetns(p, p.Name)
	}
	return e
}

// inPod configures the agent for in-pod mode with the box's ZDS socket.
func (e *env) inPod(c *agent.Config) {
	c.ZtunnelMode = agent.ZtunnelModeInPod
	c.ZDSSocket = e.box.ZDSPath
}

// inPodArgs are inPod as flags of an agent process (startAgentProcess).
func (e *env) inPodArgs() []string {
	return []string{"--ztunnel-mode", agent.ZtunnelModeInPod, "--zds-socket", e.box.ZDSPath}
}

// startInPodProcess makes the namespace ambient, starts an agent process in
// in-pod mode and waits until ztunnel serves the client and the server.
func (e *env) startInPodProcess(t *testing.T) *agentProcess {
	t.Helper()
	e.labelNamespace(e.ns, agent.ModeAmbient)
	p := e.startAgentProcess(t, e.inPodArgs()...)
	e.waitInPod(e.box.Client, e.box.Server)
	return p
}

// waitUnserved waits until the stand-in serves no pod; when says after
// what, for the failure.
func (e *env) waitUnserved(when string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := e.box.Standin.WaitPods(ctx, func(p []ztunnel.PodState) bool { return len(p) == 0 }); err != nil {
		e.t.Fatalf("ztunnel still serves pods %s: %+v", when, e.box.Standin.Pods())
	}
}

// waitInPod waits until the stand-in serves every one of pods, listeners
// up in each, under the uid of its Pod object.
func (e *env) waitInPod(pods ...*testenv.Pod) {
	e.t.Helper()
	uids := map[string]string{}
	for _, p := range pods {
		ns := e.ns
		if !p.Ambient {
			ns = e.plainNS
		}
		pod, err := e.admin.CoreV1().Pods(ns).Get(context.Background(), p.Name, metav1.GetOptions{})
		must(e.t, err)
		uids[string(pod.UID)] = p.Name
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := e.box.Standin.WaitPods(ctx, func(served []ztunnel.PodState) bool {
		up := 0
		for _, s := range served {
			if _, ok := uids[s.UID]; ok && s.Up {
				up++
			}
		}
		return up == len(uids)
	}); err != nil {
		e.t.Fatalf("the stand-in did not get every pod over ZDS: %v (serves %+v)", err, e.box.Standin.Pods())
	}
}

// TestSemanticsInPod runs every flow of DESIGN §5 that involves a socket in
// in-pod mode, the agent driven by the real API server and handing the pods
// to the stand-in over ZDS, on nodes of the three wirings, both families.
func TestSemanticsInPod(t *testing.T) {
	testutil.RequirePrivileged(t)
	srv := kubeapi.Shared(t)
	for _, w := range testenv.Wirings {
		t.Run(w.String(), func(t *testing.T) {
			e := newInPodEnv(t, srv, scenario.Options{Wiring: w, PolicyPods: true,
				DNSAnswer: []netip.Addr{testenv.ServiceIPv4(53), testenv.ServiceIPv6(53)}})
			b := e.box
			e.labelNamespace(e.ns, agent.ModeAmbient)
			e.startAgent(e.inPod, func(c *agent.Config) {
				c.Dataplane.CaptureDNS = true
				c.DNSResolvers = b.Resolvers()
			})
			e.waitInPod(b.Client, b.Server, b.DNSBypass, b.Strict, b.BypassIn)
			e.waitPolicies("every ambient pod's entries with its policy")
			runSemantics(t, b)
		})
	}
}

// TestInPodCNI: in in-pod mode a CNI ADD of an ambient pod returns once the
// pod is captured and ztunnel has acked it, so its very first packets go
// through ztunnel's listener inside it; with no ztunnel connected, ADD of
// an ambient pod fails (fail closed, as istio-cni does) while a pod outside
// the mesh still starts.
func TestInPodCNI(t *testing.T) {
	testutil.RequirePrivileged(t)
	e := &cniEnv{env: newInPodEnv(t, kubeapi.Shared(t), scenario.Options{})}
	e.socket = t.TempDir() + "/cni.sock"
	chain, err := cnichain.New(e.box.Node, e.socket, t.TempDir())
	if errors.Is(err, cnichain.ErrNoReferencePlugins) {
		testutil.SkipOrFail(t, err.Error())
	}
	must(t, err)
	e.chain = chain
	e.labelNamespace(e.ns, agent.ModeAmbient)
	a := e.env.startAgent(e.inPod, func(c *agent.Config) { c.CNI.Socket = e.socket })
	e.waitInPod(e.box.Client, e.box.Server)
	b := e.box
	b.Echo(b.Remote, scenario.EchoPort)

	e.createPodObject(t, e.ns, "fresh")
	sb := e.newSandbox(t)
	if _, err := e.add(t, sb, e.ns, "fresh"); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Cleanup(func() { e.del(t, sb, e.ns, "fresh") })
	pod, err := e.admin.CoreV1().Pods(e.ns).Get(context.Background(), "fresh", metav1.GetOptions{})
	must(t, err)
	for _, v6 := range []bool{false, true} {
		seen := len(b.Standin.Records())
		o := scenario.Observe(b, &sb.Namespace, v6, addr(b.Remote, v6, scenario.EchoPort))
		if o.Err != nil || o.Path != scenario.ViaZtunnel(ztunnel.PortOutbound) {
			t.Errorf("first flow of the new pod (%s): path %q, %v", scenario.Family(v6), o.Path, o.Err)
		}
		if !slices.ContainsFunc(b.Standin.Records()[seen:], func(r ztunnel.Record) bool { return r.Pod.UID == string(pod.UID) }) {
			t.Errorf("no record of the stand-in names the new pod (uid %s) for its first flow (%s)", pod.UID, scenario.Family(v6))
		}
	}

	// ztunnel goes away: an ambient pod may not start, one outside the
	// mesh may.
	b.Standin.Close()
	e.waitFor("the agent to see ztunnel gone", 10*time.Second, func() bool { return !a.ZtunnelConnected() })
	e.createPodObject(t, e.ns, "closed")
	sb2 := e.newSandbox(t)
	if _, err := e.add(t, sb2, e.ns, "closed"); err == nil {
		t.Error("ADD of an ambient pod succeeded with no ztunnel connected")
		e.del(t, sb2, e.ns, "closed")
	} else {
		t.Logf("ADD with no ztunnel: %v", err)
	}
	e.createPodObject(t, e.plainNS, "outside")
	sb3 := e.newSandbox(t)
	if _, err := e.add(t, sb3, e.plainNS, "outside"); err != nil {
		t.Errorf("ADD of a pod outside the mesh failed with no ztunnel connected: %v", err)
	} else {
		e.del(t, sb3, e.plainNS, "outside")
	}
}

// TestInPodZtunnelRestart restarts ztunnel (the stand-in) while a client
// streams requests through its listener in the client pod: the new one
// reconnects, gets the agent's snapshot and opens its listeners again, and
// no request fails (a SYN dropped while no listener is up is sent again by
// the client's kernel), every request carried by one stand-in or the
// other. One exception, which is ztunnel's and not the capture's: a
// connection request already queued on the old stand-in's listener when it
// closes is reset by the kernel (inet_csk_listen_stop), as it is when a
// real ztunnel stops; measured 1 run in 20. At most two such resets, and
// only while the old stand-in stops.
func TestInPodZtunnelRestart(t *testing.T) {
	e := newInPodEnv(t, kubeapi.Shared(t), scenario.Options{})
	b := e.box
	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.startAgent(e.inPod)
	e.waitInPod(b.Client, b.Server)

	s := startStream(t, b)
	time.Sleep(time.Second)
	stopping := time.Now()
	before := b.RestartStandin(t)
	restarted := time.Now()
	s.excuse = func(r request) string {
		if strings.Contains(r.err.Error(), "connection reset by peer") && r.start.Before(restarted) && r.start.Add(r.latency).After(stopping) {
			return "reset while the old stand-in closed its listeners"
		}
		return ""
	}
	e.waitInPod(b.Client, b.Server)
	time.Sleep(time.Second)
	// SYNs sent again while no listener was up are expected here, and
	// the requests they slowed: finish logs them, they are no gap.
	res := s.finish(t, nil, before)
	res.atLeast(t, 20)
	if len(res.excused) > 2 {
		t.Errorf("%d connection requests reset while the old stand-in stopped, more than the two a listener's queue holds at this pace", len(res.excused))
	}
	if len(res.slow) > 0 {
		t.Logf("%d requests slowed by ztunnel's restart (the slowest %v)", len(res.slow), res.max)
	}
	if st := b.Standin.ZDS(); st.Connects < 1 || st.Adds < 2 || st.Snapshots < 1 {
		t.Errorf("the new stand-in's ZDS conversation: %+v, want a connection with both pods and a snapshot", st)
	}
}

// TestInPodAgentRestart kills the agent (SIGKILL) while a client streams
// requests through its in-pod capture, and starts a new one: ztunnel keeps
// its listeners while the agent is away, the new agent replaces the
// programs in place and sends ztunnel its snapshot, and no request fails
// or is stalled (no gap), every one through ztunnel.
func TestInPodAgentRestart(t *testing.T) {
	e := newInPodEnv(t, kubeapi.Shared(t), scenario.Options{})
	b := e.box
	first := e.startInPodProcess(t)

	s := startStream(t, b)
	time.Sleep(time.Second)
	first.signal(t, syscall.SIGKILL)
	time.Sleep(500 * time.Millisecond)
	second := e.startAgentProcess(t, e.inPodArgs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := b.Standin.WaitZDS(ctx, func(z ztunnel.ZDSState) bool { return z.Connects >= 2 && z.Snapshots >= 2 }); err != nil {
		t.Errorf("the stand-in did not get the new agent's snapshot: %v (%+v)", err, b.Standin.ZDS())
	}
	time.Sleep(time.Second)
	second.signal(t, syscall.SIGTERM)
	res := s.finish(t, nil)
	res.atLeast(t, 20)
	res.noGap(t, "across the agent's restart")
	if served := b.Standin.Pods(); len(served) != 2 {
		t.Errorf("the stand-in serves %d pods after the restart, want the client and the server: %+v", len(served), served)
	}
}

// TestInPodAckError: ztunnel refuses a pod (an ack with an error, as when
// it cannot enter the pod's netns for a moment): the agent reports it (a
// log line, the ZDS and enrolment error metrics) and sends the pod again
// until ztunnel takes it; meanwhile the pod stays captured.
func TestInPodAckError(t *testing.T) {
	var refused atomic.Int32
	e := newInPodEnv(t, kubeapi.Shared(t), scenario.Options{ZtunnelAckError: func(r ztunnel.ZDSRequest) string {
		if r.Op == "add" && r.Pod.Name == "server" && refused.Add(1) <= 2 {
			return "netns not ready"
		}
		return ""
	}})
	b := e.box
	e.labelNamespace(e.ns, agent.ModeAmbient)
	reg := agent.NewRegistry()
	a := e.startAgent(e.inPod, func(c *agent.Config) { c.Metrics = reg })
	srv := newMetricsServer(t, a, reg)
	e.waitInPod(b.Client, b.Server)
	if n := refused.Load(); n < 3 {
		t.Errorf("the stand-in was asked %d times for the server, want 2 refusals and a success", n)
	}
	m := scrape(t, srv)
	for _, c := range []struct {
		sample string
		min    float64
	}{
		{`meshredirect_zds_connected`, 1},
		{`meshredirect_zds_acks_total{result="error"}`, 2},
		{`meshredirect_zds_acks_total{result="ok"}`, 2},
		{`meshredirect_zds_requests_total{kind="add"}`, 4},
		{`meshredirect_zds_workloads`, 2},
	} {
		if m[c.sample] < c.min {
			t.Errorf("%s = %v, want at least %v", c.sample, m[c.sample], c.min)
		}
	}
	if !e.log.logged("netns not ready") {
		t.Error("the agent did not log ztunnel's refusal")
	}
	// The refused pod was captured all along, and ztunnel serves it now.
	b.Echo(b.Server, scenario.EchoPort)
	if o := scenario.Observe(b, &b.Plain.Namespace, false, addr(b.Server, false, scenario.EchoPort)); o.Err != nil || o.Path != scenario.ViaZtunnel(ztunnel.PortInbound) {
		t.Errorf("plain -> server after the refusals: path %q, %v", o.Path, o.Err)
	}
}

// TestInPodLeave: a pod that leaves the mesh (its namespace's label goes)
// is released in in-pod mode: ztunnel is told first (del: its listeners in
// the pod close), then the capture goes from the pod's netns, and the
// pod's traffic goes direct again.
func TestInPodLeave(t *testing.T) {
	e := newInPodEnv(t, kubeapi.Shared(t), scenario.Options{})
	b := e.box
	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.startAgent(e.inPod)
	e.waitInPod(b.Client, b.Server)
	e.labelNamespace(e.ns, agent.ModeNone)
	e.waitUnserved("after they left the mesh")
	e.checkReleased(b.Client, 10*time.Second, "after leaving the mesh")
}

// TestInPodLeaveWhileAgentDown: a pod leaves the mesh while no agent runs.
// The capture in its netns outlives the agent; the next agent leaves it
// out of ztunnel's snapshot (ztunnel lets it go) and releases its capture,
// so its traffic goes direct instead of meeting no listener.
func TestInPodLeaveWhileAgentDown(t *testing.T) {
	e := newInPodEnv(t, kubeapi.Shared(t), scenario.Options{})
	b := e.box
	first := e.startInPodProcess(t)
	first.signal(t, syscall.SIGKILL)
	e.labelNamespace(e.ns, agent.ModeNone)
	e.startAgentProcess(t, e.inPodArgs()...)
	e.waitUnserved("after the new agent's snapshot")
	e.checkReleased(b.Client, 20*time.Second, "after leaving the mesh while no agent ran")
}

// checkReleased waits until nothing of ours is attached in p's netns any
// more, then checks that p's traffic to the remote host goes direct.
func (e *env) checkReleased(p *testenv.Pod, timeout time.Duration, when string) {
	e.t.Helper()
	b := e.box
	e.waitFor("the capture of "+p.Name+" released from its netns", timeout, func() bool {
		cfg := dataplane.Config{NodeNetns: p.Path(), PinDir: e.pinDir}
		for _, iface := range []string{"eth0", "lo"} {
			if atts, err := dataplane.ListAttachments(cfg, iface); err != nil || len(atts) > 0 {
				return false
			}
		}
		return true
	})
	b.Echo(b.Remote, scenario.EchoPort)
	for _, v6 := range []bool{false, true} {
		if o := scenario.Observe(b, &p.Namespace, v6, addr(b.Remote, v6, scenario.EchoPort)); o.Err != nil || o.Path != scenario.Direct {
			e.t.Errorf("%s -> remote %s (%s): path %q, %v", p.Name, when, scenario.Family(v6), o.Path, o.Err)
		}
	}
}
