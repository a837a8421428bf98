package agent_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
	"github.com/meshredirect/meshredirect/testenv/scenario"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// converged waits until the node's datapath is exactly what the API says:
// the map holds the IPs of the ambient pods of want and nothing else, and
// each of them has its two programs and nothing is attached elsewhere but
// ztunnel's veth (its two).
func (e *env) converged(t *testing.T, set *maps.Set, want ...*testenv.Pod) {
	t.Helper()
	e.waitFor("the datapath to match the API", 30*time.Second, func() bool {
		all, err := set.Endpoints.Pods()
		if err != nil || len(all) != 2*len(want) {
			return false
		}
		wantIf := map[int]bool{e.box.Ztunnel.HostVethIndex: true}
		for _, p := range want {
			if _, ok := all[p.IPv4]; !ok {
				return false
			}
			if _, ok := all[p.IPv6]; !ok {
				return false
			}
			wantIf[p.HostVethIndex] = true
		}
		attachments, err := e.attachments()
		if err != nil || len(attachments) != 2*len(want)+2 {
			return false
		}
		for _, a := range attachments {
			if !wantIf[a.Ifindex] || a.Defunct {
				return false
			}
		}
		return true
	})
}

// TestMapFull: with the pods map full, the pod that does not fit is
// reported (an error log, a Kubernetes event, the map_full metric) and
// retried; the others are unaffected; when room is made, it is enrolled.
func TestMapFull(t *testing.T) {
	e := newEnv(t)
	b := e.box
	e.labelNamespace(e.ns, agent.ModeAmbient)
	reg := agent.NewRegistry()
	// Room for the node's two addresses and three dual-stack pods: client,
	// server and one more.
	a := e.startAgent(func(c *agent.Config) { c.Dataplane.PodsMaxEntries = 8; c.Metrics = reg })
	set := e.maps()
	first := b.Node.AddPod("first", testenv.NotAmbient)
	e.createPod(first, e.ns, nil)
	e.converged(t, set, b.Client, b.Server, first)

	second := b.Node.AddPod("second", testenv.NotAmbient)
	e.createPod(second, e.ns, nil)
	e.waitFor("an EnrolFailed event for the pod that does not fit", 15*time.Second, func() bool { return e.hasEvent("second", "EnrolFailed") })
	if msg := e.eventMessage("second", "EnrolFailed"); !strings.Contains(msg, "the endpoints map is full") || !strings.Contains(msg, "--pods-max-entries") {
		t.Errorf("the event does not say the map is full: %q", msg)
	}
	if !e.absent(set, second) {
		t.Error("half of the pod that does not fit is in the map")
	}
	srv := newMetricsServer(t, a, reg)
	if v := scrape(t, srv)[`meshredirect_enrol_errors_total{reason="map_full"}`]; v < 1 {
		t.Errorf("map_full errors = %v", v)
	}
	runFlow(t, b, "1") // the others are unaffected

	e.deletePod(first, e.ns)
	e.converged(t, set, b.Client, b.Server, second)
	runFlow(t, b, "1")
}

// TestIncompatiblePinsReplaced: a restarted agent finds pins of another
// size (here, --pods-max-entries changed) and replaces them without
// dropping capture: a client streams through the restart without a failed
// request, without a gap, every request through ztunnel.
func TestIncompatiblePinsReplaced(t *testing.T) {
	e := newEnv(t)
	b := e.box
	e.labelNamespace(e.ns, agent.ModeAmbient)
	first := e.startAgentProcess(t, "--pods-max-entries", "1024")
	set := e.maps()
	e.converged(t, set, b.Client, b.Server)
	set.Close()

	s := startStream(t, b)
	time.Sleep(time.Second)
	first.signal(t, syscall.SIGKILL)
	second := e.startAgentProcess(t, "--pods-max-entries", "2048")
	time.Sleep(2 * time.Second)
	res := s.finish(t, nil)
	res.atLeast(t, 20)
	res.noGap(t, "across the pins' replacement")
	if !strings.Contains(second.output(), "replaced a pinned map") {
		t.Errorf("no log line for the replacement:\n%s", second.output())
	}
	set2 := e.maps()
	if set2.Endpoints.Map.MaxEntries() != 2048 {
		t.Errorf("endpoints map holds %d entries, want 2048", set2.Endpoints.Map.MaxEntries())
	}
	e.converged(t, set2, b.Client, b.Server)
	runFlow(t, b, "1")
}

// TestBPFFSNotMounted: where no bpffs is mounted, the agent mounts one if
// its mount would outlive it (always, here) or stops with a message that
// says what to do (auto, outside the host's mount namespace). Each case
// runs the agent in a private mount namespace (unshare -m) whose
// /sys/fs/bpf is unmounted: the machine's mounts are never touched.
func TestBPFFSNotMounted(t *testing.T) {
	testutil.RequireTool(t, "unshare", "(util-linux) for a private mount namespace")
	e := newEnv(t)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	must(t, os.WriteFile(kubeconfig, e.srv.Kubeconfig(kubeapi.ServiceAccount(agentNamespace, agentSA).Name), 0o600))
	run := func(mode string) (string, error) {
		script := fmt.Sprintf(`umount -l /sys/fs/bpf 2>/dev/null; exec %s agent --node-netns %s --node-name %s --kubeconfig %s --pin-dir /sys/fs/bpf/meshredirect --netns-dir %s --config-file %s --log-format text --metrics-addr 127.0.0.1:0 --ztunnel-mode node --mount-bpffs %s`,
			meshredirectBinary(t), e.box.Node.Path(), e.nodeName, kubeconfig, e.netnsDir, e.configFile, mode)
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
		out := &testutil.SyncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		must(t, cmd.Start())
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			select {
			case err := <-done:
				return out.String(), err
			default:
			}
			if strings.Contains(out.String(), "agent ready") {
				break
			}
		}
		cmd.Process.Signal(syscall.SIGTERM)
		<-done
		return out.String(), nil
	}

	out, err := run("auto")
	if err == nil {
		t.Fatalf("the agent did not stop without a bpffs:\n%s", out)
	}
	for _, want := range []string{"not on a bpf filesystem", "not in the host's mount namespace", "mount -t bpf bpf /sys/fs/bpf"} {
		if !strings.Contains(out, want) {
			t.Errorf("the message does not say %q:\n%s", want, out)
		}
	}

	out, _ = run("always")
	for _, want := range []string{"mounted a bpffs for the pins", "agent ready"} {
		if !strings.Contains(out, want) {
			t.Errorf("with --mount-bpffs always the log lacks %q:\n%s", want, out)
		}
	}
	// The agent of the private namespace pinned its tcx links in a bpffs
	// that died with that namespace: the links, and so its programs, went
	// with it; the env's cleanup removes ztunnel's rules.
}

// TestAPIServerDown: the API server freezes for 30 s while pods come and
// go in the node's netns. The datapath keeps working for the pods it has
// (a client streams through ztunnel without a failed request or a gap),
// and when the API returns the agent catches up with what changed.
func TestAPIServerDown(t *testing.T) {
	if testing.Short() {
		t.Skip("a 30 s outage")
	}
	srv := kubeapi.StartForTest(t, kubeapi.Options{Users: []kubeapi.User{kubeapi.ServiceAccount(agentNamespace, agentSA)}})
	e := newEnvOn(t, srv)
	b := e.box
	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.startAgent()
	set := e.maps()
	e.converged(t, set, b.Client, b.Server)

	s := startStream(t, b)
	must(t, srv.Pause())
	// While the API is down: the server pod's netns goes (its veth with
	// it); a new pod's netns appears. Neither is in the API yet.
	b.Server.Delete()
	late := b.Node.AddPod("late", testenv.NotAmbient)
	time.Sleep(30 * time.Second)
	res := s.finish(t, set)
	must(t, srv.Resume())
	res.atLeast(t, 100)
	res.noGap(t, "during the API's outage")

	// The API catches up with the node, and the agent with the API.
	must(t, e.deletePodObject(e.ns, "server"))
	e.createPod(late, e.ns, nil)
	e.converged(t, set, b.Client, late)
	runFlow(t, b, "4")
}

// TestZtunnelFlapping: ztunnel flips Ready / not Ready 20 times in 10 s;
// the agent follows it and ends where the API ends: ready, traffic flowing.
func TestZtunnelFlapping(t *testing.T) {
	e := newEnv(t)
	b := e.box
	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.startAgent()
	set := e.maps()
	e.converged(t, set, b.Client, b.Server)
	for i := 0; i < 20; i++ {
		e.setReady(e.plainNS, b.Ztunnel.Name, i%2 == 1)
		time.Sleep(500 * time.Millisecond)
	}
	e.waitFor("ztunnelReady:true", 10*time.Second, func() bool { return strings.Contains(e.ambientConfig(), `"ztunnelReady":true`) })
	zt, err := set.Ztunnel.Get()
	must(t, err)
	if zt.Flags&maps.ZtunnelReady == 0 || zt.Ifindex != uint32(b.Ztunnel.HostVethIndex) {
		t.Errorf("ztunnel entry after the flapping: %+v", zt)
	}
	e.converged(t, set, b.Client, b.Server)
	runFlow(t, b, "1")
	runFlow(t, b, "4")
}

// TestSoak: 60 s of pod churn (create, label ambient, unlabel, delete)
// while a client streams through a stable enrolled pod: each churned pod is
// seen enrolled (its IPs in the map, its two programs on its host veth)
// and its flow seen passing ztunnel before it is unlabelled and deleted;
// the stable pod's requests all go through ztunnel, none fails, no gap;
// and afterwards nothing leaked: no filter, link, map entry or pin beyond
// the stable pods'.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("60 s of churn")
	}
	e := newEnv(t)
	b := e.box
	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.startAgent()
	set := e.maps()
	e.converged(t, set, b.Client, b.Server)

	s := startStream(t, b)
	deadline := time.Now().Add(60 * time.Second)
	cycles := 0
	for i := 0; time.Now().Before(deadline); i++ {
		name := fmt.Sprintf("churn%03d", i)
		p := b.Node.AddPod(name, testenv.NotAmbient)
		e.createPod(p, e.plainNS, nil) // outside the mesh
		e.labelPod(e.plainNS, name, agent.ModeAmbient)
		e.waitFor(name+" enrolled", 10*time.Second, func() bool { return e.enrolled(set, p) && e.hooked(p) == 2 })
		v6 := i%2 == 1
		if o := scenario.Observe(b, &p.Namespace, v6, addr(b.Remote, v6, scenario.EchoPort)); o.Err != nil || o.Path != scenario.ViaZtunnel(ztunnel.PortOutbound) {
			t.Fatalf("cycle %d: %s -> remote (%s): path %q, %v", i, name, scenario.Family(v6), o.Path, o.Err)
		}
		e.labelPod(e.plainNS, name, agent.ModeNone)
		time.Sleep(50 * time.Millisecond)
		e.labelPod(e.plainNS, name, agent.ModeAmbient)
		e.deletePod(p, e.plainNS)
		cycles++
	}
	res := s.finish(t, set)
	t.Logf("%d churn cycles in 60 s, each pod seen enrolled and its flow through ztunnel", cycles)
	if cycles < minSoakCycles {
		t.Errorf("%d churn cycles in 60 s, want at least %d", cycles, minSoakCycles)
	}
	res.atLeast(t, 100)
	res.noGap(t, "during the churn")
	e.converged(t, set, b.Client, b.Server)
	entries, err := os.ReadDir(dataplane.TCPinDir(e.pinDir))
	must(t, err)
	for _, entry := range entries {
		if strings.HasPrefix(entry.Name(), "tcx-") {
			continue // the stable pods' and ztunnel's links (converged counted them)
		}
		if strings.HasPrefix(entry.Name(), "clsact-") {
			t.Errorf("a qdisc marker left: %s", entry.Name())
		}
	}
	links := 0
	for _, entry := range entries {
		if strings.HasPrefix(entry.Name(), "tcx-") {
			links++
		}
	}
	// One pin directory serves every netns: the node's attachments and
	// ztunnel_assign's in ztunnel's netns.
	node, err := e.attachments()
	must(t, err)
	zt, err := dataplane.ListAttachments(dataplane.Config{NodeNetns: b.Ztunnel.Path(), PinDir: e.pinDir}, "")
	must(t, err)
	tcx := 0
	for _, a := range append(node, zt...) {
		if a.Mode == dataplane.ModeTCX {
			tcx++
		}
	}
	if links != tcx {
		t.Errorf("%d tcx pins for %d tcx attachments: %v %v", links, tcx, node, zt)
	}
	runFlow(t, b, "1")
}

// minSoakCycles is the fewest churn cycles TestSoak accepts in its 60 s:
// a cycle makes a pod (a netns and a veth), waits for its enrolment, runs a
// flow and deletes it. Measured: 294 cycles on a 2-core machine shared
// with three other test runs; a third of that leaves room for a slower
// machine and still says the churn went on.
const minSoakCycles = 100

// hooked counts the attachments on p's host veth.
func (e *env) hooked(p *testenv.Pod) int {
	all, err := e.attachments()
	if err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for _, a := range all {
		if a.Ifindex == p.HostVethIndex && !a.Defunct {
			n++
		}
	}
	return n
}
