package asm_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

// The node the tests pretend to run on.
var (
	nodeV4 = netip.MustParseAddr("198.18.0.1")
	nodeV6 = netip.MustParseAddr("fd10:6d72::1")

	ztV4      = netip.MustParseAddr("198.18.1.2")
	ztV6      = netip.MustParseAddr("fd10:6d72:1::2")
	ztMAC     = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x2a}
	ztIfindex = uint32(42)

	clientV4  = netip.MustParseAddr("198.18.1.10")
	clientV6  = netip.MustParseAddr("fd10:6d72:1::10")
	clientMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x10}
	// clientIfindex is the device BPF_PROG_TEST_RUN runs on (loopback):
	// app_outbound checks that a new flow's source belongs to skb->ifindex.
	clientIfindex = uint32(1)

	serverV4      = netip.MustParseAddr("198.18.1.20")
	serverV6      = netip.MustParseAddr("fd10:6d72:1::20")
	serverMAC     = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x20}
	serverIfindex = uint32(20)

	// plain is a pod of this node outside the mesh.
	plainV4      = netip.MustParseAddr("198.18.1.30")
	plainV6      = netip.MustParseAddr("fd10:6d72:1::30")
	plainIfindex = uint32(30)

	// remote is a host on another node.
	remoteV4 = netip.MustParseAddr("198.18.2.40")
	remoteV6 = netip.MustParseAddr("fd10:6d72:2::40")
	// uplinkIfindex is the node's link to other nodes.
	uplinkIfindex = uint32(2)

	dnsV4 = netip.MustParseAddr("198.18.3.53")
	dnsV6 = netip.MustParseAddr("fd10:6d72:3::53")
)

// fixture is a loaded collection with its own (unpinned) maps, configured as
// the node above: ztunnel ready, client and server enrolled.
type fixture struct {
	maps *maps.Set
	coll *ebpf.Collection
	// ingressOK: this kernel's BPF_PROG_TEST_RUN takes skb->ingress_ifindex
	// in the context (Linux 5.15+; earlier ones refuse it with EINVAL).
	ingressOK bool
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

	f := &fixture{maps: set, coll: coll}
	_, err = coll.Programs[mrasm.ZtunnelIngress].Run(&ebpf.RunOptions{Data: make([]byte, 14), Context: mrasm.SkBuff{IngressIfindex: 1}})
	f.ingressOK = !errors.Is(err, unix.EINVAL)
	f.setZtunnel(tb, maps.ZtunnelReady)
	if err := set.Node.Set(nodeV4, nodeV6); err != nil {
		tb.Fatal(err)
	}
	for _, pod := range []struct {
		ips     []netip.Addr
		ifindex uint32
		mac     net.HardwareAddr
	}{
		{[]netip.Addr{clientV4, clientV6}, clientIfindex, clientMAC},
		{[]netip.Addr{serverV4, serverV6}, serverIfindex, serverMAC},
	} {
		mac, _ := maps.MAC(pod.mac)
		for _, ip := range pod.ips {
			if err := set.Pods.Put(ip, maps.Pod{Ifindex: pod.ifindex, MAC: mac}); err != nil {
				tb.Fatal(err)
			}
		}
	}
	return f
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
	before := f.stats(tb)
	ctx := mrasm.SkBuff{IngressIfindex: ingressIfindex}
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

// Expected outcomes, named as the tables read them.
var (
	toZtunnelOut = expect{ret: mrasm.ActRedirect, verdict: maps.VerdictRedirectedOut, mac: ztMAC}
	spoofed      = expect{ret: mrasm.ActShot, verdict: maps.VerdictDroppedSpoofed}
	toZtunnelIn  = expect{ret: mrasm.ActRedirect, verdict: maps.VerdictRedirectedIn, mac: ztMAC}
	passed       = expect{ret: mrasm.ActUnspec, verdict: maps.VerdictPassed}
	dropped      = expect{ret: mrasm.ActShot, verdict: maps.VerdictParseError}
	failedClosed = expect{ret: mrasm.ActShot, verdict: maps.VerdictDroppedNoZtunnel}
)
