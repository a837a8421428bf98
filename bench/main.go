// Command bench measures meshredirect's redirection against the ways an
// ambient mesh has redirected before it, on nodes in a box (issue 8):
//
//	direct            no mesh: the pods talk to each other
//	explicit          the proxy is the client's next hop (routing only)
//	iptables-node     Istio's original node-level ambient rules
//	iptables-inpod    Istio's current default: iptables in each pod's netns
//	                  (nat REDIRECT, Istio 1.24+)
//	nftables-inpod    the same rules with nftables (istio-cni's nftables
//	                  backend)
//	ebpf-inpod        meshredirect's in-pod mode: tcx programs in each pod's
//	                  netns, no rule anywhere
//	ebpf-tc, ebpf-tcx meshredirect, legacy tc filters or tcx links,
//	                  bpf_redirect_peer
//	ebpf-tc-redirect, ebpf-tcx-redirect
//	                  the same with bpf_redirect (and a MAC rewrite)
//
// Every mode gets its own copy of the same topology (same addresses, its
// own namespaces: a node, a client, a server and a ztunnel pod), with the
// same ztunnel stand-in and the same servers, so that modes run
// interleaved, round by round. Every workload runs over IPv4 and IPv6
// (a mode that cannot carry IPv6 as it means to says why, in the
// results' skipped list). Three measures:
//
//   - kernel path: TCP segments injected as if they arrived on a pod's
//     host veth (XDP live frames), with a bad checksum so that they cross
//     everything and die at the destination's TCP layer, whose
//     TcpInCsumErrors proves where they went; ns per packet for each hop
//     of a proxied request, pinned to one CPU. Two kinds of segment: ACKs
//     of an established flow the copy holds open, and SYNs, each from a
//     source port of its own (the injector's XDP program writes it), so
//     that each is a new connection to conntrack and to the redirect's
//     socket lookup; their conntrack entries are counted in the proofs
//     and deleted after each run;
//   - end to end: HTTP through the stand-in with fortio v1.68.2 (as a
//     library): max QPS at several connection counts, new connections per
//     second (fortio without keep-alive: connect, GET, read, close, each
//     request on its own connection), latency percentiles up to p99.9 at
//     a fixed rate; CPU per request of the whole copy (its cgroup) and TCP
//     segments sent per request by all of its namespaces (Tcp OutSegs);
//   - per program: ns above an empty program with BPF_PROG_TEST_RUN, and
//     the verified instruction counts.
//
// It writes bench/results/latest.json, and with bench/report the PNG
// charts beside it and BENCHMARKS.md; it removes everything it made
// (namespaces with their rules, cgroups, its bpffs), also on Ctrl-C or
// failure. Run it as root (make bench, make bench-quick). With -render it
// measures nothing and only draws the charts and the report again from a
// results file (make bench-report).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf/rlimit"

	"github.com/meshredirect/meshredirect/bench/report"
)

func main() {
	if len(os.Args) > 1 {
		var err error
		switch os.Args[1] {
		case "serve":
			err = serveMain(os.Args[2:])
		case "load":
			err = loadMain()
		default:
			err = benchMain(os.Args[1:])
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if err := benchMain(nil); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// options are the benchmark's flags.
type options struct {
	quick         bool
	out, report   string
	standin       string
	cpu           int
	modes         []string
	kernelRounds  int
	kernelPackets int
	// kernelSYNs is what a SYN run injects (set from kernelPackets and
	// synLimit).
	kernelSYNs    int
	e2eRounds     int
	e2eMaxRounds  int
	spread        float64
	e2eDuration   time.Duration
	connections   []int
	connectConns  []int
	fixedQPS      float64
	fixedConns    int
	fixedDuration time.Duration
	programRounds int
	programRepeat int
	skipKernel    bool
	skipE2E       bool
	skipPrograms  bool
	skipScale     bool
	hold          bool
	render        string
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var o options
	self, _ := os.Executable()
	defCPU := 0
	if runtime.NumCPU() > 1 {
		defCPU = 1
	}
	modes := fs.String("modes", strings.Join(allModes, ","), "comma-separated `modes` to run")
	conns := fs.String("connections", "1,4,16", "comma-separated fortio connection `counts` for max QPS")
	connect := fs.String("connect-connections", "1,4,16", "comma-separated `counts` of concurrent connections for new connections per second")
	fs.BoolVar(&o.quick, "quick", false, "a short run (under 8 minutes with every mode) with the same output: fewer packets, rounds and seconds")
	fs.StringVar(&o.out, "out", "bench/results", "`directory` for latest.json and the charts")
	fs.StringVar(&o.report, "report", "BENCHMARKS.md", "`file` for the report")
	fs.StringVar(&o.standin, "standin", filepath.Join(filepath.Dir(self), "ztunnel-standin"), "`path` of the ztunnel-standin binary (go build ./testenv/cmd/ztunnel-standin)")
	fs.IntVar(&o.cpu, "cpu", defCPU, "`CPU` to pin the measured work to")
	fs.IntVar(&o.kernelRounds, "kernel-rounds", 20, "interleaved `rounds` of the kernel path")
	fs.IntVar(&o.kernelPackets, "kernel-packets", 200000, "packets injected per kernel-path `run` (SYN runs: at most 64509, one source port each)")
	fs.IntVar(&o.e2eRounds, "e2e-rounds", 6, "interleaved `rounds` end to end")
	fs.IntVar(&o.e2eMaxRounds, "e2e-max-rounds", 0, "add end-to-end `rounds`, up to this many in all, while some QPS ratio's per-round spread ((max - min) / median) is above -spread (0: no more than -e2e-rounds)")
	fs.Float64Var(&o.spread, "spread", 0.15, "the per-round `spread` of QPS ratios under which -e2e-max-rounds adds no round")
	fs.DurationVar(&o.e2eDuration, "e2e-duration", 1500*time.Millisecond, "`duration` of each max-rate fortio run")
	fs.DurationVar(&o.fixedDuration, "fixed-duration", 3*time.Second, "`duration` of each fixed-rate latency run")
	fs.Float64Var(&o.fixedQPS, "fixed-qps", 1000, "`rate` of the latency runs")
	fs.IntVar(&o.fixedConns, "fixed-connections", 4, "`connections` of the latency runs")
	fs.IntVar(&o.programRounds, "program-rounds", 10, "`rounds` of the per-program measure")
	fs.IntVar(&o.programRepeat, "program-repeat", 1000000, "BPF_PROG_TEST_RUN `repeats` per program per round")
	fs.BoolVar(&o.skipKernel, "skip-kernel", false, "skip the kernel path")
	fs.BoolVar(&o.skipE2E, "skip-e2e", false, "skip the end-to-end workload")
	fs.BoolVar(&o.skipPrograms, "skip-programs", false, "skip the per-program measure")
	fs.BoolVar(&o.skipScale, "skip-scale", false, "skip the scale phase (pods map size, enrolment, CNI ADD, the agent's memory)")
	fs.StringVar(&o.render, "render", "", "only draw the charts and write the report from this `latest.json` (no measurement)")
	fs.BoolVar(&o.hold, "hold", false, "build the copies, print their namespaces' paths and wait for Ctrl-C (for debugging a mode by hand)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.quick {
		// Only the values left at their defaults shrink.
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		shrink := func(name string, apply func()) {
			if !set[name] {
				apply()
			}
		}
		shrink("kernel-rounds", func() { o.kernelRounds = 10 })
		shrink("kernel-packets", func() { o.kernelPackets = 30000 })
		shrink("e2e-rounds", func() { o.e2eRounds = 3 })
		shrink("e2e-duration", func() { o.e2eDuration = 500 * time.Millisecond })
		shrink("fixed-duration", func() { o.fixedDuration = time.Second })
		shrink("program-rounds", func() { o.programRounds = 6 })
		shrink("program-repeat", func() { o.programRepeat = 300000 })
	}
	for _, m := range strings.Split(*modes, ",") {
		m = strings.TrimSpace(m)
		ok := false
		for _, known := range allModes {
			ok = ok || m == known
		}
		if !ok {
			return o, fmt.Errorf("-modes: unknown mode %q (want some of %s)", m, strings.Join(allModes, ","))
		}
		o.modes = append(o.modes, m)
	}
	var err error
	if o.connections, err = counts("connections", *conns); err != nil {
		return o, err
	}
	if o.connectConns, err = counts("connect-connections", *connect); err != nil {
		return o, err
	}
	if o.cpu < 0 || o.cpu >= runtime.NumCPU() {
		return o, fmt.Errorf("-cpu %d: this machine has CPUs 0-%d", o.cpu, runtime.NumCPU()-1)
	}
	return o, nil
}

// counts parses a flag's comma-separated positive counts.
func counts(flag, s string) ([]int, error) {
	var out []int
	for _, c := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-%s: %q is not a positive count", flag, c)
		}
		out = append(out, n)
	}
	return out, nil
}

// preflight checks what the benchmark needs before it builds anything.
func preflight(o options) error {
	if os.Geteuid() != 0 {
		return errors.New("run me as root: I make network namespaces, cgroups and iptables rules, and load BPF programs")
	}
	if _, err := os.Stat(o.standin); err != nil {
		return fmt.Errorf("the ztunnel stand-in binary: %w (build it: go build -o bin/ztunnel-standin ./testenv/cmd/ztunnel-standin, or pass -standin)", err)
	}
	for _, tool := range []string{"iptables-restore", "ip6tables-restore", "iptables", "ip6tables", "ipset", "nft", "ip", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is missing (apt-get install iptables ipset nftables iproute2 util-linux)", tool)
		}
	}
	return rlimit.RemoveMemlock()
}

// benchMain runs the benchmark.
func benchMain(args []string) (err error) {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	if o.render != "" {
		return render(o)
	}
	if err := preflight(o); err != nil {
		return err
	}
	e := &env{}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				e.close()
				panic(r)
			}
			err = f
		}
		fmt.Fprintln(os.Stderr, "bench: removing everything it made")
		e.close()
		if e.failed && err == nil {
			err = errors.New("cleanup reported errors")
		}
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Fprintln(os.Stderr, "\nbench: interrupted: removing everything it made")
		e.close()
		os.Exit(130)
	}()
	res, err := runBench(e, o)
	if err != nil {
		return err
	}
	if err := report.WriteResults(filepath.Join(o.out, "latest.json"), res); err != nil {
		return err
	}
	if err := report.Render(res, report.Output{Markdown: o.report, Charts: o.out}); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s, charts in %s, %s (%s)\n", filepath.Join(o.out, "latest.json"), o.out, o.report, res.Config.Elapsed)
	return nil
}

// logf prints a progress line.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// render draws the charts and writes the report from a results file, with
// no measurement: the charts go beside the file, as a run puts them.
func render(o options) error {
	res, err := report.ReadResults(o.render)
	if err != nil {
		return err
	}
	return report.Render(res, report.Output{Markdown: o.report, Charts: filepath.Dir(o.render)})
}
