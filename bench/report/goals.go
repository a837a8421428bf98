package report

import (
	"fmt"
	"math"
	"strings"
)

// goalState is what a goal came to.
type goalState int

const (
	goalNotMeasured goalState = iota
	goalMet
	goalMissed
)

// goalRow is one line of the goals table.
type goalRow struct {
	goal, measured string
	state          goalState
	// where points a missed goal at the measurement that locates the
	// cost.
	where string
}

func (g goalRow) verdict() string {
	switch g.state {
	case goalMet:
		return "**met**"
	case goalMissed:
		return "**missed**: " + g.where
	}
	return "not measured in this run"
}

// Anchors of the sections a missed goal points at.
const (
	linkKernelRequest = "[kernel path per request](#kernel-path-per-request)"
	linkKernelHop     = "[kernel path per hop](#kernel-path-per-hop)"
	linkCPU           = "[where the CPU per request goes](#where-the-cpu-per-request-goes)"
	linkConnect       = "[new connections per second](#new-connections-per-second)"
	linkPrograms      = "[per program](#per-program)"
	linkFamilies      = "[IPv4 and IPv6](#ipv4-and-ipv6)"
)

func (r *reporter) goals() {
	r.p("## Goals")
	r.p("")
	r.p("Paired medians of the same run: each cell is the median of per-round ratios [lowest–highest round]. A goal missed")
	r.p("is missed: the last column points at the measurement that locates the cost.")
	r.p("")
	r.p("| goal | measured | |")
	r.p("|---|---|---|")
	for _, g := range r.evalGoals() {
		r.p("| %s | %s | %s |", g.goal, g.measured, g.verdict())
	}
	r.p("")
}

// evalGoals judges issue 18's goals (in-pod, connections, kernel path per
// hop, IPv6) and the node-mode goals of issues 8 and 13.
func (r *reporter) evalGoals() []goalRow {
	var out []goalRow
	inpod, node := r.inpodComparison(), r.nodeComparison()
	e, ipt, nft := inpod.subject, ModeIptablesInpod, ModeNftablesInpod
	for _, fam := range r.goalFamilies() {
		out = append(out,
			r.e2eGoal(fmt.Sprintf("in-pod, %s: `%s` QPS ≥ 1.2x `%s` at every concurrency", fam, e, ipt), e, ipt, fam, qpsField, 1.2, true),
			r.e2eGoal(fmt.Sprintf("in-pod, %s: `%s` CPU per request ≤ 0.8x `%s` at every concurrency", fam, e, ipt), e, ipt, fam, cpuField, 0.8, false),
			r.e2eGoal(fmt.Sprintf("in-pod, %s: `%s` QPS no worse than `%s` (≥ 1.0x) at every concurrency", fam, e, nft), e, nft, fam, qpsField, 1.0, true),
			r.e2eGoal(fmt.Sprintf("in-pod, %s: `%s` CPU per request no worse than `%s` (≤ 1.0x) at every concurrency", fam, e, nft), e, nft, fam, cpuField, 1.0, false),
			r.connectGoal(fmt.Sprintf("in-pod, %s: `%s` new connections per second ≥ 1.3x `%s`", fam, e, ipt), e, ipt, fam, 1.3),
		)
	}
	out = append(out, r.hopGoals("in-pod", e, ipt, 0.5)...)
	out = append(out, r.hopGoals("in-pod", e, nft, 0.5)...)
	a := node.subject
	out = append(out, r.hopGoals("node", a, ModeIptablesNode, 0.4)...)
	out = append(out, r.directGoal(a))
	for _, fam := range r.goalFamilies() {
		out = append(out,
			r.e2eGoal(fmt.Sprintf("node, %s: `%s` QPS ≥ 1.0x `%s` at every concurrency", fam, a, ModeIptablesNode), a, ModeIptablesNode, fam, qpsField, 1.0, true),
			r.e2eGoal(fmt.Sprintf("node, %s: `%s` CPU per request no higher than `%s` (≤ 1.0x)", fam, a, ModeIptablesNode), a, ModeIptablesNode, fam, cpuField, 1.0, false),
			r.e2eGoal(fmt.Sprintf("node, %s: `%s` QPS ≥ 0.97x `%s` (routing, no capture)", fam, a, ModeExplicit), a, ModeExplicit, fam, qpsField, 0.97, true),
			r.connectGoal(fmt.Sprintf("node, %s: `%s` new connections per second ≥ 1.3x `%s`", fam, a, ModeIptablesNode), a, ModeIptablesNode, fam, 1.3),
		)
	}
	out = append(out, r.familyGoal(e, ipt), r.familyGoal(a, ModeIptablesNode))
	out = append(out, r.programGoals()...)
	return out
}

// goalFamilies are the families the goals are judged in: IPv4 always (a
// row that says not measured if it was not), IPv6 where measured.
func (r *reporter) goalFamilies() []string {
	if r.hasFamily(FamilyIPv6) {
		return []string{FamilyIPv4, FamilyIPv6}
	}
	return []string{FamilyIPv4}
}

// e2eGoal: mode's ratio against base of a max-QPS figure, at every
// concurrency measured, at least (higher) or at most limit.
func (r *reporter) e2eGoal(goal, mode, base, fam string, field func(Run) *float64, limit float64, higher bool) goalRow {
	g := goalRow{goal: goal}
	var cells []string
	worst, worstC := math.NaN(), 0
	for _, n := range r.concurrencies() {
		x := r.ratio(mode, base, e2eSel(PathMaxQPS, fam, n), field)
		if !x.ok() {
			continue
		}
		cells = append(cells, fmt.Sprintf("c=%d %s", n, x.cell("%.2f")))
		if math.IsNaN(worst) || (higher && x.med < worst) || (!higher && x.med > worst) {
			worst, worstC = x.med, n
		}
	}
	if len(cells) == 0 {
		g.measured = "–" + r.absent(mode, base) + r.unsupported(fam, mode, base)
		return g
	}
	g.measured = strings.Join(cells, "; ")
	g.state = goalMet
	if (higher && worst < limit) || (!higher && worst > limit) {
		g.state = goalMissed
		g.where = fmt.Sprintf("c=%d at %.2fx. %s", worstC, worst, r.e2eWhere(mode, base, fam, worstC))
	}
	return g
}

// unsupported says why one of modes did not run over fam, from the
// run's Skipped ("end to end of M over F: why"), or "".
func (r *reporter) unsupported(fam string, modes ...string) string {
	for _, m := range modes {
		prefix := fmt.Sprintf("end to end of %s over %s: ", m, fam)
		for _, s := range r.res.Skipped {
			if why, ok := strings.CutPrefix(s, prefix); ok {
				return fmt.Sprintf(" (`%s` has no %s: %s)", m, fam, why)
			}
		}
	}
	return ""
}

// absent names the modes of a goal that did not run.
func (r *reporter) absent(modes ...string) string {
	if m := r.missing(modes...); m != "" {
		return " (" + m + " did not run)"
	}
	return ""
}

// e2eWhere locates an end-to-end miss: the kernel path per request, and
// what it accounts for of the CPU difference.
func (r *reporter) e2eWhere(mode, base, fam string, n int) string {
	var parts []string
	if t := r.totalRatio(mode, base, fam, SegmentEstablished); t.ok() {
		parts = append(parts, fmt.Sprintf("The kernel path per request is %.2fx (%s)", t.med, linkKernelRequest))
	} else {
		parts = append(parts, "The kernel path was not measured for this pair")
	}
	if a, ok := r.account(mode, base, fam, n); ok && a.measured.med <= 0 {
		parts = append(parts, fmt.Sprintf("`%s` uses %.1f µs more CPU per request than `%s`, which the kernel path does not explain (%s)",
			mode, -a.measured.med, base, linkCPU))
	} else if ok {
		parts = append(parts, fmt.Sprintf("it accounts for %.0f%% of the %.1f µs CPU difference per request; the rest is in the processes (%s)",
			100*a.share(), a.measured.med, linkCPU))
	} else {
		parts = append(parts, fmt.Sprintf("segments per request not measured, so its share of the CPU is not known (%s)", linkCPU))
	}
	return strings.Join(parts, "; ") + "."
}

// connectGoal: new connections per second of mode against base, at every
// concurrency measured.
func (r *reporter) connectGoal(goal, mode, base, fam string, limit float64) goalRow {
	g := goalRow{goal: goal}
	var cells []string
	worst, worstC := math.Inf(1), 0
	for _, path := range r.workloadPaths(WorkloadConnect) {
		for _, n := range r.workloadConns(WorkloadConnect, path) {
			x := r.ratio(mode, base, sel{workload: WorkloadConnect, path: path, family: fam, conns: n}, qpsField)
			if !x.ok() {
				continue
			}
			cells = append(cells, fmt.Sprintf("c=%d %s", n, x.cell("%.2f")))
			if x.med < worst {
				worst, worstC = x.med, n
			}
		}
	}
	if len(cells) == 0 {
		g.measured = "–" + r.absent(mode, base) + r.unsupported(fam, mode, base)
		return g
	}
	g.measured = strings.Join(cells, "; ")
	g.state = goalMet
	if worst < limit {
		g.state = goalMissed
		var syn []string
		for _, h := range KernelPaths {
			if x := r.ratio(mode, base, kernelSel(h, fam, SegmentSYN), nsField); x.ok() {
				syn = append(syn, fmt.Sprintf("%s %.2fx", h, x.med))
			}
		}
		where := "the SYN path was not measured on the kernel path"
		if len(syn) > 0 {
			where = "SYN segments on the kernel path: " + strings.Join(syn, ", ")
		}
		g.where = fmt.Sprintf("c=%d at %.2fx; %s (%s, %s).", worstC, worst, where, linkConnect, linkKernelHop)
	}
	return g
}

// hopGoals: every hop of a request of mode, in every family and segment
// measured, at most limit times base's on the same hop; a row per family
// and segment.
func (r *reporter) hopGoals(kind, mode, base string, limit float64) []goalRow {
	goal := fmt.Sprintf("%s kernel path: every hop of `%s` ≤ %.1fx `%s` on the same hop", kind, mode, limit, base)
	var out []goalRow
	for _, k := range r.kernelCases() {
		g := goalRow{goal: goal + " (" + k.String() + ")"}
		var cells []string
		worst, wpath := math.Inf(-1), ""
		for _, h := range requestHops(mode) {
			x := r.ratio(mode, base, kernelSel(h, k.family, k.segment), nsField)
			if !x.ok() {
				continue
			}
			cells = append(cells, fmt.Sprintf("%s %s", h, x.cell("%.2f")))
			if x.med > worst {
				worst, wpath = x.med, h
			}
		}
		if len(cells) == 0 {
			continue
		}
		g.measured = strings.Join(cells, "; ")
		g.state = goalMet
		if worst > limit {
			g.state = goalMissed
			g.where = fmt.Sprintf("%s at %.2fx (%s); the programs on it: %s; what each choice costs: [what each choice changes](#what-each-choice-changes).",
				wpath, worst, linkKernelHop, linkPrograms)
		}
		out = append(out, g)
	}
	if len(out) == 0 {
		out = append(out, goalRowNotMeasured(goal, r.absent(mode, base)))
	}
	return out
}

func goalRowNotMeasured(goal, why string) goalRow {
	return goalRow{goal: goal, measured: "–" + why}
}

// directGoal: a redirected segment costs no more than a forwarded one.
func (r *reporter) directGoal(mode string) goalRow {
	goal := "node kernel path: `" + mode + "` client->proxy no more than `direct` (plain forwarding to the server), IPv4 established"
	s := kernelSel(PathClientProxy, FamilyIPv4, SegmentEstablished)
	x := r.ratio(mode, ModeDirect, s, nsField)
	if !x.ok() {
		return goalRowNotMeasured(goal, r.absent(mode, ModeDirect))
	}
	g := goalRow{goal: goal, state: goalMet,
		measured: fmt.Sprintf("%.0f ns vs %.0f ns: %s", r.median(mode, s, nsField).med, r.median(ModeDirect, s, nsField).med, x.cell("%.2fx"))}
	if x.med > 1 {
		g.state = goalMissed
		g.where = fmt.Sprintf("see %s and [what each choice changes](#what-each-choice-changes).", linkKernelHop)
	}
	return g
}

// familyGoal: every ratio of mode against base in IPv6 within 10% of the
// same ratio in IPv4.
func (r *reporter) familyGoal(mode, base string) goalRow {
	goal := fmt.Sprintf("IPv6: every ratio of `%s` against `%s` within 10%% of IPv4's (IPv6/IPv4 in 0.90–1.10)", mode, base)
	if !r.hasFamily(FamilyIPv6) {
		return goalRowNotMeasured(goal, " (no IPv6 runs)")
	}
	var cells []string
	worst, wname, dev := 0.0, "", -1.0
	for _, m := range r.familyMeasures(mode, base) {
		q, _, _, ok := familyQuotient(m.ratio(FamilyIPv4), m.ratio(FamilyIPv6))
		if !ok {
			continue
		}
		cells = append(cells, fmt.Sprintf("%s %.2f", m.name, q))
		if d := math.Abs(q - 1); d > dev {
			worst, wname, dev = q, m.name, d
		}
	}
	if len(cells) == 0 {
		return goalRowNotMeasured(goal, r.absent(mode, base)+r.unsupported(FamilyIPv6, mode, base))
	}
	g := goalRow{goal: goal, measured: strings.Join(cells, "; "), state: goalMet}
	if dev > 0.10+1e-9 {
		g.state = goalMissed
		g.where = fmt.Sprintf("%s: IPv6's ratio is %.2f of IPv4's (%s; the hops in both families: %s).", wname, worst, linkFamilies, linkKernelHop)
	}
	return g
}

// programGoal is a limit on one program's ns above an empty program, on
// one kind of segment (empty: both), in both families.
type programGoal struct {
	name, segment string
	limit         float64
}

// programGoalLimits are issue 13's: every check kept, made cheap.
var programGoalLimits = []programGoal{
	{"app_outbound", "", 15},
	{"app_inbound", "", 15},
	{"ztunnel_ingress", "", 42},
	{"ztunnel_assign", "SYN", 160},
	{"ztunnel_assign", "established", 10},
}

// programGoals judges each program against its goal, IPv4 and IPv6.
func (r *reporter) programGoals() []goalRow {
	var out []goalRow
	for _, g := range programGoalLimits {
		on := "on a SYN and on an established segment"
		if g.segment == "SYN" {
			on = "on a SYN"
		} else if g.segment != "" {
			on = "on an established segment"
		}
		row := goalRow{goal: fmt.Sprintf("per program: `%s` ≤ %.0f ns above an empty program %s", g.name, g.limit, on)}
		var cells, over []string
		for _, p := range r.res.Programs {
			if p.Name != g.name || (g.segment != "" && p.Segment != g.segment) {
				continue
			}
			cells = append(cells, fmt.Sprintf("%s %s %.1f", p.Family, p.Segment, p.NsAboveEmpty))
			if p.NsAboveEmpty > g.limit {
				over = append(over, p.Family+" "+p.Segment)
			}
		}
		if len(cells) == 0 {
			row.measured = "–"
			out = append(out, row)
			continue
		}
		row.measured = strings.Join(cells, ", ")
		row.state = goalMet
		if len(over) > 0 {
			row.state = goalMissed
			row.where = fmt.Sprintf("%s (%s, and its building blocks).", strings.Join(over, ", "), linkPrograms)
		}
		out = append(out, row)
	}
	return out
}
