package agent_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/scenario"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// gapMargin is how much slower than the stream's p99 a request may be
// before it is a gap. A lost SYN costs the client at least
// TCP_TIMEOUT_INIT (1 s): 500 ms over the p99 always sees it, and stays
// above the scheduling noise of a 2-core machine running the suites under
// -race (CI's soak: p99 46 ms, slowest 245 ms, no segment lost). A lost
// data segment shows in the client's counters instead (a timeout, or a
// retransmission the peer did not report as a duplicate), however short
// the stall.
const gapMargin = 500 * time.Millisecond

// request is one request of a stream: a TCP connection from the client to
// the remote host's echo server, ExchangeSize bytes each way.
type request struct {
	n       int // from 1, in the order they were sent
	v6      bool
	local   netip.AddrPort // the client's end, set if the exchange succeeded
	dst     netip.AddrPort
	start   time.Time
	latency time.Duration
	err     error
}

func (r request) String() string {
	return fmt.Sprintf("request %d from %s to %s", r.n, r.local, r.dst)
}

// stream sends a request from an enrolled pod (the box's client) to the
// remote host every few milliseconds until finished, keeping each one: its
// client address and port, its latency, its error.
type stream struct {
	b      *scenario.Box
	stop   context.CancelFunc
	done   chan struct{}
	start  time.Time
	before testenv.TCPCounters // the client's netns, as the stream began
	// excuse, if set before finish, says why a failed request is not the
	// capture's failure ("" if it is): finish logs such a request and
	// fails the test on the others only.
	excuse func(request) string

	mu   sync.Mutex
	reqs []request
}

// startStream starts the stream from b's client; finish stops it.
func startStream(t *testing.T, b *scenario.Box) *stream {
	t.Helper()
	b.Echo(b.Remote, scenario.EchoPort)
	before, err := testenv.ReadTCPCounters(b.Client.Netns)
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	s := &stream{b: b, stop: cancel, done: make(chan struct{}), start: time.Now(), before: before}
	t.Cleanup(func() { s.stop(); <-s.done })
	go func() {
		defer close(s.done)
		for i := 0; ctx.Err() == nil; i++ {
			r := request{n: i + 1, v6: i%2 == 1, start: time.Now()}
			r.dst = addr(b.Remote, r.v6, scenario.EchoPort)
			r.local, r.err = scenario.Exchange(&b.Client.Namespace, r.v6, r.dst, 3*time.Second)
			r.latency = time.Since(r.start)
			s.mu.Lock()
			s.reqs = append(s.reqs, r)
			s.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return s
}

// streamResult is what a finished stream showed.
type streamResult struct {
	s             *stream
	requests, ok  int
	failed        []request // failed, or carried but not as sent
	bypassed      []request // succeeded without passing ztunnel
	excused       []request // failed, for a reason the stream's excuse gives
	p50, p99, max time.Duration
	baseline      time.Duration       // the p99 of the requests under 1 s
	slow          []request           // slower than baseline + gapMargin
	retrans       testenv.TCPCounters // the client's netns, during the stream
	detail        []string            // why each failed request failed
}

// finish stops the stream and checks every request: it counts as ok only
// if one of the stand-ins (the current one, and the earlier ones' records)
// carried it, from the same client address and port to the address it
// dialled, with ExchangeSize bytes each way. A failed request, and one that
// succeeded without a record, fails the test. It logs the requests, their
// latencies and the client's retransmissions; set, if not nil, gives the
// programs' counters to explain failures.
func (s *stream) finish(t *testing.T, set *maps.Set, earlier ...[]ztunnel.Record) *streamResult {
	t.Helper()
	s.stop()
	<-s.done
	res := &streamResult{s: s}
	after, err := testenv.ReadTCPCounters(s.b.Client.Netns)
	if err != nil {
		t.Errorf("read the client's TCP counters: %v", err)
	}
	res.retrans = after.Sub(s.before)
	s.mu.Lock()
	reqs := slices.Clone(s.reqs)
	s.mu.Unlock()
	res.requests = len(reqs)

	// The last records end a moment after their exchange returned: wait
	// (bounded) until every successful request has a finished record.
	var verdicts []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var recs []ztunnel.Record
		for _, e := range earlier {
			recs = append(recs, e...)
		}
		recs = append(recs, s.b.Standin.Records()...)
		var pending bool
		verdicts, pending = matchRecords(reqs, recs)
		if !pending || time.Now().After(deadline) {
			break
		}
	}

	var lat []time.Duration
	for i, r := range reqs {
		switch {
		case r.err != nil && s.excuse != nil && s.excuse(r) != "":
			res.excused = append(res.excused, r)
			t.Logf("request %d (%s) at %v failed, excused (%s): %v", r.n, scenario.Family(r.v6),
				r.start.Sub(s.start).Round(time.Millisecond), s.excuse(r), r.err)
		case r.err != nil:
			res.failed = append(res.failed, r)
			res.detail = append(res.detail, fmt.Sprintf("request %d (%s) at %v failed: %v", r.n, scenario.Family(r.v6),
				r.start.Sub(s.start).Round(time.Millisecond), r.err))
		case verdicts[i] == bypass:
			res.bypassed = append(res.bypassed, r)
		case verdicts[i] != "":
			res.failed = append(res.failed, r)
			res.detail = append(res.detail, fmt.Sprintf("%s %s", r, verdicts[i]))
		default:
			res.ok++
			lat = append(lat, r.latency)
		}
	}
	res.p50, res.p99, res.max = percentile(lat, 50), percentile(lat, 99), percentile(lat, 100)
	var under []time.Duration
	for _, l := range lat {
		if l < time.Second {
			under = append(under, l)
		}
	}
	res.baseline = percentile(under, 99)
	for i, r := range reqs {
		if r.err == nil && verdicts[i] == "" && r.latency > res.baseline+gapMargin {
			res.slow = append(res.slow, r)
		}
	}
	t.Logf("stream: %d requests, %d ok, %d failed, %d around ztunnel; latency p50 %v p99 %v max %v; the client's netns: %v",
		res.requests, res.ok, len(res.failed), len(res.bypassed), res.p50.Round(time.Microsecond), res.p99.Round(time.Microsecond),
		res.max.Round(time.Microsecond), res.retrans)

	for i, r := range res.bypassed {
		if i == 10 {
			t.Errorf("... and %d more requests without ztunnel", len(res.bypassed)-i)
			break
		}
		t.Errorf("%s succeeded without passing ztunnel (no record of it in the stand-in)", r)
	}
	if len(res.failed) > 0 {
		t.Errorf("%d of %d requests failed", len(res.failed), res.requests)
	}
	if len(res.failed) > 0 || len(res.bypassed) > 0 {
		s.explain(t, res, set)
	}
	return res
}

// bypass is matchRecords' verdict on a request that no record carried.
const bypass = "succeeded without passing ztunnel"

// matchRecords pairs each successful request with the stand-in's record of
// it: same client address and port, same original destination, begun while
// the request ran (ports come back after TIME_WAIT). verdicts[i] is ""
// for a request carried as sent, else why not; pending says some record
// has not ended yet.
func matchRecords(reqs []request, recs []ztunnel.Record) (verdicts []string, pending bool) {
	type key struct{ src, dst netip.AddrPort }
	byKey := map[key][]int{}
	for i, r := range recs {
		k := key{scenario.Unmap(r.Source), scenario.Unmap(r.OrigDst)}
		byKey[k] = append(byKey[k], i)
	}
	used := make([]bool, len(recs))
	verdicts = make([]string, len(reqs))
	for i, q := range reqs {
		if q.err != nil {
			continue
		}
		verdicts[i] = bypass
		for _, j := range byKey[key{scenario.Unmap(q.local), scenario.Unmap(q.dst)}] {
			r := recs[j]
			if used[j] || r.Start.Before(q.start.Add(-50*time.Millisecond)) || r.Start.After(q.start.Add(q.latency+50*time.Millisecond)) {
				continue
			}
			used[j] = true
			switch {
			case !r.Done():
				verdicts[i] = "passed ztunnel but its record did not end"
				pending = true
			case r.ClientToServer != scenario.ExchangeSize || r.ServerToClient != scenario.ExchangeSize:
				verdicts[i] = fmt.Sprintf("passed ztunnel, which carried %d/%d bytes of its %d each way (%s)",
					r.ClientToServer, r.ServerToClient, scenario.ExchangeSize, r.Err)
			default:
				verdicts[i] = ""
			}
			break
		}
	}
	return verdicts, pending
}

// percentile is the p-th percentile of d (nearest rank), 0 if d is empty.
func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p+99)/100 - 1
	return s[max(i, 0)]
}

// noGap fails the test if the stream saw a gap: a request slower than the
// stream's p99 (of the requests under 1 s) by more than gapMargin, or a
// segment the client's netns had to send again for a loss (a SYN, a
// retransmission timeout, any retransmission but a tail loss probe).
func (res *streamResult) noGap(t *testing.T, what string) {
	t.Helper()
	for i, r := range res.slow {
		if i == 10 {
			t.Errorf("... and %d more slow requests", len(res.slow)-i)
			break
		}
		t.Errorf("gap %s: %s (%s) at %v (%s) took %v, over the p99 %v + %v", what, r, scenario.Family(r.v6),
			r.start.Sub(res.s.start).Round(time.Millisecond), r.start.UTC().Format("15:04:05.000"), r.latency.Round(time.Millisecond), res.baseline, gapMargin)
	}
	if c := res.retrans; c.Stalled() {
		t.Errorf("gap %s: in the client's netns %v", what, c)
	}
}

// atLeast fails the test if fewer than n requests went through.
func (res *streamResult) atLeast(t *testing.T, n int) {
	t.Helper()
	if res.ok < n {
		t.Errorf("only %d requests went through, want at least %d", res.ok, n)
	}
}

// explain logs, after failures, what tells their cause: the first failed
// requests, the stand-in's failed flows and the programs' counters.
func (s *stream) explain(t *testing.T, res *streamResult, set *maps.Set) {
	t.Helper()
	if len(res.detail) > 0 {
		t.Logf("first failures:\n%s", strings.Join(res.detail[:min(len(res.detail), 10)], "\n"))
	}
	n := 0
	for _, r := range s.b.Standin.Records() {
		if r.Err != "" && n < 10 {
			n++
			t.Logf("stand-in flow %d at %v: %s -> %s on %d: %s", r.ID, r.Start.Sub(s.start).Round(time.Millisecond), r.Source, r.OrigDst, r.Listener, r.Err)
		}
	}
	if set != nil {
		if stats, err := set.Stats.Read(); err == nil {
			t.Logf("the programs' counters: %v", stats)
		}
	}
}
