package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/zds"
)

// fakeZDS is the node agent's end of ZDS, in memory: each connection the
// stand-in dials gets the requests the test sends, one at a time, and
// hands back the ack.
type fakeZDS struct {
	conns chan *fakeConn // a connection for each dial, while up
}

type fakeMsg struct {
	req ZDSRequest
	ns  *os.File
}

type fakeConn struct {
	reqs   chan fakeMsg
	acks   chan string
	closed chan struct{}
	once   sync.Once
}

func newFakeZDS() *fakeZDS { return &fakeZDS{conns: make(chan *fakeConn, 1)} }

func (f *fakeZDS) dial(ctx context.Context, path string) (zdsConn, error) {
	select {
	case c := <-f.conns:
		return c, nil
	case <-time.After(5 * time.Millisecond):
		return nil, errors.New("connection refused (fake)")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// accept offers the stand-in a new connection (a node agent that starts
// or restarts) and returns it once the stand-in has it.
func (f *fakeZDS) accept(t *testing.T) *fakeConn {
	t.Helper()
	c := &fakeConn{reqs: make(chan fakeMsg), acks: make(chan string, 1), closed: make(chan struct{})}
	select {
	case f.conns <- c:
	case <-time.After(20 * time.Second):
		t.Fatal("the stand-in did not dial zds")
	}
	return c
}

func (c *fakeConn) Recv() (ZDSRequest, *os.File, error) {
	select {
	case m := <-c.reqs:
		return m.req, m.ns, nil
	case <-c.closed:
		return ZDSRequest{}, nil, io.EOF
	}
}

func (c *fakeConn) Ack(msg string) error {
	select {
	case c.acks <- msg:
		return nil
	case <-c.closed:
		return net.ErrClosed
	}
}

func (c *fakeConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// send sends a request and returns the ack's error text.
func (c *fakeConn) send(t *testing.T, req ZDSRequest, ns *os.File) string {
	t.Helper()
	select {
	case c.reqs <- fakeMsg{req, ns}:
	case <-time.After(10 * time.Second):
		t.Fatalf("the stand-in does not read %s %s", req.Op, req.Pod.UID)
	}
	select {
	case a := <-c.acks:
		return a
	case <-time.After(10 * time.Second):
		t.Fatalf("no ack for %s %s", req.Op, req.Pod.UID)
	}
	return ""
}

// hangUp ends the connection from the node agent's side.
func (c *fakeConn) hangUp() { c.Close() }

func (c *fakeConn) mustAck(t *testing.T, req ZDSRequest, ns *os.File) {
	t.Helper()
	if a := c.send(t, req, ns); a != "" {
		t.Fatalf("%s %s: ack %q, want success", req.Op, req.Pod.UID, a)
	}
}

func add(p *testenv.Pod) ZDSRequest {
	return ZDSRequest{Op: "add", Pod: podInfo(p)}
}

func podInfo(p *testenv.Pod) PodInfo {
	return PodInfo{UID: "uid-" + p.Name, Name: p.Name, Namespace: "ns1", ServiceAccount: "sa-" + p.Name}
}

// openNetns opens a pod's namespace as the node agent sends it.
func openNetns(t *testing.T, p *testenv.Pod) *os.File {
	t.Helper()
	f, err := os.Open(p.Path())
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// startInPod runs an in-pod stand-in on a fake ZDS, closed when the test
// ends.
func startInPod(t *testing.T, opts Options) (*Server, *fakeZDS) {
	t.Helper()
	f := newFakeZDS()
	opts.ZDS = "fake"
	s, err := startWith(opts, f.dial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, f
}

// listening reports whether something accepts TCP at addr inside p.
func listening(t *testing.T, p *testenv.Pod, addr netip.AddrPort) bool {
	t.Helper()
	c, err := p.Dial(network("tcp", addr.Addr()), addr.String())
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return false
		}
		if errors.Is(err, syscall.ECONNRESET) {
			return true // accepted, then refused as a loop (isSelf)
		}
		t.Fatalf("dial %s in pod %s: %v", addr, p.Name, err)
	}
	c.Close()
	return true
}

// checkListeners checks that p's own listeners answer inside p (each
// port, each family) and that each of the stand-in's sockets there has
// SO_MARK 0x539 and SO_REUSEPORT, and IP_TRANSPARENT on 15001, 15006 and
// 15008.
func checkListeners(t *testing.T, s *Server, p *testenv.Pod, want bool) {
	t.Helper()
	for _, port := range []uint16{PortOutbound, PortInbound, PortHBONE} {
		for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
			if got := listening(t, p, netip.AddrPortFrom(a, port)); got != want {
				t.Errorf("pod %s: listening on %s port %d: %v, want %v", p.Name, a, port, got, want)
			}
		}
	}
	for _, a := range []string{"127.0.0.1", "::1"} {
		if got := listening(t, p, netip.AddrPortFrom(netip.MustParseAddr(a), PortDNS)); got != want {
			t.Errorf("pod %s: DNS listening on %s: %v, want %v", p.Name, a, got, want)
		}
	}
	if !want {
		return
	}
	s.mu.Lock()
	pd := s.inpod.pods[podInfo(p).UID]
	s.mu.Unlock()
	if pd == nil {
		t.Fatalf("pod %s not served", p.Name)
	}
	for i, l := range pd.listeners {
		rc, err := l.(syscall.Conn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		rc.Control(func(fd uintptr) {
			get := func(level, opt int) int {
				v, err := unix.GetsockoptInt(int(fd), level, opt)
				if err != nil {
					t.Fatalf("getsockopt: %v", err)
				}
				return v
			}
			if m := get(unix.SOL_SOCKET, unix.SO_MARK); m != Mark {
				t.Errorf("listener %s: SO_MARK %#x, want %#x", pd.laddrs[i], m, Mark)
			}
			if r := get(unix.SOL_SOCKET, unix.SO_REUSEPORT); r != 1 {
				t.Errorf("listener %s: SO_REUSEPORT %d, want 1", pd.laddrs[i], r)
			}
			if pd.laddrs[i].Port() != PortDNS && pd.laddrs[i].Addr().Is6() {
				if v := get(unix.SOL_IPV6, unix.IPV6_TRANSPARENT); v != 1 {
					t.Errorf("listener %s: not transparent", pd.laddrs[i])
				}
				if v := get(unix.SOL_IPV6, unix.IPV6_V6ONLY); v != 0 {
					t.Errorf("listener %s: IPV6_V6ONLY, want dual stack", pd.laddrs[i])
				}
			}
		})
	}
}

func podUIDs(pods []PodState) string {
	var uids []string
	for _, p := range pods {
		uids = append(uids, fmt.Sprintf("%s(up=%v)", p.UID, p.Up))
	}
	return strings.Join(uids, " ")
}

// TestInPodConversation follows a node agent's ZDS conversations: add
// opens a pod's listeners in its netns, del closes them, a disconnect
// keeps them, a new connection's snapshot_sent drops the pods it did not
// name, keep keeps one, and every request is acked.
func TestInPodConversation(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a, b, c := node.AddPod("a", testenv.Ambient), node.AddPod("b", testenv.Ambient), node.AddPod("c", testenv.Ambient)
	s, f := startInPod(t, Options{})
	ctx := testContext(t)

	zc := f.accept(t)
	zc.mustAck(t, add(a), openNetns(t, a))
	zc.mustAck(t, add(b), openNetns(t, b))
	zc.mustAck(t, ZDSRequest{Op: "snapshot_sent"}, nil)
	st, err := s.WaitPod(ctx, "uid-a")
	if err != nil {
		t.Fatal(err)
	}
	if st.PodInfo != podInfo(a) || len(st.Listeners) != 7 {
		t.Errorf("pod a: %+v, want %+v and 7 listeners", st, podInfo(a))
	}
	checkListeners(t, s, a, true)
	checkListeners(t, s, b, true)
	checkListeners(t, s, c, false)

	// add is idempotent for the same netns.
	zc.mustAck(t, add(a), openNetns(t, a))
	// del closes a pod's listeners; a del of an unknown pod is acked.
	zc.mustAck(t, ZDSRequest{Op: "del", Pod: PodInfo{UID: "uid-b"}}, nil)
	checkListeners(t, s, b, false)
	zc.mustAck(t, ZDSRequest{Op: "del", Pod: PodInfo{UID: "uid-nobody"}}, nil)
	// keep after the snapshot is an error (ztunnel: protocol error).
	if ack := zc.send(t, ZDSRequest{Op: "keep", Pod: PodInfo{UID: "uid-a"}}, nil); ack == "" {
		t.Error("keep after snapshot_sent acked as success")
	}

	// The agent restarts: a's listeners stay while it is away; the new
	// connection adds c and b anew and keeps a (as for a pod whose netns
	// the agent cannot open).
	zc.hangUp()
	if _, err := s.WaitZDS(ctx, func(z ZDSState) bool { return !z.Connected }); err != nil {
		t.Fatal(err)
	}
	checkListeners(t, s, a, true)
	zc = f.accept(t)
	zc.mustAck(t, add(c), openNetns(t, c))
	zc.mustAck(t, add(b), openNetns(t, b))
	zc.mustAck(t, ZDSRequest{Op: "keep", Pod: PodInfo{UID: "uid-a"}}, nil)
	zc.mustAck(t, ZDSRequest{Op: "snapshot_sent"}, nil)
	if got := podUIDs(s.Pods()); got != "uid-a(up=true) uid-b(up=true) uid-c(up=true)" {
		t.Errorf("after the second snapshot: %s", got)
	}

	// Again: this snapshot names a only; b and c go.
	zc.hangUp()
	zc = f.accept(t)
	zc.mustAck(t, add(a), openNetns(t, a))
	zc.mustAck(t, ZDSRequest{Op: "snapshot_sent"}, nil)
	if got := podUIDs(s.Pods()); got != "uid-a(up=true)" {
		t.Errorf("after the third snapshot: %s", got)
	}
	checkListeners(t, s, a, true)
	checkListeners(t, s, b, false)
	checkListeners(t, s, c, false)

	z := s.ZDS()
	want := ZDSState{Connected: true, Connects: 3, Failures: z.Failures, Adds: 6, Keeps: 2, Dels: 2, Snapshots: 3, Acks: 13, ErrorAcks: 1, LastError: z.LastError}
	if z != want {
		t.Errorf("zds state %+v, want %+v", z, want)
	}

	// Close closes the last pod's listeners.
	s.Close()
	checkListeners(t, s, a, false)
}

// TestInPodAddErrors: an add the stand-in cannot carry out (a port taken
// in the pod) and one that AckError refuses are acked with an error, and
// the pod is not served.
func TestInPodAddErrors(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a, b := node.AddPod("a", testenv.Ambient), node.AddPod("b", testenv.Ambient)
	s, f := startInPod(t, Options{AckError: func(r ZDSRequest) string {
		if r.Op == "add" && r.Pod.UID == "uid-b" {
			return "refused by the test"
		}
		return ""
	}})
	l, err := a.Listen("tcp6", fmt.Sprintf("[::]:%d", PortInbound))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	zc := f.accept(t)
	if ack := zc.send(t, add(a), openNetns(t, a)); !strings.Contains(ack, "port 15006") {
		t.Errorf("add with 15006 taken: ack %q", ack)
	}
	if ack := zc.send(t, add(b), openNetns(t, b)); ack != "refused by the test" {
		t.Errorf("add refused by AckError: ack %q", ack)
	}
	pods := s.Pods()
	if len(pods) != 1 || pods[0].UID != "uid-a" || pods[0].Up || pods[0].Err == "" {
		t.Errorf("pods %+v, want uid-a down with an error", pods)
	}
	if z := s.ZDS(); z.Acks != 2 || z.ErrorAcks != 2 {
		t.Errorf("zds state %+v, want 2 acks, both errors", z)
	}
	l.Close()
	checkListeners(t, s, b, false)
	// The next add of a works (a retry by the agent).
	zc.mustAck(t, add(a), openNetns(t, a))
	checkListeners(t, s, a, true)
}

// replyToLo makes what p sends from port sport go to p's own lo, as the
// pod's redirection does for replies to connections ztunnel made with a
// client's source: the reply reaches ztunnel's transparent socket instead
// of leaving the pod.
func replyToLo(t *testing.T, p *testenv.Pod, sport uint16) {
	t.Helper()
	routeToLo(t, p, &netlink.Rule{IPProto: unix.IPPROTO_TCP, Sport: netlink.NewRulePortRange(sport, sport)})
}

// captureToLo makes the TCP p sends to dport, except ztunnel's (mark
// 0x539), go to p's own lo, where the stand-in's wildcard transparent
// listener on that port takes it: policy routing standing in for the
// dataplane's capture (which cannot change ports: dport is the listener's).
func captureToLo(t *testing.T, p *testenv.Pod, dport uint16) {
	t.Helper()
	// The replies to ztunnel's connection come from the captured port:
	// IPv4's source validation (fib_validate_source, which follows the
	// port rule once a namespace has custom rules) would find their source
	// local and drop them as martians. accept_local skips it.
	if err := p.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/all/accept_local", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	mask := uint32(0xffffffff)
	routeToLo(t, p,
		&netlink.Rule{Mark: Mark, Mask: &mask, Table: unix.RT_TABLE_MAIN},
		&netlink.Rule{IPProto: unix.IPPROTO_TCP, Dport: netlink.NewRulePortRange(dport, dport)})
}

const loTable = 100

// routeToLo adds the rules in p (in order, both families; those without a
// table look up loTable) and loTable's local default routes.
func routeToLo(t *testing.T, p *testenv.Pod, rules ...*netlink.Rule) {
	t.Helper()
	err := p.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
			dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
			if fam == unix.AF_INET6 {
				dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
			r := &netlink.Route{Table: loTable, Type: unix.RTN_LOCAL, Dst: dst, LinkIndex: lo.Attrs().Index, Scope: netlink.SCOPE_HOST}
			if err := netlink.RouteReplace(r); err != nil {
				return fmt.Errorf("add route %v: %w", r, err)
			}
			prio := 100
			for _, base := range rules {
				rule := netlink.NewRule()
				rule.Family, rule.Priority = fam, prio
				rule.IPProto, rule.Sport, rule.Dport, rule.Mark, rule.Mask = base.IPProto, base.Sport, base.Dport, base.Mark, base.Mask
				rule.Table = base.Table
				if rule.Table == 0 {
					rule.Table = loTable
				}
				if err := netlink.RuleAdd(rule); err != nil {
					return fmt.Errorf("add rule %v: %w", rule, err)
				}
				prio++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// reusePortEcho is an echo server at addr in p with SO_REUSEPORT, so that
// it can share its port with the stand-in's wildcard listener in the pod
// (and, bound to an address, takes that address's connections). It
// returns the peers it saw.
func reusePortEcho(t *testing.T, p *testenv.Pod, addr netip.AddrPort) <-chan netip.AddrPort {
	t.Helper()
	lc := &net.ListenConfig{Control: optReusePort.control()}
	lc.SetMultipathTCP(false)
	var l net.Listener
	if err := p.Do(func() (err error) {
		l, err = lc.Listen(context.Background(), network("tcp", addr.Addr()), addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	peers := make(chan netip.AddrPort, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			peers <- addrPort(c.RemoteAddr())
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return peers
}

// TestInPodInboundHBONE: a CONNECT to a pod's own 15008 reaches the app
// in the pod from the HBONE peer's address (the client pod's, as ztunnel
// connects with enable_original_source), by a socket with mark 0x539, and
// the record names the pod.
func TestInPodInboundHBONE(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a, b := node.AddPod("a", testenv.Ambient), node.AddPod("b", testenv.NotAmbient)
	replyToLo(t, a, 8080)
	echo := a.StartEcho(8080)
	s, f := startInPod(t, Options{})
	ctx := testContext(t)
	zc := f.accept(t)
	zc.mustAck(t, add(a), openNetns(t, a))
	zc.mustAck(t, ZDSRequest{Op: "snapshot_sent"}, nil)

	for _, fam := range families() {
		t.Run(fam.name, func(t *testing.T) {
			target := netip.AddrPortFrom(ip(a, fam.v6), 8080)
			var hc net.Conn
			if err := b.Do(func() (err error) {
				hc, err = DialHBONE(ctx, netip.AddrPortFrom(ip(a, fam.v6), PortHBONE).String(), target.String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer hc.Close()
			exchange(t, hc, "through a's 15008")
			r, err := s.WaitFor(ctx, func(r Record) bool { return r.Target == target && r.Done() })
			if err != nil {
				t.Fatal(err)
			}
			if r.Listener != PortHBONE || r.Pod != podInfo(a) || r.Source.Addr() != ip(b, fam.v6) || r.Upstream.Addr() != ip(b, fam.v6) || r.Err != "" {
				t.Errorf("record %+v: want listener 15008, pod a, source and upstream from b", r)
			}
			peers := echo.Peers()
			if len(peers) == 0 || peers[len(peers)-1] != r.Upstream {
				t.Errorf("app saw %v, want %s last", peers, r.Upstream)
			}
		})
	}
}

// TestInPodOutbound: what a pod sends to 15001's port is taken by its own
// outbound listener and carried from the pod's address: in plaintext to a
// pod the stand-in does not serve, over HBONE (to the destination's 15008,
// the other pod's own listener) to one it serves.
func TestInPodOutbound(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a, b, c := node.AddPod("a", testenv.Ambient), node.AddPod("b", testenv.Ambient), node.AddPod("c", testenv.NotAmbient)
	captureToLo(t, a, PortOutbound)
	replyToLo(t, b, PortOutbound)
	plainEcho := c.StartEcho(PortOutbound)
	s, f := startInPod(t, Options{})
	ctx := testContext(t)
	zc := f.accept(t)
	zc.mustAck(t, add(a), openNetns(t, a))
	zc.mustAck(t, add(b), openNetns(t, b))
	zc.mustAck(t, ZDSRequest{Op: "snapshot_sent"}, nil)

	for _, fam := range families() {
		meshEcho := reusePortEcho(t, b, netip.AddrPortFrom(ip(b, fam.v6), PortOutbound))
		for _, dstPod := range []*testenv.Pod{c, b} {
			t.Run(fam.name+"/"+dstPod.Name, func(t *testing.T) {
				dst := netip.AddrPortFrom(ip(dstPod, fam.v6), PortOutbound)
				// Bound to a's address first: an unbound IPv4 socket
				// cannot connect to an address that only a policy
				// route makes local (ENETUNREACH), a bound one can.
				d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip(a, fam.v6).AsSlice()}}
				var conn net.Conn
				if err := a.Do(func() (err error) {
					conn, err = d.DialContext(ctx, network("tcp", dst.Addr()), dst.String())
					return err
				}); err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				src := addrPort(conn.LocalAddr())
				t.Cleanup(func() {
					if t.Failed() {
						t.Logf("records: %+v", s.Records())
					}
				})
				exchange(t, conn, "from a to "+dstPod.Name)
				r, err := s.WaitFor(ctx, func(r Record) bool { return r.Source == src && r.Listener == PortOutbound && r.Done() })
				if err != nil {
					t.Fatal(err)
				}
				if r.Pod != podInfo(a) || r.OrigDst != dst || r.Upstream.Addr() != ip(a, fam.v6) || r.Err != "" {
					t.Errorf("record %+v: want pod a, original destination %s, upstream from a", r, dst)
				}
				if dstPod == c {
					if r.Tunnel.IsValid() {
						t.Errorf("record %+v: tunnelled to a pod not served", r)
					}
					peers := plainEcho.Peers()
					if len(peers) == 0 || peers[len(peers)-1] != r.Upstream {
						t.Errorf("c saw %v, want %s last", peers, r.Upstream)
					}
					return
				}
				if want := netip.AddrPortFrom(dst.Addr(), PortHBONE); r.Tunnel != want {
					t.Errorf("record %+v: tunnel %s, want %s", r, r.Tunnel, want)
				}
				in, err := s.WaitFor(ctx, func(in Record) bool { return in.Listener == PortHBONE && in.Target == dst && in.Done() })
				if err != nil {
					t.Fatal(err)
				}
				if in.Pod != podInfo(b) || in.Source != r.Upstream || in.Upstream.Addr() != ip(a, fam.v6) {
					t.Errorf("b's record %+v: want pod b, source %s, upstream from a", in, r.Upstream)
				}
				select {
				case p := <-meshEcho:
					if p != in.Upstream {
						t.Errorf("b's app saw %s, want %s", p, in.Upstream)
					}
				case <-ctx.Done():
					t.Fatal("b's app saw nobody")
				}
			})
		}
	}
}

// startZDS runs a node agent's ZDS server at path until the test ends,
// with the workloads added before it serves (its first snapshot).
func startZDS(t *testing.T, path string, before ...zds.Workload) *zds.Server {
	t.Helper()
	srv, err := zds.Listen(zds.ServerOptions{Path: path, RetryBackoff: zds.Backoff{Initial: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range before {
		if err := srv.Add(t.Context(), w); !errors.Is(err, zds.ErrNoZtunnel) {
			t.Fatalf("add %s before serving: %v", w.UID, err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(t.Context())
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return srv
}

func workload(p *testenv.Pod) zds.Workload {
	i := podInfo(p)
	return zds.Workload{UID: i.UID, Info: zds.WorkloadInfo{Name: i.Name, Namespace: i.Namespace, ServiceAccount: i.ServiceAccount}, Netns: p.Path()}
}

// TestInPodZDS speaks to the node agent's real ZDS server: its add opens a
// pod's listeners, its del closes them, a refusal (AckError) reaches it as
// an *zds.AckError, and after the agent restarts its snapshot leaves the
// stand-in with the new set: a pod kept (keep, the agent could not open its
// netns) and one added stay, one left out goes.
func TestInPodZDS(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a, b, c, x := node.AddPod("a", testenv.Ambient), node.AddPod("b", testenv.Ambient), node.AddPod("c", testenv.Ambient), node.AddPod("x", testenv.Ambient)
	path := t.TempDir() + "/ztunnel.sock"
	srv := startZDS(t, path)
	s, err := Start(Options{ZDS: path, AckError: func(r ZDSRequest) string {
		if r.Op == "add" && r.Pod.UID == "uid-x" {
			return "refused by the test"
		}
		return ""
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := testContext(t)
	if err := srv.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}

	for _, p := range []*testenv.Pod{a, b} {
		if err := srv.Add(ctx, workload(p)); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := s.WaitPod(ctx, "uid-a"); err != nil || st.PodInfo != podInfo(a) {
		t.Fatalf("pod a: %+v, %v", st, err)
	}
	checkListeners(t, s, a, true)
	checkListeners(t, s, b, true)
	var ackErr *zds.AckError
	if err := srv.Add(ctx, workload(x)); !errors.As(err, &ackErr) || ackErr.Message != "refused by the test" {
		t.Errorf("add refused by AckError: %v", err)
	}
	checkListeners(t, s, x, false)
	if err := srv.Add(ctx, workload(c)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Del(ctx, "uid-c"); err != nil {
		t.Fatal(err)
	}
	checkListeners(t, s, c, false)
	if got := podUIDs(s.Pods()); got != "uid-a(up=true) uid-b(up=true)" {
		t.Errorf("pods %s, want a and b", got)
	}
	if st := srv.Stats(); st.AckErrors != 1 || st.Acks != st.Adds+st.Dels+st.SnapshotsSent {
		t.Errorf("agent's stats %+v: want one error ack and an ack per request", st)
	}
	before, _ := s.WaitPod(ctx, "uid-a")

	// The agent restarts. Meanwhile the pods keep their listeners.
	srv.Close()
	if _, err := s.WaitZDS(ctx, func(z ZDSState) bool { return !z.Connected }); err != nil {
		t.Fatal(err)
	}
	checkListeners(t, s, a, true)
	// Its new set: a, whose netns it cannot open (so: keep), and c.
	keepA := workload(a)
	keepA.Netns = t.TempDir() + "/gone"
	srv = startZDS(t, path, keepA, workload(c))
	if err := srv.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if got := podUIDs(s.Pods()); got != "uid-a(up=true) uid-c(up=true)" {
		t.Errorf("pods after the restart %s, want a and c", got)
	}
	if after, _ := s.WaitPod(ctx, "uid-a"); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("pod a changed across the restart: %+v, was %+v", after, before)
	}
	checkListeners(t, s, a, true)
	checkListeners(t, s, b, false)
	checkListeners(t, s, c, true)
	z := s.ZDS()
	if z.Connects != 2 || z.Keeps != 1 || z.Snapshots != 2 || z.ErrorAcks != 1 {
		t.Errorf("zds state %+v: want 2 connections, 1 keep, 2 snapshots, 1 error ack", z)
	}
}

// TestInPodInboundPlaintext: a connection to a pod's app port, redirected
// to the pod's 15006 by iptables-style NAT (as Istio's in-pod rules do;
// nft here), is carried to the app at the original destination that
// SO_ORIGINAL_DST gives, from the client's address, and the record names
// the pod.
func TestInPodInboundPlaintext(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a, b := node.AddPod("a", testenv.Ambient), node.AddPod("b", testenv.NotAmbient)
	replyToLo(t, a, 8080)
	nftIn(t, a, "redirects to 15006 as Istio's in-pod iptables rules do", `
table inet standin {
	chain prerouting {
		type nat hook prerouting priority dstnat;
		iifname "eth0" tcp dport 8080 redirect to :15006
	}
}
`)
	echo := a.StartEcho(8080)
	s, f := startInPod(t, Options{})
	ctx := testContext(t)
	zc := f.accept(t)
	zc.mustAck(t, add(a), openNetns(t, a))

	for _, fam := range families() {
		t.Run(fam.name, func(t *testing.T) {
			dst := netip.AddrPortFrom(ip(a, fam.v6), 8080)
			c, err := b.DialContext(ctx, network("tcp", dst.Addr()), dst.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			src := addrPort(c.LocalAddr())
			exchange(t, c, "to a's app through a's 15006")
			r, err := s.WaitFor(ctx, func(r Record) bool { return r.Source == src && r.Done() })
			if err != nil {
				t.Fatal(err)
			}
			if r.Listener != PortInbound || r.Pod != podInfo(a) || r.OrigDst != dst || r.Target != dst || r.Upstream.Addr() != src.Addr() || r.Err != "" {
				t.Errorf("record %+v: want listener 15006, pod a, original destination %s, upstream from %s", r, dst, src.Addr())
			}
			peers := echo.Peers()
			if len(peers) == 0 || peers[len(peers)-1] != r.Upstream {
				t.Errorf("app saw %v, want %s last", peers, r.Upstream)
			}
		})
	}
}

// openFDs counts the process's sockets and namespace files. (Pipes are
// left out: Go keeps a pool of them for splice(2), which the echo servers'
// copies fill.)
func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		l, _ := os.Readlink("/proc/self/fd/" + fd.Name())
		if strings.HasPrefix(l, "socket:") || strings.HasPrefix(l, "net:") {
			n++
		}
	}
	return n
}

// TestInPodDelAndCloseLeaveNothing: del ends the pod's live flows with its
// listeners (ztunnel drains a deleted pod at once), and Close leaves no
// goroutine, no descriptor (listeners, netns files) behind.
func TestInPodDelAndCloseLeaveNothing(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a, b := node.AddPod("a", testenv.Ambient), node.AddPod("b", testenv.NotAmbient)
	replyToLo(t, a, 8080)
	a.StartEcho(8080)
	ctx := testContext(t)
	settle := func() (int, int) {
		time.Sleep(50 * time.Millisecond)
		return runtime.NumGoroutine(), openFDs(t)
	}
	g0, fd0 := settle()

	f := newFakeZDS()
	s, err := startWith(Options{ZDS: "fake"}, f.dial)
	if err != nil {
		t.Fatal(err)
	}
	zc := f.accept(t)
	stream := func() net.Conn {
		var hc net.Conn
		if err := b.Do(func() (err error) {
			hc, err = DialHBONE(ctx, netip.AddrPortFrom(a.IPv4, PortHBONE).String(), netip.AddrPortFrom(a.IPv4, 8080).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		hc.Write([]byte("open"))
		hc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(hc, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		return hc
	}
	ended := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
	}

	zc.mustAck(t, add(a), openNetns(t, a))
	hc := stream()
	defer hc.Close()
	zc.mustAck(t, ZDSRequest{Op: "del", Pod: PodInfo{UID: "uid-a"}}, nil)
	if !ended(hc) {
		t.Error("HBONE stream through a still open after del")
	}

	zc.mustAck(t, add(a), openNetns(t, a))
	hc2 := stream()
	defer hc2.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !ended(hc2) {
		t.Error("HBONE stream through a still open after Close")
	}
	hc.Close()
	hc2.Close()
	for _, r := range s.Records() {
		if !r.Done() {
			t.Errorf("record still open after Close: %+v", r)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for g, fd := settle(); g > g0 || fd > fd0; g, fd = settle() {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("after Close: %d goroutines (%d before), %d descriptors (%d before):\n%s", g, g0, fd, fd0, buf[:runtime.Stack(buf, true)])
		}
	}
}

// nftIn loads an nft ruleset inside p.
func nftIn(t *testing.T, p *testenv.Pod, why, ruleset string) {
	t.Helper()
	nft := testutil.RequireTool(t, "nft", why)
	if err := p.Do(func() error {
		cmd := exec.Command(nft, "-f", "-")
		cmd.Stdin = strings.NewReader(ruleset)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft: %v: %s", err, out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestInPodDNS: a pod's DNS listeners, on its loopback addresses, answer
// queries sent to them (UDP and TCP) and queries to port 53 that NAT
// redirects to them (as Istio's in-pod rules do), the reply coming back
// from the server the pod asked; each record names the pod.
func TestInPodDNS(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a := node.AddPod("a", testenv.Ambient)
	nftIn(t, a, "redirects DNS to 15053 as Istio's in-pod iptables rules do", `
table inet standin {
	chain output {
		type nat hook output priority -100;
		udp dport 53 redirect to :15053
	}
}
`)
	name := "svc.example."
	s, f := startInPod(t, Options{DNS: map[string][]netip.Addr{name: {a.IPv4, a.IPv6}}})
	ctx := testContext(t)
	zc := f.accept(t)
	zc.mustAck(t, add(a), openNetns(t, a))

	for _, c := range []struct {
		name   string
		proto  string
		server netip.AddrPort
	}{
		{"udp/loopback4", "udp", netip.MustParseAddrPort("127.0.0.1:15053")},
		{"tcp/loopback6", "tcp", netip.MustParseAddrPort("[::1]:15053")},
		{"udp/redirected4", "udp", netip.AddrPortFrom(testenv.ServiceIPv4(53), 53)},
		{"udp/redirected6", "udp", netip.AddrPortFrom(testenv.ServiceIPv6(53), 53)},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, err := a.DialContext(ctx, network(c.proto, c.server.Addr()), c.server.String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			q := dnsQuery(t, name, dnsmessage.TypeA)
			if c.proto == "tcp" {
				q = append([]byte{0, byte(len(q))}, q...)
			}
			if _, err := conn.Write(q); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 512)
			n, err := conn.Read(buf) // a connected UDP socket takes replies from the server only
			if err != nil {
				t.Fatal(err)
			}
			if c.proto == "tcp" {
				buf = buf[2:n]
			} else {
				buf = buf[:n]
			}
			var m dnsmessage.Message
			if err := m.Unpack(buf); err != nil || len(m.Answers) != 1 {
				t.Fatalf("reply %+v, %v: want one answer", m, err)
			}
			src := addrPort(conn.LocalAddr())
			r, err := s.WaitFor(ctx, func(r Record) bool { return r.Source == src })
			if err != nil {
				t.Fatal(err)
			}
			if r.Listener != PortDNS || r.Pod != podInfo(a) || r.DNS == nil || r.DNS.Name != name {
				t.Errorf("record %+v: want a DNS query on 15053 of pod a", r)
			}
		})
	}
}

// TestOrigDstRedirect: a connection that iptables REDIRECTs (nat OUTPUT,
// to 15001, as Istio's in-pod rules do since 1.24) reaches the stand-in
// with 127.0.0.1 or ::1 as its local address; the record's original
// destination is still the address the client dialled, which only
// SO_ORIGINAL_DST (IPv4, also on the dual-stack listener) and
// IP6T_SO_ORIGINAL_DST (IPv6) know, and the flow reaches it. A connection
// no NAT touched (to a pod whose namespace has no conntrack at all: the
// kernel answers ENOENT) records its local address.
func TestOrigDstRedirect(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a, b, c := node.AddPod("a", testenv.Ambient), node.AddPod("b", testenv.NotAmbient), node.AddPod("c", testenv.Ambient)
	for _, tool := range []string{"iptables-restore", "ip6tables-restore"} {
		path := testutil.RequireTool(t, tool, "to REDIRECT as Istio's in-pod rules do")
		lo := "127.0.0.1/32"
		if tool == "ip6tables-restore" {
			lo = "::1/128"
		}
		if err := a.Do(func() error {
			cmd := exec.Command(path)
			cmd.Stdin = strings.NewReader("*nat\n-A OUTPUT ! -d " + lo + " -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001\nCOMMIT\n")
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("%s: %v: %s", tool, err, out)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	echo := b.StartEcho(8080)
	s, f := startInPod(t, Options{})
	ctx := testContext(t)
	zc := f.accept(t)
	zc.mustAck(t, add(a), openNetns(t, a))
	zc.mustAck(t, add(c), openNetns(t, c))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("records: %+v", s.Records())
		}
	})

	for _, fam := range families() {
		t.Run(fam.name+"/redirected", func(t *testing.T) {
			dst := netip.AddrPortFrom(ip(b, fam.v6), 8080)
			conn, err := a.DialContext(ctx, network("tcp", dst.Addr()), dst.String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			src := addrPort(conn.LocalAddr())
			exchange(t, conn, "from a to b through a's 15001")
			r, err := s.WaitFor(ctx, func(r Record) bool { return r.Source == src && r.Done() })
			if err != nil {
				t.Fatal(err)
			}
			if r.Listener != PortOutbound || r.OrigDst != dst || r.Target != dst || r.Err != "" || r.ClientToServer == 0 {
				t.Errorf("record %+v: want listener 15001, original destination %s (the address dialled), bytes carried", r, dst)
			}
			peers := echo.Peers()
			if len(peers) == 0 || peers[len(peers)-1] != r.Upstream {
				t.Errorf("b saw %v, want %s last", peers, r.Upstream)
			}
		})
		t.Run(fam.name+"/not-nated", func(t *testing.T) {
			// c's own 15006, dialled: the stand-in refuses it as a loop,
			// after recording it (the reset may beat the dial's return:
			// the source port is chosen here).
			dst := netip.AddrPortFrom(ip(c, fam.v6), PortInbound)
			src := netip.AddrPortFrom(ip(b, fam.v6), 40123)
			d := &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(src)}
			if err := b.Do(func() error {
				conn, err := d.DialContext(ctx, network("tcp", dst.Addr()), dst.String())
				if err == nil {
					conn.Close()
				}
				if errors.Is(err, syscall.ECONNRESET) {
					return nil
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			r, err := s.WaitFor(ctx, func(r Record) bool { return r.Source == src && r.Done() })
			if err != nil {
				t.Fatal(err)
			}
			if r.Listener != PortInbound || r.OrigDst != dst || r.Pod != podInfo(c) {
				t.Errorf("record %+v: want listener 15006 of pod c, original destination %s (the local address)", r, dst)
			}
		})
	}
}
