package agent_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/tc"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
	"github.com/meshredirect/meshredirect/testenv/scenario"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// meshredirectBinary builds cmd/meshredirect once per test run.
func meshredirectBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "meshredirect-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "meshredirect")
		out, err := exec.Command("go", "build", "-o", binary, "../cmd/meshredirect").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// agentProcess is a running `meshredirect agent`: its log (stderr) is kept
// and shown if the test fails; it is killed when the test ends.
type agentProcess struct {
	cmd     *exec.Cmd
	started time.Time
	ready   chan struct{} // closed at the "agent ready" log line
	done    chan struct{}
	err     error // the exit status, once done is closed
	mu      sync.Mutex
	log     []string
}

// runAgentCmd starts cmd, an agent, in its own process group.
func runAgentCmd(t *testing.T, cmd *exec.Cmd) *agentProcess {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	must(t, err)
	p := &agentProcess{cmd: cmd, ready: make(chan struct{}), done: make(chan struct{})}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.started = time.Now()
	must(t, cmd.Start())
	go func() {
		defer close(p.done)
		s := bufio.NewScanner(stderr)
		readyOnce := sync.Once{}
		for s.Scan() {
			line := s.Text()
			p.mu.Lock()
			p.log = append(p.log, line)
			p.mu.Unlock()
			if strings.Contains(line, "agent ready") {
				readyOnce.Do(func() { close(p.ready) })
			}
		}
		p.err = cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("agent log:\n%s", p.output())
		}
	})
	return p
}

// waitReady fails the test unless the agent is ready within 30 s.
func (p *agentProcess) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-p.ready:
	case <-p.done:
		t.Fatalf("the agent exited before it was ready (%v):\n%s", p.err, p.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("the agent was not ready after 30s:\n%s", p.output())
	}
}

func (e *env) startAgentProcess(t *testing.T, extra ...string) *agentProcess {
	t.Helper()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	must(t, os.WriteFile(kubeconfig, e.srv.Kubeconfig(kubeapi.ServiceAccount(agentNamespace, agentSA).Name), 0o600))
	// The agent runs in the test's netns, where the API server's loopback
	// address is, and works in the node's through --node-netns.
	cmd := exec.Command(meshredirectBinary(t), "agent", "--node-netns", e.box.Node.Path(),
		"--node-name", e.nodeName, "--kubeconfig", kubeconfig, "--pin-dir", e.pinDir,
		"--netns-dir", e.netnsDir, "--config-file", e.configFile, "--log-format", "text", "--metrics-addr", "127.0.0.1:0",
		"--ztunnel-mode", agent.ZtunnelModeNode)
	cmd.Args = append(cmd.Args, extra...)
	p := runAgentCmd(t, cmd)
	p.waitReady(t)
	return p
}

func (p *agentProcess) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.log, "\n")
}

func (p *agentProcess) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	must(t, p.cmd.Process.Signal(sig))
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("the agent did not exit on %s", sig)
	}
}

// TestRestartWithoutGap kills the agent (SIGKILL) while a client streams
// requests through an enrolled pod, deletes a pod while no agent runs, and
// starts a new agent: every request goes through ztunnel, none fails, none
// is stalled (no gap: no request slow by a retransmission's time, no
// segment sent again by the client), no filter is duplicated, and the
// deleted pod's leftovers are removed. Then SIGTERM leaves capture in place.
func TestRestartWithoutGap(t *testing.T) {
	e := newEnv(t)
	b := e.box
	e.labelNamespace(e.ns, agent.ModeAmbient)
	first := e.startAgentProcess(t)
	set := e.maps()
	e.waitFor("client and server enrolled", 10*time.Second, func() bool { return e.enrolled(set, b.Client) && e.enrolled(set, b.Server) })

	s := startStream(t, b)
	time.Sleep(time.Second)
	first.signal(t, syscall.SIGKILL)

	// While no agent runs: the server pod goes away.
	e.deletePod(b.Server, e.ns)
	time.Sleep(500 * time.Millisecond)
	if e.absent(set, b.Server) {
		t.Fatal("the server's entries went away with no agent running")
	}

	second := e.startAgentProcess(t)
	e.waitFor("the deleted pod's entries removed", 10*time.Second, func() bool { return e.absent(set, b.Server) })
	time.Sleep(time.Second)

	// A graceful stop leaves capture in place.
	second.signal(t, syscall.SIGTERM)
	time.Sleep(time.Second)
	res := s.finish(t, set)
	res.atLeast(t, 20)
	res.noGap(t, "across the agent's restarts")
	if !strings.Contains(second.output(), "agent stopped; capture stays in place") {
		t.Errorf("no log line for the graceful stop:\n%s", second.output())
	}

	all, err := e.attachments()
	must(t, err)
	perHook := map[string]int{}
	for _, a := range all {
		perHook[fmt.Sprintf("%d/%s", a.Ifindex, a.Direction)]++
		if a.Defunct {
			t.Errorf("defunct attachment left: %s", a)
		}
	}
	for hook, n := range perHook {
		if n != 1 {
			t.Errorf("%d attachments on %s, want 1: %v", n, hook, all)
		}
	}
	for _, dir := range []tc.Direction{tc.Ingress, tc.Egress} {
		if perHook[fmt.Sprintf("%d/%s", b.Client.HostVethIndex, dir)] != 1 {
			t.Errorf("the client has no program on its %s after the stop", dir)
		}
	}
}

// TestUninstall: `meshredirect uninstall` removes everything the agent made
// on the node: programs, links, pins, ztunnel's policy routing (rules and
// routes, both families), the config file, and the pods' enrolment
// annotations.
func TestUninstall(t *testing.T) {
	e := newEnv(t)
	b := e.box
	e.labelNamespace(e.ns, agent.ModeAmbient)
	p := e.startAgentProcess(t)
	e.waitFor("the client annotated", 10*time.Second, func() bool { return e.annotation(e.ns, b.Client.Name) == agent.RedirectionEnabled })
	// The checker sees both families: all of it is there before.
	checkPolicyRouting(t, b.Ztunnel, "ztunnel's netns before uninstall", true)
	p.signal(t, syscall.SIGTERM)

	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	must(t, os.WriteFile(kubeconfig, e.srv.Kubeconfig(kubeapi.AdminUser), 0o600))
	out, err := exec.Command(meshredirectBinary(t), "uninstall", "--node-netns", b.Node.Path(), "--pin-dir", e.pinDir,
		"--netns-dir", e.netnsDir, "--config-file", e.configFile, "--kubeconfig", kubeconfig, "--node-name", e.nodeName,
		"--cni-conf-dir", t.TempDir(), "--cni-bin-dir", t.TempDir()).CombinedOutput()
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	t.Logf("uninstall:\n%s", out)
	if entries, err := os.ReadDir(e.pinDir); err == nil {
		t.Errorf("pins left: %v", entries)
	}
	if _, err := os.Stat(e.configFile); !os.IsNotExist(err) {
		t.Errorf("config file left: %v", err)
	}
	for _, pod := range []string{b.Client.Name, b.Server.Name} {
		if a := e.annotation(e.ns, pod); a != "" {
			t.Errorf("pod %s still annotated %q", pod, a)
		}
	}
	checkPolicyRouting(t, b.Ztunnel, "ztunnel's netns", false)
	b.Echo(b.Remote, scenario.EchoPort)
	for _, v6 := range []bool{false, true} {
		if o := scenario.Observe(b, &b.Client.Namespace, v6, addr(b.Remote, v6, scenario.EchoPort)); o.Path != scenario.Direct || o.Err != nil {
			t.Errorf("after uninstall: path %q (%v), want direct", o.Path, o.Err)
		}
	}
}

// TestStatusWhileAgentDown: `meshredirect status` shows the enrolled pods
// (named from the API), ztunnel and the programs from the pins and the
// kernel after the agent has stopped.
func TestStatusWhileAgentDown(t *testing.T) {
	e := newEnv(t)
	b := e.box
	e.labelNamespace(e.ns, agent.ModeAmbient)
	p := e.startAgentProcess(t)
	e.waitFor("the client annotated", 10*time.Second, func() bool { return e.annotation(e.ns, b.Client.Name) == agent.RedirectionEnabled })
	runFlow(t, b, "1")
	p.signal(t, syscall.SIGTERM)

	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	must(t, os.WriteFile(kubeconfig, e.srv.Kubeconfig(kubeapi.AdminUser), 0o600))
	args := []string{"status", "--node-netns", b.Node.Path(), "--pin-dir", e.pinDir, "--kubeconfig", kubeconfig, "--node-name", e.nodeName}
	out, err := exec.Command(meshredirectBinary(t), append(args, "--json")...).Output()
	if err != nil {
		t.Fatalf("status --json: %v", err)
	}
	var st dataplane.Status
	must(t, json.Unmarshal(out, &st))
	if len(st.Pods) != 2 {
		t.Fatalf("status shows %d pods, want 2: %+v", len(st.Pods), st.Pods)
	}
	for _, pod := range st.Pods {
		if pod.Namespace != e.ns || (pod.Name != b.Client.Name && pod.Name != b.Server.Name) || len(pod.IPs) != 2 || pod.Mode == "missing" || pod.PacketsOut == 0 {
			t.Errorf("pod status %+v", pod)
		}
	}
	if !st.Ztunnel.Ready || st.Ztunnel.Ifindex != b.Ztunnel.HostVethIndex || len(st.Ztunnel.IPs) != 2 {
		t.Errorf("ztunnel status %+v", st.Ztunnel)
	}
	if len(st.Problems) != 0 {
		t.Errorf("problems: %v", st.Problems)
	}
	names := map[string]bool{}
	for _, prog := range st.Programs {
		names[prog.Name] = true
		if !prog.Current {
			t.Errorf("program %s (tag %s) is not this build's", prog.Name, prog.Tag)
		}
	}
	if len(names) != 4 { // ztunnel_assign lives in ztunnel's netns
		t.Errorf("programs in the node's netns: %v", st.Programs)
	}
	if st.Verdicts["redirected_out"].Packets == 0 {
		t.Errorf("verdicts: %v", st.Verdicts)
	}
	table, err := exec.Command(meshredirectBinary(t), args...).Output()
	must(t, err)
	for _, s := range []string{e.ns + "/" + b.Client.Name, "ztunnel: ", "ready yes", "THIS BUILD", "redirected_out"} {
		if !strings.Contains(string(table), s) {
			t.Errorf("status table lacks %q:\n%s", s, table)
		}
	}
	t.Logf("status:\n%s", table)
}
