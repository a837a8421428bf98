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
		FixedQPS: o.fixedQPS, FixedQPSConns: o.fixedConns, FixedDuration: o.fixedDuration.String(), ConnectConnections: o.connectConns,
		MinCPUShare: minCPUShare, ProgramRounds: o.programRounds, ProgramRepeats: o.programRepeat}
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
			t := time.Now()
			res.Programs, res.Blocks = measurePrograms(e, c, &c.Ztunnel.Namespace, o.cpu, o.programRounds, o.programRepeat)
			logf("per program took %s", time.Since(t).Round(time.Second))
		} else {
			res.Skipped = append(res.Skipped, "per program: no eBPF mode selected")
		}
	}
	if !o.skipKernel {
		syns, err := synLimit()
		if err != nil {
			return nil, err
		}
		o.kernelSYNs = min(o.kernelPackets, syns)
		res.Config.KernelSYNs = o.kernelSYNs
		t := time.Now()
		runs, proofs, skipped, floor, err := runKernelPath(e, o, copies)
		if err != nil {
			return nil, err
		}
		logf("kernel path took %s", time.Since(t).Round(time.Second))
		res.Machine.InjectFloorNs = floor
		res.Runs = append(res.Runs, runs...)
		res.Proofs, res.Skipped = proofs, append(res.Skipped, skipped...)
	}
	if !o.skipE2E {
		t := time.Now()
		runs, skipped, err := runEndToEnd(o, copies)
		if err != nil {
			return nil, err
		}
		logf("end to end took %s", time.Since(t).Round(time.Second))
		for _, r := range runs {
			// -e2e-max-rounds may have added rounds.
			res.Config.E2ERounds = max(res.Config.E2ERounds, r.Round)
		}
		res.Runs = append(res.Runs, runs...)
		res.Skipped = append(res.Skipped, skipped...)
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

// runKernelPath holds a connection open in each copy for each family,
// proves where each path's segments land (established and SYN), then
// measures every path of every mode, modes interleaved within each round.
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
		for _, fam := range families {
			if why := familySkipped(m, fam); why != "" {
				skipped = append(skipped, fmt.Sprintf("kernel path of %s over %s: %s", m, fam, why))
				continue
			}
			h := holdConnection(e, c, fam)
			list, skip := injections(c, h)
			if fam == families[0] {
				skipped = append(skipped, skip...)
			}
			p, err := in.prove(c, list, 1000)
			if err != nil {
				return nil, nil, nil, 0, err
			}
			for _, pr := range p {
				if !pr.OK {
					return nil, nil, nil, 0, fmt.Errorf("copy %s, path %s, %s %s: the segments did not land where they should (expected %s, TcpInCsumErrors deltas %v, counters %v)",
						pr.Mode, pr.Path, pr.Family, pr.Segment, pr.Expected, pr.Landed, pr.Counters)
				}
			}
			proofs = append(proofs, p...)
			injs[m] = append(injs[m], list...)
		}
		modes = append(modes, m)
	}
	logf("kernel path: %d rounds of %d packets per mode, path, family and segment (SYNs: %d, one source port each)", o.kernelRounds, o.kernelPackets, o.kernelSYNs)
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
			for _, seg := range []string{report.SegmentEstablished, report.SegmentSYN} {
				for _, fam := range families {
					for _, m := range rotate(modes, round) {
						for _, inj := range injs[m] {
							if inj.Path != path || inj.Segment != seg || inj.Family != fam {
								continue
							}
							r, err := kernelRun(in, copies[m], inj, round, inj.packets(o.kernelPackets, o.kernelSYNs))
							if err != nil {
								return nil, nil, nil, 0, err
							}
							runs = append(runs, r)
						}
					}
				}
			}
		}
		fmt.Fprint(os.Stderr, ".")
	}
	fmt.Fprintln(os.Stderr)
	return runs, proofs, skipped, report.Median(floors), nil
}

// wide reports whether, after the rounds before round, some end-to-end
// ratio's per-round spread ((max - min) / median) is above spread: one
// more round is worth its time (-e2e-max-rounds).
func wide(runs []report.Run, spread float64, round int) bool {
	for _, r := range report.ComputeRatios(runs, baselines) {
		if r.QPSRatioMedian == nil || *r.QPSRatioMedian <= 0 || r.Rounds < 2 {
			continue
		}
		if w := (r.RatioMax - r.RatioMin) / *r.QPSRatioMedian; w > spread {
			logf("end to end: round %d, as %s/%s %s %s c=%d spreads %.0f%% (%.2f-%.2f)",
				round, r.Mode, r.Baseline, r.Workload, r.Family, r.Connections, 100*w, r.RatioMin, r.RatioMax)
			return true
		}
	}
	return false
}

// kernelRun measures one path of one copy once.
func kernelRun(in *injector, c *Copy, inj injection, round, packets int) (report.Run, error) {
	la := loadAvg()[0]
	got, err := in.measure(c, inj, packets)
	if err != nil {
		return report.Run{}, err
	}
	if !got.ok {
		return report.Run{}, fmt.Errorf("copy %s, path %s, %s %s, round %d: %d of %d segments landed in the %s's netns, expected the %s's (%v; SYNs' conntrack entries %v)",
			c.Mode, inj.Path, inj.Family, inj.Segment, round, got.packets, packets, got.landed, inj.Expect, got.deltas, got.entries)
	}
	return report.Run{Mode: c.Mode, Workload: report.WorkloadKernel, Path: inj.Path, Family: inj.Family, Segment: inj.Segment, Round: round,
		NsPerPacket: f64(got.ns), Packets: uint64(packets), Landed: got.landed, LandedPackets: got.packets, LoadAvg1: la}, nil
}

// runEndToEnd runs fortio in every copy: for each round, each connection
// count at max QPS, each at new connections per second, then the
// fixed-rate latency run, each over both families, modes interleaved.
func runEndToEnd(o options, copies map[string]*Copy) ([]report.Run, []string, error) {
	var specs []e2eRun
	for _, c := range o.connections {
		specs = append(specs, e2eRun{Workload: report.WorkloadE2E, Path: report.PathMaxQPS, Connections: c, QPS: -1, Duration: o.e2eDuration})
	}
	for _, c := range o.connectConns {
		specs = append(specs, e2eRun{Workload: report.WorkloadConnect, Path: report.PathMaxQPS, Connections: c, QPS: -1, Duration: o.e2eDuration})
	}
	specs = append(specs, e2eRun{Workload: report.WorkloadE2E, Path: report.PathFixedQPS, Connections: o.fixedConns, QPS: o.fixedQPS, Duration: o.fixedDuration})
	for _, m := range o.modes {
		for _, fam := range families {
			if familySkipped(m, fam) != "" {
				continue
			}
			proof, err := proveThroughStandin(copies[m], fam)
			if err != nil {
				return nil, nil, err
			}
			logf("end to end, proved over %s: %s", fam, proof)
		}
	}
	var skipped []string
	for _, m := range o.modes {
		for _, fam := range families {
			if why := familySkipped(m, fam); why != "" {
				skipped = append(skipped, fmt.Sprintf("end to end of %s over %s: %s", m, fam, why))
			}
		}
	}
	logf("end to end: %d rounds of %d runs per mode and family (%s each, fixed rate %s)", o.e2eRounds, len(specs), o.e2eDuration, o.fixedDuration)
	var runs []report.Run
	for round := 1; round <= o.e2eRounds || round <= o.e2eMaxRounds && wide(runs, o.spread, round); round++ {
		for _, spec := range specs {
			for _, fam := range families {
				spec.Family = fam
				for _, m := range rotate(o.modes, round) {
					if familySkipped(m, fam) != "" {
						continue
					}
					r, err := runE2EFair(copies[m], spec, round)
					if err != nil {
						return nil, nil, fmt.Errorf("end to end, round %d, %s %s %s c=%d: %w", round, spec.Workload, spec.Path, fam, spec.Connections, err)
					}
					runs = append(runs, r)
				}
			}
			fmt.Fprint(os.Stderr, ".")
		}
	}
	fmt.Fprintln(os.Stderr)
	return runs, skipped, nil
}
