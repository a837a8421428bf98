package agent_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/tc"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
	"github.com/meshredirect/meshredirect/testenv/scenario"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// These tests measure "no gap" per datagram through the agent's own
// transitions, as tc's TestReplaceUnderFlow does for the tc package alone.
// The datagrams are DNS queries from an enrolled pod to the resolver on the
// other node, with DNS capture on (DESIGN §5: they belong to ztunnel's DNS
// proxy on 15053). Each carries its number in its name and is sent once.
// What answers it tells what became of it, an effect only the capture
// produces:
//   - the stand-in's DNS proxy answers with gapProxyAnswer and records the
//     query by name: the query met the capture program (and the assign
//     program, or in-pod the loopback one, that hands it to the proxy);
//   - the resolver itself answers with the remote host's address: the query
//     went around the capture (a gap);
//   - no answer: the query, or its answer, was lost.

// gapPace is the interval between two queries of the stream (the families
// alternate: even numbers IPv4, odd numbers IPv6).
const gapPace = time.Millisecond

// gapFloor is the fewest queries a transition's window (from the signal to
// the new agent's "agent ready", its first reconcile and attach done) must
// hold for the test to prove anything about it.
const gapFloor = 100

// gapProxyAnswer is what the stand-in's DNS proxy answers, an address no
// resolver of the box gives.
var gapProxyAnswer = []netip.Addr{testenv.ServiceIPv4(53), testenv.ServiceIPv6(53)}

// gapName is the name queried by the datagram numbered n.
func gapName(n int) string { return fmt.Sprintf("q%d.gap.example.", n) }

// gapNumber is the number in a name gapName made, or -1.
func gapNumber(name string) int {
	rest, ok := strings.CutPrefix(strings.ToLower(name), "q")
	if !ok {
		return -1
	}
	num, ok := strings.CutSuffix(rest, ".gap.example.")
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(num)
	if err != nil {
		return -1
	}
	return n
}

// What answered a datagram.
type gapAnswer uint8

const (
	gapUnanswered gapAnswer = iota
	gapViaProxy             // the stand-in's DNS proxy
	gapDirect               // the resolver itself: the capture was bypassed
	gapOther                // an answer neither gives
)

// dnsStream sends numbered DNS queries from a pod every gapPace until
// stopped, and records when each was sent and what answered it.
type dnsStream struct {
	b      *scenario.Box
	conns  [2]net.PacketConn // IPv4, IPv6
	stop   chan struct{}
	sender chan struct{}
	recv   sync.WaitGroup

	mu      sync.Mutex
	sent    []time.Time // by number
	answers []gapAnswer // by number
	dupes   int
}

func startDNSStream(t *testing.T, b *scenario.Box, src *testenv.Pod) *dnsStream {
	t.Helper()
	b.DNS()
	s := &dnsStream{b: b, stop: make(chan struct{}), sender: make(chan struct{})}
	for i, network := range []string{"udp4", "udp6"} {
		c, err := src.ListenPacket(network, ":0")
		must(t, err)
		// The default receive buffer would drop a burst of answers while
		// the reader is descheduled: as root, force a big one.
		if err := setRcvbufForce(c, 8<<20); err != nil {
			c.Close()
			t.Fatalf("set the receive buffer: %v", err)
		}
		s.conns[i] = c
		s.recv.Add(1)
		go s.receive(c)
	}
	t.Cleanup(func() { s.finish() })
	servers := [2]*net.UDPAddr{
		net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.Remote.IPv4, scenario.DNSPort)),
		net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.Remote.IPv6, scenario.DNSPort)),
	}
	go func() {
		defer close(s.sender)
		tick := time.NewTicker(gapPace)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			v6 := n%2 == 1
			qtype := dnsmessage.TypeA
			if v6 {
				qtype = dnsmessage.TypeAAAA
			}
			q := dnsmessage.Message{Header: dnsmessage.Header{ID: uint16(n), RecursionDesired: true},
				Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(gapName(n)), Type: qtype, Class: dnsmessage.ClassINET}}}
			wire, err := q.Pack()
			if err != nil {
				panic(err) // a name gapName made always packs
			}
			s.mu.Lock()
			s.sent = append(s.sent, time.Now())
			s.answers = append(s.answers, gapUnanswered)
			s.mu.Unlock()
			// A failed send is a lost datagram: it stays unanswered.
			s.conns[n%2].WriteTo(wire, servers[n%2])
		}
	}()
	return s
}

func setRcvbufForce(c net.PacketConn, size int) error {
	raw, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size) }); err != nil {
		return err
	}
	return serr
}

func (s *dnsStream) receive(c net.PacketConn) {
	defer s.recv.Done()
	buf := make([]byte, 2048)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		var m dnsmessage.Message
		if m.Unpack(buf[:n]) != nil || !m.Response || len(m.Questions) != 1 {
			continue
		}
		num := gapNumber(m.Questions[0].Name.String())
		if num < 0 {
			continue
		}
		kind := gapOther
		for _, a := range m.Answers {
			var ip netip.Addr
			switch body := a.Body.(type) {
			case *dnsmessage.AResource:
				ip = netip.AddrFrom4(body.A)
			case *dnsmessage.AAAAResource:
				ip = netip.AddrFrom16(body.AAAA)
			}
			switch {
			case slices.Contains(gapProxyAnswer, ip):
				kind = gapViaProxy
			case ip == s.b.Remote.IPv4 || ip == s.b.Remote.IPv6:
				kind = gapDirect
			}
		}
		s.mu.Lock()
		if num < len(s.answers) {
			if s.answers[num] != gapUnanswered {
				s.dupes++
			}
			// A bypass is kept even if a proxied answer follows.
			if s.answers[num] != gapDirect {
				s.answers[num] = kind
			}
		}
		s.mu.Unlock()
	}
}

// finish stops sending, waits a second for the last answers and stops
// receiving. It may be called more than once.
func (s *dnsStream) finish() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
		<-s.sender
		time.Sleep(time.Second)
	}
	for _, c := range s.conns {
		if c != nil {
			c.Close()
		}
	}
	s.recv.Wait()
}

// gapWindow is one transition of the agent: from the signal to the old
// agent to the new agent's "agent ready" (its first reconcile, which
// attaches, done) and, in in-pod mode, ztunnel's receipt of its snapshot.
type gapWindow struct {
	name     string
	from, to time.Time
	// datapath is when the new agent worked on the datapath: from its
	// first log line (before it opens the pins) to "agent ready".
	datapathFrom, datapathTo time.Time
}

// check fails t unless every datagram the stream sent was answered by the
// stand-in's proxy, and recorded by it under its name, and unless each
// window held at least gapFloor datagrams. The failures name the numbers,
// with when each was sent relative to the windows.
func (s *dnsStream) check(t *testing.T, windows []gapWindow) {
	t.Helper()
	s.finish()
	recorded := map[int]bool{}
	for _, r := range s.b.Standin.Records() {
		if r.Listener == ztunnel.PortDNS && r.DNS != nil && r.Err == "" {
			if n := gapNumber(r.DNS.Name); n >= 0 {
				recorded[n] = true
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sent) == 0 {
		t.Fatal("the stream sent nothing")
	}
	start, end := s.sent[0], s.sent[len(s.sent)-1]
	t.Logf("the stream sent %d DNS queries in %v (one every %v on average), %d answered twice", len(s.sent),
		end.Sub(start).Round(time.Millisecond), (end.Sub(start) / time.Duration(max(1, len(s.sent)-1))).Round(time.Microsecond), s.dupes)
	byKind := map[gapAnswer][]int{}
	var unrecorded []int
	for n, a := range s.answers {
		byKind[a] = append(byKind[a], n)
		if a == gapViaProxy && !recorded[n] {
			unrecorded = append(unrecorded, n)
		}
	}
	when := func(nums []int) string {
		var parts []string
		for i, r := range numberRanges(nums) {
			if i == 10 {
				parts = append(parts, "...")
				break
			}
			at := s.sent[r[0]]
			where := fmt.Sprintf("%v into the stream", at.Sub(start).Round(time.Millisecond))
			for _, w := range windows {
				if !at.Before(w.from) && !at.After(w.to) {
					where = fmt.Sprintf("%v into %q", at.Sub(w.from).Round(time.Millisecond), w.name)
				}
			}
			// The agent's log lines carry UTC times: so does this.
			where += ", at " + at.UTC().Format("15:04:05.000")
			if r[0] != r[1] {
				where += fmt.Sprintf(" for %v", s.sent[r[1]].Sub(at).Round(time.Millisecond))
			}
			if r[0] == r[1] {
				parts = append(parts, fmt.Sprintf("#%d (%s)", r[0], where))
			} else {
				parts = append(parts, fmt.Sprintf("#%d-%d (%d, from %s)", r[0], r[1], r[1]-r[0]+1, where))
			}
		}
		return strings.Join(parts, ", ")
	}
	if nums := byKind[gapDirect]; len(nums) > 0 {
		t.Errorf("%d queries went around the capture, answered by the resolver itself: %s", len(nums), when(nums))
	}
	if nums := byKind[gapUnanswered]; len(nums) > 0 {
		t.Errorf("%d queries lost, never answered: %s", len(nums), when(nums))
	}
	if nums := byKind[gapOther]; len(nums) > 0 {
		t.Errorf("%d queries answered with neither the proxy's nor the resolver's address: %s", len(nums), when(nums))
	}
	if len(unrecorded) > 0 {
		t.Errorf("%d queries answered as by the proxy but not in its records: %s", len(unrecorded), when(unrecorded))
	}
	if q := s.b.DNS().Queries["udp"]; q != 0 {
		t.Errorf("the resolver answered %d queries over UDP itself", q)
	}
	for _, w := range windows {
		in, dp := 0, 0
		for _, at := range s.sent {
			if !at.Before(w.from) && !at.After(w.to) {
				in++
			}
			if !at.Before(w.datapathFrom) && !at.After(w.datapathTo) {
				dp++
			}
		}
		t.Logf("%s: %d queries in its window of %v, %d of them while the new agent opened the pins and reconciled (%v)",
			w.name, in, w.to.Sub(w.from).Round(time.Millisecond), dp, w.datapathTo.Sub(w.datapathFrom).Round(time.Millisecond))
		if in < gapFloor {
			t.Errorf("%s: only %d queries in its window; the test proves little (want at least %d)", w.name, in, gapFloor)
		}
		if dp == 0 {
			t.Errorf("%s: no query while the new agent worked on the datapath", w.name)
		}
	}
}

// numberRanges groups sorted numbers into runs [first, last].
func numberRanges(nums []int) [][2]int {
	var out [][2]int
	for _, n := range nums {
		if len(out) > 0 && out[len(out)-1][1] == n-1 {
			out[len(out)-1][1] = n
			continue
		}
		out = append(out, [2]int{n, n})
	}
	return out
}

// logTimes returns the times of the agent's first log line and of its
// "agent ready" line (text format: time=RFC 3339 with milliseconds).
func (p *agentProcess) logTimes(t *testing.T) (first, ready time.Time) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, line := range p.log {
		v, ok := strings.CutPrefix(line, "time=")
		if !ok {
			continue
		}
		v, _, _ = strings.Cut(v, " ")
		at, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			continue
		}
		if first.IsZero() {
			first = at
		}
		if strings.Contains(line, "agent ready") {
			return first, at
		}
	}
	t.Fatalf("no timed \"agent ready\" line in the agent's log:\n%s", strings.Join(p.log, "\n"))
	return
}

// gapTransition is one restart of the agent: the signal that stops the
// old one, the flags of the new one and what the new one must show.
type gapTransition struct {
	name string
	sig  syscall.Signal
	args []string
	// logged is a line the new agent must log (what proves the row).
	logged string
	// mode is the attach mode every attachment must be in afterwards
	// (ModeAuto: not checked).
	mode tc.Mode
}

// TestNoGapThroughAgentTransitions streams numbered DNS queries from an
// enrolled pod, with DNS capture on, through each of the agent's
// transitions: killed (SIGKILL) and restarted; killed and restarted with
// another --pods-max-entries, which replaces the pinned maps; stopped and
// restarted with another --attach-mode, tc to tcx and back. In node mode and
// in in-pod mode. Every query must be answered by ztunnel's DNS proxy (the
// stand-in), none by the resolver itself (a gap), none lost; and each
// transition's window must have held at least gapFloor queries.
func TestNoGapThroughAgentTransitions(t *testing.T) {
	testutil.RequirePrivileged(t)
	rows := []struct {
		name        string
		first       []string
		needTCX     bool
		transitions []gapTransition
	}{
		{name: "agent killed", transitions: []gapTransition{
			{name: "SIGKILL, restarted", sig: syscall.SIGKILL},
		}},
		{name: "pins replaced", first: []string{"--pods-max-entries", "1024"}, transitions: []gapTransition{
			{name: "SIGKILL, restarted with --pods-max-entries 2048", sig: syscall.SIGKILL, args: []string{"--pods-max-entries", "2048"},
				logged: "replaced a pinned map"},
		}},
		{name: "attach mode migration", first: []string{"--attach-mode", "tc"}, needTCX: true, transitions: []gapTransition{
			{name: "SIGTERM, restarted with --attach-mode tcx", sig: syscall.SIGTERM, args: []string{"--attach-mode", "tcx"}, mode: tc.ModeTCX},
			{name: "SIGTERM, restarted with --attach-mode tc", sig: syscall.SIGTERM, args: []string{"--attach-mode", "tc"}, mode: tc.ModeLegacy},
		}},
	}
	for _, inPod := range []bool{false, true} {
		mode := agent.ZtunnelModeNode
		if inPod {
			mode = agent.ZtunnelModeInPod
		}
		t.Run(mode, func(t *testing.T) {
			for _, row := range rows {
				t.Run(row.name, func(t *testing.T) {
					if row.needTCX && !tc.HaveTCX() {
						t.Skip("tcx needs kernel 6.6+: no migration to make on this kernel") // a kernel feature: skipped even under CI
					}
					began := time.Now()
					defer func() { t.Logf("ran in %v", time.Since(began).Round(time.Millisecond)) }()
					runGapRow(t, inPod, row.first, row.transitions)
				})
			}
		})
	}
}

func runGapRow(t *testing.T, inPod bool, first []string, transitions []gapTransition) {
	o := scenario.Options{DNSAnswer: gapProxyAnswer}
	var e *env
	if inPod {
		e = newInPodEnv(t, kubeapi.Shared(t), o)
	} else {
		e = newEnvWith(t, kubeapi.Shared(t), o)
	}
	b := e.box
	e.labelNamespace(e.ns, agent.ModeAmbient)
	common := []string{"--capture-dns"}
	if inPod {
		common = append(common, "--ztunnel-mode", agent.ZtunnelModeInPod, "--zds-socket", b.ZDSPath)
	}
	settle := func() {
		if inPod {
			e.waitInPod(b.Client, b.Server)
			return
		}
		set := e.maps()
		e.converged(t, set, b.Client, b.Server)
		set.Close()
	}
	p := e.startAgentProcess(t, append(slices.Clone(common), first...)...)
	settle()

	s := startDNSStream(t, b, b.Client)
	time.Sleep(500 * time.Millisecond)
	var windows []gapWindow
	for _, tr := range transitions {
		snapshots := 0
		if inPod {
			snapshots = b.Standin.ZDS().Snapshots
		}
		from := time.Now()
		p.signal(t, tr.sig)
		p = e.startAgentProcess(t, append(slices.Clone(common), tr.args...)...)
		if inPod {
			// In-pod, the transition ends when ztunnel has the new
			// agent's snapshot: what it leaves out, ztunnel drops.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			_, err := b.Standin.WaitZDS(ctx, func(z ztunnel.ZDSState) bool { return z.Snapshots > snapshots })
			cancel()
			if err != nil {
				t.Fatalf("%s: the stand-in did not get the new agent's snapshot: %v (%+v)", tr.name, err, b.Standin.ZDS())
			}
		}
		to := time.Now()
		dpFrom, dpTo := p.logTimes(t)
		windows = append(windows, gapWindow{name: tr.name, from: from, to: to, datapathFrom: dpFrom, datapathTo: dpTo})
		settle()
		if tr.logged != "" && !strings.Contains(p.output(), tr.logged) {
			t.Errorf("%s: the new agent did not log %q:\n%s", tr.name, tr.logged, p.output())
		}
		if tr.mode != tc.ModeAuto {
			checkAttachMode(t, e, inPod, tr.mode)
		}
		time.Sleep(500 * time.Millisecond)
	}
	s.check(t, windows)
}

// checkAttachMode fails t unless every attachment of the client's capture
// (its host veth in node mode, its netns in in-pod mode) and of ztunnel's
// is in mode.
func checkAttachMode(t *testing.T, e *env, inPod bool, mode tc.Mode) {
	t.Helper()
	netns := []string{e.box.Node.Path(), e.box.Ztunnel.Path()}
	if inPod {
		netns = []string{e.box.Client.Path(), e.box.Server.Path()}
	}
	for _, path := range netns {
		all, err := dataplane.ListAttachments(dataplane.Config{NodeNetns: path, PinDir: e.pinDir}, "")
		must(t, err)
		if len(all) == 0 {
			t.Errorf("no attachment in %s", path)
		}
		for _, a := range all {
			if a.Mode != mode {
				t.Errorf("in %s, after the restart with attach mode %s: %s", path, mode, a)
			}
		}
	}
}
