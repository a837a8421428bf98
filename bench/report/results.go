package report

import "time"

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
	// Scale is the scale phase: pods map size, enrolment, CNI ADD, the
	// agent's memory and CPU (nil when skipped).
	Scale *Scale `json:"scale,omitempty"`

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
	// FixedDuration is the duration of each fixed-rate run (longer than
	// the others: p99.9 needs the samples).
	FixedDuration string `json:"fixed_duration_per_run,omitempty"`
	// ConnectConnections are the connection counts (concurrent
	// connections, one request each) of the new-connections workload.
	ConnectConnections []int `json:"connect_connections,omitempty"`
	// KernelSYNs is the most SYNs a kernel-path SYN run injects (one
	// source port each); fewer than KernelPackets when that is more.
	KernelSYNs int `json:"kernel_syns_per_run,omitempty"`
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
	Mode     string `json:"mode"`
	Workload string `json:"workload"`
	Path     string `json:"path"`
	// Family is the IP family of the run's traffic: FamilyIPv4 (also
	// when empty, in files written before IPv6 was measured) or
	// FamilyIPv6.
	Family string `json:"family,omitempty"`
	// Segment is what a kernel-path run injected: SegmentEstablished
	// (also when empty) or SegmentSYN.
	Segment     string `json:"segment,omitempty"`
	Connections int    `json:"connections"`
	Round       int    `json:"round"`
	// QPS is requests per second end to end, and new connections per
	// second (each with one request) for WorkloadConnect.
	QPS    *float64 `json:"qps"`
	P50us  *float64 `json:"p50_us"`
	P90us  *float64 `json:"p90_us"`
	P99us  *float64 `json:"p99_us"`
	P999us *float64 `json:"p999_us,omitempty"`
	// CPUusPerReqProxy, CPUusPerReqClient and CPUusPerReqServer split
	// CPUusPerReq by the copy's cgroups: the stand-ins, the load
	// generator, the HTTP server. Kernel work is charged to whichever
	// process ran it: a segment's trip through the rules in a syscall
	// to the sender, softirq work to whoever was on the CPU.
	CPUusPerReqProxy  *float64 `json:"cpu_us_per_req_proxy,omitempty"`
	CPUusPerReqClient *float64 `json:"cpu_us_per_req_client,omitempty"`
	CPUusPerReqServer *float64 `json:"cpu_us_per_req_server,omitempty"`
	// SegmentsPerReq is the TCP segments sent per request by every
	// namespace of the copy (nstat's OutSegs), end to end.
	SegmentsPerReq *float64 `json:"segments_per_req,omitempty"`
	NsPerPacket    *float64 `json:"ns_per_packet"`
	CPUusPerReq    *float64 `json:"cpu_us_per_req"`
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
	Family         string   `json:"family,omitempty"`
	Segment        string   `json:"segment,omitempty"`
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
	Mode string `json:"mode"`
	Path string `json:"path"`
	// Family and Segment of the packets, as in Run (empty: IPv4,
	// established).
	Family   string            `json:"family,omitempty"`
	Segment  string            `json:"segment,omitempty"`
	Inject   string            `json:"inject"`
	Packet   string            `json:"packet"`
	Expected string            `json:"expected"`
	Landed   map[string]uint64 `json:"tcp_in_csum_errors"`
	Counters map[string]uint64 `json:"counters,omitempty"`
	OK       bool              `json:"ok"`
}
