package dataplane_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/tc"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/scenario"
)

// inPodNode is a node in a box with an in-pod dataplane and no ztunnel: the
// tests below put ztunnel's listeners into the pods themselves.
type inPodNode struct {
	node           *testenv.Node
	client, server *testenv.Pod
	remote         *testenv.Pod
	dp             *dataplane.Dataplane
	cfg            dataplane.Config
}

func newInPodNode(t *testing.T, wiring testenv.Wiring, mode ...tc.Mode) *inPodNode {
	t.Helper()
	testutil.RequirePrivileged(t)
	n := &inPodNode{node: testenv.NewNode(t, testenv.NodeOptions{Wiring: wiring})}
	n.client = n.node.AddPod("client", testenv.Ambient)
	n.server = n.node.AddPod("server", testenv.Ambient)
	n.remote = n.node.AddPeerNode("node2").AddPod("remote", testenv.NotAmbient)
	n.cfg = dataplane.Config{NodeNetns: n.node.Path(), PinDir: filepath.Join(testutil.BPFFS(t), "meshredirect")}
	if len(mode) > 0 {
		n.cfg.AttachMode = mode[0]
	}
	dp, err := dataplane.Open(n.cfg)
	must(t, err)
	n.dp = dp
	t.Cleanup(func() {
		dp.Close()
		if err := dataplane.Uninstall(n.cfg); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	addrs, err := dp.NodeAddresses()
	must(t, err)
	must(t, dp.SetNodeAddresses(addrs))
	return n
}

func (n *inPodNode) pod(p *testenv.Pod) dataplane.Pod {
	return dataplane.Pod{Name: "default/" + p.Name, IPs: []netip.Addr{p.IPv4, p.IPv6}, Netns: p.Path()}
}

// transparentListener listens on port in pod as ztunnel does there:
// IP_TRANSPARENT, SO_MARK 0x539, all addresses of a family. It sends back,
// on each accepted connection, the connection's local address (the original
// destination), then closes it.
func transparentListener(t *testing.T, ns *testenv.Namespace, network string, port int) {
	t.Helper()
	lc := net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
			if network == "tcp6" {
				level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
			}
			if serr = unix.SetsockoptInt(int(fd), level, opt, 1); serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mrasm.ZtunnelMark)
			}
		})
		return errors.Join(err, serr)
	}}
	var l net.Listener
	must(t, ns.Do(func() (err error) {
		l, err = lc.Listen(context.Background(), network, fmt.Sprintf(":%d", port))
		return err
	}))
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s", c.LocalAddr(), c.RemoteAddr())
			c.Close()
		}
	}()
}

// dialTCP connects from ns to dst over TCP of dst's family within 3 s, and
// gives the connection 3 s more.
func dialTCP(ns *testenv.Namespace, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	network := "tcp4"
	if dst.Addr().Is6() {
		network = "tcp6"
	}
	c, err := ns.DialContext(ctx, network, dst.String())
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	return c, nil
}

// dialFrom connects from ns to dst and returns what the peer sent: for a
// transparent listener, "<original destination> <client>".
func dialFrom(ns *testenv.Namespace, dst netip.AddrPort) (string, error) {
	c, err := dialTCP(ns, dst)
	if err != nil {
		return "", err
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestInPodCapture: the in-pod programs send an enrolled pod's outbound TCP
// to the 15001 listener in its own netns, with the original destination as
// the accepted socket's local address, and TCP sent to it to its 15006
// listener; the node's own connections (a kubelet probe) reach the
// application. Unenrolled, the pod's traffic goes direct again and nothing
// of the capture is left in its netns, both families.
func TestInPodCapture(t *testing.T) {
	for _, w := range []testenv.Wiring{testenv.WiringVeth, testenv.WiringPTP, testenv.WiringBridge} {
		t.Run(w.String(), func(t *testing.T) {
			n := newInPodNode(t, w)
			remoteEcho := n.remote.StartEcho(8080)
			// The server's application, which only the node's
			// connections and ztunnel's may reach.
			n.server.StartEcho(8080)
			clientWas := testenv.ReadSysctls(t, n.client.Netns, testenv.InPodSysctls)
			for _, p := range []*testenv.Pod{n.client, n.server} {
				for _, network := range []string{"tcp4", "tcp6"} {
					transparentListener(t, &p.Namespace, network, mrasm.PortOutbound)
					transparentListener(t, &p.Namespace, network, mrasm.PortInbound)
				}
				must(t, n.dp.EnrollInPod(n.pod(p)))
				// Again: nothing changes.
				must(t, n.dp.EnrollInPod(n.pod(p)))
			}
			checkCaptured(t, n.client)
			for _, v6 := range []bool{false, true} {
				ipOf := func(p *testenv.Pod) netip.Addr {
					if v6 {
						return p.IPv6
					}
					return p.IPv4
				}
				fam := "IPv4"
				if v6 {
					fam = "IPv6"
				}
				t.Run(fam, func(t *testing.T) {
					remote := netip.AddrPortFrom(ipOf(n.remote), 8080)
					got, err := dialFrom(&n.client.Namespace, remote)
					if want := remote.String() + " "; err != nil || len(got) < len(want) || got[:len(want)] != want {
						t.Errorf("client -> remote: got %q (%v), want the 15001 listener to say %q...", got, err, want)
					}
					server := netip.AddrPortFrom(ipOf(n.server), 8080)
					got, err = dialFrom(&n.remote.Namespace, server)
					if want := server.String() + " "; err != nil || len(got) < len(want) || got[:len(want)] != want {
						t.Errorf("remote -> server: got %q (%v), want the 15006 listener to say %q...", got, err, want)
					}
					// The node's own connection reaches the application:
					// an echo answers what it is sent.
					if _, err := exchange(&n.node.Namespace, server); err != nil {
						t.Errorf("node -> server (a probe): %v", err)
					}
				})
			}

			must(t, n.dp.UnenrollInPod(n.pod(n.client)))
			for _, v6 := range []bool{false, true} {
				remote := netip.AddrPortFrom(n.remote.IPv4, 8080)
				if v6 {
					remote = netip.AddrPortFrom(n.remote.IPv6, 8080)
				}
				before := len(remoteEcho.Peers())
				if _, err := exchange(&n.client.Namespace, remote); err != nil {
					t.Errorf("unenrolled client -> %s: %v", remote, err)
				} else if len(remoteEcho.Peers()) == before {
					t.Errorf("unenrolled client -> %s did not reach the remote echo", remote)
				}
			}
			checkNoCapture(t, n.cfg, n.client, clientWas)
			for _, ip := range []netip.Addr{n.client.IPv4, n.client.IPv6} {
				if e, err := n.dp.Maps().Endpoints.Get(ip); err == nil && e.IsPod() {
					t.Errorf("the endpoints map still has the unenrolled pod's %s", ip)
				}
			}
		})
	}
}

// exchange sends a line from ns to the echo server at dst and checks it
// comes back.
func exchange(ns *testenv.Namespace, dst netip.AddrPort) (string, error) {
	c, err := dialTCP(ns, dst)
	if err != nil {
		return "", err
	}
	defer c.Close()
	const msg = "ping\n"
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil {
		return "", err
	}
	if string(b) != msg {
		return "", fmt.Errorf("echo sent back %q", b)
	}
	return string(b), nil
}

// checkNoCapture fails the test if anything of the in-pod capture is left in
// pod's netns: a program on a hook of eth0 or lo, a rule or a route of the
// policy routing in either family (testenv.ReadPolicyRouting), or a sysctl
// enrolment sets (testenv.InPodSysctls) other than it was before, in was.
func checkNoCapture(t *testing.T, cfg dataplane.Config, p *testenv.Pod, was map[string]string) {
	t.Helper()
	cfg.NodeNetns = p.Path()
	for _, name := range []string{"eth0", "lo"} {
		atts, err := dataplane.ListAttachments(cfg, name)
		if err != nil {
			t.Errorf("list the attachments of %s in %s: %v", name, p.Name, err)
		}
		for _, a := range atts {
			t.Errorf("left on %s in %s: %v", name, p.Name, a)
		}
	}
	testenv.CheckPolicyRouting(t, p.Netns, p.Name+"'s netns", false)
	testenv.CheckSysctls(t, p.Netns, p.Name+"'s netns", was)
}

// checkCaptured fails the test unless pod's netns holds the policy routing
// of both families and the sysctls enrolment sets, whose absence
// checkNoCapture checks: so it provably reads both families, and the pod's
// sysctls.
func checkCaptured(t *testing.T, p *testenv.Pod) {
	t.Helper()
	testenv.CheckPolicyRouting(t, p.Netns, p.Name+"'s netns (enrolled)", true)
	testenv.CheckSysctls(t, p.Netns, p.Name+"'s netns (enrolled)", testenv.InPodSysctls)
}

// bindNetns bind mounts the netns of ns at dir/name, as `ip netns add`
// and container runtimes do, until the test ends.
func bindNetns(t *testing.T, ns *testenv.Namespace, dir, name string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	must(t, os.WriteFile(path, nil, 0o600))
	must(t, unix.Mount(ns.Path(), path, "", unix.MS_BIND, ""))
	t.Cleanup(func() { unix.Unmount(path, unix.MNT_DETACH) })
	return path
}

// startSleep starts a process in ns, which makes ns reachable as
// /proc/<pid>/ns/net, until the test ends.
func startSleep(t *testing.T, ns *testenv.Namespace) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	must(t, ns.Start(cmd))
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// sameNetns tells whether two paths are the same network namespace.
func sameNetns(a, b string) bool {
	var sa, sb unix.Stat_t
	return unix.Stat(a, &sa) == nil && unix.Stat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// TestInPodUninstall: uninstall finds the pods captured in-pod from the
// kernel alone, through a bind mount in a netns directory or only through
// a process in it, by their programs or, for a pod that lost them, by its
// policy routing and map entries, and leaves nothing of the capture in
// any (programs, policy routing of both families, sysctls) nor in the pin
// directory. A netns of the node with neither stays out. Both attach
// modes: tcx links found by their pins, legacy filters by their names.
func TestInPodUninstall(t *testing.T) {
	for _, mode := range []tc.Mode{tc.ModeTCX, tc.ModeLegacy} {
		t.Run(mode.String(), func(t *testing.T) {
			if mode == tc.ModeTCX && !tc.HaveTCX() {
				t.Skip("tcx needs kernel 6.6+") // a kernel feature: skipped even under CI
			}
			testInPodUninstall(t, mode)
		})
	}
}

func testInPodUninstall(t *testing.T, mode tc.Mode) {
	n := newInPodNode(t, testenv.WiringVeth, mode)
	bystander := n.node.AddPod("bystander", testenv.NotAmbient)
	// half has lost its programs (by hand): only its policy routing and
	// its map entries say it is ours. lone has lost all but its IPv6 mark
	// rule, as a uninstall that failed half way leaves a netns: that rule
	// alone must make it found, or a second uninstall never cleans it.
	half := n.node.AddPod("half", testenv.Ambient)
	lone := n.node.AddPod("lone", testenv.Ambient)
	pods := []*testenv.Pod{n.client, n.server, half, lone}
	was := map[*testenv.Pod]map[string]string{}
	for _, p := range pods {
		was[p] = testenv.ReadSysctls(t, p.Netns, testenv.InPodSysctls)
		must(t, n.dp.EnrollInPod(n.pod(p)))
		checkCaptured(t, p)
	}
	dir := t.TempDir()
	bindNetns(t, &n.client.Namespace, dir, "client")
	bindNetns(t, &bystander.Namespace, dir, "bystander")
	bindNetns(t, &half.Namespace, dir, "half")
	startSleep(t, &n.server.Namespace)
	halfCfg := n.cfg
	halfCfg.NodeNetns = half.Path()
	must(t, dataplane.Detach(halfCfg, "eth0"))
	must(t, dataplane.Detach(halfCfg, "lo"))
	bindNetns(t, &lone.Namespace, dir, "lone")
	loneCfg := n.cfg
	loneCfg.NodeNetns = lone.Path()
	must(t, dataplane.Detach(loneCfg, "eth0"))
	must(t, dataplane.Detach(loneCfg, "lo"))
	must(t, lone.Do(func() error {
		for _, args := range [][]string{
			{"-4", "rule", "del", "fwmark", "0x400/0xfff", "lookup", "100"},
			{"-4", "route", "del", "local", "default", "dev", "lo", "table", "100"},
			{"-6", "route", "del", "local", "default", "dev", "lo", "table", "100"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				return fmt.Errorf("ip %v: %v: %s", args, err, out)
			}
		}
		return nil
	}))
	loneRouting, err := testenv.ReadPolicyRouting(lone.Netns)
	must(t, err)
	if left := loneRouting.String(); !strings.Contains(left, "IPv6 rule") || strings.Contains(left, "IPv4") || strings.Contains(left, "route") {
		t.Fatalf("lone's netns should hold its IPv6 rule alone; it holds:\n%s", left)
	}

	found, err := dataplane.FindInPodNetns(n.cfg, []string{dir})
	must(t, err)
	for _, p := range pods {
		if !slices.ContainsFunc(found, func(path string) bool { return sameNetns(path, p.Path()) }) {
			t.Errorf("FindInPodNetns = %v: %s's netns is not among them", found, p.Name)
		}
	}
	if len(found) != len(pods) {
		t.Errorf("FindInPodNetns = %v, want the pods' only", found)
	}

	for _, p := range []*testenv.Pod{n.client, n.server} {
		podCfg := n.cfg
		podCfg.NodeNetns = p.Path()
		atts, err := dataplane.ListAttachments(podCfg, "eth0")
		must(t, err)
		if len(atts) != 2 || atts[0].Mode != mode {
			t.Fatalf("%s's eth0 holds %v, want two %s attachments", p.Name, atts, mode)
		}
	}

	n.dp.Close()
	if err := dataplane.Uninstall(n.cfg, found...); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	// Before checkNoCapture, which makes the tc pin directory again.
	if entries, err := os.ReadDir(n.cfg.PinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left: %v (%v)", entries, err)
	}
	for _, p := range pods {
		checkNoCapture(t, n.cfg, p, was[p])
	}
	// Again: nothing to do, no error.
	if err := dataplane.Uninstall(n.cfg, found...); err != nil {
		t.Errorf("uninstall again: %v", err)
	}
}

// TestInPodPodDeleted: a pod deleted with its capture in place (its netns
// and veth gone before any CNI DEL or agent saw it) is unenrolled without
// error, and the pins of its tcx links go at the next prune once the kernel
// has torn its netns down: lo goes with the netns, asynchronously (the
// kernel's cleanup_net), and its link is defunct only then. A runtime sends
// the CNI DEL while the netns still exists, where the programs are detached
// at once (TestInPodCapture).
func TestInPodPodDeleted(t *testing.T) {
	n := newInPodNode(t, testenv.WiringVeth)
	p := n.pod(n.client)
	must(t, n.dp.EnrollInPod(p))
	n.client.Delete()
	if err := n.dp.UnenrollInPod(p); err != nil {
		t.Fatalf("unenroll a deleted pod: %v", err)
	}
	pinsLeft := func() []string {
		pins, err := filepath.Glob(filepath.Join(dataplane.TCPinDir(n.cfg.PinDir), "*"))
		must(t, err)
		var left []string
		for _, pin := range pins {
			if st, err := os.Stat(pin); err == nil && !st.IsDir() {
				left = append(left, pin)
			}
		}
		return left
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(pinsLeft()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		if _, err := n.dp.PruneInPod(nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, pin := range pinsLeft() {
		t.Errorf("pin left behind: %s", pin)
	}
	if e, err := n.dp.Maps().Endpoints.Get(n.client.IPv4); err == nil && e.IsPod() {
		t.Error("the endpoints map still has the deleted pod")
	}
}

// TestInPodUnderRedirectPeer stands for "any CNI": the node delivers into
// the pods with bpf_redirect_peer, as Cilium and Calico's eBPF dataplane do,
// so the pods' host veths never run their egress hook. The capture inside
// the pods still takes what is sent to them.
func TestInPodUnderRedirectPeer(t *testing.T) {
	n := newInPodNode(t, testenv.WiringVeth)
	n.server.StartEcho(8080)
	for _, network := range []string{"tcp4", "tcp6"} {
		transparentListener(t, &n.server.Namespace, network, mrasm.PortInbound)
	}
	must(t, n.dp.EnrollInPod(n.pod(n.server)))
	n.node.DeliverWithRedirectPeer(filepath.Join(n.cfg.PinDir, "..", "redirect-peer"), n.server)
	txBefore := txPackets(t, n.node, n.server.HostVeth)
	for _, dst := range []netip.AddrPort{netip.AddrPortFrom(n.server.IPv4, 8080), netip.AddrPortFrom(n.server.IPv6, 8080)} {
		for _, src := range []*testenv.Pod{n.remote, n.client} {
			got, err := dialFrom(&src.Namespace, dst)
			if want := dst.String() + " "; err != nil || len(got) < len(want) || got[:len(want)] != want {
				t.Errorf("%s -> %s delivered with bpf_redirect_peer: got %q (%v), want the 15006 listener to say %q...", src.Name, dst, got, err, want)
			}
		}
	}
	// Proof that the host veth was skipped: it transmitted (next to
	// nothing of) the four exchanges' packets to the server.
	if tx := txPackets(t, n.node, n.server.HostVeth) - txBefore; tx > 4 {
		t.Errorf("the server's host veth transmitted %d packets: the node did not deliver with bpf_redirect_peer", tx)
	}
}

// txPackets reads the packets an interface of the node has transmitted.
func txPackets(t *testing.T, node *testenv.Node, name string) uint64 {
	t.Helper()
	var tx uint64
	must(t, node.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		tx = l.Attrs().Statistics.TxPackets
		return nil
	}))
	return tx
}

// TestFlowsInPod runs every flow of the design's first sections in in-pod
// mode: the stand-in takes the ambient pods over ZDS and listens inside
// each, as ztunnel 1.21+ does.
func TestFlowsInPod(t *testing.T) {
	b := newBox(t, scenario.Options{InPod: true, DNSAnswer: dnsAnswers})
	for _, f := range scenario.Flows() {
		if f.ID == "9" {
			continue // TestHundredPods
		}
		t.Run(f.ID+" "+f.Name, func(t *testing.T) { runFlow(t, b, f) })
	}
}

// TestSemanticsInPod runs every flow of DESIGN §5 that involves a socket in
// in-pod mode on nodes of the three wirings, both families.
func TestSemanticsInPod(t *testing.T) {
	for _, w := range testenv.Wirings {
		t.Run(w.String(), func(t *testing.T) {
			b := newBox(t, scenario.Options{InPod: true, Wiring: w, PolicyPods: true, DNSAnswer: dnsAnswers,
				Dataplane: dataplane.Config{CaptureDNS: true}})
			for _, f := range scenario.Semantics() {
				t.Run(f.ID+" "+f.Name, func(t *testing.T) {
					runFlow(t, b, f)
				})
			}
		})
	}
}

// TestInPodLoopbackDown: a CNI ADD may reach the agent before the
// runtime's loopback plugin has brought the sandbox's lo up; enrolment
// brings it up (the local route and the capture need it) and succeeds.
func TestInPodLoopbackDown(t *testing.T) {
	n := newInPodNode(t, testenv.WiringVeth)
	must(t, n.client.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetDown(lo)
	}))
	must(t, n.dp.EnrollInPod(n.pod(n.client)))
	must(t, n.client.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if lo.Attrs().Flags&net.FlagUp == 0 {
			t.Error("lo is still down after enrolment")
		}
		return nil
	}))
}

// TestPruneInPod: switching a node from node mode to in-pod mode leaves no
// node-mode program on the host veths nor on ztunnel's, and no entry of a
// pod that is no longer desired; the desired pods' entries stay.
func TestPruneInPod(t *testing.T) {
	b := newBox(t, scenario.Options{})
	stale := netip.MustParseAddr("198.18.16.200")
	must(t, b.DP.PutEntries([]dataplane.Pod{{Name: "gone", IPs: []netip.Addr{stale}, HostIfindex: b.Plain.HostVethIndex, MAC: b.Plain.MAC}}))
	desired := []dataplane.Pod{b.PodOf(b.Client), b.PodOf(b.Server)}
	for _, p := range desired {
		must(t, b.DP.EnrollInPod(p))
	}
	res, err := b.DP.PruneInPod(desired, nil)
	must(t, err)
	if len(res.Detached) == 0 {
		t.Error("no node-mode attachment detached")
	}
	all, err := b.DP.Attachments()
	must(t, err)
	for _, a := range all {
		if !a.Defunct {
			t.Errorf("left on the node: %s", a)
		}
	}
	entries, err := b.DP.Maps().Endpoints.Pods()
	must(t, err)
	if _, ok := entries[stale]; ok {
		t.Errorf("the entry of a pod that is not desired (%s) is left", stale)
	}
	for _, p := range desired {
		for _, ip := range p.IPs {
			if _, ok := entries[ip]; !ok {
				t.Errorf("the entry of desired pod %s (%s) was removed", p.Name, ip)
			}
		}
	}
	zt, err := b.DP.Maps().Ztunnel.Get()
	must(t, err)
	if zt.Ifindex != 0 {
		t.Errorf("the ztunnel map still names a node-level ztunnel (ifindex %d)", zt.Ifindex)
	}
}

// TestInspectInPod: status lists the pods captured in-pod, found from the
// kernel alone (one through a bind mount, one through a process in it):
// their IPs, interface, the three programs and the policy routing, and not
// as node mode's pods with missing programs. A pod whose programs were
// removed by hand, and one whose policy routing was, is each a problem.
func TestInspectInPod(t *testing.T) {
	n := newInPodNode(t, testenv.WiringVeth)
	for _, p := range []*testenv.Pod{n.client, n.server} {
		must(t, n.dp.EnrollInPod(n.pod(p)))
	}
	dir := t.TempDir()
	bindNetns(t, &n.client.Namespace, dir, "client")
	startSleep(t, &n.server.Namespace)
	opts := dataplane.InspectOptions{NodeNetns: n.node.Path(), PinDir: n.cfg.PinDir, NetnsDirs: []string{dir}}
	inspect := func() (dataplane.Status, map[string]dataplane.InPodStatus) {
		t.Helper()
		st, err := dataplane.Inspect(context.Background(), opts)
		must(t, err)
		byPod := map[string]dataplane.InPodStatus{}
		for _, ip := range st.InPod {
			for _, p := range []*testenv.Pod{n.client, n.server} {
				if slices.Contains(ip.IPs, p.IPv4.String()) {
					byPod[p.Name] = ip
				}
			}
		}
		return st, byPod
	}

	st, byPod := inspect()
	if len(st.InPod) != 2 || len(byPod) != 2 {
		t.Fatalf("status lists in-pod pods %+v, want the client and the server", st.InPod)
	}
	for _, p := range []*testenv.Pod{n.client, n.server} {
		ps := byPod[p.Name]
		if !slices.Equal(ps.IPs, sortedStrings(p.IPv4.String(), p.IPv6.String())) || ps.Interface != "eth0" || ps.Mode == "missing" ||
			!ps.PolicyRouting || len(ps.Programs) != 3 || !sameNetns(ps.Netns, p.Path()) {
			t.Errorf("%s: %+v", p.Name, ps)
		}
		for _, prog := range ps.Programs {
			if !strings.HasPrefix(prog.Name, "pod_") || prog.Mode != ps.Mode || prog.ID == 0 {
				t.Errorf("%s: program %+v", p.Name, prog)
			}
		}
	}
	if len(st.Pods) != 0 {
		t.Errorf("in-pod pods listed as node mode's: %+v", st.Pods)
	}
	if len(st.Problems) != 0 {
		t.Errorf("problems: %v", st.Problems)
	}

	// The server's programs removed by hand.
	podCfg := n.cfg
	podCfg.NodeNetns = n.server.Path()
	must(t, dataplane.Detach(podCfg, "eth0"))
	must(t, dataplane.Detach(podCfg, "lo"))
	// The client's rule to table 100 removed by hand.
	for _, fam := range []string{"-4", "-6"} {
		cmd := exec.Command("ip", fam, "rule", "del", "fwmark", fmt.Sprintf("%#x/%#x", mrasm.TProxyMark, mrasm.TProxyMask), "lookup", fmt.Sprint(mrasm.TProxyTable))
		must(t, n.client.Start(cmd))
		must(t, cmd.Wait())
	}

	st, byPod = inspect()
	if ps := byPod[n.server.Name]; ps.Mode != "missing" || len(ps.Programs) != 0 {
		t.Errorf("server with its programs removed: %+v", ps)
	}
	if ps := byPod[n.client.Name]; ps.PolicyRouting || ps.Mode == "missing" {
		t.Errorf("client with its rule removed: %+v", ps)
	}
	want := map[string]string{
		n.server.Name: "has its map entries but not its programs pod_loopback, pod_ingress, pod_egress",
		n.client.Name: "has its programs but not the policy routing",
	}
	for pod, problem := range want {
		found := false
		for _, p := range st.Problems {
			found = found || strings.Contains(p, problem) && strings.Contains(p, byPod[pod].IPs[0])
		}
		if !found {
			t.Errorf("no problem %q for the %s; problems: %v", problem, pod, st.Problems)
		}
	}
	if len(st.Problems) != 2 {
		t.Errorf("problems: %v, want the two above", st.Problems)
	}
}

func sortedStrings(s ...string) []string {
	slices.Sort(s)
	return s
}
