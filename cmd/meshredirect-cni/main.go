// Command meshredirect-cni is a CNI plugin chained after the node's primary
// CNI. On ADD it asks the meshredirect agent, over its Unix socket, to
// capture the new pod's traffic, and returns only once the agent says
// capture is in place or that the pod is not ambient: the pod's first packet
// already goes through ztunnel. On DEL it asks the agent to let the pod go,
// and succeeds even when the agent or the pod's netns is gone. CHECK asks
// whether the capture the agent reported is still there.
//
// If the agent cannot be reached, ADD fails for every pod outside the
// excluded namespaces (the kubelet retries it), so that no pod starts
// outside the mesh while the agent restarts; the plugin cannot tell an
// ambient pod from another without the agent.
package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/meshredirect/meshredirect/cni"
)

// netConf is the plugin's entry in the conflist.
type netConf struct {
	types.PluginConf
	// Socket is the agent's Unix socket (default cni.DefaultSocket).
	Socket string `json:"socket,omitempty"`
	// ExcludeNamespaces are never captured: their pods start without
	// asking the agent (kube-system must start before any agent can).
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
	// TimeoutSeconds bounds the wait for the agent (default 30).
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
}

// k8sArgs are the CNI_ARGS the kubelet passes.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS names
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
}

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck},
		version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"),
		"meshredirect-cni: capture ambient pods into ztunnel from their first packet")
}

func (c *netConf) client() (*cni.Client, context.Context, context.CancelFunc) {
	timeout := cni.DefaultTimeout
	if c.TimeoutSeconds > 0 {
		timeout = time.Duration(c.TimeoutSeconds) * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	return cni.NewClient(c.Socket), ctx, cancel
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, prev, req, err := parse(args)
	if err != nil {
		return err
	}
	if prev == nil {
		return fmt.Errorf("meshredirect-cni must be chained after the primary CNI: no previous result")
	}
	if req.Name == "" || slices.Contains(conf.ExcludeNamespaces, req.Namespace) {
		// Not a Kubernetes pod, or never captured: nothing to ask.
		return types.PrintResult(prev, conf.CNIVersion)
	}
	client, ctx, cancel := conf.client()
	defer cancel()
	// Captured, or not ambient: either way the pod may start.
	if _, err := client.Do(ctx, cni.PathAdd, req); errors.Is(err, cni.ErrUnreachable) {
		return fmt.Errorf("capture pod %s/%s: %w (no pod outside %v starts while the agent cannot be asked; the kubelet retries)",
			req.Namespace, req.Name, err, conf.ExcludeNamespaces)
	} else if err != nil {
		// The agent refused: its message says why (no ztunnel, a failed
		// attachment); the kubelet retries.
		return fmt.Errorf("capture pod %s/%s: %w", req.Namespace, req.Name, err)
	}
	return types.PrintResult(prev, conf.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	conf, _, req, err := parse(args)
	if err != nil || req.Name == "" || slices.Contains(conf.ExcludeNamespaces, req.Namespace) {
		// DEL must succeed: a broken configuration or a foreign pod has
		// nothing of ours to remove.
		return nil
	}
	client, ctx, cancel := conf.client()
	defer cancel()
	// An agent that is down cleans up at its next reconcile.
	client.Do(ctx, cni.PathDel, req)
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, _, req, err := parse(args)
	if err != nil {
		return err
	}
	if req.Name == "" || slices.Contains(conf.ExcludeNamespaces, req.Namespace) {
		return nil
	}
	client, ctx, cancel := conf.client()
	defer cancel()
	// The agent answers an error when an ambient pod lacks its capture.
	if _, err := client.Do(ctx, cni.PathCheck, req); err != nil {
		return fmt.Errorf("check pod %s/%s: %w", req.Namespace, req.Name, err)
	}
	return nil
}
