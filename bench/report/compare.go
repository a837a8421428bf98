package report

import "strings"

// comparison is one of the report's two comparisons: modes that place the
// proxy alike, against the rules Istio runs with that placement.
type comparison struct {
	// name is the heading; slug names its charts.
	name, slug string
	// baselines are the rules compared with, the first the main one.
	baselines []string
	// subject is meshredirect's mode the goals judge.
	subject string
	// modes are the comparison's modes that ran, in the run's order.
	modes []string
}

// allModes are the run's modes: its configuration's, then any other the
// runs name.
func (r *reporter) allModes() []string {
	out := append([]string(nil), r.res.Config.Modes...)
	seen := map[string]bool{}
	for _, m := range out {
		seen[m] = true
	}
	for _, run := range r.res.Runs {
		if !seen[run.Mode] {
			seen[run.Mode] = true
			out = append(out, run.Mode)
		}
	}
	return out
}

// nodeAgentMode is the node-level eBPF mode the goals judge: what the
// agent picks on this kernel (tcx, bpf_redirect_peer), or else the first
// node-level eBPF mode that ran.
func (r *reporter) nodeAgentMode() string {
	if r.has(ModeEBPFTCX) {
		return ModeEBPFTCX
	}
	for _, m := range r.allModes() {
		if IsEBPF(m) && !IsInPod(m) {
			return m
		}
	}
	return ModeEBPFTCX
}

// nodeComparison: one proxy in ztunnel's pod, reached through the node
// (two node crossings per request each way), against Istio's node-level
// rules.
func (r *reporter) nodeComparison() comparison {
	c := comparison{name: "Node mode", slug: "node", baselines: []string{ModeIptablesNode}, subject: r.nodeAgentMode()}
	for _, m := range r.allModes() {
		if !IsInPod(m) {
			c.modes = append(c.modes, m)
		}
	}
	return c
}

// inpodComparison: a proxy in each pod (two per request, one node
// crossing each way), against Istio's in-pod rules, iptables and
// nftables: the same stand-in in the same places in every mode.
func (r *reporter) inpodComparison() comparison {
	c := comparison{name: "In-pod mode", slug: "inpod", baselines: []string{ModeIptablesInpod, ModeNftablesInpod}, subject: ModeEBPFInpod}
	for _, m := range r.allModes() {
		if IsInPod(m) {
			c.modes = append(c.modes, m)
		}
	}
	return c
}

func (r *reporter) comparisons() []comparison {
	return []comparison{r.nodeComparison(), r.inpodComparison()}
}

// has reports whether mode ran.
func (r *reporter) has(mode string) bool {
	for _, m := range r.allModes() {
		if m == mode {
			return true
		}
	}
	return false
}

// missing lists, as "`a`, `b`", the modes of want that did not run.
func (r *reporter) missing(want ...string) string {
	var out []string
	for _, m := range want {
		if !r.has(m) {
			out = append(out, "`"+m+"`")
		}
	}
	return strings.Join(out, ", ")
}

// comparisonsIntro says why the report compares in two groups.
func (r *reporter) comparisonsIntro() {
	node, inpod := r.nodeComparison(), r.inpodComparison()
	r.p("## Two comparisons")
	r.p("")
	r.p("A request crosses different things depending on where the proxy is, so the report never compares across")
	r.p("placements:")
	r.p("")
	r.p("- **Node mode** (%s): one proxy, in ztunnel's pod; a request goes client → node → proxy → node → server, two", modeList(node.modes))
	r.p("  node crossings each way (four kernel-path hops per request). Compared with `iptables-node`, Istio's node-level")
	r.p("  ambient rules (1.18–1.20). `direct` (no mesh) and `explicit` (routing, no capture) are references, not goals.")
	r.p("- **In-pod mode** (%s): a proxy in each pod's network namespace (Istio 1.21+); a request goes client →", modeList(inpod.modes))
	r.p("  client pod's proxy (loopback) → node → server pod's proxy → server (loopback): two proxies, one node crossing each")
	r.p("  way (two kernel-path hops per request). Compared apples to apples: `ebpf-inpod` against `iptables-inpod` and")
	r.p("  `nftables-inpod`, the same stand-in in the same places.")
	r.p("")
	if m := r.missing(inpod.subject, ModeIptablesInpod, ModeNftablesInpod); m != "" {
		r.p("In-pod modes not measured in this run: %s.", m)
		r.p("")
	}
	if m := r.missing(node.subject, ModeIptablesNode); m != "" {
		r.p("Node modes not measured in this run: %s.", m)
		r.p("")
	}
	r.p("Every figure is per request where it can be: the kernel path's per-request total is the sum of the hops one")
	r.p("request crosses (per round; the ratio is the median of per-round ratios), end to end it is CPU per request.")
	r.p("")
}

func modeList(modes []string) string {
	if len(modes) == 0 {
		return "none ran"
	}
	return "`" + strings.Join(modes, "`, `") + "`"
}
