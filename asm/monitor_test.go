package asm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/google/gopacket/layers"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
)

// event is one record of the events ring buffer.
type event struct {
	maps.EventHeader
	// data are the captured bytes, CapLen of them.
	data []byte
}

// newEventReader opens a reader of set's events and attaches a monitor of
// drops for good: every run of every packet test then checks the event of
// each drop (checkEvents). A test that wants another monitor state sets the
// map itself.
func newEventReader(tb testing.TB, set *maps.Set) *ringbuf.Reader {
	tb.Helper()
	r, err := ringbuf.NewReader(set.Events)
	if err != nil {
		tb.Fatalf("open events reader: %v", err)
	}
	tb.Cleanup(func() { r.Close() })
	mon := maps.Monitor{DropsUntil: math.MaxUint64}
	if monitorVerdicts {
		mon.VerdictsUntil = math.MaxUint64
	}
	if err := set.Monitor.Set(mon); err != nil {
		tb.Fatal(err)
	}
	return r
}

// monitorVerdicts makes newEventReader attach a monitor of every verdict.
var monitorVerdicts bool

// readEvents returns the events in the ring buffer, without waiting.
func (f *fixture) readEvents(tb testing.TB) []event {
	tb.Helper()
	var out []event
	for {
		f.events.SetDeadline(time.Now())
		rec, err := f.events.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			tb.Fatalf("read events: %v", err)
		}
		if len(rec.RawSample) != int(maps.EventRecordSize) {
			tb.Fatalf("event of %d bytes, want %d", len(rec.RawSample), maps.EventRecordSize)
		}
		var e event
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &e.EventHeader); err != nil {
			tb.Fatal(err)
		}
		e.data = rec.RawSample[maps.EventHeaderSize:][:min(int(e.CapLen), maps.EventCapLen)]
		out = append(out, e)
	}
}

// drainEvents drops what earlier runs (a fuzz loop's, a benchmark's) left.
func (f *fixture) drainEvents(tb testing.TB) { f.readEvents(tb) }

// monitorSeen records, per program, the drop verdicts whose events
// checkEvents checked: TestMonitorEveryDropVerdict wants them all.
var monitorSeen = struct {
	sync.Mutex
	m map[string]map[maps.Verdict]bool
}{m: map[string]map[maps.Verdict]bool{}}

// checkEvents reads the events of the run of program name on frame that
// gave res, and checks them against the monitor map: one event if the
// deadline of the run's kind of exit (a drop, or any other) lies ahead,
// saying what the program did to what, none otherwise.
func (f *fixture) checkEvents(tb testing.TB, name string, frame []byte, res result) []event {
	tb.Helper()
	evs := f.readEvents(tb)
	mon, err := f.maps.Monitor.Get()
	if err != nil {
		tb.Fatal(err)
	}
	now := maps.KtimeNow()
	dropped := res.ret == mrasm.ActShot
	want := 0
	if dropped && now < mon.DropsUntil || !dropped && now < mon.VerdictsUntil {
		want = 1
	}
	if len(evs) != want {
		tb.Errorf("%s returned %s (verdict %s): %d monitor events, want %d (monitor %+v)", name, action(res.ret), res.verdict, len(evs), want, mon)
		return evs
	}
	for _, e := range evs {
		capLen := min(len(frame), maps.EventCapLen)
		switch {
		case res.counted && e.Verdict != res.verdict:
			tb.Errorf("event of verdict %s, the run counted %s", e.Verdict, res.verdict)
		case mrasm.ProgramName(e.Program) != name:
			tb.Errorf("event of program %s, want %s", mrasm.ProgramName(e.Program), name)
		case (e.Dropped == 1) != dropped:
			tb.Errorf("event says dropped=%d, the program returned %s", e.Dropped, action(res.ret))
		case e.Len != uint32(len(frame)) || int(e.CapLen) != capLen:
			tb.Errorf("event of a %d-byte packet with %d bytes, want %d with %d", e.Len, e.CapLen, len(frame), capLen)
		case !bytes.Equal(e.data, res.out[:capLen]):
			tb.Errorf("event bytes\n %x\nwant the packet at the exit\n %x", e.data, res.out[:capLen])
		case e.Ifindex != selfIfindex:
			tb.Errorf("event of ifindex %d, want %d (the test run's device)", e.Ifindex, selfIfindex)
		case e.Mark != res.ctxOut.Mark:
			tb.Errorf("event of mark %#x, the packet left with %#x", e.Mark, res.ctxOut.Mark)
		case e.Timestamp == 0 || e.Timestamp > now:
			tb.Errorf("event at %d ns, now is %d", e.Timestamp, now)
		}
		if dropped && res.counted {
			monitorSeen.Lock()
			if monitorSeen.m[name] == nil {
				monitorSeen.m[name] = map[maps.Verdict]bool{}
			}
			monitorSeen.m[name][e.Verdict] = true
			monitorSeen.Unlock()
		}
	}
	return evs
}

// dropVerdicts are the verdicts under which each program drops a packet:
// every one must show in the monitor. pod_loopback's parse_error is not
// here: its parser lets nothing through that flagsOf refuses.
var dropVerdicts = map[string][]maps.Verdict{
	mrasm.AppOutbound: {maps.VerdictParseError, maps.VerdictDroppedNoZtunnel, maps.VerdictDroppedSpoofed,
		maps.VerdictDroppedProtocol, maps.VerdictDroppedFragment, maps.VerdictDroppedPolicy, maps.VerdictDroppedRelay},
	mrasm.AppInbound: {maps.VerdictParseError, maps.VerdictDroppedNoZtunnel, maps.VerdictDroppedSpoofed,
		maps.VerdictDroppedProtocol, maps.VerdictDroppedFragment, maps.VerdictDroppedPolicy},
	mrasm.ZtunnelEgress: {maps.VerdictDroppedSpoofed},
	mrasm.ZtunnelAssign: {maps.VerdictNoSocket, maps.VerdictAssignFailed},
	mrasm.PodEgress: {maps.VerdictParseError, maps.VerdictDroppedSpoofed, maps.VerdictDroppedProtocol,
		maps.VerdictDroppedFragment, maps.VerdictDroppedPolicy, maps.VerdictDroppedRelay},
	mrasm.PodIngress: {maps.VerdictParseError, maps.VerdictDroppedSpoofed, maps.VerdictDroppedProtocol,
		maps.VerdictDroppedFragment, maps.VerdictDroppedPolicy, maps.VerdictNoSocket, maps.VerdictAssignFailed},
	mrasm.PodLoopback: {maps.VerdictNoSocket, maps.VerdictAssignFailed},
}

// TestMonitorEveryDropVerdict runs the packet tables of every program with
// a monitor of drops attached: each dropped packet must give one event
// with its verdict, program, length and bytes (checkEvents), each passed
// one none, and every drop verdict of every program must have shown.
func TestMonitorEveryDropVerdict(t *testing.T) {
	monitorSeen.Lock()
	clear(monitorSeen.m)
	monitorSeen.Unlock()
	ingressOK := newFixture(t, mrasm.DefaultOptions()).ingressOK
	runTables(t)
	if t.Failed() {
		return
	}
	monitorSeen.Lock()
	defer monitorSeen.Unlock()
	for prog, want := range dropVerdicts {
		for _, v := range want {
			if !monitorSeen.m[prog][v] && !ingressOK && (prog == mrasm.AppInbound || prog == mrasm.ZtunnelEgress) {
				// Their rows skip where the test run takes no
				// skb->ingress_ifindex (before Linux 5.15).
				t.Logf("%s: no event of a %s drop checked: its rows need skb->ingress_ifindex in a test run", prog, v)
				continue
			}
			if !monitorSeen.m[prog][v] {
				t.Errorf("%s: no event of a %s drop was checked (no row drops so?)", prog, v)
			}
		}
		for v := range monitorSeen.m[prog] {
			if !slices.Contains(want, v) {
				t.Errorf("%s: an event of a %s drop, a verdict dropVerdicts does not list", prog, v)
			}
		}
	}
}

// TestMonitorEveryVerdict runs the packet tables with a monitor of every
// verdict attached: each packet, dropped or not, gives one event, with the
// bytes and mark it leaves with.
func TestMonitorEveryVerdict(t *testing.T) {
	monitorVerdicts = true
	defer func() { monitorVerdicts = false }()
	runTables(t)
}

// runTables runs the packet tests of every program.
func runTables(t *testing.T) {
	for _, tables := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"app_outbound", TestAppOutbound}, {"app_inbound", TestAppInbound}, {"truncated", TestTruncatedFrames},
		{"ztunnel_ingress", TestZtunnelIngress}, {"ztunnel_egress", TestZtunnelEgress}, {"ztunnel_assign", TestZtunnelAssign},
		{"pod", TestPodPrograms}, {"pod_dns", TestPodDNSReplies}, {"pod_dns_tcp", TestPodDNSOverTCP},
	} {
		t.Run(tables.name, tables.run)
	}
}

// TestMonitorDeadlines: the programs write events only while the deadline
// of the exit's kind lies ahead; with none, or one past (a monitor killed
// without cleaning up), nothing.
func TestMonitorDeadlines(t *testing.T) {
	f := newFixture(t, mrasm.DefaultOptions())
	drop := packet{src: remoteV4, dst: serverV4}.build(t)
	// Longer than an event captures.
	pass := packet{src: clientV4, dst: remoteV4, proto: layers.IPProtocolUDP, dport: 443, payload: make([]byte, 1200)}.build(t)
	now := maps.KtimeNow()
	ahead, past := now+uint64(time.Hour), now-1
	for _, row := range []struct {
		name        string
		mon         maps.Monitor
		drops, pass int
	}{
		{"no monitor", maps.Monitor{}, 0, 0},
		{"deadlines past", maps.Monitor{DropsUntil: past, VerdictsUntil: past}, 0, 0},
		{"drops", maps.Monitor{DropsUntil: ahead}, 1, 0},
		{"drops, every verdict past", maps.Monitor{DropsUntil: ahead, VerdictsUntil: past}, 1, 0},
		{"every verdict", maps.Monitor{DropsUntil: ahead, VerdictsUntil: ahead}, 1, 1},
		{"every verdict but drops", maps.Monitor{VerdictsUntil: ahead}, 0, 1},
	} {
		t.Run(row.name, func(t *testing.T) {
			if err := f.maps.Monitor.Set(row.mon); err != nil {
				t.Fatal(err)
			}
			res := f.run(t, mrasm.AppOutbound, drop, 0)
			if res.ret != mrasm.ActShot || len(res.events) != row.drops {
				t.Errorf("drop (%s): %d events, want %d", res.verdict, len(res.events), row.drops)
			}
			res = f.run(t, mrasm.AppOutbound, pass, 0)
			if res.ret != mrasm.ActUnspec || len(res.events) != row.pass {
				t.Errorf("pass (%s): %d events, want %d", res.verdict, len(res.events), row.pass)
			}
			if row.pass == 1 && (res.events[0].CapLen != maps.EventCapLen || res.events[0].Len != uint32(len(pass))) {
				t.Errorf("event of the %d-byte packet: %d of %d bytes", len(pass), res.events[0].CapLen, res.events[0].Len)
			}
		})
	}
}

// TestMonitorCountsLostEvents: once the ring buffer is full (its reader
// behind), every event the programs cannot write is counted in the monitor
// map's Lost: each run gives an event or a count, never neither, and the
// count is what the monitor reports (dataplane.MonitorOptions.Lost).
func TestMonitorCountsLostEvents(t *testing.T) {
	f := newFixture(t, mrasm.DefaultOptions())
	drop := packet{src: remoteV4, dst: serverV4}.build(t)
	if err := f.maps.Monitor.Set(maps.Monitor{DropsUntil: maps.KtimeNow() + uint64(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	// Twice the runs the ring buffer has room for, read by nobody meanwhile.
	runs := 2 * maps.EventsSize / int(maps.EventRecordSize)
	ret, err := f.coll.Programs[mrasm.AppOutbound].Run(&ebpf.RunOptions{Data: drop, Repeat: uint32(runs)})
	if err != nil || int32(ret) != mrasm.ActShot {
		t.Fatalf("run %d times: %s, %v", runs, action(int32(ret)), err)
	}
	evs := f.readEvents(t)
	mon, err := f.maps.Monitor.Get()
	if err != nil {
		t.Fatal(err)
	}
	if mon.Lost == 0 || uint64(len(evs))+mon.Lost != uint64(runs) {
		t.Errorf("%d drops: %d events and %d counted lost, want them to add up, some lost", runs, len(evs), mon.Lost)
	}
	// With room again, nothing more is lost.
	before := mon.Lost
	res := f.run(t, mrasm.AppOutbound, drop, 0)
	if mon, err = f.maps.Monitor.Get(); err != nil || mon.Lost != before || len(res.events) != 1 {
		t.Errorf("a drop with room: %d events, lost %d -> %d (%v); want 1 event, none lost", len(res.events), before, mon.Lost, err)
	}
}

// BenchmarkMonitor measures what the monitor costs app_outbound per packet,
// as BenchmarkPrograms does (above an empty program, the median of
// alternating rounds): for a captured packet, a passed one and a dropped
// one, with no monitor, with drops monitored and with every verdict
// monitored. A round runs 1000 packets and the ring buffer is drained
// between rounds, so that every event is written, none refused for room.
//
//	go test ./asm -run '^$' -bench Monitor -benchtime 400000x
func BenchmarkMonitor(b *testing.B) {
	fx := newFixture(b, mrasm.DefaultOptions())
	empty := emptyProgram(b)
	prog := fx.coll.Programs[mrasm.AppOutbound]
	frames := []struct {
		name  string
		frame []byte
	}{
		{"captured", packet{src: clientV4, dst: remoteV4}.build(b)},
		{"passed", packet{src: clientV4, dst: remoteV4, proto: layers.IPProtocolUDP, dport: 443}.build(b)},
		{"dropped", packet{src: remoteV4, dst: serverV4}.build(b)},
	}
	monitors := []struct {
		name string
		mon  maps.Monitor
	}{
		{"none", maps.Monitor{}},
		{"drops", maps.Monitor{DropsUntil: math.MaxUint64}},
		{"all", maps.Monitor{DropsUntil: math.MaxUint64, VerdictsUntil: math.MaxUint64}},
	}
	for _, fr := range frames {
		for _, m := range monitors {
			b.Run(fr.name+"/monitor="+m.name, func(b *testing.B) {
				if err := fx.maps.Monitor.Set(m.mon); err != nil {
					b.Fatal(err)
				}
				const per = 1000
				rounds := max(b.N/per, 1)
				var diff, progNs []float64
				b.ResetTimer()
				for r := 0; r < rounds; r++ {
					e, err := runFor(empty, fr.frame, mrasm.SkBuff{}, per)
					if err != nil {
						b.Fatal(err)
					}
					p, err := runFor(prog, fr.frame, mrasm.SkBuff{}, per)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					fx.drainEvents(b)
					b.StartTimer()
					progNs = append(progNs, ns(p))
					diff = append(diff, ns(p)-ns(e))
				}
				b.StopTimer()
				b.ReportMetric(0, "ns/op")
				b.ReportMetric(median(progNs), "ns/pkt")
				b.ReportMetric(median(diff), "above-empty-ns/pkt")
			})
		}
	}
}
