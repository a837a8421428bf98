package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshredirect/meshredirect/bench/report"
)

// baselines are the modes every other is compared with: Istio's rules,
// node-level iptables and in-pod iptables and nftables (the goals), no mesh and the explicit proxy (the floors), and
// ebpf-tcx (to show what the attach mode and the redirect helper change).
var baselines = []string{report.ModeIptablesNode, report.ModeIptablesInpod, report.ModeNftablesInpod, report.ModeDirect, report.ModeExplicit, report.ModeEBPFTCX, report.ModeEBPFTC}

// runBench builds a copy per mode and measures: per program, the kernel
// path, end to end.
func runBench(e *env, o options) (*report.Results, error) {
	start := time.Now()
	res := &report.Results{Machine: describeMachine(o.cpu)}
	res.Machine.Start = start
	res.Config = report.RunConfig{Quick: o.quick, Modes: o.modes, KernelRounds: o.kernelRounds, KernelPackets: o.kernelPackets,
		E2ERounds: o.e2eRounds, E2EDuration: o.e2eDuration.String(), Connections: o.connections,
		FixedQPS: o.fixedQPS, FixedQPSConns: o.fixedConns, MinCPUShare: minCPUShare, ProgramRounds: o.programRounds, ProgramRepeats: o.programRepeat}
	logf("load average %v; pinning to CPU %d", res.Machine.LoadAvg, o.cpu)

	cg2, err := cgroup2Mount()
	if err != nil {
		return nil, err
	}
	parent := newCgroup(e, filepath.Join(cg2, fmt.Sprintf("meshredirect-bench-%d", os.Getpid())))
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find my own binary: %w", err)
	}
	bo := buildOptions{BPFFS: e.bpffs(), Cgroup: parent, Standin: o.standin, Self: self, CPU: o.cpu, E2E: !o.skipE2E}
	copies := map[string]*Copy{}
	for _, m := range o.modes {
		t := time.Now()
		copies[m] = buildCopy(e, m, bo)
		logf("built copy %s in %s", m, time.Since(t).Round(time.Millisecond))
	}

	if o.hold {
		for _, m := range o.modes {
			for name, ns := range copies[m].namespaces() {
				logf("copy %s: %s netns %s", m, name, ns.Path())
			}
		}
		logf("holding; Ctrl-C removes everything")
		select {}
	}
	if !o.skipPrograms {
		if c := firstEBPF(copies); c != nil {
			logf("per program: %d rounds of %d runs", o.programRounds, o.programRepeat)
			res.Programs, res.Blocks = measurePrograms(e, c, &c.Ztunnel.Namespace, o.cpu, o.programRounds, o.programRepeat)
		} else {
			res.Skipped = append(res.Skipped, "per program: no eBPF mode selected")
		}
	}
	if !o.skipKernel {
		runs, proofs, skipped, floor, err := runKernelPath(e, o, copies)
		if err != nil {
			return nil, err
		}
		res.Machine.InjectFloorNs = floor
		res.Runs = append(res.Runs, runs...)
		res.Proofs, res.Skipped = proofs, append(res.Skipped, skipped...)
	}
	if !o.skipE2E {
		runs, err := runEndToEnd(o, copies)
		if err != nil {
			return nil, err
		}
		res.Runs = append(res.Runs, runs...)
	}
	if !o.skipScale {
		var skipped []string
		res.Scale, skipped = runScale(e, o, bo)
		res.Skipped = append(res.Skipped, skipped...)
	}
	res.Ratios = report.ComputeRatios(res.Runs, baselines)
	res.Machine.End = time.Now()
	res.Machine.LoadAvgEnd = loadAvg()
	res.Config.Elapsed = time.Since(start).Round(time.Second).String()
	res.Scripts = map[string]string{}
	for m, c := range copies {
		var b strings.Builder
		for _, s := range c.Scripts {
			b.WriteString(s.String())
		}
		res.Scripts[m] = b.String()
	}
	return res, nil
}

// firstEBPF returns an eBPF copy, ebpf-tcx if it ran.
func firstEBPF(copies map[string]*Copy) *Copy {
	for _, m := range []string{report.ModeEBPFTCX, report.ModeEBPFTC, report.ModeEBPFTCXRedir, report.ModeEBPFTCRedirect} {
		if c, ok := copies[m]; ok {
			return c
		}
	}
	return nil
}

// f64 returns a pointer to v, for the nullable fields of report.Run.
func f64(v float64) *float64 { return &v }

// rotate returns modes starting at the round's offset, so that no mode is
// always measured first (or right after the same other).
func rotate(modes []string, round int) []string {
	n := len(modes)
	out := make([]string, 0, n)
	for i := 0; i < n; i++ {
		out = append(out, modes[(i+round)%n])
	}
	return out
}

// runKernelPath holds a connection open in each copy, proves where each
// path's segments land, then measures every path of every mode, modes
// interleaved within each round.
func runKernelPath(e *env, o options, copies map[string]*Copy) ([]report.Run, []report.Proof, []string, float64, error) {
	in := newInjector(e, o.cpu)
	var modes []string
	injs := map[string][]injection{}
	var proofs []report.Proof
	var skipped []string
	for _, m := range o.modes {
		if !hasKernelPath(m) {
			skipped = append(skipped, fmt.Sprintf("kernel path of %s: measured end to end only", m))
			continue
		}
		c := copies[m]
		h := holdConnection(e, c)
		list, skip := injections(c, h)
		skipped = append(skipped, skip...)
		p, err := in.prove(c, list, 1000)
		if err != nil {
			return nil, nil, nil, 0, err
		}
		for _, pr := range p {
			if !pr.OK {
				return nil, nil, nil, 0, fmt.Errorf("copy %s, path %s: the segments did not land where they should (expected %s, TcpInCsumErrors deltas %v)", pr.Mode, pr.Path, pr.Expected, pr.Landed)
			}
		}
		proofs = append(proofs, p...)
		injs[m] = list
		modes = append(modes, m)
	}
	logf("kernel path: %d rounds of %d packets per mode and path", o.kernelRounds, o.kernelPackets)
	var runs []report.Run
	var floors []float64
	for round := 1; round <= o.kernelRounds; round++ {
		if len(modes) > 0 {
			first := injs[modes[0]][0]
			f, err := in.floor(&copies[modes[0]].Node.Namespace, first.Pod.HostVethIndex, first.frame, o.kernelPackets)
			if err != nil {
				return nil, nil, nil, 0, err
			}
			floors = append(floors, f)
		}
		for _, path := range report.KernelPaths {
			for _, m := range rotate(modes, round) {
				for _, inj := range injs[m] {
					if inj.Path != path {
						continue
					}
					la := loadAvg()[0]
					got, err := in.measure(copies[m], inj, o.kernelPackets)
					if err != nil {
						return nil, nil, nil, 0, err
					}
					if !got.ok {
						return nil, nil, nil, 0, fmt.Errorf("copy %s, path %s, round %d: %d of %d segments landed in the %s's netns, expected the %s's (%v)",
							m, path, round, got.packets, o.kernelPackets, got.landed, inj.Expect, got.deltas)
					}
					runs = append(runs, report.Run{Mode: m, Workload: report.WorkloadKernel, Path: path, Round: round,
						NsPerPacket: f64(got.ns), Packets: uint64(o.kernelPackets), Landed: got.landed, LandedPackets: got.packets, LoadAvg1: la})
				}
			}
		}
		fmt.Fprint(os.Stderr, ".")
	}
	fmt.Fprintln(os.Stderr)
	return runs, proofs, skipped, report.Median(floors), nil
}

// runEndToEnd runs fortio in every copy: for each round, each connection
// count at max QPS, then the fixed-rate latency run, modes interleaved.
func runEndToEnd(o options, copies map[string]*Copy) ([]report.Run, error) {
	var specs []e2eRun
	for _, c := range o.connections {
		specs = append(specs, e2eRun{Path: report.PathMaxQPS, Connections: c, QPS: -1})
	}
	specs = append(specs, e2eRun{Path: report.PathFixedQPS, Connections: o.fixedConns, QPS: o.fixedQPS})
	for _, m := range o.modes {
		proof, err := proveThroughStandin(copies[m])
		if err != nil {
			return nil, err
		}
		logf("end to end, proved: %s", proof)
	}
	logf("end to end: %d rounds of %d runs per mode, %s each", o.e2eRounds, len(specs), o.e2eDuration)
	var runs []report.Run
	for round := 1; round <= o.e2eRounds; round++ {
		for _, spec := range specs {
			for _, m := range rotate(o.modes, round) {
				r, err := runE2EFair(copies[m], spec, round, o.e2eDuration)
				if err != nil {
					return nil, fmt.Errorf("end to end, round %d, %s c=%d: %w", round, spec.Path, spec.Connections, err)
				}
				runs = append(runs, r)
			}
			fmt.Fprint(os.Stderr, ".")
		}
	}
	fmt.Fprintln(os.Stderr)
	return runs, nil
}
