package realnode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshredirect/meshredirect/testenv/proc"
)

// dumpLines is how much of each log a failed test prints.
const dumpLines = 60

// dump prints what a failed test's reader needs: the pods as `kubectl get pods -A -o wide`
// shows them, the tail of the kubelet's and containerd's logs, and the tail of every
// container's log (the agent's among them).
func (n *Node) dump() {
	if n.Client != nil {
		n.tb.Logf("real node: kubectl get pods -A -o wide\n%s", n.PodTable())
	}
	for _, p := range n.procs {
		if p.Name == "kubelet" || p.Name == "containerd" {
			n.tb.Logf("real node: %s log (last %d lines)\n%s", p.Name, dumpLines, proc.TailFile(p.LogPath, dumpLines))
		}
	}
	logs, _ := filepath.Glob("/var/log/pods/*/*/*.log")
	for _, l := range logs {
		rel, _ := filepath.Rel("/var/log/pods", l)
		n.tb.Logf("real node: container log %s (last %d lines)\n%s", rel, dumpLines, proc.TailFile(l, dumpLines))
	}
}

// PodTable returns the node's pods as `kubectl get pods -A -o wide` prints them.
func (n *Node) PodTable() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pods, err := n.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Sprintf("(list pods: %v)", err)
	}
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 8, 3, ' ', 0)
	fmt.Fprintln(w, "NAMESPACE\tNAME\tREADY\tSTATUS\tRESTARTS\tAGE\tIP\tNODE")
	for _, p := range pods.Items {
		ready, restarts := 0, int32(0)
		for _, c := range p.Status.ContainerStatuses {
			if c.Ready {
				ready++
			}
			restarts += c.RestartCount
		}
		status := string(p.Status.Phase)
		for _, c := range p.Status.ContainerStatuses {
			if c.State.Waiting != nil {
				status = c.State.Waiting.Reason
			}
		}
		if p.DeletionTimestamp != nil {
			status = "Terminating"
		}
		fmt.Fprintf(w, "%s\t%s\t%d/%d\t%s\t%d\t%s\t%s\t%s\n", p.Namespace, p.Name, ready, len(p.Spec.Containers),
			status, restarts, time.Since(p.CreationTimestamp.Time).Round(time.Second), podIPs(&p), p.Spec.NodeName)
	}
	w.Flush()
	return b.String()
}

// podIPs joins a pod's IPs with commas.
func podIPs(p *corev1.Pod) string {
	var ips []string
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 {
		return "<none>"
	}
	return strings.Join(ips, ",")
}

// logOf returns the tail of the log of container in pod ns/name, read from the kubelet's
// /var/log/pods.
func logOf(ns, name, container string) string {
	logs, _ := filepath.Glob(filepath.Join("/var/log/pods", ns+"_"+name+"_*", container, "*.log"))
	var b strings.Builder
	for _, l := range logs {
		if _, err := os.Stat(l); err == nil {
			b.WriteString(proc.TailFile(l, dumpLines) + "\n")
		}
	}
	return b.String()
}
