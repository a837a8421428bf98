package agent_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
	"github.com/meshredirect/meshredirect/testenv/scenario"
)

// TestStatusAndUninstallInPod is TestStatusWhileAgentDown and TestUninstall
// in in-pod mode. The agent captures the client (its netns bind mounted in
// the netns directory) and the server (its netns reachable only through a
// process in it) inside their netns and hands them to the stand-in over
// ZDS. Once it stopped, `meshredirect status` lists both in-pod pods, named
// from the API, acked by ztunnel, with their programs and policy routing
// and no problem; `meshredirect uninstall` then leaves nothing of the
// capture in either netns (programs, policy routing of both families,
// sysctls), no pin and no annotation, and the client's traffic goes direct.
func TestStatusAndUninstallInPod(t *testing.T) {
	e := newEnvWith(t, kubeapi.Shared(t), scenario.Options{InPod: true})
	b := e.box
	e.bindNetns(b.Client, "client")
	sleep := exec.Command("sleep", "600")
	must(t, b.Server.Start(sleep))
	t.Cleanup(func() {
		sleep.Process.Kill()
		sleep.Wait()
	})
	pods := []*testenv.Pod{b.Client, b.Server}
	was := map[*testenv.Pod]map[string]string{}
	for _, pod := range pods {
		was[pod] = testenv.ReadSysctls(t, pod.Netns, testenv.InPodSysctls)
	}
	e.labelNamespace(e.ns, agent.ModeAmbient)
	p := e.startAgentProcess(t, e.inPodArgs()...)
	e.waitFor("the client and the server annotated (ztunnel acked them)", 20*time.Second, func() bool {
		return e.annotation(e.ns, b.Client.Name) == agent.RedirectionEnabled && e.annotation(e.ns, b.Server.Name) == agent.RedirectionEnabled
	})
	// The checkers see both families and the pods' sysctls: the capture is
	// all there before.
	for _, pod := range pods {
		checkPolicyRouting(t, pod, pod.Name+"'s netns (enrolled)", true)
		testenv.CheckSysctls(t, pod.Netns, pod.Name+"'s netns (enrolled)", testenv.InPodSysctls)
	}
	p.signal(t, syscall.SIGTERM)

	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	must(t, os.WriteFile(kubeconfig, e.srv.Kubeconfig(kubeapi.AdminUser), 0o600))
	args := []string{"status", "--node-netns", b.Node.Path(), "--pin-dir", e.pinDir, "--netns-dir", e.netnsDir,
		"--kubeconfig", kubeconfig, "--node-name", e.nodeName}
	out, err := exec.Command(meshredirectBinary(t), append(args, "--json")...).Output()
	if err != nil {
		t.Fatalf("status --json: %v", err)
	}
	var st dataplane.Status
	must(t, json.Unmarshal(out, &st))
	names := map[string]bool{}
	for _, ps := range st.InPod {
		names[ps.Name] = true
		if ps.Namespace != e.ns || len(ps.IPs) != 2 || ps.Mode == "missing" || len(ps.Programs) != 3 || !ps.PolicyRouting ||
			ps.Ztunnel != "acked" || ps.Interface != "eth0" {
			t.Errorf("in-pod pod status %+v", ps)
		}
	}
	if len(st.InPod) != 2 || !names[b.Client.Name] || !names[b.Server.Name] {
		t.Errorf("status lists in-pod pods %+v, want the client and the server", st.InPod)
	}
	if len(st.Pods) != 0 {
		t.Errorf("in-pod pods listed as node mode's: %+v", st.Pods)
	}
	if len(st.Problems) != 0 {
		t.Errorf("problems: %v", st.Problems)
	}
	table, err := exec.Command(meshredirectBinary(t), args...).Output()
	must(t, err)
	for _, s := range []string{"IN-POD POD", e.ns + "/" + b.Client.Name, e.ns + "/" + b.Server.Name, "acked", "pod_egress@eth0/egress"} {
		if !strings.Contains(string(table), s) {
			t.Errorf("status table lacks %q:\n%s", s, table)
		}
	}
	t.Logf("status:\n%s", table)

	out, err = exec.Command(meshredirectBinary(t), "uninstall", "--node-netns", b.Node.Path(), "--pin-dir", e.pinDir,
		"--netns-dir", e.netnsDir, "--config-file", e.configFile, "--kubeconfig", kubeconfig, "--node-name", e.nodeName,
		"--cni-conf-dir", t.TempDir(), "--cni-bin-dir", t.TempDir()).CombinedOutput()
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	t.Logf("uninstall:\n%s", out)
	if entries, err := os.ReadDir(e.pinDir); err == nil {
		t.Errorf("pins left: %v", entries)
	}
	for _, pod := range []string{b.Client.Name, b.Server.Name} {
		if a := e.annotation(e.ns, pod); a != "" {
			t.Errorf("pod %s still annotated %q", pod, a)
		}
	}
	for _, pod := range pods {
		checkInPodGone(t, pod, e.pinDir, was[pod])
	}
	b.Echo(b.Remote, scenario.EchoPort)
	for _, v6 := range []bool{false, true} {
		if o := scenario.Observe(b, &b.Client.Namespace, v6, addr(b.Remote, v6, scenario.EchoPort)); o.Path != scenario.Direct || o.Err != nil {
			t.Errorf("after uninstall: path %q (%v), want direct", o.Path, o.Err)
		}
	}
}

// checkInPodGone fails the test if anything of the in-pod capture is left
// in pod's netns: a filter (as `tc` shows it) or tcx link on eth0 or lo, a
// rule or a route of the policy routing in either family, or a sysctl
// enrolment changes other than it was before, in was.
func checkInPodGone(t *testing.T, pod *testenv.Pod, pinDir string, was map[string]string) {
	t.Helper()
	for _, ifc := range []string{"eth0", "lo"} {
		for _, dir := range []string{"ingress", "egress"} {
			cmd := exec.Command("tc", "filter", "show", "dev", ifc, dir)
			var out strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &out
			must(t, pod.Start(cmd))
			if err := cmd.Wait(); err != nil {
				t.Errorf("tc filter show dev %s %s in %s: %v\n%s", ifc, dir, pod.Name, err, &out)
			}
			if s := out.String(); strings.Contains(s, "pod_") || strings.Contains(s, "meshredirect") {
				t.Errorf("%s: filter left on %s %s:\n%s", pod.Name, ifc, dir, s)
			}
		}
	}
	// tcx links too (gone with their pins, unless something holds them).
	cfg := dataplane.Config{NodeNetns: pod.Path(), PinDir: pinDir}
	for _, ifc := range []string{"eth0", "lo"} {
		atts, err := dataplane.ListAttachments(cfg, ifc)
		if err != nil {
			t.Errorf("list the attachments of %s in %s: %v", ifc, pod.Name, err)
		}
		for _, a := range atts {
			t.Errorf("%s: left on %s: %v", pod.Name, ifc, a)
		}
	}
	checkPolicyRouting(t, pod, pod.Name+"'s netns", false)
	testenv.CheckSysctls(t, pod.Netns, pod.Name+"'s netns", was)
}

// checkPolicyRouting fails the test unless pod's netns (named what) holds
// the dataplane's policy routing, both families, when enrolled, or nothing
// of it when not (testenv.CheckPolicyRouting).
func checkPolicyRouting(t *testing.T, pod *testenv.Pod, what string, enrolled bool) {
	t.Helper()
	testenv.CheckPolicyRouting(t, pod.Netns, what, enrolled)
}

// TestInPodNotAnnotatedWithoutZtunnel: in in-pod mode the enrolment
// annotation records ztunnel's ack. With no ztunnel connected (the
// stand-in dials another socket) the agent captures the pods, whose
// traffic is dropped until one connects, but does not annotate them.
func TestInPodNotAnnotatedWithoutZtunnel(t *testing.T) {
	e := newEnvWith(t, kubeapi.Shared(t), scenario.Options{InPod: true})
	b := e.box
	e.bindNetns(b.Client, "client")
	e.labelNamespace(e.ns, agent.ModeAmbient)
	p := e.startAgentProcess(t, "--ztunnel-mode", agent.ZtunnelModeInPod, "--zds-socket", filepath.Join(t.TempDir(), "nobody.sock"))
	cfg := dataplane.Config{NodeNetns: b.Client.Path(), PinDir: e.pinDir}
	e.waitFor("the client captured in its netns", 20*time.Second, func() bool {
		atts, err := dataplane.ListAttachments(cfg, "eth0")
		return err == nil && len(atts) == 2
	})
	e.waitFor("the agent waiting for ztunnel", 10*time.Second, func() bool {
		return strings.Contains(p.output(), "no ztunnel connected to hand it to")
	})
	time.Sleep(time.Second) // the annotation would follow the log line
	if a := e.annotation(e.ns, b.Client.Name); a != "" {
		t.Errorf("the client is annotated %q while no ztunnel has acked it", a)
	}
}
