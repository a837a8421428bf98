package agent_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/scenario"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

var (
	pluginOnce sync.Once
	pluginDir  string
	pluginErr  error
)

// cniPath returns the directories of the CNI plugins: meshredirect-cni,
// built here, and the reference ptp and host-local, built from
// github.com/containernetworking/plugins by `make cni-bins` and cached.
func cniPath(t *testing.T) []string {
	t.Helper()
	ref, _ := filepath.Glob(filepath.Join(cacheHome(), "meshredirect", "cni", "*", "ptp"))
	if len(ref) == 0 {
		testutil.SkipOrFail(t, "the reference CNI plugins are not built: run `make cni-bins`")
	}
	pluginOnce.Do(func() {
		if pluginDir, pluginErr = os.MkdirTemp("", "meshredirect-cni-"); pluginErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(pluginDir, "meshredirect-cni"), "../cmd/meshredirect-cni").CombinedOutput()
		if err != nil {
			pluginErr = fmt.Errorf("go build meshredirect-cni: %v\n%s", err, out)
		}
	})
	if pluginErr != nil {
		t.Fatal(pluginErr)
	}
	return []string{pluginDir, filepath.Dir(ref[0])}
}

func cacheHome() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache")
}

// cniEnv is an env whose agent serves the CNI plugin, and a chain of the
// reference ptp plugin (host-local IPAM, addresses from the node's pod
// CIDR) followed by meshredirect-cni.
type cniEnv struct {
	*env
	socket string
	path   []string
	list   *libcni.NetworkConfigList
	ipam   string
}

func newCNIEnv(t *testing.T) *cniEnv {
	t.Helper()
	e := &cniEnv{env: newEnv(t), path: cniPath(t)}
	e.socket = filepath.Join(t.TempDir(), "cni.sock")
	e.ipam = t.TempDir()
	// Addresses from the upper half of node1's pod CIDR (testenv numbers its
	// pods from the bottom), so the second node routes them back; a gateway
	// no pod has, which ptp puts on the host side of each veth.
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "meshredirect-test",
  "plugins": [
    {"type": "ptp", "mtu": 1500, "ipam": {"type": "host-local", "dataDir": %q,
      "ranges": [[{"subnet": "198.18.16.0/20", "rangeStart": "198.18.24.1", "rangeEnd": "198.18.24.254", "gateway": "198.18.31.254"}],
                 [{"subnet": "fd10:6d72:0:1::/64", "rangeStart": "fd10:6d72:0:1::1:1", "rangeEnd": "fd10:6d72:0:1::1:ff", "gateway": "fd10:6d72:0:1::ffff"}]],
      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
    {"type": "meshredirect-cni", "socket": %q, "excludeNamespaces": ["kube-system"], "timeoutSeconds": 10}
  ]
}`, e.ipam, e.socket)
	list, err := libcni.ConfListFromBytes([]byte(conf))
	must(t, err)
	e.list = list
	return e
}

func (e *cniEnv) startAgent() {
	e.env.startAgent(func(c *agent.Config) { c.CNI.Socket = e.socket })
}

// sandbox is a pod's network namespace before the CNI has wired it.
type sandbox struct {
	testenv.Namespace
	id string
}

func (e *cniEnv) newSandbox(t *testing.T) *sandbox {
	t.Helper()
	ns := testutil.NewNetns(t)
	// No duplicate address detection, as testenv's pods: the ptp plugin
	// waits for IPv6 addresses to settle, a second per ADD with DAD on.
	testutil.MustDo(t, ns, func() error {
		for _, k := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+k+"/accept_dad", []byte("0"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	return &sandbox{Namespace: testenv.Namespace{Netns: ns}, id: fmt.Sprintf("ctr-%d-%d", int(ns), time.Now().UnixNano())}
}

func (e *cniEnv) rt(sb *sandbox, ns, name string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: sb.id, NetNS: sb.Path(), IfName: "eth0",
		Args: [][2]string{{"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", name}, {"IgnoreUnknown", "true"}}}
}

// add runs the chain's ADD from the node's netns (the plugins, children
// of a thread in it, act there) and returns the pod's IPs.
func (e *cniEnv) add(t *testing.T, sb *sandbox, ns, name string) ([]netip.Addr, error) {
	t.Helper()
	var res *current.Result
	err := e.box.Node.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		r, err := libcni.NewCNIConfig(e.path, nil).AddNetworkList(ctx, e.list, e.rt(sb, ns, name))
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, ip := range res.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		ips = append(ips, a.Unmap())
	}
	return ips, nil
}

func (e *cniEnv) del(t *testing.T, sb *sandbox, ns, name string) error {
	t.Helper()
	return e.box.Node.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return libcni.NewCNIConfig(e.path, nil).DelNetworkList(ctx, e.list, e.rt(sb, ns, name))
	})
}

// createPodObject creates a pod as the scheduler leaves it for the kubelet:
// bound to the node, no IP yet.
func (e *cniEnv) createPodObject(t *testing.T, ns, name string) {
	t.Helper()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{NodeName: e.nodeName, Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}}}
	_, err := e.admin.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
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
	all, err := set.Pods.All()
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
	all, err := set.Pods.All()
	must(t, err)
	for _, ip := range ips {
		if _, ok := all[ip]; ok {
			t.Errorf("pods map holds %s of a pod outside the mesh", ip)
		}
	}
	attachments, err := e.attachments()
	must(t, err)
	if len(attachments) != 1 { // ztunnel's veth only
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
	all, err := set.Pods.All()
	must(t, err)
	if len(all) != 4 { // the client's and server's
		t.Errorf("pods map has %d entries, want the 4 of client and server: %v", len(all), all)
	}
	after, err := e.attachments()
	must(t, err)
	if len(after) != len(before) {
		t.Errorf("attachments: %d before, %d after: %v", len(before), len(after), after)
	}
	held, _ := filepath.Glob(filepath.Join(e.ipam, "meshredirect-test", "198.*"))
	held6, _ := filepath.Glob(filepath.Join(e.ipam, "meshredirect-test", "fd10*"))
	if len(held)+len(held6) != 0 {
		t.Errorf("IPAM still holds %v %v", held, held6)
	}
	must(t, e.box.Node.Do(func() error {
		out, err := exec.Command("ip", "-o", "link", "show", "type", "veth").Output()
		if n := strings.Count(string(out), "\n"); n != len(e.box.Node.Pods())+1 { // pods and the fabric link
			t.Errorf("%d veths on the node after the cycles:\n%s", n, out)
		}
		return err
	}))
}
