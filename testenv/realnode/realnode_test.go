package realnode

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// agentSelector selects the chart's agent pods.
const agentSelector = "app.kubernetes.io/name=meshredirect"

// agentNamespace is the chart's documented namespace.
const agentNamespace = "meshredirect-system"

// cluster is a node with the chart installed, ztunnel's stand-in and the test pods running.
type cluster struct {
	*Node
	mode   string // the agent's --ztunnel-mode
	chart  []byte // the rendered chart, as applied
	zt     Standin
	a1, a2 *corev1.Pod // in the ambient namespace
	p1, p2 *corev1.Pod // outside the mesh
}

// install brings a node up with cni, installs the chart in mode with the stand-in as ztunnel,
// and starts two ambient and two plain test pods, all Ready through their kubelet probes.
func install(t *testing.T, cni CNI, mode string) (*cluster, context.Context) {
	n := Start(t, Options{CNI: cni})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	c := &cluster{Node: n, mode: mode}
	var err error
	c.chart, err = n.Chart(ctx, "ztunnelMode="+mode)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	for _, m := range [][]byte{ZtunnelManifest(mode), c.chart, NamespacesManifest(),
		AppManifest(AmbientNamespace, "a1"), AppManifest(AmbientNamespace, "a2"),
		AppManifest(PlainNamespace, "p1"), AppManifest(PlainNamespace, "p2")} {
		if _, err := n.Apply(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.WaitPodsReady(ctx, agentNamespace, agentSelector, 1); err != nil {
		t.Fatal(err)
	}
	zts, err := n.WaitPodsReady(ctx, "istio-system", "app=ztunnel", 1)
	if err != nil {
		t.Fatal(err)
	}
	c.zt = Standin{URL: fmt.Sprintf("http://%s:15000", family(PodAddrs(&zts[0]), false))}
	c.a1, c.a2 = c.readyPod(t, ctx, AmbientNamespace, "a1"), c.readyPod(t, ctx, AmbientNamespace, "a2")
	c.p1, c.p2 = c.readyPod(t, ctx, PlainNamespace, "p1"), c.readyPod(t, ctx, PlainNamespace, "p2")
	t.Logf("chart, ztunnel and 4 pods Ready in %.1f s (%s CNI, %s mode)\n%s", time.Since(t0).Seconds(), cni, mode, n.PodTable())
	return c, ctx
}

// readyPod waits until pod ns/name is Ready and returns it.
func (c *cluster) readyPod(t *testing.T, ctx context.Context, ns, name string) *corev1.Pod {
	t.Helper()
	pods, err := c.WaitPodsReady(ctx, ns, "app="+name, 1)
	if err != nil {
		t.Fatal(err)
	}
	return &pods[0]
}

// flows are §5's rows between the node's real pods.
func (c *cluster) flows() []flow {
	return []flow{
		{name: "ambient pod -> ambient pod", src: ipsOf(c.a1), dst: ipsOf(c.a2), port: echoPort, listener: 15001},
		{name: "ambient pod -> pod outside the mesh", src: ipsOf(c.a1), dst: ipsOf(c.p1), port: echoPort, listener: 15001},
		{name: "pod outside the mesh -> ambient pod", src: ipsOf(c.p1), dst: ipsOf(c.a2), port: echoPort, listener: 15006},
		{name: "pod outside the mesh -> pod outside the mesh", src: ipsOf(c.p1), dst: ipsOf(c.p2), port: echoPort},
		{name: "the node -> ambient pod (as the kubelet's probes)", src: nodeAddr, dst: ipsOf(c.a2), port: echoPort},
	}
}

// TestInPod is the default install: in-pod mode on a ptp node. The agent runs as the chart's
// DaemonSet pod under containerd and runc (the chart's securityContext, capabilities and
// mounts), the stand-in as ztunnel's pod talking ZDS over the hostPath socket, the test pods
// become Ready through the kubelet's HTTP probes, and every flow between them takes §5's path.
func TestInPod(t *testing.T) {
	c, ctx := install(t, PTP, "inpod")
	checkFlows(t, ctx, c.zt, c.flows())
	c.statusMatchesAPI(t, ctx)
}

// TestInPodBridge is TestInPod's flows on a node whose pods hang off the bridge plugin's cni0.
func TestInPodBridge(t *testing.T) {
	c, ctx := install(t, Bridge, "inpod")
	checkFlows(t, ctx, c.zt, c.flows())
	c.statusMatchesAPI(t, ctx)
}

// TestNodeMode is node mode on a real node: the stand-in as a ztunnel of Istio 1.18-1.20 in its
// own pod, with transparent listeners, and the agent steering every ambient pod's traffic there.
func TestNodeMode(t *testing.T) {
	c, ctx := install(t, PTP, "node")
	checkFlows(t, ctx, c.zt, c.flows())
	c.statusMatchesAPI(t, ctx)
}
