package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshredirect/meshredirect/cni"
	"github.com/meshredirect/meshredirect/testenv/cluster"
	"github.com/meshredirect/meshredirect/testenv/cnichain"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
)

// The agent's identity, as the chart creates it, and one the chart's RBAC
// does not bind.
var (
	agentUser    = kubeapi.ServiceAccount("meshredirect-system", "meshredirect")
	strangerUser = kubeapi.ServiceAccount("elsewhere", "stranger")
)

func TestMain(m *testing.M) {
	code := kubeapi.Main(m, kubeapi.Options{Users: []kubeapi.User{agentUser, strangerUser}})
	cnichain.Cleanup()
	os.Exit(code)
}

// agentDown is a node whose agent is not running: the plugin's socket has
// no listener, and the kubeconfig the agent installed earlier reaches a
// real API server as the agent's ServiceAccount, bound to exactly the
// chart's RBAC rules.
type agentDown struct {
	t          *testing.T
	srv        *kubeapi.Server
	admin      kubernetes.Interface
	plugin     string
	socket     string
	kubeconfig string
}

func newAgentDown(t *testing.T) *agentDown {
	t.Helper()
	srv := kubeapi.Shared(t)
	admin, err := cluster.Client(srv, kubeapi.AdminUser)
	if err != nil {
		t.Fatal(err)
	}
	bindChartRBAC(t, admin)
	// The plugin as `go build` makes it, run as a process per request.
	bin, err := cnichain.Plugin()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	d := &agentDown{t: t, srv: srv, admin: admin, plugin: filepath.Join(bin, cni.PluginType),
		socket: filepath.Join(dir, "cni.sock"), kubeconfig: filepath.Join(dir, cni.KubeconfigName)}
	d.writeKubeconfig(srv.Host, agentUser.Name)
	return d
}

// bindChartRBAC binds the rules of the chart's ClusterRole
// (deploy/charts/meshredirect/files/clusterrole-rules.yaml) to the agent's
// ServiceAccount, whose token the plugin's kubeconfig holds: a right the
// plugin needs and the chart forgot fails here.
func bindChartRBAC(t *testing.T, admin kubernetes.Interface) {
	t.Helper()
	sa := strings.Split(strings.TrimPrefix(agentUser.Name, "system:serviceaccount:"), ":")
	if err := cluster.BindRules(admin, "../../deploy/charts/meshredirect/files/clusterrole-rules.yaml", "meshredirect", sa[0], sa[1]); err != nil {
		t.Fatal(err)
	}
}

// writeKubeconfig installs the plugin's kubeconfig as the agent does, for
// server and user's token.
func (d *agentDown) writeKubeconfig(server, user string) {
	d.t.Helper()
	access := cni.APIAccess{Server: server, CA: d.srv.CA, Token: d.srv.Token(user)}
	if _, err := cni.WriteKubeconfig(d.kubeconfig, access); err != nil {
		d.t.Fatal(err)
	}
}

// namespace creates a namespace of the test's own with the dataplane-mode
// label mode ("" for none).
func (d *agentDown) namespace(prefix, mode string) string {
	d.t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix, Labels: modeLabel(mode)}}
	ns, err := d.admin.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{})
	if err != nil {
		d.t.Fatal(err)
	}
	return ns.Name
}

// pod creates a pod with the dataplane-mode label mode ("" for none).
func (d *agentDown) pod(ns, name, mode string) *corev1.Pod {
	d.t.Helper()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: modeLabel(mode)},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}}}
	pod, err := d.admin.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		d.t.Fatal(err)
	}
	return pod
}

func modeLabel(mode string) map[string]string {
	if mode == "" {
		return nil
	}
	return map[string]string{cni.DataplaneModeLabel: mode}
}

// add runs the plugin's ADD as the kubelet's runtime does (libcni's
// invoke: the configuration with the primary CNI's result on stdin, the
// pod in CNI_ARGS), and returns the result it printed.
func (d *agentDown) add(ns, name, uid string) (*current.Result, error) {
	d.t.Helper()
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"k8s-pod-network","type":%q,"socket":%q,"excludeNamespaces":["kube-system"],"kubeconfig":%q,`+
		`"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"veth1"},{"name":"eth0","sandbox":"/var/run/netns/cni-1"}],`+
		`"ips":[{"interface":1,"address":"10.1.0.5/24","gateway":"10.1.0.1"}]}}`, cni.PluginType, d.socket, d.kubeconfig)
	args := &invoke.Args{Command: "ADD", ContainerID: "c0ffee", NetNS: "/var/run/netns/cni-1", IfName: "eth0",
		Path: filepath.Dir(d.plugin), PluginArgsStr: fmt.Sprintf("IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", ns, name, uid)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	r, err := invoke.ExecPluginWithResult(ctx, d.plugin, []byte(conf), args, nil)
	d.t.Logf("ADD %s/%s in %s", ns, name, time.Since(start).Round(time.Millisecond))
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(r)
}

// wantStarts: ADD succeeded and passed the primary CNI's result on.
func (d *agentDown) wantStarts(ns, name, uid string) {
	d.t.Helper()
	r, err := d.add(ns, name, uid)
	if err != nil {
		d.t.Fatalf("ADD of %s/%s with the agent down: %v", ns, name, err)
	}
	if len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.1.0.5/24" {
		d.t.Errorf("ADD printed %+v, not the primary CNI's result", r)
	}
}

// wantFails: ADD failed with a CNI error that names the pod, says the
// agent is not reachable, and says each of want.
func (d *agentDown) wantFails(ns, name, uid string, want ...string) {
	d.t.Helper()
	_, err := d.add(ns, name, uid)
	var cniErr *types.Error
	if !errors.As(err, &cniErr) {
		d.t.Fatalf("ADD of %s/%s with the agent down: %v, want the plugin's error", ns, name, err)
	}
	want = append(want, "pod "+ns+"/"+name, "meshredirect agent not reachable at "+d.socket)
	for _, w := range want {
		if !strings.Contains(cniErr.Msg, w) {
			d.t.Errorf("ADD error does not say %q: %s", w, cniErr.Msg)
		}
	}
}

// TestAgentDownPlainPodStarts: with the agent down, a pod whose labels do
// not ask for ambient starts: in a plain namespace, or labelled none in an
// ambient one.
func TestAgentDownPlainPodStarts(t *testing.T) {
	d := newAgentDown(t)
	plain := d.namespace("plain-", "")
	pod := d.pod(plain, "web", "")
	d.wantStarts(plain, "web", string(pod.UID))

	mesh := d.namespace("mesh-", cni.ModeAmbient)
	pod = d.pod(mesh, "opted-out", cni.ModeNone)
	d.wantStarts(mesh, "opted-out", string(pod.UID))
}

// TestAgentDownAmbientPodFails: with the agent down, a pod that asks for
// ambient, by its own label or its namespace's, does not start, and the
// error says why.
func TestAgentDownAmbientPodFails(t *testing.T) {
	d := newAgentDown(t)
	plain := d.namespace("plain-", "")
	pod := d.pod(plain, "asks", cni.ModeAmbient)
	d.wantFails(plain, "asks", string(pod.UID), "the pod is ambient (pod label istio.io/dataplane-mode=ambient)")

	mesh := d.namespace("mesh-", cni.ModeAmbient)
	pod = d.pod(mesh, "web", "")
	d.wantFails(mesh, "web", string(pod.UID), "the pod is ambient (namespace label istio.io/dataplane-mode=ambient)")
}

// TestAgentDownUndecidedFails: with the agent down, a pod the plugin
// cannot decide does not start, whatever its labels: another pod of its
// name in the API, the API unreachable, a token without the rights, no
// kubeconfig.
func TestAgentDownUndecidedFails(t *testing.T) {
	d := newAgentDown(t)
	plain := d.namespace("plain-", "")
	pod := d.pod(plain, "web", "")
	uid := string(pod.UID)

	d.wantFails(plain, "web", "0d15ea5e-0000-4000-8000-000000000000", "has UID "+uid+", not the sandbox's 0d15ea5e")
	d.wantFails(plain, "missing", "", `pods "missing" not found`)

	d.writeKubeconfig("https://127.0.0.1:1", agentUser.Name) // nothing listens on port 1
	d.wantFails(plain, "web", uid, "cannot tell from the API whether the pod is ambient", "connection refused")

	d.writeKubeconfig(d.srv.Host, strangerUser.Name)
	d.wantFails(plain, "web", uid, "403 Forbidden")

	if err := os.Remove(d.kubeconfig); err != nil {
		t.Fatal(err)
	}
	d.wantFails(plain, "web", uid, "read kubeconfig")

	// The same pod starts once the plugin can ask again.
	d.writeKubeconfig(d.srv.Host, agentUser.Name)
	d.wantStarts(plain, "web", uid)
}
