package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// Workloads: what a run measured.
const (
	// WorkloadKernel is the kernel path: packets injected on a host veth
	// with XDP live frames, ns per packet until the destination's TCP layer.
	WorkloadKernel = "kernel-path"
	// WorkloadE2E is HTTP through the stand-in with fortio.
	WorkloadE2E = "end-to-end"
)

// End-to-end "paths": which kind of fortio run.
const (
	// PathMaxQPS is a run at the highest rate fortio reaches (-qps -1).
	PathMaxQPS = "max-qps"
	// PathFixedQPS is a run at a fixed rate, for latency percentiles.
	PathFixedQPS = "fixed-qps"
)

// Results is bench/results/latest.json.
type Results struct {
	Machine  Machine   `json:"machine"`
	Config   RunConfig `json:"config"`
	Runs     []Run     `json:"runs"`
	Ratios   []Ratio   `json:"ratios"`
	Programs []Program `json:"programs"`
	// Blocks are the programs' building blocks (a map lookup of each
	// kind, the verdict counter) measured alone, to attribute their cost.
	Blocks []Program `json:"blocks,omitempty"`
	// Proofs say where each mode's packets landed on each path, with the
	// counters that show it.
	Proofs []Proof `json:"proofs"`
	// Skipped lists what could not be measured, with the reason.
	Skipped []string `json:"skipped,omitempty"`

	// Scripts are the commands each mode ran in its copy's namespaces,
	// as shell, by mode.
	Scripts map[string]string `json:"scripts,omitempty"`
}

// Machine describes where and when the benchmark ran.
type Machine struct {
	Hostname string    `json:"hostname"`
	Kernel   string    `json:"kernel"`
	CPUModel string    `json:"cpu_model"`
	CPUs     int       `json:"cpus"`
	MemoryMB int       `json:"memory_mb"`
	Go       string    `json:"go"`
	Iptables string    `json:"iptables"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	// LoadAvg is /proc/loadavg's 1, 5 and 15 minute averages at the start;
	// LoadAvgEnd at the end. Each run records its own 1-minute figure.
	LoadAvg    []float64 `json:"loadavg"`
	LoadAvgEnd []float64 `json:"loadavg_end"`
	// PinnedCPU is the CPU the measured work was pinned to.
	PinnedCPU int `json:"pinned_cpu"`
	// InjectFloorNs is the median over kernel-path rounds of what the
	// injection costs by itself (the frame restored and dropped by XDP):
	// part of every kernel-path figure.
	InjectFloorNs float64 `json:"inject_floor_ns"`
}

// RunConfig records the parameters of the run.
type RunConfig struct {
	Quick         bool     `json:"quick"`
	Modes         []string `json:"modes"`
	KernelRounds  int      `json:"kernel_rounds"`
	KernelPackets int      `json:"kernel_packets_per_run"`
	E2ERounds     int      `json:"e2e_rounds"`
	E2EDuration   string   `json:"e2e_duration_per_run"`
	Connections   []int    `json:"connections"`
	FixedQPS      float64  `json:"fixed_qps"`
	FixedQPSConns int      `json:"fixed_qps_connections"`
	// MinCPUShare is the share of its CPU below which a max-QPS run
	// counted as starved and was run again.
	MinCPUShare    float64 `json:"min_cpu_share"`
	ProgramRounds  int     `json:"program_rounds"`
	ProgramRepeats int     `json:"program_repeats"`
	Elapsed        string  `json:"elapsed"`
}

// Run is one measurement. Fields that do not apply to the workload are
// null: a kernel-path run has no QPS, an end-to-end run no ns per packet.
type Run struct {
	Mode        string   `json:"mode"`
	Workload    string   `json:"workload"`
	Path        string   `json:"path"`
	Connections int      `json:"connections"`
	Round       int      `json:"round"`
	QPS         *float64 `json:"qps"`
	P50us       *float64 `json:"p50_us"`
	P90us       *float64 `json:"p90_us"`
	P99us       *float64 `json:"p99_us"`
	NsPerPacket *float64 `json:"ns_per_packet"`
	CPUusPerReq *float64 `json:"cpu_us_per_req"`
	// CPUShare is the copy's CPU time over an end-to-end run's wall
	// time: near 1 when the run kept its pinned CPU busy; lower when it
	// waited, or when other work on the machine had the CPU.
	CPUShare *float64 `json:"cpu_share,omitempty"`
	// Requests and Errors count an end-to-end run's requests.
	Requests int64 `json:"requests,omitempty"`
	Errors   int64 `json:"errors,omitempty"`
	// Packets is how many packets a kernel-path run injected; Landed
	// where they were counted (TcpInCsumErrors), LandedPackets how many.
	Packets       uint64 `json:"packets,omitempty"`
	Landed        string `json:"landed,omitempty"`
	LandedPackets uint64 `json:"landed_packets,omitempty"`
	// LoadAvg1 is the 1-minute load average when the run started.
	LoadAvg1 float64 `json:"loadavg1"`
	// Starved marks an end-to-end run that did not get its CPU (other work
	// on the machine had it) even after retries: kept here, left out of
	// the medians and ratios. Retries counts the runs thrown away before.
	Starved bool `json:"starved,omitempty"`
	Retries int  `json:"retries,omitempty"`
}

// Ratio compares a mode with a baseline: the median over rounds of the
// per-round ratio (mode / baseline), for QPS and ns per packet, and for
// CPU per request and p99 where they apply.
type Ratio struct {
	Mode           string   `json:"mode"`
	Baseline       string   `json:"baseline"`
	Workload       string   `json:"workload"`
	Path           string   `json:"path"`
	Connections    int      `json:"connections"`
	QPSRatioMedian *float64 `json:"qps_ratio_median"`
	NsRatioMedian  *float64 `json:"ns_ratio_median"`
	CPURatioMedian *float64 `json:"cpu_ratio_median"`
	P99RatioMedian *float64 `json:"p99_ratio_median"`
	// Min and max of the per-round ratio of the workload's main figure
	// (ns for the kernel path, QPS end to end): the spread.
	RatioMin float64 `json:"ratio_min"`
	RatioMax float64 `json:"ratio_max"`
	Rounds   int     `json:"rounds"`
}

// Program is one datapath program measured with BPF_PROG_TEST_RUN.
type Program struct {
	Name string `json:"name"`
	// Family (IPv4, IPv6) and Segment (SYN, established) of the packet.
	Family  string `json:"family,omitempty"`
	Segment string `json:"segment,omitempty"`
	// Packet says what the program was given.
	Packet string `json:"packet"`
	// Verdict is what the program counted on it: the path measured.
	Verdict              string  `json:"verdict,omitempty"`
	NsAboveEmpty         float64 `json:"ns_above_empty"`
	NsPerPacket          float64 `json:"ns_per_packet"`
	EmptyNs              float64 `json:"empty_ns"`
	VerifiedInstructions uint32  `json:"verified_instructions"`
	Instructions         int     `json:"instructions"`
	Rounds               int     `json:"rounds"`
}

// Proof is where the packets of one mode and path landed in one check run:
// the delta of TcpInCsumErrors in each namespace of the copy, and counters
// of the mechanism (programs' verdicts, iptables rules).
type Proof struct {
	Mode     string            `json:"mode"`
	Path     string            `json:"path"`
	Inject   string            `json:"inject"`
	Packet   string            `json:"packet"`
	Expected string            `json:"expected"`
	Landed   map[string]uint64 `json:"tcp_in_csum_errors"`
	Counters map[string]uint64 `json:"counters,omitempty"`
	OK       bool              `json:"ok"`
}

// f64 returns a pointer to v, for the nullable fields.
func f64(v float64) *float64 { return &v }

// median returns the median of xs (the mean of the two middle values for
// an even count); NaN for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// runKey identifies the runs a ratio pairs: same workload, path,
// connections and round.
type runKey struct {
	workload, path string
	connections    int
}

// computeRatios pairs every mode's runs with each baseline's runs of the
// same workload, path, connections and round, and returns the medians of
// the per-round ratios. A pair needs both runs with the figure; rounds
// without both are left out (and counted out of Rounds).
func computeRatios(runs []Run, baselines []string) []Ratio {
	by := map[runKey]map[string]map[int]Run{} // key -> mode -> round -> run
	var modes []string
	seen := map[string]bool{}
	for _, r := range runs {
		if r.Starved {
			continue
		}
		k := runKey{r.Workload, r.Path, r.Connections}
		if by[k] == nil {
			by[k] = map[string]map[int]Run{}
		}
		if by[k][r.Mode] == nil {
			by[k][r.Mode] = map[int]Run{}
		}
		by[k][r.Mode][r.Round] = r
		if !seen[r.Mode] {
			seen[r.Mode] = true
			modes = append(modes, r.Mode)
		}
	}
	keys := make([]runKey, 0, len(by))
	for k := range by {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.workload != b.workload {
			return a.workload > b.workload // kernel-path first
		}
		if a.path != b.path {
			return a.path < b.path
		}
		return a.connections < b.connections
	})
	var out []Ratio
	for _, base := range baselines {
		for _, k := range keys {
			baseRuns, ok := by[k][base]
			if !ok {
				continue
			}
			for _, mode := range modes {
				if mode == base {
					continue
				}
				modeRuns, ok := by[k][mode]
				if !ok {
					continue
				}
				if r, ok := pairRatio(mode, base, k, modeRuns, baseRuns); ok {
					out = append(out, r)
				}
			}
		}
	}
	return out
}

// pairRatio computes one Ratio from the runs of mode and base by round.
func pairRatio(mode, base string, k runKey, modeRuns, baseRuns map[int]Run) (Ratio, bool) {
	var qps, ns, cpu, p99 []float64
	rounds := make([]int, 0, len(modeRuns))
	for round := range modeRuns {
		rounds = append(rounds, round)
	}
	sort.Ints(rounds)
	for _, round := range rounds {
		m, b := modeRuns[round], baseRuns[round]
		if _, ok := baseRuns[round]; !ok {
			continue
		}
		if x, ok := div(m.QPS, b.QPS); ok {
			qps = append(qps, x)
		}
		if x, ok := div(m.NsPerPacket, b.NsPerPacket); ok {
			ns = append(ns, x)
		}
		if x, ok := div(m.CPUusPerReq, b.CPUusPerReq); ok {
			cpu = append(cpu, x)
		}
		if x, ok := div(m.P99us, b.P99us); ok {
			p99 = append(p99, x)
		}
	}
	r := Ratio{Mode: mode, Baseline: base, Workload: k.workload, Path: k.path, Connections: k.connections}
	main := ns
	if k.workload == WorkloadE2E {
		main = qps
	}
	if len(main) == 0 {
		return r, false
	}
	r.Rounds = len(main)
	r.RatioMin, r.RatioMax = minMax(main)
	if len(qps) > 0 {
		r.QPSRatioMedian = f64(median(qps))
	}
	if len(ns) > 0 {
		r.NsRatioMedian = f64(median(ns))
	}
	if len(cpu) > 0 {
		r.CPURatioMedian = f64(median(cpu))
	}
	if len(p99) > 0 {
		r.P99RatioMedian = f64(median(p99))
	}
	return r, true
}

// div returns a/b when both are set and b is positive.
func div(a, b *float64) (float64, bool) {
	if a == nil || b == nil || *b <= 0 || math.IsNaN(*a) || math.IsNaN(*b) {
		return 0, false
	}
	return *a / *b, true
}

func minMax(xs []float64) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, x := range xs {
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	return lo, hi
}

// findRatio returns the ratio of mode against baseline for a workload,
// path and connections, if computed.
func findRatio(ratios []Ratio, mode, baseline, workload, path string, conns int) (Ratio, bool) {
	for _, r := range ratios {
		if r.Mode == mode && r.Baseline == baseline && r.Workload == workload && r.Path == path && r.Connections == conns {
			return r, true
		}
	}
	return Ratio{}, false
}

// medianOf returns the median over rounds of a figure of the runs of mode
// for a workload, path and connections.
func medianOf(runs []Run, mode, workload, path string, conns int, field func(Run) *float64) (float64, int) {
	var xs []float64
	for _, r := range runs {
		if r.Mode == mode && r.Workload == workload && r.Path == path && r.Connections == conns && !r.Starved {
			if v := field(r); v != nil && !math.IsNaN(*v) {
				xs = append(xs, *v)
			}
		}
	}
	return median(xs), len(xs)
}

// writeJSON writes v to path atomically (a temporary file renamed).
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return writeFileAtomic(path, append(b, '\n'))
}

// writeFileAtomic writes b to path through a temporary file in the same
// directory, renamed over path.
func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create directory of %s: %w", path, err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
