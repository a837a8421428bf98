// Command demo is `make demo`: it builds nodes in a box (network namespaces
// and veths, nothing on the machine's own interfaces), one per ztunnel mode,
// puts meshredirect's dataplane and a ztunnel stand-in on each, sends
// traffic for every flow of the design over IPv4 and IPv6, prints side by
// side what path each took in node mode and in in-pod mode, and the
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
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/meshredirect/meshredirect/agent"
	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/bpffs"
	"github.com/meshredirect/meshredirect/testenv/cluster"
	"github.com/meshredirect/meshredirect/testenv/cnichain"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
	"github.com/meshredirect/meshredirect/testenv/scenario"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

func main() {
	pods := flag.Int("pods", 100, "ambient pods on the node-mode node (at least 2)")
	inPodPods := flag.Int("inpod-pods", 10, "ambient pods on the in-pod node (at least 2; each in-pod enrolment loads programs built for the pod)")
	mode := flag.String("attach-mode", "auto", "attach programs as tcx links or legacy tc filters: auto, tcx or tc")
	flag.Parse()
	if err := run(*pods, *inPodPods, *mode); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// ztunnelMode is one way meshredirect serves ztunnel (DESIGN §6), with the
// node in a box that shows it.
type ztunnelMode struct {
	name   string // as the table's column says it
	inPod  bool
	box    *scenario.Box
	agent  string // agent.ZtunnelModeNode or agent.ZtunnelModeInPod
	serves string
}

// pods is how many ambient pods the mode's node gets besides the policy
// pods: in-pod mode builds and verifies programs for each pod it enrols
// (about a quarter of a second a pod here), node mode shares one set.
func (m *ztunnelMode) pods(node, inPod int) int {
	if m.inPod {
		return inPod
	}
	return node
}

var modes = []*ztunnelMode{
	{name: "NODE MODE", agent: agent.ZtunnelModeNode,
		serves: "ztunnel of Istio 1.18-1.20 (its shared, node-level mode), or a node proxy with transparent listeners in its own netns; capture on the pods' host veths"},
	{name: "IN-POD MODE", inPod: true, agent: agent.ZtunnelModeInPod,
		serves: "ztunnel of Istio 1.21+, installed without istio-cni and talking ZDS to the agent; capture inside each ambient pod's netns, where ztunnel opens its listeners"},
}

func run(pods, inPodPods int, modeFlag string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run me as root: I make network namespaces, load BPF programs and attach them")
	}
	mode, err := dataplane.ParseMode(modeFlag)
	if err != nil {
		return err
	}
	if pods < 2 || inPodPods < 2 {
		return errors.New("--pods and --inpod-pods must be at least 2")
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
		fmt.Fprintln(os.Stderr, "\ninterrupted: removing the nodes in a box")
		env.close()
		os.Exit(130)
	}()

	start := time.Now()
	// The API server of the last section starts meanwhile: it takes about
	// as long as the flows of one mode.
	api := startAPIServer(env)

	fmt.Println("meshredirect serves ztunnel in one of two modes (the agent's --ztunnel-mode):")
	for _, m := range modes {
		fmt.Printf("  %-12s %s\n", strings.ToLower(m.agent)+":", m.serves)
	}
	reuse := "yes: ztunnel's default SO_REUSEPORT listeners are fine"
	if !mrasm.AssignsReuseport() {
		reuse = "no: ztunnel needs INPOD_PORT_REUSE=false here"
	}
	fmt.Printf("  In-pod, before Linux 6.5 ztunnel needs INPOD_PORT_REUSE=false: bpf_sk_assign refuses SO_REUSEPORT listeners there.\n")
	fmt.Printf("  This kernel (%s) assigns to SO_REUSEPORT listeners: %s.\n\n", kernelRelease(), reuse)

	built := make([]string, len(modes))
	eachMode(func(i int, m *ztunnelMode) {
		t0 := time.Now()
		pinDir := env.bpffs()
		m.box = scenario.New(env, scenario.Options{
			Dataplane:  dataplane.Config{AttachMode: mode, CaptureDNS: true},
			PinDir:     pinDir,
			ExtraPods:  m.pods(pods, inPodPods) - 2,
			PolicyPods: true,
			DNSAnswer:  []netip.Addr{netip.MustParseAddr("198.19.255.53"), netip.MustParseAddr("fd10:6d72:0:ffff::53")},
			InPod:      m.inPod,
		})
		how := "ztunnel (stand-in) with transparent listeners in its own netns"
		if m.inPod {
			how = "ztunnel (stand-in) given each ambient pod over ZDS, its listeners in each pod"
		}
		built[i] = fmt.Sprintf("%s: %d ambient pods, a pod outside the mesh, %s, a host on a second node; built in %s",
			strings.ToLower(m.name), len(m.box.AmbientPods()), how, time.Since(t0).Round(time.Millisecond))
	})
	fmt.Println(strings.Join(built, "\n"))
	opts := modes[0].box.DP.Options()
	fmt.Printf("dataplane: attach mode %s, bpf_redirect_peer %v, pins in a private bpffs per node\n\n", modes[0].box.DP.AttachMode(), opts.RedirectPeer)

	fmt.Println("the flows of the design's first sections:")
	bad := printFlows(scenario.Flows())
	fmt.Println("\nwhat each kind of traffic becomes (DESIGN §5):")
	bad += printFlows(scenario.Semantics())

	fmt.Println("\ncounters of the programs (stats map, all CPUs):")
	if err := printStats(); err != nil {
		return err
	}

	fmt.Println("\nfirst packets of a new pod, chained CNI plugin (agent, kube-apiserver, ptp + meshredirect-cni):")
	bad += firstPackets(env, api)

	fmt.Printf("\nflows done in %s; removing the nodes in a box\n", time.Since(start).Round(time.Millisecond))
	if bad > 0 {
		return fmt.Errorf("%d flows did not take the expected path", bad)
	}
	return nil
}

// kernelRelease is uname -r.
func kernelRelease() string {
	var uts syscall.Utsname
	if err := syscall.Uname(&uts); err != nil {
		return "?"
	}
	var b []byte
	for _, c := range uts.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// outcome is a flow's run in one mode, for one family.
type outcome struct {
	o  scenario.Observation
	ok string // OK or FAIL
}

// printFlows runs flows over IPv4 and IPv6 in each mode, prints a row for
// each flow and family with the path it was expected to take and the one
// observed in each mode, and returns the number of runs that did not take
// it.
func printFlows(flows []scenario.Flow) (bad int) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	head := []string{"FLOW", "FAMILY", "WHAT", "EXPECTED PATH"}
	for _, m := range modes {
		head = append(head, m.name, "BYTES", "OK")
	}
	fmt.Fprintln(w, strings.Join(head, "\t"))
	progress := isTerminal(os.Stderr)
	for _, f := range flows {
		for _, v6 := range []bool{false, true} {
			results := runModes(f, v6)
			row := []string{f.ID, scenario.Family(v6), f.Name, f.Expect}
			var notes []string
			for i, m := range modes {
				r := results[i]
				if r.ok == "FAIL" {
					bad++
				}
				observed := r.o.Path
				if observed == "" {
					observed = "?"
				}
				row = append(row, observed, fmt.Sprint(r.o.Bytes), r.ok)
				if r.o.Err != nil {
					notes = append(notes, fmt.Sprintf("%s: error: %v", strings.ToLower(m.name), r.o.Err))
				}
			}
			fmt.Fprintln(w, strings.Join(row, "\t"))
			for _, n := range notes {
				fmt.Fprintf(w, "\t\t  %s\n", n)
			}
		}
		if progress {
			fmt.Fprint(os.Stderr, ".")
		}
	}
	if progress {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
	w.Flush()
	return bad
}

// runModes runs f in every mode at once, each on its own node.
func runModes(f scenario.Flow, v6 bool) []outcome {
	out := make([]outcome, len(modes))
	eachMode(func(i int, m *ztunnelMode) { out[i] = runFlow(m, f, v6) })
	return out
}

// eachMode runs fn for every mode at once, each on its own node, and waits:
// most of a flow's time is waiting (for a record that does not come when
// the path is direct, for datagrams that a drop loses), not work. A fatal
// error (env's panic) in one unwinds the caller once all are done, as it
// would have without the goroutines.
func eachMode(fn func(i int, m *ztunnelMode)) {
	panics := make([]any, len(modes))
	var wg sync.WaitGroup
	for i, m := range modes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { panics[i] = recover() }()
			fn(i, m)
		}()
	}
	wg.Wait()
	for _, p := range panics {
		if p != nil {
			panic(p)
		}
	}
}

// runFlow runs f in mode m and judges it.
func runFlow(m *ztunnelMode, f scenario.Flow, v6 bool) outcome {
	r := outcome{o: f.Run(m.box, v6), ok: "OK"}
	if !f.OK(r.o) {
		r.ok = "FAIL"
	}
	return r
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// firstPackets runs the CNI flow in each mode on boxes of their own, with
// one real kube-apiserver: an agent serving the plugin, the reference ptp
// plugin chained with meshredirect-cni; a new pod of an ambient namespace
// sends its first packets right after ADD returns. It returns the number of
// failed rows.
func firstPackets(e *env, api func() apiServer) int {
	if _, _, err := kubeapi.Binaries(); err != nil {
		fmt.Println("  skipped: kube-apiserver and etcd are not built; `make kube-bins cni-bins` builds them once (6-20 minutes)")
		return 0
	}
	if _, err := cnichain.ReferencePlugins(); err != nil {
		fmt.Println("  skipped: the reference CNI plugins are not built; `make cni-bins` builds them (seconds)")
		return 0
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.Cleanup(cancel)
	e.Cleanup(cnichain.Cleanup)
	t0 := time.Now()
	a := api()
	if a.err != nil {
		fmt.Printf("  FAIL: start kube-apiserver: %v\n", a.err)
		return 1
	}
	srv := a.srv
	fmt.Printf("  API server up in %s (started with the flows; waited %s more for it)\n", a.took.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  FLOW\tFAMILY\tMODE\tWHAT\tEXPECTED PATH\tOBSERVED PATH\tZTUNNEL'S RECORD\tBYTES\tOK")
	bad := make([]int, len(modes))
	rows := make([][]string, len(modes))
	notes := make([][]string, len(modes))
	eachMode(func(i int, m *ztunnelMode) { bad[i], rows[i], notes[i] = firstPacket(ctx, e, srv, m) })
	for _, r := range slices.Concat(rows...) {
		fmt.Fprintln(w, r)
	}
	w.Flush()
	for _, n := range slices.Concat(notes...) {
		fmt.Println("  " + n)
	}
	return bad[0] + bad[1]
}

// apiServer is a kube-apiserver started in the background.
type apiServer struct {
	srv  *kubeapi.Server
	err  error
	took time.Duration
}

// startAPIServer starts kube-apiserver and etcd in the background, if they
// are built, and returns a function that waits for them. They are stopped
// at e's cleanup, which cancels a start still under way.
func startAPIServer(e *env) func() apiServer {
	ch := make(chan apiServer, 1)
	if _, _, err := kubeapi.Binaries(); err != nil {
		ch <- apiServer{err: err}
	} else {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			t0 := time.Now()
			srv, err := kubeapi.Start(ctx, kubeapi.Options{})
			ch <- apiServer{srv: srv, err: err, took: time.Since(t0)}
		}()
		var got *apiServer
		wait := func() apiServer {
			if got == nil {
				a := <-ch
				got = &a
			}
			return *got
		}
		e.Cleanup(func() {
			if a := wait(); a.srv != nil {
				a.srv.Stop()
			}
		})
		e.Cleanup(cancel) // runs first: a start under way gives up
		return wait
	}
	return func() apiServer { return <-ch }
}

// firstPacket is the CNI flow in mode m: it returns the number of failed
// rows, the rows, and lines saying what happened around them.
func firstPacket(ctx context.Context, e *env, srv *kubeapi.Server, m *ztunnelMode) (bad int, rows, lines []string) {
	mode := strings.ToLower(m.name)
	step := func(what string, err error) bool {
		if err != nil {
			lines = append(lines, fmt.Sprintf("%s: FAIL: %s: %v", mode, what, err))
		}
		return err == nil
	}
	t0 := time.Now()
	box := scenario.New(e, scenario.Options{NoDataplane: true, PinDir: e.bpffs(), InPod: m.inPod})
	nodeName := "demo-node"
	if m.inPod {
		nodeName = "demo-node-inpod"
	}
	c, err := cluster.New(e, srv, box.Node, nodeName)
	if !step("mirror the node", err) {
		return 1, nil, lines
	}
	ns, err := c.Namespace("demo-", map[string]string{agent.DataplaneModeLabel: agent.ModeAmbient})
	if !step("create an ambient namespace", err) {
		return 1, nil, lines
	}
	ztNS, err := c.Namespace("istio-system-", nil)
	if step("create ztunnel's namespace", err) {
		_, err = c.MirrorPod(box.Ztunnel, ztNS, map[string]string{"app": "ztunnel"})
	}
	if !step("create ztunnel's pod", err) || !step("bind ztunnel's netns", c.BindNetns(box.Ztunnel, "ztunnel")) {
		return 1, nil, lines
	}
	dir, err := os.MkdirTemp("", "meshredirect-demo-cni-")
	if !step("make a temporary directory", err) {
		return 1, nil, lines
	}
	e.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "cni.sock")
	cfg := agent.Config{NodeName: c.NodeName, Client: c.Admin,
		Dataplane:  dataplane.Config{NodeNetns: box.Node.Path(), PinDir: box.Config.PinDir},
		Resolve:    dataplane.LocatorConfig{NetnsDirs: []string{c.NetnsDir}},
		ConfigFile: filepath.Join(dir, "config.json"), CNI: agent.CNIConfig{Socket: socket}, ZtunnelMode: m.agent}
	if m.inPod {
		// Where the box's stand-in dials, as ztunnel dials
		// /var/run/ztunnel/ztunnel.sock.
		cfg.ZDSSocket = box.ZDSPath
	}
	a, err := agent.New(cfg)
	if !step("start the agent", err) {
		return 1, nil, lines
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { a.Run(actx); close(done) }()
	e.Cleanup(func() {
		stop()
		<-done
		dataplane.Uninstall(box.Config, box.Ztunnel.Path())
	})
	for deadline := time.Now().Add(30 * time.Second); !a.Ready(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			step("wait for the agent", errors.New("not ready after 30s"))
			return 1, nil, lines
		}
	}
	if m.inPod {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := box.Standin.WaitZDS(wctx, func(s ztunnel.ZDSState) bool { return s.Connected && s.Snapshots > 0 })
		cancel()
		if !step("wait for ztunnel (stand-in) to connect over ZDS", err) {
			return 1, nil, lines
		}
	}
	chain, err := cnichain.New(box.Node, socket, filepath.Join(dir, "ipam"))
	if !step("prepare the CNI chain", err) {
		return 1, nil, lines
	}
	if _, err := c.PodObject(ns, "new-pod", nil); !step("create the pod object", err) {
		return 1, nil, lines
	}
	sb, err := cnichain.NewSandbox(e)
	if !step("make the pod's sandbox", err) {
		return 1, nil, lines
	}
	// The runtime brings the sandbox's lo up before the conflist's ADD
	// (containerd runs the loopback plugin first): in-pod capture routes
	// captured packets through lo.
	if !step("bring the sandbox's lo up", sb.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})) {
		return 1, nil, lines
	}
	t1 := time.Now()
	ips, err := chain.Add(sb, ns, "new-pod")
	if !step("CNI ADD", err) {
		return 1, nil, lines
	}
	took := time.Since(t1)
	// What ztunnel held when ADD returned: in in-pod mode the agent
	// answers the plugin only once ztunnel acked the pod, which it does
	// with its listeners open in the pod.
	var taken string
	if m.inPod {
		i := slices.IndexFunc(box.Standin.Pods(), func(p ztunnel.PodState) bool { return p.Namespace == ns && p.Name == "new-pod" && p.Up })
		if i < 0 {
			bad++
			lines = append(lines, fmt.Sprintf("%s: FAIL: ADD returned before ztunnel (stand-in) had the pod's listeners up", mode))
		} else {
			p := box.Standin.Pods()[i]
			taken = fmt.Sprintf("; ztunnel had acked the ZDS add (uid %s), %d listeners up in the pod", p.UID, len(p.Listeners))
		}
	}
	lines = append(lines, fmt.Sprintf("%s: agent up in %s; CNI ADD (ptp, then meshredirect-cni asking the agent) took %s%s; pod IPs %v",
		mode, t1.Sub(t0).Round(time.Millisecond), took.Round(time.Millisecond), taken, ips))
	box.Echo(box.Remote, scenario.EchoPort)
	for _, v6 := range []bool{false, true} {
		src := ips[0]
		for _, ip := range ips {
			if ip.Is6() == v6 {
				src = ip
			}
		}
		o := scenario.Observe(box, &sb.Namespace, v6, netip.AddrPortFrom(scenario.IP(box.Remote, v6), scenario.EchoPort))
		want := scenario.ViaZtunnel(ztunnel.PortOutbound)
		record := "-"
		if rs := box.RecordsFrom(src); len(rs) > 0 {
			record = "in ztunnel's netns"
			if p := rs[len(rs)-1].Pod; p.Name != "" {
				record = "in pod " + p.Namespace + "/" + p.Name
			}
		}
		ok := "OK"
		if o.Err != nil || o.Path != want || m.inPod && record != "in pod "+ns+"/new-pod" {
			ok, bad = "FAIL", bad+1
		}
		rows = append(rows, fmt.Sprintf("  10\t%s\t%s\tnew pod's first packets, right after ADD\t%s\t%s\t%s\t%d\t%s",
			scenario.Family(v6), mode, want, o.Path, record, o.Bytes, ok))
		if o.Err != nil {
			rows = append(rows, fmt.Sprintf("\t\t\t  error: %v\t\t\t\t\t", o.Err))
		}
	}
	if err := chain.Del(sb, ns, "new-pod"); !step("CNI DEL", err) {
		bad++
	}
	return bad, rows, lines
}

// printStats prints the programs' counters of each mode's node side by side.
func printStats() error {
	stats := make([]map[dataplane.Verdict]dataplane.Counter, len(modes))
	for i, m := range modes {
		var err error
		if stats[i], err = m.box.DP.Stats(); err != nil {
			return fmt.Errorf("%s: %w", strings.ToLower(m.name), err)
		}
	}
	verdicts := dataplane.Verdicts()
	sort.Slice(verdicts, func(i, j int) bool { return verdicts[i] < verdicts[j] })
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "verdict\t"
	for _, m := range modes {
		head += strings.ToLower(m.name) + ": packets\tbytes\t"
	}
	fmt.Fprintln(w, head)
	for _, v := range verdicts {
		fmt.Fprintf(w, "%s\t", v)
		for i := range modes {
			fmt.Fprintf(w, "%d\t%d\t", stats[i][v].Packets, stats[i][v].Bytes)
		}
		fmt.Fprintln(w)
	}
	return w.Flush()
}

// env is the testenv.TB of a program: it collects cleanups and runs them
// last in, first out; a fatal error unwinds to run().
type env struct {
	mu       sync.Mutex // the modes' flows run at once
	cleanups []func()
	failed   bool
	closed   bool
}

type fatal string

func (f fatal) Error() string { return string(f) }

func (e *env) Helper() { _ = e }
func (e *env) Cleanup(fn func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cleanups = append(e.cleanups, fn)
}
func (e *env) Fatal(args ...any) { panic(fatal(strings.TrimSuffix(fmt.Sprintln(args...), "\n"))) }
func (e *env) Fatalf(f string, args ...any) {
	panic(fatal(fmt.Sprintf(f, args...)))
}
func (e *env) Errorf(f string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failed = true
	fmt.Fprintf(os.Stderr, "demo: "+f+"\n", args...)
}

func (e *env) close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	e.mu.Unlock()
	// Cleanups may register more (a box's pods), run after the others.
	for {
		e.mu.Lock()
		n := len(e.cleanups)
		if n == 0 {
			e.mu.Unlock()
			return
		}
		fn := e.cleanups[n-1]
		e.cleanups = e.cleanups[:n-1]
		e.mu.Unlock()
		fn()
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
