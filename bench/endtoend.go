package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/meshredirect/meshredirect/bench/report"
)

// e2eRun is one fortio run of one copy: max QPS at some connections,
// new connections per second (each request on its own connection), or
// latency at a fixed rate; over one family.
type e2eRun struct {
	// Workload is report.WorkloadE2E or report.WorkloadConnect.
	Workload, Path string
	Family         string
	Connections    int
	QPS            float64 // target; -1 for max
	Duration       time.Duration
}

// starved reports whether run did not get its CPU: a max-QPS run whose
// copy used less than 80% of its pinned CPU (it is CPU-bound: every
// process of the copy shares that CPU, one of them always has work; on a
// quiet machine the share is 0.95 or more), or a fixed-rate run that
// missed its rate by more than 10%. Other work on the machine had the CPU.
func starved(run report.Run, spec e2eRun) bool {
	if spec.QPS < 0 {
		return run.CPUShare != nil && *run.CPUShare < minCPUShare
	}
	return run.QPS != nil && *run.QPS < 0.9*spec.QPS
}

// minCPUShare is the share of its CPU below which a max-QPS run was
// starved.
const minCPUShare = 0.8

// runE2EFair runs spec on copy c, again (at most twice more) while the run
// was starved, so that a round's modes are compared on runs that had their
// CPU.
func runE2EFair(c *Copy, spec e2eRun, round int) (report.Run, error) {
	for try := 0; ; try++ {
		run, err := runE2E(c, spec, round)
		if err != nil {
			return run, err
		}
		run.Retries = try
		if !starved(run, spec) {
			return run, nil
		}
		if try == 2 {
			run.Starved = true
			return run, nil
		}
	}
}

// runE2E runs spec on copy c's load generator and returns the Run, with
// the CPU the whole copy used (its cgroup's cpu.stat usage_usec, load
// generator, server and stand-ins) per request, and the TCP segments
// every namespace of the copy sent (Tcp OutSegs) per request.
func runE2E(c *Copy, spec e2eRun, round int) (report.Run, error) {
	d := spec.Duration
	server := c.Server.IPv4
	if spec.Family == report.FamilyIPv6 {
		server = c.Server.IPv6
	}
	req := loadRequest{
		URL:         "http://" + netip.AddrPortFrom(server, uint16(c.ServerPort())).String() + "/",
		QPS:         spec.QPS,
		DurationMs:  d.Milliseconds(),
		Connections: spec.Connections,
		NoKeepAlive: spec.Workload == report.WorkloadConnect,
	}
	b, _ := json.Marshal(req)
	run := report.Run{Mode: c.Mode, Workload: spec.Workload, Path: spec.Path, Family: spec.Family, Connections: spec.Connections, Round: round, LoadAvg1: loadAvg()[0]}
	s0, err := readTCP(c, "OutSegs")
	if err != nil {
		return run, err
	}
	u0, err := c.Cgroup.usage()
	if err != nil {
		return run, err
	}
	r0, err := c.roleUsage()
	if err != nil {
		return run, err
	}
	t0 := time.Now()
	if _, err := c.Agent.stdin.Write(append(b, '\n')); err != nil {
		return run, fmt.Errorf("copy %s: send a run to the load generator: %w", c.Mode, err)
	}
	line, err := c.Agent.readLine(d + 60*time.Second)
	if err != nil {
		return run, fmt.Errorf("copy %s: the load generator did not answer: %w", c.Mode, err)
	}
	u1, err := c.Cgroup.usage()
	if err != nil {
		return run, err
	}
	r1, err := c.roleUsage()
	if err != nil {
		return run, err
	}
	s1, err := readTCP(c, "OutSegs")
	if err != nil {
		return run, err
	}
	run.CPUShare = f64(float64(u1-u0) / float64(time.Since(t0).Microseconds()))
	var res loadResult
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		return run, fmt.Errorf("copy %s: decode the load generator's answer %q: %w", c.Mode, line, err)
	}
	if res.Err != "" {
		return run, fmt.Errorf("copy %s: %s%s", c.Mode, res.Err, c.stderrs())
	}
	run.Requests, run.Errors = res.Requests, res.Errors
	run.QPS = f64(res.QPS)
	run.P50us, run.P90us, run.P99us, run.P999us = f64(res.P50us), f64(res.P90us), f64(res.P99us), f64(res.P999us)
	if res.Requests > 0 {
		run.CPUusPerReq = f64(float64(u1-u0) / float64(res.Requests))
		run.CPUusPerReqProxy, run.CPUusPerReqClient, run.CPUusPerReqServer = perRole(r0, r1, res.Requests)
		run.SegmentsPerReq = f64(float64(s1.total()-s0.total()) / float64(res.Requests))
	}
	if res.Requests == 0 || res.Errors > res.Requests/100 {
		return run, fmt.Errorf("copy %s: %d of %d requests failed", c.Mode, res.Errors, res.Requests)
	}
	return run, nil
}

// roleUsage returns the CPU time (µs) of the copy's proxy, client and
// server cgroups, in that order.
func (c *Copy) roleUsage() ([3]uint64, error) {
	var u [3]uint64
	for i, cg := range []*cgroup{c.Proxy, c.ClientCG, c.ServerCG} {
		v, err := cg.usage()
		if err != nil {
			return u, err
		}
		u[i] = v
	}
	return u, nil
}

// perRole divides the CPU each role's cgroup used between two readings of
// roleUsage (proxy, client, server) by the requests of the run.
func perRole(before, after [3]uint64, requests int64) (proxy, client, server *float64) {
	per := func(i int) *float64 { return f64(float64(after[i]-before[i]) / float64(requests)) }
	return per(0), per(1), per(2)
}

// stderrs returns the last lines the copy's processes wrote on standard
// error, for an error message.
func (c *Copy) stderrs() string {
	var b strings.Builder
	for _, s := range c.Standins {
		if t := s.proc.stderr.String(); t != "" {
			fmt.Fprintf(&b, "\n%s:\n%s", s.proc.name, lastLines(t, 5))
		}
	}
	if t := c.Agent.stderr.String(); t != "" {
		fmt.Fprintf(&b, "\n%s:\n%s", c.Agent.name, lastLines(t, 5))
	}
	return b.String()
}

func lastLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
