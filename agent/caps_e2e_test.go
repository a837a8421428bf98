package agent_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
)

// TestChartCapabilities runs `meshredirect agent` with exactly the
// capabilities the chart grants, under setpriv, against the API server
// and a node in a box: it enrols the pods of an ambient namespace and their
// traffic goes through ztunnel. Then, for each of the five, it runs the
// agent without that one: the agent stops at once with a message naming
// it, and nothing on the node has changed.
//
// ztunnel's netns is not bind-mounted in the agent's --netns-dir here, as
// in a cluster where the runtime keeps no bind mount: the agent finds it
// as /proc/<pid>/ns/net of a process in it, which runs with every
// capability of the test (more than the agent's five), so the kernel's
// ptrace access check wants CAP_SYS_PTRACE. So does --node-netns, which
// is /proc/<test's pid>/fd/<n>.
func TestChartCapabilities(t *testing.T) {
	testutil.RequireTool(t, "setpriv", "(util-linux) to run the agent with fewer capabilities")
	e := newEnv(t)
	b := e.box
	host, err := agent.ReadHost()
	must(t, err)

	// What this test can grant: the chart's capabilities that are in its
	// own bounding and permitted sets. Some machines' root lacks one
	// (CAP_SYS_RESOURCE on some VMs and CI runners).
	bounding, permitted := procCaps(t, os.Getpid(), "CapBnd"), procCaps(t, os.Getpid(), "CapPrm")
	var grantable []agent.Capability
	for _, c := range agent.ChartCapabilities {
		if bounding&permitted&(1<<uint(c.Bit)) != 0 {
			grantable = append(grantable, c)
			continue
		}
		if need, why := host.Needs(c); need {
			testutil.SkipOrFail(t, fmt.Sprintf("this process cannot grant %s, which the agent needs on this kernel", c.Name))
		} else {
			t.Logf("this process cannot grant %s (not in its bounding set): the agent runs without it, which the chart's set is on this kernel: %s", c.Name, why)
		}
	}

	// ztunnel's netns is reachable only through a process in it.
	sleeper := exec.Command("sleep", "3600")
	must(t, b.Ztunnel.Start(sleeper))
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	noBindMounts := t.TempDir()
	nsOfSleeper := fmt.Sprintf("/proc/%d/ns/net", sleeper.Process.Pid)

	// without returns grantable without drop, and whether drop was in it.
	without := func(drop agent.Capability) ([]agent.Capability, bool) {
		var caps []agent.Capability
		for _, c := range grantable {
			if c.Bit != drop.Bit {
				caps = append(caps, c)
			}
		}
		return caps, len(caps) < len(grantable)
	}

	// First the runs that must stop, on a node no agent has touched yet,
	// so that "nothing changed" means something.
	before := e.nodeSnapshot(t)
	for _, drop := range agent.ChartCapabilities {
		if need, _ := host.Needs(drop); !need {
			continue // after the chart's run, below
		}
		t.Run("without "+drop.Name, func(t *testing.T) {
			caps, _ := without(drop)
			p := e.startCapsAgent(t, caps, noBindMounts, "")
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				t.Fatalf("the agent without %s still runs after 10s:\n%s", drop.Name, p.output())
			}
			took := time.Since(p.started)
			out := p.output()
			t.Logf("without %s: exit %v after %s:\n%s", drop.Name, p.err, took.Round(time.Millisecond), out)
			if p.err == nil {
				t.Errorf("the agent without %s exited with status 0", drop.Name)
			}
			if took > 5*time.Second {
				t.Errorf("the agent without %s took %s to stop", drop.Name, took)
			}
			want := fmt.Sprintf("meshredirect: missing capability %s: %s (the chart grants BPF, NET_ADMIN, SYS_ADMIN, SYS_RESOURCE with liftMemlock=true, SYS_PTRACE)", drop.Name, drop.Why)
			if !strings.Contains(out, want) {
				t.Errorf("no message %q", want)
			}
			if n := strings.Count(out, "missing capability"); n != 1 {
				t.Errorf("%d capabilities said to be missing, want 1 (%s)", n, drop.Name)
			}
			checkLoggedCaps(t, out, caps)
			for _, s := range []string{"waiting for the informer caches", "agent ready"} {
				if strings.Contains(out, s) {
					t.Errorf("the agent went on after the check: %q", s)
				}
			}
			e.checkUntouched(t, before, p)
		})
	}

	t.Run("chart", func(t *testing.T) {
		// The kernel's side of CAP_SYS_PTRACE, for the record: without it,
		// a process with the agent's other capabilities cannot open the
		// netns of a process that has more.
		var noPtrace []agent.Capability
		for _, c := range grantable {
			if c.Bit != unix.CAP_SYS_PTRACE {
				noPtrace = append(noPtrace, c)
			}
		}
		if out, err := exec.Command("setpriv", append(setprivArgs(noPtrace), "readlink", "-v", nsOfSleeper)...).CombinedOutput(); err == nil {
			t.Errorf("%s read without CAP_SYS_PTRACE: %s", nsOfSleeper, out)
		} else {
			t.Logf("without CAP_SYS_PTRACE: readlink %s: %s", nsOfSleeper, strings.TrimSpace(string(out)))
		}
		if out, err := exec.Command("setpriv", append(setprivArgs(grantable), "readlink", "-v", nsOfSleeper)...).CombinedOutput(); err != nil {
			t.Errorf("with the chart's capabilities: readlink %s: %v: %s", nsOfSleeper, err, out)
		}

		e.labelNamespace(e.ns, agent.ModeAmbient)
		cniSocket := filepath.Join(t.TempDir(), "cni.sock")
		p := e.startCapsAgent(t, grantable, noBindMounts, cniSocket)
		p.waitReady(t)
		t.Logf("setpriv %s", strings.Join(setprivArgs(grantable), " "))

		// The running agent's own view of its capabilities.
		want := capMask(grantable)
		for _, field := range []string{"CapEff", "CapPrm", "CapBnd"} {
			got := procCaps(t, p.cmd.Process.Pid, field)
			t.Logf("agent %s: %#016x (%s)", field, got, agent.CapabilityNames(got))
			if got != want {
				t.Errorf("agent %s %#x (%s), want %#x (%s)", field, got, agent.CapabilityNames(got), want, agent.CapabilityNames(want))
			}
		}
		checkLoggedCaps(t, p.output(), grantable)

		set := e.maps()
		e.waitFor("client and server enrolled", 10*time.Second, func() bool { return e.enrolled(set, b.Client) && e.enrolled(set, b.Server) })
		e.waitFor("the enrolment annotation", 10*time.Second, func() bool {
			return e.annotation(e.ns, b.Client.Name) == agent.RedirectionEnabled && e.annotation(e.ns, b.Server.Name) == agent.RedirectionEnabled
		})
		e.waitFor("ztunnelReady:true", 10*time.Second, func() bool { return e.ambientConfig() == `{"ztunnelReady":true,"redirectMode":"eBPF"}` })
		// Found through /proc/<sleeper>/ns/net, the only way to it here.
		must(t, b.Ztunnel.Do(func() error {
			out, err := exec.Command("ip", "rule").CombinedOutput()
			if !strings.Contains(string(out), "0x400") {
				t.Errorf("no rule of the agent in ztunnel's netns:\n%s", out)
			}
			return err
		}))
		for _, id := range []string{"1", "2", "3", "4", "5"} {
			runFlow(t, b, id)
		}
		if _, err := os.Stat(cniSocket); err != nil {
			t.Errorf("the CNI socket: %v", err)
		}
		for _, line := range strings.Split(p.output(), "\n") {
			if strings.Contains(line, "level=ERROR") || strings.Contains(line, "operation not permitted") || strings.Contains(line, "permission denied") {
				t.Errorf("agent log: %s", line)
			}
		}
		must(t, p.cmd.Process.Signal(syscall.SIGTERM))
		<-p.done
		if p.err != nil {
			t.Errorf("the agent exited on SIGTERM with %v", p.err)
		}
	})

	// Then the capabilities this kernel does not need: the agent starts
	// without them (and takes over what the chart's run left).
	for _, drop := range agent.ChartCapabilities {
		need, why := host.Needs(drop)
		if need {
			continue
		}
		t.Run("without "+drop.Name, func(t *testing.T) {
			caps, granted := without(drop)
			if !granted {
				t.Skipf("%s was not granted in the chart's run either, which shows the agent works without it here (%s)", drop.Name, why)
			}
			p := e.startCapsAgent(t, caps, noBindMounts, "")
			p.waitReady(t)
			checkLoggedCaps(t, p.output(), caps)
			t.Logf("not needed here (%s): the agent is ready without it", why)
		})
	}
}

// capsProcess is `meshredirect agent` run under setpriv.
type capsProcess struct {
	*agentProcess
	// pinDir, configFile and cniSocket are this run's.
	pinDir, configFile, cniSocket string
}

// setprivArgs are setpriv's arguments that leave a root process exactly
// caps: inheritable and ambient sets, so that exec keeps them; the
// bounding set, so that root's exec gains nothing else; no_new_privs, as
// the chart's allowPrivilegeEscalation: false sets.
func setprivArgs(caps []agent.Capability) []string {
	var names []string
	for _, c := range caps {
		names = append(names, "+"+strings.ToLower(strings.TrimPrefix(c.Name, "CAP_")))
	}
	list := strings.Join(append([]string{"-all"}, names...), ",")
	return []string{"--reuid=0", "--regid=0", "--clear-groups", "--inh-caps=" + list, "--ambient-caps=" + list,
		"--bounding-set=" + list, "--no-new-privs", "--"}
}

// startCapsAgent starts the agent with caps in the test's netns, working
// in the node's through --node-netns. Every path it would write is this
// run's own, so that a run that fails can be seen to have written nothing.
func (e *env) startCapsAgent(t *testing.T, caps []agent.Capability, netnsDir, cniSocket string) *capsProcess {
	t.Helper()
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	must(t, os.WriteFile(kubeconfig, e.srv.Kubeconfig(kubeapi.ServiceAccount(agentNamespace, agentSA).Name), 0o600))
	p := &capsProcess{pinDir: e.pinDir, configFile: e.configFile, cniSocket: cniSocket}
	if cniSocket == "" {
		p.cniSocket = filepath.Join(dir, "cni.sock")
	}
	args := append(setprivArgs(caps), meshredirectBinary(t), "agent", "--node-netns", e.box.Node.Path(),
		"--node-name", e.nodeName, "--kubeconfig", kubeconfig, "--pin-dir", p.pinDir, "--netns-dir", netnsDir,
		"--config-file", p.configFile, "--cni-socket", p.cniSocket, "--log-format", "text", "--metrics-addr", "127.0.0.1:0",
		"--ztunnel-mode", agent.ZtunnelModeNode)
	p.agentProcess = runAgentCmd(t, exec.Command("setpriv", args...))
	return p
}

// checkLoggedCaps checks the agent's own log line of its effective set.
func checkLoggedCaps(t *testing.T, out string, caps []agent.Capability) {
	t.Helper()
	want := fmt.Sprintf("msg=capabilities effective=%#x names=", capMask(caps))
	if !strings.Contains(out, want) {
		t.Errorf("the agent did not log %q (%s)", want, agent.CapabilityNames(capMask(caps)))
	}
}

func capMask(caps []agent.Capability) uint64 {
	var m uint64
	for _, c := range caps {
		m |= 1 << uint(c.Bit)
	}
	return m
}

// procCaps reads a capability set (CapEff, CapPrm, CapBnd, ...) of pid
// from /proc/<pid>/status.
func procCaps(t *testing.T, pid int, field string) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			must(t, err)
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// nodeSnapshot is what the agent would change in the node's and ztunnel's
// netns: qdiscs and filters, routes and rules of every table, rp_filter.
func (e *env) nodeSnapshot(t *testing.T) string {
	t.Helper()
	var sb strings.Builder
	for _, ns := range []struct {
		name string
		do   func(func() error) error
	}{{"node", e.box.Node.Do}, {"ztunnel", e.box.Ztunnel.Do}} {
		must(t, ns.do(func() error {
			for _, argv := range [][]string{
				{"tc", "qdisc", "show"},
				{"ip", "rule", "show"}, {"ip", "-6", "rule", "show"},
				{"ip", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
				{"cat", "/proc/sys/net/ipv4/conf/all/rp_filter"},
			} {
				out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
				if err != nil {
					return fmt.Errorf("%v: %w: %s", argv, err, out)
				}
				fmt.Fprintf(&sb, "%s: %s\n", ns.name, strings.Join(argv, " "))
				for _, line := range strings.SplitAfter(string(out), "\n") {
					// IPv6 link-local addresses come and go with DAD
					// on the kernel's own time; the agent adds none.
					if !strings.Contains(line, "fe80:") {
						sb.WriteString(line)
					}
				}
			}
			return nil
		}))
	}
	return sb.String()
}

// checkUntouched checks that a run that stopped at the check changed
// nothing: no pins, nothing attached, the node's and ztunnel's netns as
// they were, no config file, no CNI socket, no pod annotated.
func (e *env) checkUntouched(t *testing.T, before string, p *capsProcess) {
	t.Helper()
	for _, path := range []string{p.pinDir, p.configFile, p.cniSocket} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s was made: %v", path, err)
		}
	}
	// tc lists our filters by name and our tcx links by their pins, of
	// which a fresh bpffs has none: tcx links die with their process.
	if all, err := dataplane.ListAttachments(dataplane.Config{NodeNetns: e.box.Node.Path(), PinDir: testutil.BPFFS(t)}, ""); err != nil || len(all) != 0 {
		t.Errorf("attached on the node: %v (%v)", all, err)
	}
	if after := e.nodeSnapshot(t); after != before {
		t.Errorf("the node changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	pods, err := e.admin.CoreV1().Pods(e.ns).List(context.Background(), metav1.ListOptions{})
	must(t, err)
	for _, pod := range pods.Items {
		if a, ok := pod.Annotations[agent.RedirectionAnnotation]; ok {
			t.Errorf("pod %s annotated %q", pod.Name, a)
		}
	}
}
