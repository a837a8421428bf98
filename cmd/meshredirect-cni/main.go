// Command meshredirect-cni is a CNI plugin chained after the node's primary
// CNI. On ADD it asks the meshredirect agent, over its Unix socket, to
// capture the new pod's traffic, and returns only once the agent says
// capture is in place or that the pod is not ambient: the pod's first packet
// already goes through ztunnel. On DEL it asks the agent to let the pod go,
// and succeeds even when the agent or the pod's netns is gone. CHECK asks
// whether the capture the agent reported is still there.
//
// If the agent cannot be reached, ADD decides from the API server itself,
// as istio-cni does, with the kubeconfig the agent installed next to the
// conflist: it reads the pod and its namespace, and lets the pod start only
// if its labels do not ask for ambient mode (cni.AmbientRequested, the
// agent's own rule). An ambient pod fails ADD (the kubelet retries), so
// that no pod starts outside the mesh while the agent restarts; so does
// every pod the plugin cannot decide (no kubeconfig, the API unreachable or
// refusing, the pod missing or another of its name). A pod that asks for
// ambient but opts out (a sidecar, redirection disabled) waits for the
// agent too: only the agent applies the whole decision. Pods of the
// excluded namespaces start without asking anyone.
package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
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
	// Kubeconfig is the kubeconfig (JSON, from the agent) with which ADD
	// decides while the agent cannot be reached; without one, ADD fails
	// for every pod outside ExcludeNamespaces then.
	Kubeconfig string `json:"kubeconfig,omitempty"`
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
		return conf.addWithoutAgent(prev, req, err)
	} else if err != nil {
		// The agent refused: its message says why (no ztunnel, a failed
		// attachment); the kubelet retries.
		return fmt.Errorf("capture pod %s/%s: %w", req.Namespace, req.Name, err)
	}
	return types.PrintResult(prev, conf.CNIVersion)
}

// addWithoutAgent decides ADD from the API server while the agent cannot
// be reached (agentErr): the pod starts only if it certainly does not ask
// for ambient mode.
func (c *netConf) addWithoutAgent(prev *current.Result, req cni.PodRequest, agentErr error) error {
	if c.Kubeconfig == "" {
		return fmt.Errorf("capture pod %s/%s: %w (no kubeconfig in the plugin's configuration to tell whether the pod is ambient: no pod outside %v starts while the agent cannot be asked; the kubelet retries)",
			req.Namespace, req.Name, agentErr, c.ExcludeNamespaces)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cni.DefaultAPITimeout)
	defer cancel()
	ambient, reason, err := cni.AmbientFromKubeconfig(ctx, c.Kubeconfig, req)
	switch {
	case err != nil:
		return fmt.Errorf("capture pod %s/%s: %w, and %v: it does not start until one of them answers (the kubelet retries)",
			req.Namespace, req.Name, agentErr, err)
	case ambient:
		return fmt.Errorf("capture pod %s/%s: %w, and the pod is ambient (%s): it does not start uncaptured (the kubelet retries)",
			req.Namespace, req.Name, agentErr, reason)
	}
	// Not ambient: the agent would have said so, and done nothing.
	return types.PrintResult(prev, c.CNIVersion)
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
