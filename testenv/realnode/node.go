package realnode

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
	"github.com/meshredirect/meshredirect/testenv/proc"
)

// The node's addresses, inside its own network namespace only: the node IPs sit on one end of a
// veth pair whose other end (the default route's gateway) is in the same namespace, so nothing
// addressed off the node can leave the machine.
var (
	nodeIPv4    = netip.MustParseAddr("198.18.250.1")
	nodeIPv6    = netip.MustParseAddr("fd6e:6f64:65::1")
	gatewayIPv4 = netip.MustParseAddr("198.18.250.2")
	gatewayIPv6 = netip.MustParseAddr("fd6e:6f64:65::2")
)

// NodeName is the name the kubelet registers the node under.
const NodeName = "realnode"

// CNI names a primary CNI configuration of the node.
type CNI string

// The primary CNIs a node can run, each with host-local IPAM over both families.
const (
	// PTP is the reference ptp plugin: a veth per pod, routed (as Calico and Cilium wire pods).
	PTP CNI = "ptp"
	// Bridge is the reference bridge plugin: the pods' veths on a Linux bridge (as Flannel and
	// kindnet's bridge mode do).
	Bridge CNI = "bridge"
)

// Options configure [Start].
type Options struct {
	// CNI is the primary CNI; default [PTP].
	CNI CNI
}

// Node is a running single-node cluster: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, containerd and a kubelet, all in this test binary's network and mount
// namespaces (see [Main]), with the project's images imported.
type Node struct {
	// Client is an admin client of the API server.
	Client kubernetes.Interface
	// Config is Client's configuration.
	Config *rest.Config
	// API is the control plane.
	API *kubeapi.Server
	// PodCIDRs are the primary CNI's pod ranges, IPv4 then IPv6.
	PodCIDRs []netip.Prefix
	// Bin holds the project's binaries the images were built from (meshredirect included).
	Bin string

	tb      testing.TB
	dir     string
	cni     CNI
	spawner *proc.Spawner
	procs   []*proc.Process // in start order; stopped in reverse
	cgroups []string        // the kubelet's cgroup root in every hierarchy
	kubelet *proc.Process

	mounts     []string // the node's tmpfs and bpffs mounts
	kubeconfig string   // the admin's, for the control plane's components
	images     string   // the archive of the project's images
}

// Start brings a node up and registers its teardown with tb.Cleanup: every process stopped by
// PID, the pods' processes killed through their cgroups, the cgroups removed. When the test
// failed, the teardown first prints `kubectl get pods -A -o wide`, the kubelet's log and every
// container's log. It skips the test (fails under CI=true) when the machine lacks something:
// root, the binaries of `make kube-bins` and `make cni-bins`, containerd or runc.
func Start(tb testing.TB, opts Options) *Node {
	tb.Helper()
	if testutil.InVM() {
		tb.Skip("a real node needs containerd and the kubelet, which the kernel matrix guest has not (runs in make test)")
	}
	testutil.RequirePrivileged(tb)
	if !inside() {
		testutil.SkipOrFail(tb, errOutside.Error())
	}
	for _, tool := range []string{"containerd", "runc", "ctr", "nft", "ip"} {
		testutil.RequireTool(tb, tool, "for a real node (apt-get install containerd runc nftables iproute2)")
	}
	if opts.CNI == "" {
		opts.CNI = PTP
	}
	kubeDir := kubeapi.CacheDir()
	for _, b := range []string{"kubelet", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(kubeDir, b)); err != nil {
			testutil.MissingPrerequisite(tb, fmt.Sprintf("needs %s in %s (make kube-bins)", b, kubeDir))
		}
	}
	plugins, err := testenv.ReferencePlugins()
	if err == nil {
		_, err = os.Stat(filepath.Join(plugins, "loopback"))
	}
	if err != nil {
		testutil.MissingPrerequisite(tb, fmt.Sprintf("needs the reference CNI plugins with loopback (make cni-bins): %v", err))
	}

	n := &Node{tb: tb, dir: tb.TempDir(), cni: opts.CNI, spawner: proc.NewSpawner()}
	tb.Cleanup(n.stop)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	for _, step := range []struct {
		what string
		fn   func(context.Context) error
	}{
		{"mount the node's directories", n.mount},
		{"wire the node's network", n.network},
		{"build the images", n.buildImages},
		{"create the kubelet's cgroup root", n.makeCgroups},
		{"start containerd", n.startContainerd},
		{"install the primary CNI", func(context.Context) error { return n.installCNI(plugins) }},
		{"start the control plane", n.startControlPlane},
		{"start the kubelet", n.startKubelet},
	} {
		t0 := time.Now()
		if err := step.fn(ctx); err != nil {
			tb.Fatalf("real node: %s: %v", step.what, err)
		}
		tb.Logf("real node: %s (%.1f s)", step.what, time.Since(t0).Seconds())
	}
	tb.Logf("real node: Ready in %.1f s (%s CNI)", time.Since(start).Seconds(), n.cni)
	return n
}

// network puts the node IPs on a veth pair and routes everything else to its peer, both ends
// inside this namespace, with forwarding on as a node has it.
func (n *Node) network(context.Context) error {
	cmds := [][]string{
		{"link", "add", "node0", "type", "veth", "peer", "name", "node1"},
		{"addr", "add", nodeIPv4.String() + "/24", "dev", "node0"},
		{"addr", "add", gatewayIPv4.String() + "/24", "dev", "node1"},
		{"-6", "addr", "add", nodeIPv6.String() + "/64", "dev", "node0", "nodad"},
		{"-6", "addr", "add", gatewayIPv6.String() + "/64", "dev", "node1", "nodad"},
		{"link", "set", "node0", "up"},
		{"link", "set", "node1", "up"},
		{"route", "add", "default", "via", gatewayIPv4.String(), "dev", "node0"},
		// IPv6 refuses a local gateway: the default route is on-link instead.
		{"-6", "route", "add", "default", "dev", "node0"},
	}
	for _, args := range cmds {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, kv := range [][2]string{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv6/conf/all/forwarding", "1"},
		// No duplicate address detection on the node's interfaces, the host veths the CNI
		// makes included (as on the node in a box): with it, a host veth's gateway address
		// stays tentative for about a second after the CNI ADD, unanswered, and a pod's
		// first IPv6 connection waits for it (measured: 3 of 4 pods' first dials hung).
		{"net/ipv6/conf/all/accept_dad", "0"},
		{"net/ipv6/conf/default/accept_dad", "0"},
	} {
		if err := os.WriteFile("/proc/sys/"+kv[0], []byte(kv[1]), 0o644); err != nil {
			return fmt.Errorf("set %s: %w", kv[0], err)
		}
	}
	return nil
}

// unwire deletes every link of the namespace but loopback (the node's veth pair, a bridge, the
// pods' host veths that outlived their netns) and the kubernetes Service's rule, so that the
// next node of this test binary starts on an empty network.
func (n *Node) unwire() error {
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range links {
		if l.Attrs().Name == "lo" {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete link %s: %w", l.Attrs().Name, err))
		}
	}
	_ = exec.Command("nft", "delete", "table", "ip", "realnode").Run()
	return errors.Join(errs...)
}

// start runs bin as one of the node's long-lived processes.
func (n *Node) start(name, bin string, args ...string) (*proc.Process, error) {
	p, err := proc.Start(n.spawner, n.dir, name, bin, args, os.Environ())
	if err != nil {
		return nil, err
	}
	n.procs = append(n.procs, p)
	return p, nil
}

// waitFor polls ready until it holds, failing early when p exits.
func waitFor(ctx context.Context, p *proc.Process, what string, ready func() bool) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !ready() {
		select {
		case <-p.Done():
			return p.ExitError()
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w:\n%s", what, ctx.Err(), p.Tail())
		case <-tick.C:
		}
	}
	return nil
}

// WaitNodeReady waits until the node reports Ready.
func (n *Node) waitNodeReady(ctx context.Context) error {
	return waitFor(ctx, n.kubelet, "node Ready", func() bool {
		node, err := n.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true
			}
		}
		return false
	})
}

// stop tears the node down in the order that lets each part exit cleanly: the kubelet first (so
// nothing restarts what is killed next), the pods' processes, containerd and its shims, then
// the control plane.
func (n *Node) stop() {
	if n.tb.Failed() {
		n.dump()
	}
	var errs []error
	if n.kubelet != nil {
		errs = append(errs, n.kubelet.Stop())
	}
	errs = append(errs, n.killPods())
	for i := len(n.procs) - 1; i >= 0; i-- {
		if p := n.procs[i]; p != n.kubelet {
			errs = append(errs, p.Stop())
		}
	}
	errs = append(errs, killShims())
	if n.API != nil {
		errs = append(errs, n.API.Stop())
	}
	n.spawner.Close()
	errs = append(errs, n.removeCgroups(), n.unwire(), n.unmount(), leftProcesses())
	if err := errors.Join(errs...); err != nil {
		n.tb.Errorf("real node: stop: %v", err)
	}
}
