package agent

import (
	"context"
	"errors"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// The kernel's side of uninstall is dataplane.Uninstall; this is the API's.

// RemoveAnnotations removes ambient.istio.io/redirection=enabled from every
// pod of node, and returns how many it changed.
func RemoveAnnotations(ctx context.Context, client kubernetes.Interface, node string) (int, error) {
	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return 0, fmt.Errorf("list pods of node %s: %w", node, err)
	}
	patch := []byte(fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, RedirectionAnnotation))
	n := 0
	var errs []error
	for _, p := range pods.Items {
		if p.Annotations[RedirectionAnnotation] != RedirectionEnabled {
			continue
		}
		if _, err := client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
			errs = append(errs, fmt.Errorf("patch pod %s/%s status: %w", p.Namespace, p.Name, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
