package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/cni"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/testenv/cnichain"
	"github.com/meshredirect/meshredirect/testenv/scenario"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// cniEnv is an env whose agent serves the CNI plugin, and a real chain of
// the reference ptp plugin followed by meshredirect-cni.
type cniEnv struct {
	*env
	socket string
	chain  *cnichain.Chain
}

func newCNIEnv(t *testing.T) *cniEnv {
	t.Helper()
	return newCNIEnvOn(t, "ptp")
}

// newCNIEnvOn is newCNIEnv with the primary plugin ptp or bridge.
func newCNIEnvOn(t *testing.T, plugin string) *cniEnv {
	t.Helper()
	e := &cniEnv{env: newEnv(t)}
	e.socket = filepath.Join(t.TempDir(), "cni.sock")
	newChain := cnichain.New
	if plugin == "bridge" {
		newChain = cnichain.NewBridge
	}
	chain, err := newChain(e.box.Node, e.socket, t.TempDir())
	if errors.Is(err, cnichain.ErrNoReferencePlugins) {
		testutil.SkipOrFail(t, err.Error())
	}
	must(t, err)
	e.chain = chain
	return e
}

func (e *cniEnv) startAgent() {
	e.env.startAgent(func(c *agent.Config) { c.CNI.Socket = e.socket })
}

func (e *cniEnv) newSandbox(t *testing.T) *cnichain.Sandbox {
	t.Helper()
	sb, err := cnichain.NewSandbox(t)
	must(t, err)
	return sb
}

func (e *cniEnv) add(t *testing.T, sb *cnichain.Sandbox, ns, name string) ([]netip.Addr, error) {
	t.Helper()
	return e.chain.Add(sb, ns, name)
}

func (e *cniEnv) del(t *testing.T, sb *cnichain.Sandbox, ns, name string) error {
	t.Helper()
	return e.chain.Del(sb, ns, name)
}

func (e *cniEnv) createPodObject(t *testing.T, ns, name string) {
	t.Helper()
	_, err := e.PodObject(ns, name, nil)
	must(t, err)
}

// TestCNIFirstPacket: by the time ADD returns for a pod of an ambient
// namespace, its first packet already goes through ztunnel.
func TestCNIFirstPacket(t *testing.T) {
	e := newCNIEnv(t)
	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.startAgent()
	b := e.box
	b.Echo(b.Remote, scenario.EchoPort)
	set := e.maps()

	e.createPodObject(t, e.ns, "fresh")
	sb := e.newSandbox(t)
	ips, err := e.add(t, sb, e.ns, "fresh")
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Cleanup(func() { e.del(t, sb, e.ns, "fresh") })
	// The very first packets of the pod, right after ADD returned.
	for _, v6 := range []bool{false, true} {
		o := scenario.Observe(b, &sb.Namespace, v6, addr(b.Remote, v6, scenario.EchoPort))
		if o.Err != nil || o.Path != scenario.ViaZtunnel(ztunnel.PortOutbound) {
			t.Errorf("first flow of the new pod (%s): path %q, %v", scenario.Family(v6), o.Path, o.Err)
		}
	}
	all, err := set.Endpoints.Pods()
	must(t, err)
	for _, ip := range ips {
		if _, ok := all[ip]; !ok {
			t.Errorf("pods map lacks %s", ip)
		}
	}
	e.waitFor("the enrolment annotation", 10*time.Second, func() bool { return e.annotation(e.ns, "fresh") == agent.RedirectionEnabled })
}

// TestCNINotAmbient: ADD for a pod outside the mesh adds no program and no
// entry.
func TestCNINotAmbient(t *testing.T) {
	e := newCNIEnv(t)
	e.startAgent()
	set := e.maps()
	e.createPodObject(t, e.plainNS, "outside")
	sb := e.newSandbox(t)
	ips, err := e.add(t, sb, e.plainNS, "outside")
	must(t, err)
	t.Cleanup(func() { e.del(t, sb, e.plainNS, "outside") })
	all, err := set.Endpoints.Pods()
	must(t, err)
	for _, ip := range ips {
		if _, ok := all[ip]; ok {
			t.Errorf("pods map holds %s of a pod outside the mesh", ip)
		}
	}
	attachments, err := e.attachments()
	must(t, err)
	if len(attachments) != 2 { // ztunnel's veth only: ingress and egress
		t.Errorf("attachments: %v", attachments)
	}
}

// TestCNIAgentDown: with no agent, ADD for an ambient pod fails with a
// message that names the socket, and DEL still succeeds.
func TestCNIAgentDown(t *testing.T) {
	e := newCNIEnv(t)
	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.createPodObject(t, e.ns, "early")
	sb := e.newSandbox(t)
	_, err := e.add(t, sb, e.ns, "early")
	if err == nil {
		t.Fatal("ADD succeeded with no agent to capture the pod")
	}
	if !strings.Contains(err.Error(), e.socket) || !strings.Contains(err.Error(), "not reachable") {
		t.Errorf("ADD error does not name the socket: %v", err)
	}
	if err := e.del(t, sb, e.ns, "early"); err != nil {
		t.Errorf("DEL with no agent: %v", err)
	}
	// kube-system pods start without an agent.
	e.createPodObject(t, "kube-system", "dns-"+fmt.Sprint(time.Now().UnixNano()%100000))
}

// TestCNIAddDelRepeated: 100 ADD/DEL cycles leave nothing behind: no map
// entry, no program, no veth, no address held by the IPAM.
func TestCNIAddDelRepeated(t *testing.T) {
	e := newCNIEnv(t)
	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.startAgent()
	set := e.maps()
	before, err := e.attachments()
	must(t, err)
	e.createPodObject(t, e.ns, "churn")
	start := time.Now()
	for i := 0; i < 100; i++ {
		sb := e.newSandbox(t)
		if _, err := e.add(t, sb, e.ns, "churn"); err != nil {
			t.Fatalf("cycle %d: ADD: %v", i, err)
		}
		if err := e.del(t, sb, e.ns, "churn"); err != nil {
			t.Fatalf("cycle %d: DEL: %v", i, err)
		}
	}
	t.Logf("100 ADD/DEL cycles in %s", time.Since(start).Round(time.Millisecond))
	all, err := set.Endpoints.Pods()
	must(t, err)
	if len(all) != 4 { // the client's and server's
		t.Errorf("pods map has %d entries, want the 4 of client and server: %v", len(all), all)
	}
	after, err := e.attachments()
	must(t, err)
	if len(after) != len(before) {
		t.Errorf("attachments: %d before, %d after: %v", len(before), len(after), after)
	}
	if held := e.chain.Held(); len(held) != 0 {
		t.Errorf("IPAM still holds %v", held)
	}
	must(t, e.box.Node.Do(func() error {
		out, err := exec.Command("ip", "-o", "link", "show", "type", "veth").Output()
		if n := strings.Count(string(out), "\n"); n != len(e.box.Node.Pods())+1 { // pods and the fabric link
			t.Errorf("%d veths on the node after the cycles:\n%s", n, out)
		}
		return err
	}))
}

// TestCNIRefusesNonUnicastIPs: an address in a CNI result that cannot be a
// pod's (0.0.0.0, ::, loopback, link-local, multicast) fails ADD with a
// message naming it, and never reaches the pods map, where it would let any
// pod's packets from it pass the source check as this pod's.
func TestCNIRefusesNonUnicastIPs(t *testing.T) {
	e := newCNIEnv(t)
	e.labelNamespace(e.ns, agent.ModeAmbient)
	e.startAgent()
	set := e.maps()
	e.createPodObject(t, e.ns, "odd")
	client := cni.NewClient(e.socket)
	for _, ip := range []string{"0.0.0.0", "::", "127.0.0.1", "169.254.1.1", "fe80::1", "224.0.0.1", "ff02::1", "255.255.255.255"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := client.Do(ctx, cni.PathAdd, cni.PodRequest{Namespace: e.ns, Name: "odd", ContainerID: "c-odd", IPs: []string{"198.18.16.77", ip}})
		cancel()
		if err == nil || !strings.Contains(err.Error(), ip) || !strings.Contains(err.Error(), "not a unicast pod address") {
			t.Errorf("ADD with %s: %v, want an error naming it", ip, err)
		}
	}
	all, err := set.Endpoints.Pods()
	must(t, err)
	for ip := range all {
		if !ip.IsGlobalUnicast() || ip == netip.MustParseAddr("198.18.16.77") {
			t.Errorf("pods map holds %s after refused ADDs", ip)
		}
	}
}

// TestCNISocket: the plugin's socket is root's alone (0600) from the start,
// nothing else is left beside it, and it is gone when the agent stops.
func TestCNISocket(t *testing.T) {
	e := newCNIEnv(t)
	t.Cleanup(func() { // runs after the agent stopped
		if _, err := os.Lstat(e.socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after the agent stopped: %v", e.socket, err)
		}
	})
	e.startAgent()
	st, err := os.Lstat(e.socket)
	must(t, err)
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want a socket with 0600", e.socket, st.Mode())
	}
	entries, err := os.ReadDir(filepath.Dir(e.socket))
	must(t, err)
	if len(entries) != 1 {
		var names []string
		for _, en := range entries {
			names = append(names, en.Name())
		}
		t.Errorf("beside the socket: %v, want only %s", names, filepath.Base(e.socket))
	}
}
