package agent_test

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/resolve"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/cluster"
	"github.com/meshredirect/meshredirect/testenv/cnichain"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
	"github.com/meshredirect/meshredirect/testenv/scenario"
)

// The agent's identity, as the install manifests create it.
const (
	agentNamespace = "meshredirect-system"
	agentSA        = "meshredirect"
)

func TestMain(m *testing.M) {
	code := kubeapi.Main(m, kubeapi.Options{Users: []kubeapi.User{kubeapi.ServiceAccount(agentNamespace, agentSA)}})
	if binary != "" {
		os.RemoveAll(filepath.Dir(binary))
	}
	cnichain.Cleanup()
	os.Exit(code)
}

// bindAgentRBAC creates the ClusterRole with exactly the rules of the
// chart (deploy/charts/meshredirect/files/clusterrole-rules.yaml) and binds
// it to the agent's ServiceAccount: a permission the manifests forgot makes
// the agent fail here as it would in a cluster.
func bindAgentRBAC(t *testing.T, admin kubernetes.Interface) {
	t.Helper()
	if err := cluster.BindRules(admin, "../deploy/charts/meshredirect/files/clusterrole-rules.yaml", "meshredirect", agentNamespace, agentSA); err != nil {
		t.Fatalf("bind the manifests' RBAC rules: %v", err)
	}
}

// env is a node in a box (pods, ztunnel with the stand-in, a second node)
// mirrored in a real API server: each testenv pod has a Pod object on the
// node, with the same name and IPs, whose status the test sets as a kubelet
// would. The agent under test does everything else.
type env struct {
	*cluster.Cluster
	t          *testing.T
	srv        *kubeapi.Server
	admin      kubernetes.Interface
	agentKube  kubernetes.Interface
	box        *scenario.Box
	nodeName   string
	ns         string // ambient once labelled
	plainNS    string // never labelled
	pinDir     string
	netnsDir   string
	configFile string
	log        *testWriter
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testutil.RequirePrivileged(t)
	return newEnvOn(t, kubeapi.Shared(t))
}

// newEnvOn is newEnv on an API server of the test's own.
func newEnvOn(t *testing.T, srv *kubeapi.Server) *env {
	t.Helper()
	return newEnvWith(t, srv, scenario.Options{})
}

// newEnvWith is newEnv with a box of other options (its wiring, policy
// pods), on srv. Policy pods get the annotations of their policies.
func newEnvWith(t *testing.T, srv *kubeapi.Server, o scenario.Options) *env {
	t.Helper()
	e := &env{t: t, srv: srv, nodeName: "node-" + rand.String(6), log: &testWriter{t: t}}
	var err error
	e.admin, err = cluster.Client(srv, kubeapi.AdminUser)
	must(t, err)
	e.agentKube, err = cluster.Client(srv, kubeapi.ServiceAccount(agentNamespace, agentSA).Name)
	must(t, err)
	bindAgentRBAC(t, e.admin)

	e.pinDir = filepath.Join(testutil.BPFFS(t), "meshredirect")
	o.NoDataplane, o.PinDir = true, e.pinDir
	e.box = scenario.New(t, o)
	c, err := cluster.New(t, srv, e.box.Node, e.nodeName)
	must(t, err)
	e.Cluster = c
	t.Cleanup(func() {
		cfg := dataplane.Config{NodeNetns: e.box.Node.Path(), PinDir: e.pinDir}
		var zt []string
		if e.box.Ztunnel != nil {
			zt = append(zt, e.box.Ztunnel.Path())
		}
		if err := dataplane.Uninstall(cfg, zt...); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	e.netnsDir = c.NetnsDir
	e.configFile = filepath.Join(t.TempDir(), "ambient", "config.json")
	e.bindNetns(e.box.Ztunnel, "ztunnel")

	e.ns = e.createNamespace("app-", nil)
	e.plainNS = e.createNamespace("plain-", nil)
	e.createPod(e.box.Client, e.ns, nil)
	e.createPod(e.box.Server, e.ns, nil)
	e.createPod(e.box.Plain, e.plainNS, nil)
	e.createPod(e.box.Ztunnel, e.plainNS, map[string]string{"app": "ztunnel"})
	for _, p := range []*testenv.Pod{e.box.DNSBypass, e.box.Strict, e.box.BypassIn} {
		if p != nil {
			e.createPod(p, e.ns, nil)
			must(t, e.AnnotatePod(e.ns, p.Name, annotationsOf(e.box.Policies[p.Name])))
		}
	}
	e.setReady(e.plainNS, e.box.Ztunnel.Name, true)
	return e
}

// annotationsOf are the annotations that ask for pol.
func annotationsOf(pol dataplane.Policy) map[string]string {
	a := map[string]string{}
	if pol.BypassInbound {
		a[agent.BypassInboundAnnotation] = "true"
	}
	if pol.BypassDNS {
		a[agent.BypassDNSAnnotation] = "true"
	}
	if pol.UDPDrop {
		a[agent.UDPAnnotation] = agent.UDPDrop
	}
	return a
}

// bindNetns makes pod's netns findable by the agent as netnsDir/name, the
// way CNIs bind-mount pods' netns under /var/run/netns.
func (e *env) bindNetns(pod *testenv.Pod, name string) {
	e.t.Helper()
	must(e.t, e.BindNetns(pod, name))
}

func (e *env) createNamespace(prefix string, labels map[string]string) string {
	e.t.Helper()
	ns, err := e.Namespace(prefix, labels)
	must(e.t, err)
	return ns
}

// createPod creates the Pod object of a testenv pod on the node, Running
// with its IPs and the node's IPs as hostIPs, Ready.
func (e *env) createPod(p *testenv.Pod, ns string, labels map[string]string) *corev1.Pod {
	e.t.Helper()
	pod, err := e.MirrorPod(p, ns, labels)
	must(e.t, err)
	return pod
}

// setReady sets a pod's Ready condition, as the kubelet does.
func (e *env) setReady(ns, name string, ready bool) {
	e.t.Helper()
	must(e.t, e.SetReady(ns, name, ready))
}

func (e *env) labelNamespace(ns, mode string) {
	e.t.Helper()
	must(e.t, e.LabelNamespace(ns, mode))
}

func (e *env) labelPod(ns, name, mode string) {
	e.t.Helper()
	must(e.t, e.LabelPod(ns, name, mode))
}

// deletePod deletes the Pod object with grace period 0, as the kubelet
// finishes a deletion, and the pod's netns and veth.
func (e *env) deletePod(p *testenv.Pod, ns string) {
	e.t.Helper()
	must(e.t, e.DeletePod(p, ns))
}

func (e *env) agentConfig() agent.Config {
	return agent.Config{
		NodeName:     e.nodeName,
		Client:       e.agentKube,
		Dataplane:    dataplane.Config{NodeNetns: e.box.Node.Path(), PinDir: e.pinDir},
		Resolve:      resolve.Config{NetnsDirs: []string{e.netnsDir}},
		ConfigFile:   e.configFile,
		ResyncPeriod: time.Minute,
		ZtunnelMode:  agent.ZtunnelModeNode,
		Log:          slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
}

// startAgent runs an agent in this process until the test ends, and waits
// until it is ready.
func (e *env) startAgent(change ...func(*agent.Config)) *agent.Agent {
	e.t.Helper()
	a, _ := e.runAgent(change...)
	return a
}

// runAgent is startAgent, and returns a function that stops the agent
// earlier (SIGTERM's way: capture stays) and waits until Run returned.
func (e *env) runAgent(change ...func(*agent.Config)) (*agent.Agent, func()) {
	e.t.Helper()
	cfg := e.agentConfig()
	for _, c := range change {
		c(&cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("agent: %v", err)
			}
		})
	}
	e.t.Cleanup(stop)
	e.waitFor("the agent to be ready", 30*time.Second, func() bool { return a.Ready() })
	return a, stop
}

// waitFor polls cond until it holds or timeout passes.
func (e *env) waitFor(what string, timeout time.Duration, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// set opens the pinned maps as a status command would.
func (e *env) maps() *maps.Set {
	e.t.Helper()
	set, err := maps.OpenPinned(e.pinDir)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { set.Close() })
	return set
}

// enrolled reports whether both of pod's IPs are in the pods map.
func (e *env) enrolled(set *maps.Set, p *testenv.Pod) bool {
	all, err := set.Endpoints.Pods()
	if err != nil {
		e.t.Fatal(err)
	}
	_, v4 := all[p.IPv4]
	_, v6 := all[p.IPv6]
	return v4 && v6
}

// absent reports whether none of pod's IPs is in the pods map.
func (e *env) absent(set *maps.Set, p *testenv.Pod) bool {
	all, err := set.Endpoints.Pods()
	if err != nil {
		e.t.Fatal(err)
	}
	_, v4 := all[p.IPv4]
	_, v6 := all[p.IPv6]
	return !v4 && !v6
}

func (e *env) annotation(ns, name string) string {
	e.t.Helper()
	pod, err := e.admin.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return pod.Annotations[agent.RedirectionAnnotation]
}

func (e *env) ambientConfig() string {
	b, _ := os.ReadFile(e.configFile)
	return strings.TrimSpace(string(b))
}

// testWriter sends the agent's log lines to the test's log.
type testWriter struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	line := strings.TrimSuffix(string(b), "\n")
	w.lines = append(w.lines, line)
	w.t.Log(line)
	return len(b), nil
}

// logged reports whether a line holding every one of parts was logged.
func (w *testWriter) logged(parts ...string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range w.lines {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			return true
		}
	}
	return false
}

var _ io.Writer = (*testWriter)(nil)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func addr(p *testenv.Pod, v6 bool, port int) netip.AddrPort {
	return netip.AddrPortFrom(scenario.IP(p, v6), uint16(port))
}

// deletePodObject deletes a Pod object (grace period 0) and nothing else.
func (e *env) deletePodObject(ns, name string) error {
	zero := int64(0)
	return e.admin.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
}
