package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/meshredirect/meshredirect/bench/report"
	"github.com/meshredirect/meshredirect/testenv/cnichain"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
)

// scalePods is the number of pods the enrolment and the agent's memory
// are measured at (the goals are at 1,000).
const scalePods = 1000

// runScale is the scale phase (issue 18): the per-packet cost with 1,
// 1,000 and 65,536 entries in the pods map (and the ipset), then the real
// agent against a real API server: its memory and CPU with no pod,
// enrolment of 1 and of 1,000 pods from the API, its memory and CPU at
// 1,000 pods, and CNI ADD with and without meshredirect-cni. A part that
// cannot run (no kube-apiserver, no reference CNI plugins) or fails is
// listed in the returned reasons; what it made is removed either way.
func runScale(e *env, o options, bo buildOptions) (*report.Scale, []string) {
	start := time.Now()
	sc := &report.Scale{}
	skipped := runScalePackets(e, o, bo, sc)
	skipped = append(skipped, runScaleAgent(e, o, sc)...)
	sc.Elapsed = time.Since(start).Round(time.Second).String()
	logf("scale: done in %s", sc.Elapsed)
	return sc, skipped
}

// runScaleAgent measures the agent; see runScale.
func runScaleAgent(e *env, o options, sc *report.Scale) (skipped []string) {
	if _, _, err := kubeapi.Binaries(); err != nil {
		return []string{fmt.Sprintf("scale: enrolment, CNI ADD and the agent's memory: %v", err)}
	}
	window, adds, timeout := 10*time.Second, 200, 10*time.Minute
	if o.quick {
		window, adds, timeout = 5*time.Second, 50, 90*time.Second
	}
	fail := func(what string, err error) []string {
		logf("scale: %s: %v", what, err)
		return append(skipped, fmt.Sprintf("scale: %s failed: %v", what, err))
	}
	t := time.Now()
	bin, err := buildAgent(e)
	if err != nil {
		return fail("build the agent", err)
	}
	sc.Setup = append(sc.Setup, fmt.Sprintf("the agent built (go build cmd/meshredirect) in %s", time.Since(t).Round(time.Millisecond)))
	t = time.Now()
	c, err := startScaleCluster(e, bin)
	if err != nil {
		return fail("start the API server and the agent", err)
	}
	sc.Setup = append(sc.Setup, fmt.Sprintf("kube-apiserver, etcd and the agent ready in %s", time.Since(t).Round(time.Millisecond)))
	logf("scale: the agent with no pod: %s window", window)
	c.agent.quiet(time.Second, 10*time.Second)
	idle, err := c.agent.window(0, 0, window)
	if err != nil {
		return fail("read the agent's usage", err)
	}
	sc.Agent = append(sc.Agent, idle)

	enrol := func(n int) error {
		logf("scale: enrol %d pods from the API (at most %s)", n, timeout)
		enr, setup, err := c.enrolFromAPI(e, fmt.Sprintf("p%d", n), n, timeout)
		sc.Setup = append(sc.Setup, setup...)
		if enr.Pods > 0 {
			sc.Enrolment = append(sc.Enrolment, enr)
			logf("scale: %d pods: %d enrolled, p50 %.1f ms, max %.1f ms, span %.0f ms (writes %.0f ms), %.1f pods/s",
				n, enr.Enrolled, enr.P50ms, enr.Maxms, enr.Spanms, enr.Writesms, enr.PerSecond)
		}
		return err
	}
	if err := enrol(1); err != nil {
		return fail("enrol 1 pod", err)
	}

	// CNI ADD on a node with one pod and an idle agent: the plugin's own
	// cost, not a wait behind a backlog of enrolments.
	logf("scale: %d CNI ADDs", adds)
	primary, ours, chain, err := c.cniADDs(e, adds)
	switch {
	case err != nil && errors.Is(err, cnichain.ErrNoReferencePlugins):
		skipped = append(skipped, fmt.Sprintf("scale: CNI ADD: %v", err))
	case err != nil:
		return fail("CNI ADD", fmt.Errorf("%w; the agent (%s) logged last: %s", err, c.agent.state(), lastLines(c.agent.tail.String(), 6)))
	default:
		sc.CNIAdd = append(sc.CNIAdd, latency("ptp + host-local alone (the chain without meshredirect-cni)", primary),
			latency("meshredirect-cni alone (exec, to the agent and back, pod captured)", ours))
		x := report.ScaleEnrolment{Source: report.EnrolFromCNI, Mode: "node", Pods: len(chain), Enrolled: len(chain), Verified: true}
		x.P50ms, x.P99ms, x.Maxms = percentiles(chain)
		sc.Enrolment = append(sc.Enrolment, x)
		logf("scale: CNI ADD: ptp p50 %.2f ms p99 %.2f ms; meshredirect-cni p50 %.2f ms p99 %.2f ms", sc.CNIAdd[0].P50ms, sc.CNIAdd[0].P99ms, sc.CNIAdd[1].P50ms, sc.CNIAdd[1].P99ms)
		starts, err := pluginStarts(adds)
		if err != nil {
			return fail("CNI plugin start", err)
		}
		sc.CNIAdd = append(sc.CNIAdd, latency(report.PluginStartWhat, starts))
	}
	c.agent.quiet(time.Second, 10*time.Second)

	enrolErr := enrol(scalePods)
	var settled time.Duration
	if enrolErr != nil {
		skipped = append(skipped, fmt.Sprintf("scale: %v", enrolErr))
	} else {
		// Steady means the agent's CPU has come down, not only its log:
		// its own annotations come back as pod updates, each synced.
		c.agent.quiet(2*time.Second, 60*time.Second)
		if settled, err = c.agent.settle(2 * time.Minute); err != nil {
			return fail("read the agent's usage", err)
		}
		logf("scale: the agent's CPU under 10%% of a core %s after its last log line", settled.Round(time.Second))
	}
	pods := len(c.Node.Pods()) - 1 + len(chain) // ztunnel is not captured
	enrolled := c.agent.count()
	logf("scale: the agent with %d pods (%d enrolled): %s window", pods, enrolled, window)
	busy, err := c.agent.window(pods, enrolled, window)
	if err != nil {
		return fail("read the agent's usage", err)
	}
	if enrolErr == nil {
		busy.SettleAfter = settled.Round(time.Second).String()
	}
	sc.Agent = append(sc.Agent, busy)
	skipped = append(skipped, "scale: in-pod mode (ZDS) not measured: node mode only")
	return skipped
}
