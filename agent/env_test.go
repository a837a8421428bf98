package agent_test

import (
	"context"
	"fmt"
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
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/agent/resolve"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
	"github.com/meshredirect/meshredirect/testenv/scenario"
	"golang.org/x/sys/unix"
)

// The agent's identity, as the install manifests create it.
const (
	agentNamespace = "meshredirect-system"
	agentSA        = "meshredirect"
)

func TestMain(m *testing.M) {
	os.Exit(kubeapi.Main(m, kubeapi.Options{Users: []kubeapi.User{kubeapi.ServiceAccount(agentNamespace, agentSA)}}))
}

// rbacOnce binds the manifests' rules to the agent's ServiceAccount, once
// per API server.
var rbacOnce sync.Once

// bindAgentRBAC creates the ClusterRole with exactly the rules of the
// chart (deploy/charts/meshredirect/files/clusterrole-rules.yaml) and binds
// it to the agent's ServiceAccount: a permission the manifests forgot makes
// the agent fail here as it would in a cluster.
func bindAgentRBAC(t *testing.T, admin kubernetes.Interface) {
	t.Helper()
	var err error
	rbacOnce.Do(func() {
		var raw []byte
		if raw, err = os.ReadFile("../deploy/charts/meshredirect/files/clusterrole-rules.yaml"); err != nil {
			return
		}
		var rules []rbacv1.PolicyRule
		if err = yaml.Unmarshal(raw, &rules); err != nil {
			return
		}
		ctx := context.Background()
		role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "meshredirect"}, Rules: rules}
		if _, err = admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return
		}
		binding := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "meshredirect"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "meshredirect"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: agentNamespace, Name: agentSA}},
		}
		if _, err = admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
			err = nil
		}
	})
	if err != nil {
		t.Fatalf("bind the manifests' RBAC rules: %v", err)
	}
}

// env is a node in a box (pods, ztunnel with the stand-in, a second node)
// mirrored in a real API server: each testenv pod has a Pod object on the
// node, with the same name and IPs, whose status the test sets as a kubelet
// would. The agent under test does everything else.
type env struct {
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
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testutil.RequirePrivileged(t)
	srv := kubeapi.Shared(t)
	e := &env{t: t, srv: srv, nodeName: "node-" + rand.String(6)}
	e.admin = clientFor(t, srv, kubeapi.AdminUser)
	e.agentKube = clientFor(t, srv, kubeapi.ServiceAccount(agentNamespace, agentSA).Name)
	bindAgentRBAC(t, e.admin)

	e.pinDir = filepath.Join(testutil.BPFFS(t), "meshredirect")
	e.box = scenario.New(t, scenario.Options{NoDataplane: true, PinDir: e.pinDir})
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
	e.netnsDir = t.TempDir()
	e.configFile = filepath.Join(t.TempDir(), "ambient", "config.json")
	e.bindNetns(e.box.Ztunnel, "ztunnel")

	e.ns = e.createNamespace("app-", nil)
	e.plainNS = e.createNamespace("plain-", nil)
	e.createPod(e.box.Client, e.ns, nil)
	e.createPod(e.box.Server, e.ns, nil)
	e.createPod(e.box.Plain, e.plainNS, nil)
	e.createPod(e.box.Ztunnel, e.plainNS, map[string]string{"app": "ztunnel"})
	e.setReady(e.plainNS, e.box.Ztunnel.Name, true)
	return e
}

func clientFor(t *testing.T, srv *kubeapi.Server, user string) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(&rest.Config{Host: srv.Host, BearerToken: srv.Token(user),
		TLSClientConfig: rest.TLSClientConfig{CAData: srv.CA}, QPS: 200, Burst: 400})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// bindNetns makes pod's netns findable by the agent as netnsDir/name, the
// way CNIs bind-mount pods' netns under /var/run/netns.
func (e *env) bindNetns(pod *testenv.Pod, name string) {
	e.t.Helper()
	target := filepath.Join(e.netnsDir, name)
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := unix.Mount(pod.Path(), target, "", unix.MS_BIND, ""); err != nil {
		e.t.Fatalf("bind-mount %s's netns: %v", pod.Name, err)
	}
	e.t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
}

func (e *env) createNamespace(prefix string, labels map[string]string) string {
	e.t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix, Labels: labels}}
	ns, err := e.admin.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return ns.Name
}

// createPod creates the Pod object of a testenv pod on the node, Running
// with its IPs and the node's IPs as hostIPs, Ready.
func (e *env) createPod(p *testenv.Pod, ns string, labels map[string]string) *corev1.Pod {
	e.t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{NodeName: e.nodeName, Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}},
			TerminationGracePeriodSeconds: new(int64)},
	}
	pod, err := e.admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	node := e.box.Node
	pod.Status = corev1.PodStatus{
		Phase:   corev1.PodRunning,
		PodIP:   p.IPv4.String(),
		PodIPs:  []corev1.PodIP{{IP: p.IPv4.String()}, {IP: p.IPv6.String()}},
		HostIP:  node.IPv4.String(),
		HostIPs: []corev1.HostIP{{IP: node.IPv4.String()}, {IP: node.IPv6.String()}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue,
			LastTransitionTime: metav1.Now()}},
	}
	if pod, err = e.admin.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	return pod
}

// setReady sets a pod's Ready condition, as the kubelet does.
func (e *env) setReady(ns, name string, ready bool) {
	e.t.Helper()
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	patch := fmt.Sprintf(`{"status":{"conditions":[{"type":"Ready","status":%q}]}}`, status)
	if _, err := e.admin.CoreV1().Pods(ns).Patch(context.Background(), name, "application/strategic-merge-patch+json", []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) labelNamespace(ns, mode string) {
	e.t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, agent.DataplaneModeLabel, mode)
	if _, err := e.admin.CoreV1().Namespaces().Patch(context.Background(), ns, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) labelPod(ns, name, mode string) {
	e.t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, agent.DataplaneModeLabel, mode)
	if _, err := e.admin.CoreV1().Pods(ns).Patch(context.Background(), name, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// deletePod deletes the Pod object with grace period 0, as the kubelet
// finishes a deletion, and the pod's netns and veth.
func (e *env) deletePod(p *testenv.Pod, ns string) {
	e.t.Helper()
	zero := int64(0)
	if err := e.admin.CoreV1().Pods(ns).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		e.t.Fatal(err)
	}
	p.Delete()
}

func (e *env) agentConfig() agent.Config {
	return agent.Config{
		NodeName:     e.nodeName,
		Client:       e.agentKube,
		Dataplane:    dataplane.Config{NodeNetns: e.box.Node.Path(), PinDir: e.pinDir},
		Resolve:      resolve.Config{NetnsDirs: []string{e.netnsDir}},
		ConfigFile:   e.configFile,
		ResyncPeriod: time.Minute,
		Log:          slog.New(slog.NewTextHandler(&testWriter{t: e.t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
}

// startAgent runs an agent in this process until the test ends, and waits
// until it is ready.
func (e *env) startAgent(change ...func(*agent.Config)) *agent.Agent {
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
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("agent: %v", err)
		}
	})
	e.waitFor("the agent to be ready", 30*time.Second, func() bool { return a.Ready() })
	return a
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
	set, err := maps.Open(maps.Options{PinDir: e.pinDir})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { set.Close() })
	return set
}

// enrolled reports whether both of pod's IPs are in the pods map.
func (e *env) enrolled(set *maps.Set, p *testenv.Pod) bool {
	all, err := set.Pods.All()
	if err != nil {
		e.t.Fatal(err)
	}
	_, v4 := all[p.IPv4]
	_, v6 := all[p.IPv6]
	return v4 && v6
}

// absent reports whether none of pod's IPs is in the pods map.
func (e *env) absent(set *maps.Set, p *testenv.Pod) bool {
	all, err := set.Pods.All()
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
	t  *testing.T
	mu sync.Mutex
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
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
