// Command demo is `make demo`: it builds a node in a box (network namespaces
// and veths, nothing on the machine's own interfaces), puts meshredirect's
// dataplane and a ztunnel stand-in on it, sends traffic for every flow of
// the design over IPv4 and IPv6, prints what path each took and the
// programs' counters, and removes everything. It exits non-zero if any flow
// did not take the path the design says.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/bpffs"
	"github.com/meshredirect/meshredirect/testenv/cluster"
	"github.com/meshredirect/meshredirect/testenv/cnichain"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
	"github.com/meshredirect/meshredirect/testenv/scenario"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

func main() {
	pods := flag.Int("pods", 100, "ambient pods on the node (at least 2)")
	mode := flag.String("attach-mode", "auto", "attach programs as tcx links or legacy tc filters: auto, tcx or tc")
	flag.Parse()
	if err := run(*pods, *mode); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(pods int, modeFlag string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run me as root: I make network namespaces, load BPF programs and attach them")
	}
	mode, err := dataplane.ParseMode(modeFlag)
	if err != nil {
		return err
	}
	if pods < 2 {
		return errors.New("--pods must be at least 2")
	}

	env := &env{}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				env.close()
				panic(r)
			}
			err = f
		}
		env.close()
		if env.failed && err == nil {
			err = errors.New("cleanup reported errors")
		}
	}()
	// Ctrl-C still removes everything.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Fprintln(os.Stderr, "\ninterrupted: removing the node in a box")
		env.close()
		os.Exit(130)
	}()

	start := time.Now()
	pinDir := env.bpffs()
	box := scenario.New(env, scenario.Options{
		Dataplane:  dataplane.Config{AttachMode: mode, CaptureDNS: true},
		PinDir:     pinDir,
		ExtraPods:  pods - 2,
		PolicyPods: true,
		DNSAnswer:  []netip.Addr{netip.MustParseAddr("198.19.255.53"), netip.MustParseAddr("fd10:6d72:0:ffff::53")},
	})
	opts := box.DP.Options()
	fmt.Printf("node in a box: %d ambient pods, a pod outside the mesh, ztunnel (stand-in), a host on a second node; built in %s\n",
		len(box.AmbientPods()), time.Since(start).Round(time.Millisecond))
	fmt.Printf("dataplane: attach mode %s, bpf_redirect_peer %v, pins in a private bpffs (%s)\n\n", box.DP.AttachMode(), opts.RedirectPeer, pinDir)

	fmt.Println("the flows of the design's first sections:")
	bad := printFlows(box, scenario.Flows())
	fmt.Println("\nwhat each kind of traffic becomes (DESIGN §5), on the same node:")
	bad += printFlows(box, scenario.Semantics())

	fmt.Println("\ncounters of the programs (stats map, all CPUs):")
	if err := printStats(box.DP); err != nil {
		return err
	}

	fmt.Println("\nfirst packets of a new pod, chained CNI plugin (agent, kube-apiserver, ptp + meshredirect-cni):")
	bad += firstPacket(env)

	fmt.Printf("\nflows done in %s; removing the node in a box\n", time.Since(start).Round(time.Millisecond))
	if bad > 0 {
		return fmt.Errorf("%d flows did not take the expected path", bad)
	}
	return nil
}

// printFlows runs flows over IPv4 and IPv6 on box, prints a row for each
// with the path it was expected to take and the one observed, and returns
// the number of rows that did not take it.
func printFlows(box *scenario.Box, flows []scenario.Flow) (bad int) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "FLOW\tFAMILY\tWHAT\tEXPECTED PATH\tOBSERVED PATH\tBYTES\tOK")
	for _, f := range flows {
		for _, v6 := range []bool{false, true} {
			o := f.Run(box, v6)
			ok := "OK"
			if !f.OK(o) {
				ok, bad = "FAIL", bad+1
			}
			observed := o.Path
			if observed == "" {
				observed = "?"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", f.ID, scenario.Family(v6), f.Name, f.Expect, observed, o.Bytes, ok)
			if o.Err != nil {
				fmt.Fprintf(w, "\t\t  error: %v\t\t\t\t\n", o.Err)
			}
		}
		fmt.Fprint(os.Stderr, ".")
	}
	fmt.Fprint(os.Stderr, "\r")
	w.Flush()
	return bad
}

// firstPacket runs the CNI flow on a second box: a real kube-apiserver, an
// agent serving the plugin, the reference ptp plugin chained with
// meshredirect-cni; a new pod of an ambient namespace sends its first
// packets right after ADD returns. It returns the number of failed rows.
func firstPacket(e *env) int {
	if _, _, err := kubeapi.Binaries(); err != nil {
		fmt.Println("  skipped: kube-apiserver and etcd are not built; `make kube-bins cni-bins` builds them once (6-20 minutes)")
		return 0
	}
	if _, err := cnichain.ReferencePlugins(); err != nil {
		fmt.Println("  skipped: the reference CNI plugins are not built; `make cni-bins` builds them (seconds)")
		return 0
	}
	step := func(what string, err error) bool {
		if err != nil {
			fmt.Printf("  FAIL: %s: %v\n", what, err)
		}
		return err == nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.Cleanup(cancel)
	t0 := time.Now()
	srv, err := kubeapi.Start(ctx, kubeapi.Options{})
	if !step("start kube-apiserver", err) {
		return 1
	}
	e.Cleanup(func() { srv.Stop() })
	box := scenario.New(e, scenario.Options{NoDataplane: true, PinDir: e.bpffs()})
	c, err := cluster.New(e, srv, box.Node, "demo-node")
	if !step("mirror the node", err) {
		return 1
	}
	ns, err := c.Namespace("demo-", map[string]string{agent.DataplaneModeLabel: agent.ModeAmbient})
	if !step("create an ambient namespace", err) {
		return 1
	}
	ztNS, err := c.Namespace("istio-system-", nil)
	if step("create ztunnel's namespace", err) {
		_, err = c.MirrorPod(box.Ztunnel, ztNS, map[string]string{"app": "ztunnel"})
	}
	if !step("create ztunnel's pod", err) || !step("bind ztunnel's netns", c.BindNetns(box.Ztunnel, "ztunnel")) {
		return 1
	}
	dir, err := os.MkdirTemp("", "meshredirect-demo-cni-")
	if !step("make a temporary directory", err) {
		return 1
	}
	e.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "cni.sock")
	a, err := agent.New(agent.Config{NodeName: c.NodeName, Client: c.Admin,
		Dataplane:  dataplane.Config{NodeNetns: box.Node.Path(), PinDir: box.Config.PinDir},
		Resolve:    dataplane.LocatorConfig{NetnsDirs: []string{c.NetnsDir}},
		ConfigFile: filepath.Join(dir, "config.json"), CNI: agent.CNIConfig{Socket: socket}, ZtunnelMode: agent.ZtunnelModeNode})
	if !step("start the agent", err) {
		return 1
	}
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	e.Cleanup(func() {
		cancel()
		<-done
		dataplane.Uninstall(box.Config, box.Ztunnel.Path())
	})
	for deadline := time.Now().Add(30 * time.Second); !a.Ready(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			step("wait for the agent", errors.New("not ready after 30s"))
			return 1
		}
	}
	e.Cleanup(cnichain.Cleanup)
	chain, err := cnichain.New(box.Node, socket, filepath.Join(dir, "ipam"))
	if !step("prepare the CNI chain", err) {
		return 1
	}
	if _, err := c.PodObject(ns, "new-pod", nil); !step("create the pod object", err) {
		return 1
	}
	sb, err := cnichain.NewSandbox(e)
	if !step("make the pod's sandbox", err) {
		return 1
	}
	t1 := time.Now()
	ips, err := chain.Add(sb, ns, "new-pod")
	if !step("CNI ADD", err) {
		return 1
	}
	fmt.Printf("  API server and agent up in %s; CNI ADD (ptp, then meshredirect-cni asking the agent) took %s; pod IPs %v\n",
		t1.Sub(t0).Round(time.Millisecond), time.Since(t1).Round(time.Millisecond), ips)
	box.Echo(box.Remote, scenario.EchoPort)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  FLOW\tFAMILY\tWHAT\tEXPECTED PATH\tOBSERVED PATH\tBYTES\tOK")
	bad := 0
	for _, v6 := range []bool{false, true} {
		o := scenario.Observe(box, &sb.Namespace, v6, netip.AddrPortFrom(scenario.IP(box.Remote, v6), scenario.EchoPort))
		want := scenario.ViaZtunnel(ztunnel.PortOutbound)
		ok := "OK"
		if o.Err != nil || o.Path != want {
			ok, bad = "FAIL", bad+1
		}
		fmt.Fprintf(w, "  10\t%s\tnew pod's first packets, right after ADD\t%s\t%s\t%d\t%s\n", scenario.Family(v6), want, o.Path, o.Bytes, ok)
		if o.Err != nil {
			fmt.Fprintf(w, "\t\t  error: %v\t\t\t\t\n", o.Err)
		}
	}
	w.Flush()
	if err := chain.Del(sb, ns, "new-pod"); !step("CNI DEL", err) {
		bad++
	}
	return bad
}

func printStats(dp *dataplane.Dataplane) error {
	stats, err := dp.Stats()
	if err != nil {
		return err
	}
	verdicts := dataplane.Verdicts()
	sort.Slice(verdicts, func(i, j int) bool { return verdicts[i] < verdicts[j] })
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "verdict\tpackets\tbytes\t")
	for _, v := range verdicts {
		c := stats[v]
		fmt.Fprintf(w, "%s\t%d\t%d\t\n", v, c.Packets, c.Bytes)
	}
	return w.Flush()
}

// env is the testenv.TB of a program: it collects cleanups and runs them
// last in, first out; a fatal error unwinds to run().
type env struct {
	cleanups []func()
	failed   bool
	closed   bool
}

type fatal string

func (f fatal) Error() string { return string(f) }

func (e *env) Helper()           { _ = e }
func (e *env) Cleanup(fn func()) { e.cleanups = append(e.cleanups, fn) }
func (e *env) Fatal(args ...any) { panic(fatal(strings.TrimSuffix(fmt.Sprintln(args...), "\n"))) }
func (e *env) Fatalf(f string, args ...any) {
	panic(fatal(fmt.Sprintf(f, args...)))
}
func (e *env) Errorf(f string, args ...any) {
	e.failed = true
	fmt.Fprintf(os.Stderr, "demo: "+f+"\n", args...)
}

func (e *env) close() {
	if e.closed {
		return
	}
	e.closed = true
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
}

// bpffs mounts a private bpffs for the demo's pins, so that the machine's
// /sys/fs/bpf is never touched.
func (e *env) bpffs() string {
	dir, unmount, err := bpffs.MountPrivate("meshredirect-demo-")
	if err != nil {
		e.Fatal(err)
	}
	e.Cleanup(func() {
		if err := unmount(); err != nil {
			e.Errorf("%v", err)
		}
	})
	return filepath.Join(dir, "meshredirect")
}
