package cnichain

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netns"

	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/testenv"
)

// ErrNoReferencePlugins is returned when `make cni-bins` has not run
// (testenv.ErrNoReferencePlugins: errors.Is matches either).
var ErrNoReferencePlugins = testenv.ErrNoReferencePlugins

// ReferencePlugins returns the directory of the cached ptp, bridge and
// host-local plugins (testenv.ReferencePlugins, which testenv's plugin
// wirings use too).
func ReferencePlugins() (string, error) {
	return testenv.ReferencePlugins()
}

var (
	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

// Plugin builds meshredirect-cni once per process and returns its directory.
func Plugin() (string, error) {
	buildOnce.Do(func() {
		if builtDir, buildErr = os.MkdirTemp("", "meshredirect-cni-"); buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(builtDir, "meshredirect-cni"),
			"github.com/meshredirect/meshredirect/cmd/meshredirect-cni").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build meshredirect-cni: %v\n%s", err, out)
		}
	})
	return builtDir, buildErr
}

// Cleanup removes what Plugin built; call it when the process is done with
// the chain (TestMain, the end of a program).
func Cleanup() {
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
}

// Chain is a conflist of a primary plugin (ptp or bridge) and
// meshredirect-cni for one node.
type Chain struct {
	node *testenv.Node
	path []string
	list *libcni.NetworkConfigList
	// IPAMDir is host-local's state: a file per address it holds.
	IPAMDir string
	// Name is the network's name.
	Name string
}

// New returns a chain on node whose meshredirect-cni reaches the agent at
// socket. Addresses come from the upper half of the node's pod CIDRs
// (testenv numbers its pods from the bottom), so other nodes route them
// back; the host side of each veth gets a gateway address no pod has.
func New(node *testenv.Node, socket, ipamDir string) (*Chain, error) {
	return newChain(node, socket, ipamDir, `"type": "ptp"`)
}

// NewBridge is New with the reference bridge plugin in place of ptp: each
// pod's host veth is a port of testenv.BridgeName, which holds the
// gateways with the pod CIDRs' lengths (isGateway), so the node routes the
// pods' addresses to the bridge, not to a veth. Not on a node whose own
// pods are wired by the bridge plugin (testenv.WiringBridge): that bridge
// holds other gateways, and the plugin refuses a second address in a
// subnet.
func NewBridge(node *testenv.Node, socket, ipamDir string) (*Chain, error) {
	return newChain(node, socket, ipamDir, fmt.Sprintf(`"type": "bridge", "bridge": %q, "isGateway": true`, testenv.BridgeName))
}

// newChain builds the conflist whose first plugin is primary, the fields
// of its entry before "mtu" and "ipam".
func newChain(node *testenv.Node, socket, ipamDir, primary string) (*Chain, error) {
	ref, err := ReferencePlugins()
	if err != nil {
		return nil, err
	}
	ours, err := Plugin()
	if err != nil {
		return nil, err
	}
	v4, v6 := node.PodCIDRv4, node.PodCIDRv6
	if v4.Bits() != 20 || v6.Bits() != 64 {
		return nil, fmt.Errorf("node %s: pod CIDRs %s and %s are not the /20 and /64 this chain carves up", node.Name, v4, v6)
	}
	base4 := v4.Addr().As4()
	start4 := netip.AddrFrom4([4]byte{base4[0], base4[1], base4[2] + 8, 1})
	end4 := netip.AddrFrom4([4]byte{base4[0], base4[1], base4[2] + 8, 254})
	gw4 := netip.AddrFrom4([4]byte{base4[0], base4[1], base4[2] + 15, 254})
	b6 := v6.Addr().As16()
	b6[13], b6[15] = 1, 1
	start6 := netip.AddrFrom16(b6)
	b6[15] = 0xff
	end6 := netip.AddrFrom16(b6)
	b6[13], b6[14], b6[15] = 0, 0xff, 0xff
	gw6 := netip.AddrFrom16(b6)

	c := &Chain{node: node, path: []string{ours, ref}, IPAMDir: ipamDir, Name: "meshredirect-" + node.Name}
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [
    {%s, "mtu": 1500, "ipam": {"type": "host-local", "dataDir": %q,
      "ranges": [[{"subnet": %q, "rangeStart": %q, "rangeEnd": %q, "gateway": %q}],
                 [{"subnet": %q, "rangeStart": %q, "rangeEnd": %q, "gateway": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
    {"type": "meshredirect-cni", "socket": %q, "excludeNamespaces": ["kube-system"], "timeoutSeconds": 10}
  ]
}`, c.Name, primary, ipamDir, v4, start4, end4, gw4, v6, start6, end6, gw6, socket)
	if c.list, err = libcni.ConfListFromBytes([]byte(conf)); err != nil {
		return nil, err
	}
	return c, nil
}

// Sandbox is a pod's network namespace before the CNI wires it, as the
// container runtime makes it.
type Sandbox struct {
	testenv.Namespace
	ID string
}

// NewSandbox makes an empty network namespace, closed when tb ends.
func NewSandbox(tb testenv.TB) (*Sandbox, error) {
	ns, err := newNetns()
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { ns.Close() })
	// No duplicate address detection, as testenv's pods: ptp waits for
	// IPv6 addresses to settle, a second per ADD with DAD on.
	if err := testutil.Do(ns, func() error {
		for _, k := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+k+"/accept_dad", []byte("0"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return &Sandbox{Namespace: testenv.Namespace{Netns: ns}, ID: fmt.Sprintf("ctr-%d-%d", int(ns), time.Now().UnixNano())}, nil
}

// newNetns makes a network namespace from a thread of its own, which is
// never unlocked and so dies with its goroutine: no caller's thread moves.
func newNetns() (netns.NsHandle, error) {
	type result struct {
		h   netns.NsHandle
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.New()
		c <- result{h, err}
	}()
	r := <-c
	if r.err != nil {
		return 0, fmt.Errorf("create a pod sandbox netns: %w", r.err)
	}
	return r.h, nil
}

func (c *Chain) rt(sb *Sandbox, ns, name string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: sb.ID, NetNS: sb.Path(), IfName: "eth0",
		Args: [][2]string{{"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", name}, {"IgnoreUnknown", "true"}}}
}

// Add runs the chain's ADD for pod ns/name in sb, from the node's network
// namespace (the plugins, children of a thread in it, act there), and
// returns the pod's IPs.
func (c *Chain) Add(sb *Sandbox, ns, name string) ([]netip.Addr, error) {
	var res *current.Result
	err := c.node.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		r, err := c.config().AddNetworkList(ctx, c.list, c.rt(sb, ns, name))
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, ip := range res.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		ips = append(ips, a.Unmap())
	}
	return ips, nil
}

// Del runs the chain's DEL for pod ns/name in sb.
func (c *Chain) Del(sb *Sandbox, ns, name string) error {
	return c.node.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return c.config().DelNetworkList(ctx, c.list, c.rt(sb, ns, name))
	})
}

// config is libcni with its cache of results beside host-local's state,
// not in the machine's /var/lib/cni.
func (c *Chain) config() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(c.path, filepath.Join(c.IPAMDir, "libcni-cache"), nil)
}

// Held returns the addresses host-local still holds for the chain.
func (c *Chain) Held() []string {
	var out []string
	entries, _ := os.ReadDir(filepath.Join(c.IPAMDir, c.Name))
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}
