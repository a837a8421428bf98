//lint:file-ignore SA1019 the reference plugins are invoked one at a time, from a single plugin configuration, as libcni.ConfFromBytes reads it; the conflist API would wrap each in a list.

package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/testutil"
)

// Wiring says how a node's pods are joined to it: by testenv itself, or by
// one of the reference CNI plugins of containernetworking/plugins, run as
// the kubelet runs them. The datapath sees different interfaces, routes and
// addresses on each.
type Wiring int

const (
	// WiringVeth, the zero value, is testenv's own point-to-point wiring,
	// made over netlink as Calico wires pods: a veth pair per pod, no
	// address on the host side, host routes to the pod, the pod's default
	// routes via link-local gateways that nothing owns (GatewayV4 and the
	// host veth's EUI-64 link-local address) with permanent neighbour
	// entries. The node's connections to its pods come from its node IPs.
	WiringVeth Wiring = iota
	// WiringPTP is the reference ptp plugin with host-local IPAM: a veth
	// pair per pod (named by the plugin, random MACs from the kernel), the
	// node's GatewayIPv4 and GatewayIPv6 (/32 and /128) on every host veth
	// and host routes (scope host) to the pod through it; the pod's eth0
	// holds its addresses with the pod CIDRs' lengths (/20 and /64) and
	// routes everything, its own pod CIDR included, via the gateways,
	// which it resolves with ARP and ND like any neighbour. The node's
	// connections to its pods come from the gateway addresses, the
	// addresses of the outgoing host veth.
	WiringPTP
	// WiringBridge is the reference bridge plugin with host-local IPAM and
	// isGateway: every pod, ztunnel's included, is a port (a host veth) of
	// one bridge, BridgeName, which holds the node's GatewayIPv4/20 and
	// GatewayIPv6/64; the pods' eth0s hold their addresses with the same
	// lengths, so pods of the node reach each other on the bridge at layer
	// 2, without the node's IP layer (MAC learning on, hairpin off, STP
	// off, the bridge not promiscuous; its ports are, as any bridge's);
	// everything else goes via the gateways. The node's connections to its
	// pods come from the bridge's addresses.
	WiringBridge
)

// Wirings lists every wiring, for table tests.
var Wirings = []Wiring{WiringVeth, WiringPTP, WiringBridge}

// String returns "veth", "ptp" or "bridge".
func (w Wiring) String() string {
	switch w {
	case WiringVeth:
		return "veth"
	case WiringPTP:
		return "ptp"
	case WiringBridge:
		return "bridge"
	}
	return fmt.Sprintf("Wiring(%d)", int(w))
}

// BridgeName is the bridge of a WiringBridge node: the bridge plugin's
// default, as on a node whose conflist names none.
const BridgeName = "cni0"

// ErrNoReferencePlugins is returned when `make cni-bins` has not run.
var ErrNoReferencePlugins = errors.New("the reference CNI plugins are not built: run `make cni-bins`")

// ReferencePlugins returns the directory of the cached ptp, bridge and
// host-local plugins that `make cni-bins` builds: $MESHREDIRECT_CNI_CACHE,
// or the first version under ${XDG_CACHE_HOME:-~/.cache}/meshredirect/cni.
func ReferencePlugins() (string, error) {
	cache := os.Getenv("MESHREDIRECT_CNI_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, _ := os.UserHomeDir()
			base = filepath.Join(home, ".cache")
		}
		found, _ := filepath.Glob(filepath.Join(base, "meshredirect", "cni", "*", "ptp"))
		if len(found) == 0 {
			return "", ErrNoReferencePlugins
		}
		cache = filepath.Dir(found[0])
	}
	for _, p := range []string{"ptp", "bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(cache, p)); err != nil {
			return "", fmt.Errorf("%w (%s has no %s)", ErrNoReferencePlugins, cache, p)
		}
	}
	return cache, nil
}

// requirePlugins returns ReferencePlugins' directory. Without it a test
// skips (fails under CI); anything else that is not a testing.TB fails.
func requirePlugins(tb TB, w Wiring) string {
	tb.Helper()
	dir, err := ReferencePlugins()
	if err == nil {
		return dir
	}
	reason := fmt.Sprintf("wiring %s: %v", w, err)
	if t, ok := tb.(testing.TB); ok {
		testutil.MissingPrerequisite(t, reason)
	}
	tb.Fatal(reason)
	return ""
}

// gatewayIPs returns the gateway addresses of a ptp or bridge node n: the
// addresses of its pod number MaxPodsPerNode, which such a node never hands
// out (the /20 has no other free host address).
func gatewayIPs(n int) (v4, v6 netip.Addr) {
	return podIPs(n, MaxPodsPerNode)
}

// cniNode is what a node wired by a plugin keeps: a directory of its own
// for host-local's state and libcni's cache of results (never the
// machine's /var/lib/cni), removed at teardown.
type cniNode struct {
	dir    string
	config *libcni.CNIConfig
}

// cniDirPrefix starts the nodes' CNI directories' names, followed by the
// test process's pid: the directories of a process that died without its
// cleanups (killed, crashed) are swept by the next one.
const cniDirPrefix = "meshredirect-testenv-cni-"

var sweepCNIOnce sync.Once

func sweepCNIDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), cniDirPrefix+"*"))
	for _, dir := range dirs {
		pid, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(dir), cniDirPrefix), "-")
		n, err := strconv.Atoi(pid)
		if err != nil || n == os.Getpid() || unix.Kill(n, 0) == nil {
			continue
		}
		os.RemoveAll(dir)
	}
}

func newCNINode(plugins string) (*cniNode, error) {
	sweepCNIOnce.Do(sweepCNIDirs)
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", cniDirPrefix, os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("make the CNI state directory: %w", err)
	}
	// libcni's default exec, given: libcni makes it at the first call
	// otherwise, which concurrent ADDs (AddPods) would race for.
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	return &cniNode{dir: dir, config: libcni.NewCNIConfigWithCacheDir([]string{plugins}, filepath.Join(dir, "cache"), exec)}, nil
}

// cniPod is what DEL needs of a pod ADD wired.
type cniPod struct {
	conf *libcni.NetworkConfig
	rt   *libcni.RuntimeConf
}

// netconf is the network configuration of one pod: the node's plugin with
// host-local IPAM whose ranges hold exactly the pod's addresses (testenv's
// address plan, not host-local's, picks them), in the node's pod CIDRs,
// with the node's gateways. The network, and so host-local's directory,
// is the node's.
func (n *Node) netconf(v4, v6 netip.Addr) ([]byte, error) {
	ranges := func(subnet netip.Prefix, a, gw netip.Addr) []map[string]string {
		return []map[string]string{{
			"subnet": subnet.String(), "rangeStart": a.String(), "rangeEnd": a.String(), "gateway": gw.String(),
		}}
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "testenv-" + n.cniName(),
		"mtu":        1500,
		"ipam": map[string]any{
			"type":    "host-local",
			"dataDir": filepath.Join(n.cni.dir, "ipam"),
			"ranges": [][]map[string]string{
				ranges(n.PodCIDRv4, v4, n.GatewayIPv4),
				ranges(n.PodCIDRv6, v6, n.GatewayIPv6),
			},
			// Via each family's gateway.
			"routes": []map[string]string{{"dst": "0.0.0.0/0"}, {"dst": "::/0"}},
		},
	}
	switch n.Wiring {
	case WiringPTP:
		conf["type"] = "ptp"
	case WiringBridge:
		conf["type"] = "bridge"
		conf["bridge"] = BridgeName
		conf["isGateway"] = true
	default:
		return nil, fmt.Errorf("wiring %s has no plugin", n.Wiring)
	}
	return json.Marshal(conf)
}

// cniName is the node's name as CNI accepts it in a network name and a
// container ID (letters, digits, '_', '.', '-').
func (n *Node) cniName() string {
	return fmt.Sprintf("node%d", n.Index)
}

// wireCNI runs the node's plugin's ADD for p, whose namespace is made,
// from the node's namespace (the plugin, a child of a thread in it, acts
// there, as under the kubelet), and fills p's fields from what the kernel
// then shows. p.IPv4 and p.IPv6 say which addresses to hand out.
func (n *Node) wireCNI(p *Pod, podNL *netlink.Handle, idx int) error {
	confBytes, err := n.netconf(p.IPv4, p.IPv6)
	if err != nil {
		return err
	}
	conf, err := libcni.ConfFromBytes(confBytes)
	if err != nil {
		return fmt.Errorf("parse the network configuration: %w", err)
	}
	id := fmt.Sprintf("testenv-%s-pod%d", n.cniName(), idx)
	p.cni = &cniPod{conf: conf, rt: &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       p.Path(),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "true"},
			{"K8S_POD_NAMESPACE", "default"},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
		},
	}}
	var res *current.Result
	if err := n.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		r, err := n.cni.config.AddNetwork(ctx, p.cni.conf, p.cni.rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	}); err != nil {
		return fmt.Errorf("%s ADD for %s: %w", n.Wiring, p.what, err)
	}
	var got []netip.Addr
	for _, ip := range res.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		got = append(got, a.Unmap())
	}
	if len(got) != 2 || got[0] != p.IPv4 || got[1] != p.IPv6 {
		return fmt.Errorf("%s ADD for %s: got addresses %v, want %s and %s", n.Wiring, p.what, got, p.IPv4, p.IPv6)
	}

	// The host side is eth0's peer: its IFLA_LINK is the peer's ifindex in
	// the node's namespace, whatever the plugin named it.
	eth0, err := podNL.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 of %s: %w", p.what, err)
	}
	p.MAC = eth0.Attrs().HardwareAddr
	host, err := n.nl.LinkByIndex(eth0.Attrs().ParentIndex)
	if err != nil {
		return fmt.Errorf("find the peer (ifindex %d) of eth0 of %s on %s: %w", eth0.Attrs().ParentIndex, p.what, n.Name, err)
	}
	if host.Type() != "veth" {
		return fmt.Errorf("the peer of eth0 of %s is %s, a %s, not a veth", p.what, host.Attrs().Name, host.Type())
	}
	p.HostVeth = host.Attrs().Name
	p.HostVethIndex = host.Attrs().Index
	p.HostVethMAC = host.Attrs().HardwareAddr
	p.GatewayV4, p.GatewayV6 = n.GatewayIPv4, n.GatewayIPv6
	// In the node's link group, so that teardown deletes it in the batch.
	if err := n.nl.LinkSetGroup(host, linkGroup); err != nil {
		return fmt.Errorf("set the link group of %s: %w", p.HostVeth, err)
	}

	ready := host // where the node answers the pod's ARP and ND
	switch n.Wiring {
	case WiringPTP:
		p.GatewayMAC = p.HostVethMAC
	case WiringBridge:
		br, err := n.nl.LinkByName(BridgeName)
		if err != nil {
			return fmt.Errorf("find bridge %s on %s: %w", BridgeName, n.Name, err)
		}
		if host.Attrs().MasterIndex != br.Attrs().Index {
			return fmt.Errorf("%s of %s is not a port of %s", p.HostVeth, p.what, BridgeName)
		}
		// The plugin made the bridge at the first ADD: into the group too.
		if br.Attrs().Group != linkGroup {
			if err := n.nl.LinkSetGroup(br, linkGroup); err != nil {
				return fmt.Errorf("set the link group of %s: %w", BridgeName, err)
			}
		}
		p.GatewayMAC = br.Attrs().HardwareAddr
		ready = br
	}
	if err := waitIPv6(podNL, nil, p.IPv6); err != nil {
		return fmt.Errorf("in %s: %w", p.what, err)
	}
	if err := waitIPv6(n.nl, ready, n.GatewayIPv6); err != nil {
		return fmt.Errorf("on %s: %w", n.what, err)
	}
	return nil
}

// unwireCNI runs the plugin's DEL for p: it deletes eth0 in the pod, and
// so the pair with its host routes (and, on ptp, the gateway addresses of
// the host veth); host-local releases the addresses; libcni forgets its
// cached result.
func (n *Node) unwireCNI(p *Pod) error {
	return n.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := n.cni.config.DelNetwork(ctx, p.cni.conf, p.cni.rt); err != nil {
			return fmt.Errorf("%s DEL for %s: %w", n.Wiring, p.what, err)
		}
		return nil
	})
}

// HeldAddresses returns the addresses host-local holds for the node's pods
// (none on a WiringVeth node), sorted.
func (n *Node) HeldAddresses() []netip.Addr {
	if n.cni == nil {
		return nil
	}
	entries, _ := os.ReadDir(filepath.Join(n.cni.dir, "ipam", "testenv-"+n.cniName()))
	var held []netip.Addr
	for _, e := range entries {
		if a, err := netip.ParseAddr(e.Name()); err == nil {
			held = append(held, a)
		}
	}
	slices.SortFunc(held, netip.Addr.Compare)
	return held
}
