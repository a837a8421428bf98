package report

import (
	"fmt"
	"sort"
	"strings"
)

// Scale is the scale phase (issue 18): what the number of pods on a node
// does to the per-packet cost, to enrolment, to CNI ADD and to the agent's
// memory and CPU.
type Scale struct {
	// Packets are the kernel-path runs of the client->proxy hop with the
	// pods map (the ipset for iptables-node) holding Entries entries,
	// sizes interleaved round by round.
	Packets []ScalePacket `json:"packets,omitempty"`
	// PacketRatios are, per mode and size, the median over rounds of the
	// ns per packet at that size over the smallest size's in the same
	// round.
	PacketRatios []ScaleRatio `json:"packet_ratios,omitempty"`
	// MapMaxEntries is the capacity of the eBPF copy's endpoints map
	// (the agent's --pods-max-entries default), IpsetMaxElem the ipset's.
	MapMaxEntries uint32 `json:"map_max_entries,omitempty"`
	IpsetMaxElem  int    `json:"ipset_maxelem,omitempty"`
	// Enrolment is the time from the API (or CNI ADD) to capture.
	Enrolment []ScaleEnrolment `json:"enrolment,omitempty"`
	// CNIAdd is the latency of the CNI ADDs: the primary plugin's
	// alone and meshredirect-cni's alone, on the same sandboxes.
	CNIAdd []ScaleLatency `json:"cni_add,omitempty"`
	// Agent is the agent process's memory and CPU at each pod count.
	Agent []ScaleAgent `json:"agent,omitempty"`
	// Setup says what making the pods cost (left out of every figure).
	Setup []string `json:"setup,omitempty"`
	// Notes are findings of the run worth a reader's attention.
	Notes   []string `json:"notes,omitempty"`
	Elapsed string   `json:"elapsed"`
}

// ScalePacket is one kernel-path run of the scale phase.
type ScalePacket struct {
	Mode    string  `json:"mode"`
	Entries int     `json:"entries"`
	Round   int     `json:"round"`
	Ns      float64 `json:"ns_per_packet"`
	Packets int     `json:"packets"`
	Landed  string  `json:"landed"`
}

// ScaleRatio is a mode's per-packet cost at Entries over its cost at the
// smallest size, the median of per-round ratios.
type ScaleRatio struct {
	Mode     string  `json:"mode"`
	Entries  int     `json:"entries"`
	NsMedian float64 `json:"ns_median"`
	Median   float64 `json:"ratio_median"`
	Min      float64 `json:"ratio_min"`
	Max      float64 `json:"ratio_max"`
	Rounds   int     `json:"rounds"`
}

// Sources of an enrolment measure.
const (
	// EnrolFromAPI: from the kubelet's status write (the pod Running
	// with its IPs) to the agent's "enrolled pod" (entries written,
	// programs attached).
	EnrolFromAPI = "api"
	// EnrolFromCNI: the whole chain's ADD, ptp then meshredirect-cni,
	// which returns once the agent has captured the pod.
	EnrolFromCNI = "cni"
)

// ScaleEnrolment is the enrolment of Pods pods at once from Source.
type ScaleEnrolment struct {
	Source string `json:"source"`
	Mode   string `json:"ztunnel_mode"`
	Pods   int    `json:"pods"`
	// Enrolled is how many of them the agent had enrolled when the
	// measure ended (all, or those within its timeout): the figures are
	// theirs.
	Enrolled int `json:"enrolled"`
	// PerSecond is the agent's enrolment rate: pods enrolled over the
	// time from its first enrolment to its last.
	PerSecond float64 `json:"pods_per_second,omitempty"`
	// P50ms and Maxms are over pods: from the pod's own event to its
	// capture.
	P50ms float64 `json:"p50_ms"`
	P99ms float64 `json:"p99_ms"`
	Maxms float64 `json:"max_ms"`
	// Spanms is from the first event to the last capture: the time the
	// node took to capture them all. Writesms is how long the events
	// themselves took to write (the API server's share of the span).
	Spanms   float64 `json:"span_ms"`
	Writesms float64 `json:"writes_ms,omitempty"`
	// Verified says the dataplane state was checked at the end: every
	// pod's IPs in the endpoints map and its programs on its host veth.
	Verified bool `json:"verified"`
}

// ScaleLatency is the latency distribution of one kind of call.
type ScaleLatency struct {
	What  string  `json:"what"`
	N     int     `json:"n"`
	P50ms float64 `json:"p50_ms"`
	P99ms float64 `json:"p99_ms"`
	Maxms float64 `json:"max_ms"`
}

// ScaleAgent is the agent process at a number of enrolled pods: its
// resident memory at the end of a steady window, its peak, and its CPU
// over the window.
type ScaleAgent struct {
	Pods     int     `json:"pods"`
	RSSMiB   float64 `json:"rss_mib"`
	HWMMiB   float64 `json:"rss_peak_mib"`
	CPUPct   float64 `json:"cpu_percent"`
	Window   string  `json:"window"`
	Threads  int     `json:"threads"`
	Enrolled int     `json:"enrolled"`
	// SettleAfter is how long the agent's CPU took, after its last log
	// line of the enrolment, to fall under 10% of a core (polled each
	// second, at most 2 minutes), before the window.
	SettleAfter string `json:"settle_after,omitempty"`
}

// Goals of the scale phase (issue 18).
const (
	GoalEnrolThousandMs = 2000.0
	GoalCNIAddP99Ms     = 10.0
	// AgentKubeQPS is the agent's API client's request rate
	// (cmd/meshredirect's kubeQPS): what caps its enrolments per second.
	AgentKubeQPS = 50
	// PluginStartWhat names the CNI row of the plugin's exec alone.
	PluginStartWhat = "meshredirect-cni exec'd for VERSION alone (process start, no agent)"
	GoalAgentRSSMiB = 100.0
	GoalFlatRatio   = 1.10
)

// ScaleRatios computes the median per-round ratio of each mode's ns per
// packet at each size over its smallest size's in the same round.
func ScaleRatios(runs []ScalePacket) []ScaleRatio {
	type key struct {
		mode    string
		entries int
	}
	by := map[key]map[int]float64{}
	smallest := map[string]int{}
	var order []key
	for _, r := range runs {
		k := key{r.Mode, r.Entries}
		if by[k] == nil {
			by[k] = map[int]float64{}
			order = append(order, k)
		}
		by[k][r.Round] = r.Ns
		if s, ok := smallest[r.Mode]; !ok || r.Entries < s {
			smallest[r.Mode] = r.Entries
		}
	}
	var out []ScaleRatio
	for _, k := range order {
		base := by[key{k.mode, smallest[k.mode]}]
		var ratios, ns []float64
		for round, v := range by[k] {
			ns = append(ns, v)
			if b, ok := base[round]; ok && b > 0 {
				ratios = append(ratios, v/b)
			}
		}
		if len(ratios) == 0 {
			continue
		}
		lo, hi := minMax(ratios)
		out = append(out, ScaleRatio{Mode: k.mode, Entries: k.entries, NsMedian: Median(ns), Median: Median(ratios),
			Min: lo, Max: hi, Rounds: len(ratios)})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Mode != out[j].Mode {
			return out[i].Mode < out[j].Mode
		}
		return out[i].Entries < out[j].Entries
	})
	return out
}

// scale writes the "## Scale" section.
func (r *reporter) scale() {
	s := r.res.Scale
	if s == nil {
		return
	}
	r.p("## Scale")
	r.p("")
	r.p("What a node with many pods costs (issue 18): the per-packet cost with the pods map full, enrolment from the API and from")
	r.p("CNI ADD, the CNI plugin's own latency, and the agent's memory and CPU. The agent is the real binary (`cmd/meshredirect`,")
	r.p("node mode) as a process, against a real kube-apiserver and etcd; the pods are real (a netns and a veth pair each). The")
	r.p("phase took %s.", s.Elapsed)
	r.p("")
	r.scaleGoals()
	if len(s.PacketRatios) > 0 {
		r.p("### Per-packet cost and the number of pods")
		r.p("")
		r.p("The client->proxy hop of the kernel path (established ACKs, IPv4), with the pods map of `ebpf-tcx` (capacity %d, the", s.MapMaxEntries)
		r.p("agent's `--pods-max-entries` default) and the ipset of `iptables-node` (maxelem %d) holding the given number of entries, the", s.IpsetMaxElem)
		r.p("measured pods among them; the sizes interleaved round by round. Ratio: median of per-round ratios to the smallest size.")
		r.p("")
		r.p("| mode | entries | ns per packet (median) | ratio to the smallest | range | rounds |")
		r.p("|---|---:|---:|---:|---|---:|")
		for _, x := range s.PacketRatios {
			r.p("| `%s` | %d | %.0f | %.3f | %.3f–%.3f | %d |", x.Mode, x.Entries, x.NsMedian, x.Median, x.Min, x.Max, x.Rounds)
		}
		r.p("")
	}
	if len(s.Enrolment) > 0 {
		r.p("### Enrolment")
		r.p("")
		r.p("From the API: pods bound to the node and Pending are created first; the figure starts at each pod's status write (Running,")
		r.p("its IPs: the kubelet's write, the first moment the agent can act) and ends at the agent's \"enrolled pod\" (entries written,")
		r.p("programs attached). Span: first write to last capture; writes: how long the status writes themselves took. From CNI ADD:")
		r.p("the chain's ADD (ptp, then meshredirect-cni, which returns once the agent has captured the pod), one pod at a time, on")
		r.p("the node with one pod and an idle agent, before the 1,000.")
		r.p("")
		r.p("| from | ztunnel | pods | enrolled | p50 ms | p99 ms | max ms | span ms | writes ms | pods/s | dataplane checked |")
		r.p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
		for _, x := range s.Enrolment {
			w := "–"
			if x.Writesms > 0 {
				w = fmt.Sprintf("%.0f", x.Writesms)
			}
			span := "–"
			if x.Spanms > 0 {
				span = fmt.Sprintf("%.0f", x.Spanms)
			}
			rate := "–"
			if x.PerSecond > 0 {
				rate = fmt.Sprintf("%.0f", x.PerSecond)
			}
			r.p("| %s | %s | %d | %d | %.1f | %.1f | %.1f | %s | %s | %s | %v |", x.Source, x.Mode, x.Pods, x.Enrolled, x.P50ms, x.P99ms, x.Maxms, span, w, rate, x.Verified)
		}
		r.p("")
	}
	if len(s.CNIAdd) > 0 {
		r.p("### CNI ADD")
		r.p("")
		r.p("| ADD | n | p50 ms | p99 ms | max ms |")
		r.p("|---|---:|---:|---:|---:|")
		for _, x := range s.CNIAdd {
			r.p("| %s | %d | %.2f | %.2f | %.2f |", x.What, x.N, x.P50ms, x.P99ms, x.Maxms)
		}
		r.p("")
	}
	if len(s.Agent) > 0 {
		r.p("### The agent's memory and CPU")
		r.p("")
		r.p("`VmRSS` of the agent process at the end of a steady window, `VmHWM` its peak since start, CPU (utime + stime) over the window.")
		r.p("")
		r.p("| pods | enrolled | RSS MiB | peak RSS MiB | CPU %% | window | CPU settled after | threads |")
		r.p("|---:|---:|---:|---:|---:|---|---|---:|")
		for _, x := range s.Agent {
			settle := "–"
			if x.SettleAfter != "" {
				settle = x.SettleAfter
			}
			r.p("| %d | %d | %.1f | %.1f | %.2f | %s | %s | %d |", x.Pods, x.Enrolled, x.RSSMiB, x.HWMMiB, x.CPUPct, x.Window, settle, x.Threads)
		}
		r.p("")
	}
	for _, n := range s.Setup {
		r.p("- Setup (not in the figures): %s", n)
	}
	for _, n := range s.Notes {
		r.p("- %s", n)
	}
	if len(s.Setup)+len(s.Notes) > 0 {
		r.p("")
	}
}

// scaleGoals writes the table of the scale goals, met or missed.
func (r *reporter) scaleGoals() {
	s := r.res.Scale
	var rows []string
	row := func(goal, measured string, ok bool) {
		rows = append(rows, fmt.Sprintf("| %s | %s | %s |", goal, measured, verdict(ok)))
	}
	for _, x := range s.Enrolment {
		if x.Source == EnrolFromAPI && x.Pods >= 1000 {
			m := fmt.Sprintf("%.0f ms from the first status write to the last capture (the writes took %.0f ms; slowest pod %.0f ms)", x.Spanms, x.Writesms, x.Maxms)
			if x.Enrolled < x.Pods {
				m = fmt.Sprintf("only %d of %d enrolled after %.0f ms (%.1f pods/s; the writes took %.0f ms)", x.Enrolled, x.Pods, x.Spanms, x.PerSecond, x.Writesms)
			}
			if limit := AgentKubeQPS / 2.0; x.Spanms >= GoalEnrolThousandMs && x.PerSecond > 0.8*limit && x.PerSecond < 1.2*limit {
				m += fmt.Sprintf(". Where it goes: %.1f pods/s is the agent's API client's limit, %d requests/s of which each"+
					" enrolment makes two on the agent's one worker (the pod's annotation, its Event)", x.PerSecond, AgentKubeQPS)
			}
			row(fmt.Sprintf("%d pods enrolled from the API in under 2 s (%s mode)", x.Pods, x.Mode), m,
				x.Enrolled == x.Pods && x.Spanms < GoalEnrolThousandMs)
		}
	}
	var base, ours, start *ScaleLatency
	for i := range s.CNIAdd {
		switch {
		case s.CNIAdd[i].What == PluginStartWhat:
			start = &s.CNIAdd[i]
		case strings.HasPrefix(s.CNIAdd[i].What, "meshredirect-cni"):
			ours = &s.CNIAdd[i]
		case base == nil:
			base = &s.CNIAdd[i]
		}
	}
	if ours != nil {
		m := fmt.Sprintf("p99 %.2f ms (p50 %.2f ms)", ours.P99ms, ours.P50ms)
		if base != nil {
			m += fmt.Sprintf("; the primary plugin alone p99 %.2f ms", base.P99ms)
		}
		if start != nil {
			m += fmt.Sprintf(". Where it goes: the plugin's exec alone (CNI_COMMAND=VERSION, no agent) takes p50 %.2f ms, p99 %.2f ms"+
				" of it, a Go binary's start; the rest is the agent capturing the pod and writing its annotation", start.P50ms, start.P99ms)
		}
		row("CNI ADD adds under 10 ms at p99", m, ours.P99ms < GoalCNIAddP99Ms)
	}
	for _, x := range s.Agent {
		if x.Pods >= 1000 {
			row(fmt.Sprintf("agent RSS under 100 MiB at %d pods", x.Pods), fmt.Sprintf("%.1f MiB (peak %.1f MiB)", x.RSSMiB, x.HWMMiB), x.RSSMiB < GoalAgentRSSMiB)
		}
	}
	smallest := map[string]int{}
	for _, x := range s.PacketRatios {
		if n, ok := smallest[x.Mode]; !ok || x.Entries < n {
			smallest[x.Mode] = x.Entries
		}
	}
	worst := map[string]ScaleRatio{}
	var modes []string
	for _, x := range s.PacketRatios {
		if x.Entries == smallest[x.Mode] {
			continue // the baseline itself
		}
		w, ok := worst[x.Mode]
		if !ok {
			modes = append(modes, x.Mode)
		}
		if !ok || x.Median > w.Median {
			worst[x.Mode] = x
		}
	}
	for _, m := range modes {
		w := worst[m]
		if !IsEBPF(m) {
			rows = append(rows, fmt.Sprintf("| (for comparison) `%s` per-packet cost with more ipset entries | worst %.3f at %d entries | |", m, w.Median, w.Entries))
			continue
		}
		row(fmt.Sprintf("`%s` per-packet cost flat (within 10%%) up to the largest size", m),
			fmt.Sprintf("worst ratio %.3f at %d entries (range %.3f–%.3f)", w.Median, w.Entries, w.Min, w.Max), w.Median <= GoalFlatRatio)
	}
	if len(rows) == 0 {
		return
	}
	r.p("| goal | measured | |")
	r.p("|---|---|---|")
	for _, l := range rows {
		r.p("%s", l)
	}
	r.p("")
}

// verdict is a scale goal's cell.
func verdict(ok bool) string {
	if ok {
		return "**met**"
	}
	return "**missed**"
}
