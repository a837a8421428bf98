package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
)

// Cluster is one node of a box as the API server sees it.
type Cluster struct {
	tb testenv.TB
	// Admin is a client with every right.
	Admin kubernetes.Interface
	// NodeName is the node the box's pods are bound to.
	NodeName string
	// Node is the box's node.
	Node *testenv.Node
	// NetnsDir holds bind mounts of network namespaces, as /var/run/netns
	// does on a node: the agent's resolver finds ztunnel's there.
	NetnsDir string
}

// New mirrors node into srv under the name nodeName.
func New(tb testenv.TB, srv *kubeapi.Server, node *testenv.Node, nodeName string) (*Cluster, error) {
	admin, err := Client(srv, kubeapi.AdminUser)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "meshredirect-netns-")
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return &Cluster{tb: tb, Admin: admin, NodeName: nodeName, Node: node, NetnsDir: dir}, nil
}

// Client returns a client for user of srv.
func Client(srv *kubeapi.Server, user string) (kubernetes.Interface, error) {
	return kubernetes.NewForConfig(&rest.Config{Host: srv.Host, BearerToken: srv.Token(user),
		TLSClientConfig: rest.TLSClientConfig{CAData: srv.CA}, QPS: 200, Burst: 400})
}

// BindNetns bind-mounts pod's network namespace at NetnsDir/name, the way
// CNIs and runtimes do under /var/run/netns; it is unmounted at cleanup.
func (c *Cluster) BindNetns(pod *testenv.Pod, name string) error {
	target := filepath.Join(c.NetnsDir, name)
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		return err
	}
	if err := unix.Mount(pod.Path(), target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount the netns of %s: %w", pod.Name, err)
	}
	c.tb.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	return nil
}

// Namespace creates a namespace named after prefix with labels.
func (c *Cluster) Namespace(prefix string, labels map[string]string) (string, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix, Labels: labels}}
	ns, err := c.Admin.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create namespace %s*: %w", prefix, err)
	}
	return ns.Name, nil
}

// LabelNamespace sets the data plane mode label of a namespace.
func (c *Cluster) LabelNamespace(ns, mode string) error {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, agent.DataplaneModeLabel, mode)
	_, err := c.Admin.CoreV1().Namespaces().Patch(context.Background(), ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// LabelPod sets the data plane mode label of a pod.
func (c *Cluster) LabelPod(ns, name, mode string) error {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, agent.DataplaneModeLabel, mode)
	_, err := c.Admin.CoreV1().Pods(ns).Patch(context.Background(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// AnnotatePod sets annotations on a pod.
func (c *Cluster) AnnotatePod(ns, name string, annotations map[string]string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		return err
	}
	_, err = c.Admin.CoreV1().Pods(ns).Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// PodObject creates a pod as the scheduler leaves it for the kubelet:
// bound to the node, no IP yet.
func (c *Cluster) PodObject(ns, name string, labels map[string]string) (*corev1.Pod, error) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{NodeName: c.NodeName, Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}},
			TerminationGracePeriodSeconds: new(int64)},
	}
	pod, err := c.Admin.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", ns, name, err)
	}
	return pod, nil
}

// MirrorPod creates the Pod object of a pod of the box, Running with its
// IPs and the node's IPs as hostIPs, Ready.
func (c *Cluster) MirrorPod(p *testenv.Pod, ns string, labels map[string]string) (*corev1.Pod, error) {
	pod, err := c.PodObject(ns, p.Name, labels)
	if err != nil {
		return nil, err
	}
	pod.Status = corev1.PodStatus{
		Phase:   corev1.PodRunning,
		PodIP:   p.IPv4.String(),
		PodIPs:  []corev1.PodIP{{IP: p.IPv4.String()}, {IP: p.IPv6.String()}},
		HostIP:  c.Node.IPv4.String(),
		HostIPs: []corev1.HostIP{{IP: c.Node.IPv4.String()}, {IP: c.Node.IPv6.String()}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue,
			LastTransitionTime: metav1.Now()}},
	}
	if pod, err = c.Admin.CoreV1().Pods(ns).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		return nil, fmt.Errorf("set the status of pod %s/%s: %w", ns, p.Name, err)
	}
	return pod, nil
}

// SetReady sets a pod's Ready condition, as the kubelet does.
func (c *Cluster) SetReady(ns, name string, ready bool) error {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	patch := fmt.Sprintf(`{"status":{"conditions":[{"type":"Ready","status":%q}]}}`, status)
	_, err := c.Admin.CoreV1().Pods(ns).Patch(context.Background(), name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status")
	return err
}

// DeletePod deletes the Pod object with grace period 0, as the kubelet
// finishes a deletion, and the box's pod with its netns and veth.
func (c *Cluster) DeletePod(p *testenv.Pod, ns string) error {
	zero := int64(0)
	if err := c.Admin.CoreV1().Pods(ns).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		return err
	}
	p.Delete()
	return nil
}

// BindRules creates the ClusterRole name with the rules of rulesFile (a
// YAML list, as the chart's files/clusterrole-rules.yaml) and binds it to
// the ServiceAccount ns/sa: a permission the chart forgot fails the test
// that acts as that ServiceAccount, as it would in a cluster. Both may
// exist already (another test of the package made them).
func BindRules(admin kubernetes.Interface, rulesFile, name, ns, sa string) error {
	raw, err := os.ReadFile(rulesFile)
	if err != nil {
		return err
	}
	var rules []rbacv1.PolicyRule
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		return fmt.Errorf("parse %s: %w", rulesFile, err)
	}
	ctx := context.Background()
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ClusterRole %s: %w", name, err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: sa}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ClusterRoleBinding %s: %w", name, err)
	}
	return nil
}
