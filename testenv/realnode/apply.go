package realnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
)

// Apply creates or updates every object of a multi-document YAML manifest, as
// `kubectl apply --server-side` does, and returns them.
func (n *Node) Apply(ctx context.Context, manifest []byte) ([]*unstructured.Unstructured, error) {
	objs, err := decode(manifest)
	if err != nil {
		return nil, err
	}
	dyn, mapper, err := n.dynamic()
	if err != nil {
		return nil, err
	}
	for _, o := range objs {
		ri, err := resourceFor(dyn, mapper, o)
		if err != nil {
			return nil, err
		}
		data, err := o.MarshalJSON()
		if err != nil {
			return nil, err
		}
		force := true
		_, err = ri.Patch(ctx, o.GetName(), "application/apply-patch+yaml", data,
			metav1.PatchOptions{FieldManager: "realnode", Force: &force})
		if err != nil {
			return nil, fmt.Errorf("apply %s %s: %w", o.GetKind(), o.GetName(), err)
		}
	}
	return objs, nil
}

// Delete deletes every object of a manifest (foreground: a namespace's or a DaemonSet's pods
// first) and waits until they are gone.
func (n *Node) Delete(ctx context.Context, manifest []byte) error {
	objs, err := decode(manifest)
	if err != nil {
		return err
	}
	dyn, mapper, err := n.dynamic()
	if err != nil {
		return err
	}
	fg := metav1.DeletePropagationForeground
	for i := len(objs) - 1; i >= 0; i-- {
		o := objs[i]
		ri, err := resourceFor(dyn, mapper, o)
		if err != nil {
			return err
		}
		err = ri.Delete(ctx, o.GetName(), metav1.DeleteOptions{PropagationPolicy: &fg})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete %s %s: %w", o.GetKind(), o.GetName(), err)
		}
	}
	for _, o := range objs {
		ri, err := resourceFor(dyn, mapper, o)
		if err != nil {
			return err
		}
		err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			_, err := ri.Get(ctx, o.GetName(), metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			return fmt.Errorf("wait for %s %s to go: %w", o.GetKind(), o.GetName(), err)
		}
	}
	return nil
}

// decode splits a manifest into objects, skipping empty documents.
func decode(manifest []byte) ([]*unstructured.Unstructured, error) {
	var objs []*unstructured.Unstructured
	d := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	for {
		var o unstructured.Unstructured
		err := d.Decode(&o.Object)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("decode manifest: %w", err)
		}
		if len(o.Object) > 0 {
			objs = append(objs, &o)
		}
	}
}

// dynamic returns a dynamic client and a REST mapper of the node's API server.
func (n *Node) dynamic() (*dynamic.DynamicClient, meta.RESTMapper, error) {
	dyn, err := dynamic.NewForConfig(n.Config)
	if err != nil {
		return nil, nil, err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(n.Client.Discovery()))
	return dyn, mapper, nil
}

// resourceFor returns the client of o's resource, in o's namespace when it has one.
func resourceFor(dyn *dynamic.DynamicClient, mapper meta.RESTMapper, o *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := o.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", gvk, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return dyn.Resource(m.Resource).Namespace(o.GetNamespace()), nil
	}
	return dyn.Resource(m.Resource), nil
}

// Chart renders the project's chart with the project's renderer (deploy/tools/render) for this
// node's images, with sets (key.path=value, as `helm template --set`) on top.
func (n *Node) Chart(ctx context.Context, sets ...string) ([]byte, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	args := []string{"run", "./render", "-chart", "../charts/meshredirect",
		"-set-string", "image.repository=" + imageRepo(AgentImage),
		"-set-string", "image.tag=" + imageTag(AgentImage),
		"-set-string", "image.pullPolicy=Never"}
	for _, s := range sets {
		args = append(args, "-set", s)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = filepath.Join(root, "deploy", "tools")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("render the chart: %v: %s", err, stderr.Bytes())
	}
	return out, nil
}

// WaitPodsReady waits until ns has want pods matching selector, each Ready, and returns them.
func (n *Node) WaitPodsReady(ctx context.Context, ns, selector string, want int) ([]corev1.Pod, error) {
	var pods []corev1.Pod
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		list, err := n.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, nil
		}
		pods = pods[:0]
		for _, p := range list.Items {
			if err := stuck(&p); err != nil {
				return false, err
			}
			if p.DeletionTimestamp == nil && podReady(&p) {
				pods = append(pods, p)
			}
		}
		return len(pods) == want && len(list.Items) == want, nil
	})
	if err != nil {
		return nil, fmt.Errorf("wait for %d Ready pods %q in %s: %w\n%s", want, selector, ns, err, n.PodTable())
	}
	return pods, nil
}

// stuckReasons are the waiting reasons of a container that will not start without a change.
var stuckReasons = []string{"CrashLoopBackOff", "CreateContainerError", "CreateContainerConfigError",
	"ErrImageNeverPull", "RunContainerError", "InvalidImageName"}

// stuck returns an error when a container of p waits for a reason that will not pass by itself,
// so that a test fails at once rather than at its deadline.
func stuck(p *corev1.Pod) error {
	for _, c := range p.Status.ContainerStatuses {
		if w := c.State.Waiting; w != nil && slices.Contains(stuckReasons, w.Reason) {
			return fmt.Errorf("pod %s/%s container %s: %s: %s", p.Namespace, p.Name, c.Name, w.Reason, w.Message)
		}
	}
	return nil
}

// podReady reports the pod's Ready condition.
func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
