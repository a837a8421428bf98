package agent

import (
	"context"
	"net/netip"
	"sort"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshredirect/meshredirect/dataplane"
)

// StatusOptions say where to look and how to name what is found.
type StatusOptions struct {
	dataplane.InspectOptions
	// Client and NodeName, if set, name the pods from the API.
	Client   kubernetes.Interface
	NodeName string
}

// NodeStatus is what `meshredirect status` shows: the node's datapath as
// dataplane.Inspect reads it from the kernel and the pins, with each pod
// named from the API when it answers. A pod captured in-pod shows whether
// ztunnel has it: the enrolment annotation, which the agent sets in in-pod
// mode only once ztunnel acknowledged the pod over ZDS.
func NodeStatus(ctx context.Context, o StatusOptions) (dataplane.Status, error) {
	st, err := dataplane.Inspect(ctx, o.InspectOptions)
	if err != nil {
		return st, err
	}
	names := podNames(ctx, o)
	for i := range st.Pods {
		p := &st.Pods[i]
		for _, ip := range p.IPs {
			if n, ok := names[ip]; ok {
				p.Namespace, p.Name = n.namespace, n.name
			}
		}
	}
	sort.SliceStable(st.Pods, func(i, j int) bool {
		a, b := st.Pods[i], st.Pods[j]
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	for i := range st.InPod {
		p := &st.InPod[i]
		for _, ip := range p.IPs {
			if n, ok := names[ip]; ok {
				p.Namespace, p.Name = n.namespace, n.name
				p.Ztunnel = "not acked"
				if n.enrolled {
					p.Ztunnel = "acked"
				}
			}
		}
	}
	sort.SliceStable(st.InPod, func(i, j int) bool {
		a, b := st.InPod[i], st.InPod[j]
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	return st, nil
}

// podRef is a pod of the node as the API has it.
type podRef struct {
	namespace, name string
	// enrolled: annotated ambient.istio.io/redirection=enabled.
	enrolled bool
}

// podNames maps pod IPs to the pods from the API, when a client is given
// and the API answers within a few seconds; empty otherwise.
func podNames(ctx context.Context, o StatusOptions) map[string]podRef {
	out := map[string]podRef{}
	if o.Client == nil || o.NodeName == "" {
		return out
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pods, err := o.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + o.NodeName})
	if err != nil {
		return out
	}
	for _, p := range pods.Items {
		for _, ip := range podIPs(&p) {
			out[ip.String()] = podRef{namespace: p.Namespace, name: p.Name,
				enrolled: p.Annotations[RedirectionAnnotation] == RedirectionEnabled}
		}
	}
	return out
}

// PodNames maps the IPs of the node's pods to "namespace/name" from the API
// (o.Client and o.NodeName), for tools that name what they see (monitor);
// empty when the API is not given or does not answer within a few seconds.
func PodNames(ctx context.Context, o StatusOptions) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for ip, ref := range podNames(ctx, o) {
		if a, err := netip.ParseAddr(ip); err == nil {
			out[a] = ref.namespace + "/" + ref.name
		}
	}
	return out
}
