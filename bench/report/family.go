package report

import (
	"fmt"
	"math"
	"strings"
)

// measure is one ratio of a mode against a baseline, in either family.
type measure struct {
	// name is the table's, short the chart's.
	name, short string
	// ratio is the median of per-round ratios mode/base in a family.
	ratio func(family string) stat
}

// familyMeasures are the ratios of mode against base that both families
// can have: the kernel path per request of each segment, QPS and CPU per
// request at each concurrency, new connections per second.
func (r *reporter) familyMeasures(mode, base string) []measure {
	var out []measure
	for _, seg := range r.segments() {
		seg := seg
		out = append(out, measure{"kernel path per request, " + seg, "kernel " + strings.TrimSuffix(seg, "ablished"), func(f string) stat { return r.totalRatio(mode, base, f, seg) }})
	}
	for _, n := range r.concurrencies() {
		s := func(f string) sel { return e2eSel(PathMaxQPS, f, n) }
		out = append(out,
			measure{fmt.Sprintf("QPS, c=%d", n), fmt.Sprintf("QPS c=%d", n), func(f string) stat { return r.ratio(mode, base, s(f), qpsField) }},
			measure{fmt.Sprintf("CPU per request, c=%d", n), fmt.Sprintf("CPU c=%d", n), func(f string) stat { return r.ratio(mode, base, s(f), cpuField) }})
	}
	for _, path := range r.workloadPaths(WorkloadConnect) {
		for _, n := range r.workloadConns(WorkloadConnect, path) {
			s := func(f string) sel { return sel{workload: WorkloadConnect, path: path, family: f, conns: n} }
			out = append(out, measure{fmt.Sprintf("connections/s, c=%d", n), fmt.Sprintf("conn/s c=%d", n), func(f string) stat { return r.ratio(mode, base, s(f), qpsField) }})
		}
	}
	return out
}

// familyPairs are the (mode, baseline) pairs the IPv4 and IPv6 comparison
// shows: meshredirect's mode of each comparison against its rules.
func (r *reporter) familyPairs() [][2]string {
	var out [][2]string
	for _, c := range r.comparisons() {
		for _, base := range c.baselines {
			if r.has(c.subject) && r.has(base) {
				out = append(out, [2]string{c.subject, base})
			}
		}
	}
	return out
}

// familyQuotient is IPv6's ratio over IPv4's, with the widest spread the
// rounds allow; ok is false unless both families have the ratio.
func familyQuotient(v4, v6 stat) (q, lo, hi float64, ok bool) {
	if !v4.ok() || !v6.ok() || v4.med <= 0 {
		return math.NaN(), 0, 0, false
	}
	return v6.med / v4.med, v6.lo / v4.hi, v6.hi / v4.lo, true
}

func (r *reporter) ipFamilies() {
	r.p("## IPv4 and IPv6")
	r.p("")
	if !r.hasFamily(FamilyIPv6) {
		r.p("IPv6: not measured in this run (every figure above is IPv4).")
		r.p("")
		return
	}
	r.p("Each ratio of meshredirect's mode against the rules of its comparison, in both families, and IPv6's ratio over")
	r.p("IPv4's: within 0.90–1.10, IPv6 gains what IPv4 gains.")
	r.p("")
	r.load(func(run Run) bool { return familyOf(run.Family) == FamilyIPv6 })
	for _, pr := range r.familyPairs() {
		r.p("`%s` against `%s`:", pr[0], pr[1])
		r.p("")
		r.p("| measure | IPv4 | IPv6 | IPv6 / IPv4 |")
		r.p("|---|---:|---:|---:|")
		for _, m := range r.familyMeasures(pr[0], pr[1]) {
			v4, v6 := m.ratio(FamilyIPv4), m.ratio(FamilyIPv6)
			if !v4.ok() && !v6.ok() {
				continue
			}
			q := "–"
			if x, _, _, ok := familyQuotient(v4, v6); ok {
				q = fmt.Sprintf("%.2f", x)
			}
			r.p("| %s | %s | %s | %s |", m.name, v4.cell("%.2f"), v6.cell("%.2f"), q)
		}
		r.p("")
	}
	r.chartLinks("family.png", "IPv6 ratios over IPv4 ratios")
}
