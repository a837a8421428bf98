package asm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

// The node the tests pretend to run on.
var (
	nodeV4 = netip.MustParseAddr("198.18.0.1")
	nodeV6 = netip.MustParseAddr("fd10:6d72::1")
	// gateway is another address of the node: a CNI's on a bridge or on
	// every host veth (ptp), the source of the node's connections to pods.
	gatewayV4 = netip.MustParseAddr("198.18.31.254")
	gatewayV6 = netip.MustParseAddr("fd10:6d72:1::ffff")

	ztV4      = netip.MustParseAddr("198.18.1.2")
	ztV6      = netip.MustParseAddr("fd10:6d72:1::2")
	ztMAC     = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x2a}
	ztIfindex = uint32(42)

	clientV4  = netip.MustParseAddr("198.18.1.10")
	clientV6  = netip.MustParseAddr("fd10:6d72:1::10")
	clientMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x10}
	// clientIfindex is the device BPF_PROG_TEST_RUN runs on (loopback):
	// app_outbound checks that a new flow's source belongs to skb->ifindex.
	clientIfindex = uint32(selfIfindex)

	serverV4      = netip.MustParseAddr("198.18.1.20")
	serverV6      = netip.MustParseAddr("fd10:6d72:1::20")
	serverMAC     = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x20}
	serverIfindex = uint32(20)

	// plain is a pod of this node outside the mesh.
	plainV4      = netip.MustParseAddr("198.18.1.30")
	plainV6      = netip.MustParseAddr("fd10:6d72:1::30")
	plainIfindex = uint32(30)

	// service is an address only a proxy answers.
	serviceV4 = netip.MustParseAddr("198.19.255.10")
	serviceV6 = netip.MustParseAddr("fd10:6d72:0:ffff::10")

	// remote is a host on another node.
	remoteV4 = netip.MustParseAddr("198.18.2.40")
	remoteV6 = netip.MustParseAddr("fd10:6d72:2::40")
	// uplinkIfindex is the node's link to other nodes.
	uplinkIfindex = uint32(2)

	dnsV4 = netip.MustParseAddr("198.18.3.53")
	dnsV6 = netip.MustParseAddr("fd10:6d72:3::53")
)

// selfIfindex is skb->ifindex in BPF_PROG_TEST_RUN: loopback, the device
// the test runner uses. The pod whose veth a program runs on is enrolled on
// it.
const selfIfindex = 1

// pod is an enrolled pod of the fixture.
type pod struct {
	mac net.HardwareAddr
	ips []netip.Addr
}

// selfOf is the pod whose veth prog runs on in the tables: the client sends
// (app_outbound), the server receives (app_inbound).
func selfOf(prog string) pod {
	if prog == mrasm.AppInbound {
		return pod{serverMAC, []netip.Addr{serverV4, serverV6}}
	}
	return pod{clientMAC, []netip.Addr{clientV4, clientV6}}
}

// fixture is a loaded collection with its own (unpinned) maps, configured as
// the node above: ztunnel ready, client and server enrolled.
type fixture struct {
	maps *maps.Set
	coll *ebpf.Collection
	// ingressOK: this kernel's BPF_PROG_TEST_RUN takes skb->ingress_ifindex
	// in the context (Linux 5.15+; earlier ones refuse it with EINVAL).
	ingressOK bool
	// events reads the events ring buffer: runCtx checks the events of
	// every run against the monitor map (monitor_test.go).
	events *ringbuf.Reader
}

func newFixture(tb testing.TB, opts mrasm.Options) *fixture {
	tb.Helper()
	testutil.RequirePrivileged(tb)

	set, err := maps.Open(maps.Options{PodsMaxEntries: opts.PodsMaxEntries})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { set.Close() })
	coll, err := ebpf.NewCollectionWithOptions(mrasm.CollectionSpec(opts), ebpf.CollectionOptions{MapReplacements: set.Maps()})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			tb.Fatalf("load programs: %-30v", ve)
		}
		tb.Fatalf("load programs: %v", err)
	}
	tb.Cleanup(func() { coll.Close() })

	f := &fixture{maps: set, coll: coll, events: newEventReader(tb, set)}
	_, err = coll.Programs[mrasm.ZtunnelIngress].Run(&ebpf.RunOptions{Data: make([]byte, 14), Context: mrasm.SkBuff{IngressIfindex: 1}})
	f.ingressOK = !errors.Is(err, unix.EINVAL)
	f.setZtunnel(tb, maps.ZtunnelReady)
	for _, a := range []netip.Addr{nodeV4, nodeV6, gatewayV4, gatewayV6} {
		f.putEndpoint(tb, a, maps.Endpoint{Flags: maps.EndpointNode})
	}
	for _, a := range []netip.Addr{dnsV4, dnsV6} {
		f.putEndpoint(tb, a, maps.Endpoint{Flags: maps.EndpointResolver})
	}
	f.enrol(tb, clientIfindex, clientMAC, 0, clientV4, clientV6)
	f.enrol(tb, serverIfindex, serverMAC, 0, serverV4, serverV6)
	if err := set.Relays.Set(relayPorts); err != nil {
		tb.Fatal(err)
	}
	return f
}

// relayPorts are the node's tunnel ports in the fixture: VXLAN's (IANA's
// and Linux's old default) and Geneve's.
var relayPorts = []uint16{4789, 8472, 6081}

// enrolClient enrols the client pod with flags besides EndpointPod for the
// test, and with none again after it.
func (f *fixture) enrolClient(t testing.TB, flags uint16) {
	t.Helper()
	f.enrol(t, clientIfindex, clientMAC, flags, clientV4, clientV6)
	t.Cleanup(func() { f.enrol(t, clientIfindex, clientMAC, 0, clientV4, clientV6) })
}

// enrol puts a pod's endpoints with flags besides EndpointPod.
func (f *fixture) enrol(tb testing.TB, ifindex uint32, hw net.HardwareAddr, flags uint16, ips ...netip.Addr) {
	tb.Helper()
	mac, _ := maps.MAC(hw)
	for _, ip := range ips {
		f.putEndpoint(tb, ip, maps.Endpoint{Ifindex: ifindex, MAC: mac, Flags: maps.EndpointPod | flags})
	}
}

func (f *fixture) putEndpoint(tb testing.TB, ip netip.Addr, ep maps.Endpoint) {
	tb.Helper()
	if err := f.maps.Endpoints.Put(ip, ep); err != nil {
		tb.Fatal(err)
	}
}

// setZtunnelOrReady is setZtunnel with flags, or with ZtunnelReady alone
// for a row that gives none.
func (f *fixture) setZtunnelOrReady(tb testing.TB, flags uint16) {
	tb.Helper()
	if flags == 0 {
		flags = maps.ZtunnelReady
	}
	f.setZtunnel(tb, flags)
}

// setZtunnel writes the ztunnel entry with the given flags.
func (f *fixture) setZtunnel(tb testing.TB, flags uint16) {
	tb.Helper()
	mac, _ := maps.MAC(ztMAC)
	if err := f.maps.Ztunnel.Set(maps.Ztunnel{
		Ifindex: ztIfindex, MAC: mac, Flags: flags, IPv4: ztV4.As16(), IPv6: ztV6.As16(),
	}); err != nil {
		tb.Fatal(err)
	}
}

// result is what one run of a program did.
type result struct {
	ret     int32
	out     []byte
	ctxOut  mrasm.SkBuff
	verdict maps.Verdict
	// counted is false if no verdict counter moved (or more than one did).
	counted bool
	// events are the monitor events the run wrote.
	events []event
}

// run runs program name once on frame with ingress_ifindex set, and reports
// its return value, the frame afterwards and the verdict counted.
func (f *fixture) run(tb testing.TB, name string, frame []byte, ingressIfindex uint32) result {
	tb.Helper()
	prog := f.coll.Programs[name]
	if prog == nil {
		tb.Fatalf("no program %s", name)
	}
	if ingressIfindex != 0 && !f.ingressOK {
		// Only app_inbound reads where a packet entered; the other
		// programs' rows run without it.
		if name == mrasm.AppInbound {
			tb.Skip("BPF_PROG_TEST_RUN takes skb->ingress_ifindex from Linux 5.15; this row depends on it")
		}
		ingressIfindex = 0
	}
	return f.runCtx(tb, name, frame, mrasm.SkBuff{IngressIfindex: ingressIfindex})
}

// runCtx runs program name once on frame with the context ctx.
func (f *fixture) runCtx(tb testing.TB, name string, frame []byte, ctx mrasm.SkBuff) result {
	tb.Helper()
	prog := f.coll.Programs[name]
	if prog == nil {
		tb.Fatalf("no program %s", name)
	}
	f.drainEvents(tb)
	before := f.stats(tb)
	var ctxOut mrasm.SkBuff
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256), Context: ctx, ContextOut: &ctxOut}
	ret, err := prog.Run(opts)
	if err != nil {
		tb.Fatalf("run %s: %v", name, err)
	}
	after := f.stats(tb)
	res := result{ret: int32(ret), out: opts.DataOut, ctxOut: ctxOut}
	moved := 0
	for v, c := range after {
		d := c.Packets - before[v].Packets
		if d == 0 {
			continue
		}
		moved++
		res.verdict = v
		if db := c.Bytes - before[v].Bytes; d == 1 && db != uint64(len(frame)) {
			tb.Errorf("verdict %s counted %d bytes, frame has %d", v, db, len(frame))
		}
		if d != 1 {
			moved++
		}
	}
	res.counted = moved == 1
	res.events = f.checkEvents(tb, name, frame, res)
	return res
}

// requireRefused asserts that BPF_PROG_TEST_RUN refuses frame with EINVAL.
func requireRefused(tb testing.TB, f *fixture, name string, frame []byte) {
	tb.Helper()
	_, err := f.coll.Programs[name].Run(&ebpf.RunOptions{Data: frame, Context: mrasm.SkBuff{}})
	if !errors.Is(err, unix.EINVAL) {
		tb.Fatalf("test run of a %d-byte frame: got %v, want EINVAL", len(frame), err)
	}
}

func (f *fixture) stats(tb testing.TB) map[maps.Verdict]maps.Counter {
	tb.Helper()
	s, err := f.maps.Stats.Read()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// expect is what a table row wants from a run.
type expect struct {
	ret     int32
	verdict maps.Verdict
	// mac is the destination MAC the frame must carry afterwards; nil means
	// the frame must come out unchanged.
	mac net.HardwareAddr
	// mark is the skb mark afterwards.
	mark uint32
}

// check asserts res against want and that no byte but the destination MAC
// changed.
func check(tb testing.TB, in []byte, res result, want expect) {
	tb.Helper()
	if res.ret != want.ret {
		tb.Errorf("returned %s, want %s", action(res.ret), action(want.ret))
	}
	if !res.counted {
		tb.Errorf("no single verdict counted")
	} else if res.verdict != want.verdict {
		tb.Errorf("counted verdict %s, want %s", res.verdict, want.verdict)
	}
	if len(res.out) != len(in) {
		tb.Fatalf("frame length changed from %d to %d", len(in), len(res.out))
	}
	if !bytes.Equal(res.out[6:], in[6:]) {
		tb.Errorf("bytes other than the destination MAC changed:\n in  %x\n out %x", in, res.out)
	}
	wantMAC := net.HardwareAddr(in[:6])
	if want.mac != nil {
		wantMAC = want.mac
	}
	if got := net.HardwareAddr(res.out[:6]); !bytes.Equal(got, wantMAC) {
		tb.Errorf("destination MAC is %s, want %s", got, wantMAC)
	}
	if res.ctxOut.Mark != want.mark {
		tb.Errorf("mark is %#x, want %#x", res.ctxOut.Mark, want.mark)
	}
	if res.ctxOut.CB != ([5]uint32{}) {
		tb.Errorf("skb->cb changed to %v: the programs use no tag", res.ctxOut.CB)
	}
}

func action(ret int32) string {
	switch ret {
	case mrasm.ActUnspec:
		return "UNSPEC (pass)"
	case mrasm.ActOK:
		return "OK"
	case mrasm.ActShot:
		return "SHOT"
	case mrasm.ActRedirect:
		return "REDIRECT"
	}
	return fmt.Sprintf("action %d", ret)
}

// passed is the expected outcome of a packet a program lets through.
var passed = expect{ret: mrasm.ActUnspec, verdict: maps.VerdictPassed}

// world is the fixture's state as the model of §5 sees it, for prog.
func (f *fixture) world(tb testing.TB, prog string) world {
	tb.Helper()
	all, err := f.maps.Endpoints.All()
	if err != nil {
		tb.Fatal(err)
	}
	zt, err := f.maps.Ztunnel.Get()
	if err != nil {
		tb.Fatal(err)
	}
	relays, err := f.maps.Relays.Get()
	if err != nil {
		tb.Fatal(err)
	}
	return world{endpoints: all, ztFlags: zt.Flags, ztIfindex: zt.Ifindex, self: selfIfindex, relays: relays}
}

// model is what §5 says prog does with frame.
func (f *fixture) model(tb testing.TB, prog string, frame []byte, ingress uint32) outcome {
	tb.Helper()
	if !f.ingressOK {
		ingress = 0
	}
	w := f.world(tb, prog)
	switch prog {
	case mrasm.AppOutbound:
		return w.appOutbound(frame)
	case mrasm.AppInbound:
		return w.appInbound(frame, ingress)
	case mrasm.ZtunnelIngress:
		return w.ztunnelIngress(frame)
	case mrasm.ZtunnelEgress:
		return w.ztunnelEgress(frame, ingress)
	}
	tb.Fatalf("no model of %s", prog)
	return outcome{}
}

// macOf is the MAC of the enrolled pod frame is addressed to.
func (f *fixture) macOf(tb testing.TB, frame []byte) net.HardwareAddr {
	tb.Helper()
	dst := addrAt(frame, binary.BigEndian.Uint16(frame[12:14]), false)
	ep, err := f.maps.Endpoints.Get(dst)
	if err != nil {
		tb.Fatalf("no endpoint for %s: %v", dst, err)
	}
	return net.HardwareAddr(ep.MAC[:])
}
