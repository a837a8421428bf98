package main

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/meshredirect/meshredirect/internal/testutil"
)

var (
	testDstMAC = net.HardwareAddr{1, 2, 3, 4, 5, 6}
	testSrcMAC = net.HardwareAddr{6, 5, 4, 3, 2, 1}
)

// checkFrame checks everything of an injected frame of t but its TCP
// checksum, and returns the TCP header; the IPv4 header checksum must
// verify, as must the lengths, so that the stack takes the segment up to
// TCP.
func checkFrame(t *testing.T, name string, f []byte, tp tuple, flags byte) []byte {
	t.Helper()
	off := tcpOffset(tp)
	if len(f) != off+tcpLen {
		t.Fatalf("%s: frame of %d bytes, want %d", name, len(f), off+tcpLen)
	}
	if string(f[0:6]) != string(testDstMAC) || string(f[6:12]) != string(testSrcMAC) {
		t.Errorf("%s: MACs %x -> %x", name, f[6:12], f[0:6])
	}
	ip := f[ethLen:off]
	if tp.Src.Addr().Is4() {
		if et := binary.BigEndian.Uint16(f[12:14]); et != 0x0800 || ip[0] != 0x45 || ip[9] != 6 {
			t.Errorf("%s: ethertype %#x, version/IHL %#x, protocol %d", name, et, ip[0], ip[9])
		}
		if checksum(ip) != 0 {
			t.Errorf("%s: IPv4 header checksum does not verify", name)
		}
		if l := binary.BigEndian.Uint16(ip[2:4]); l != ipv4Len+tcpLen {
			t.Errorf("%s: IPv4 total length %d", name, l)
		}
		if netip.AddrFrom4([4]byte(ip[12:16])) != tp.Src.Addr() || netip.AddrFrom4([4]byte(ip[16:20])) != tp.Dst.Addr() {
			t.Errorf("%s: addresses %v -> %v", name, ip[12:16], ip[16:20])
		}
	} else {
		if et := binary.BigEndian.Uint16(f[12:14]); et != 0x86dd || ip[0]>>4 != 6 || ip[6] != 6 {
			t.Errorf("%s: ethertype %#x, version %d, next header %d", name, et, ip[0]>>4, ip[6])
		}
		if l := binary.BigEndian.Uint16(ip[4:6]); l != tcpLen {
			t.Errorf("%s: IPv6 payload length %d", name, l)
		}
		if netip.AddrFrom16([16]byte(ip[8:24])) != tp.Src.Addr() || netip.AddrFrom16([16]byte(ip[24:40])) != tp.Dst.Addr() {
			t.Errorf("%s: addresses %v -> %v", name, ip[8:24], ip[24:40])
		}
	}
	tcp := f[off:]
	if tcp[13] != flags || tcp[12] != 5<<4 {
		t.Errorf("%s: TCP flags %#x, data offset %d; want flags %#x, 5", name, tcp[13], tcp[12]>>4, flags)
	}
	if p := binary.BigEndian.Uint16(tcp[2:4]); p != tp.Dst.Port() {
		t.Errorf("%s: destination port %d, want %d", name, p, tp.Dst.Port())
	}
	return tcp
}

// csumWrong reports whether the segment's TCP checksum fails to verify.
func csumWrong(tp tuple, tcp []byte) bool {
	return binary.BigEndian.Uint16(tcp[16:18]) != segmentChecksum(tp.Src.Addr(), tp.Dst.Addr(), tcp)
}

// TestInjectFrame: the injected ACKs and SYNs of both families are right
// in everything but their TCP checksum, which is wrong, so that the stack
// takes them up to the destination's TCP layer and drops them there; a
// SYN's checksum stays wrong for every source port the injector gives it.
func TestInjectFrame(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tp    tuple
		flags byte
	}{
		{"IPv4 ACK", tuple{Src: mustAP("198.18.16.1:40000"), Dst: mustAP("198.18.16.2:9090")}, tcpACK},
		{"IPv6 ACK", tuple{Src: mustAP("[fd00:10:244::1]:40000"), Dst: mustAP("[fd00:10:244::2]:9090")}, tcpACK},
		{"IPv4 SYN", tuple{Src: mustAP("198.18.16.1:1024"), Dst: mustAP("198.18.16.2:9090")}, tcpSYN},
		{"IPv6 SYN", tuple{Src: mustAP("[fd00:10:244::1]:1024"), Dst: mustAP("[fd00:10:244::2]:9090")}, tcpSYN},
	} {
		f := injectFrame(testDstMAC, testSrcMAC, tc.tp, tc.flags)
		tcp := checkFrame(t, tc.name, f, tc.tp, tc.flags)
		if !csumWrong(tc.tp, tcp) {
			t.Errorf("%s: the TCP checksum is right; it must be wrong", tc.name)
		}
		if p := binary.BigEndian.Uint16(tcp[0:2]); p != tc.tp.Src.Port() {
			t.Errorf("%s: source port %d, want %d", tc.name, p, tc.tp.Src.Port())
		}
		if tc.flags != tcpSYN {
			continue
		}
		v := synVary{Off: tcpOffset(tc.tp), First: synPorts, Skip: []uint16{10001, 10002, 40000}}
		seen := map[uint16]bool{}
		for _, i := range []int{0, 1, 10001 - synPorts - 1, 10001 - synPorts, 40000 - synPorts - 3, 40000 - synPorts - 2, maxSYNs - 1} {
			g := append([]byte(nil), f...)
			v.vary(g, i)
			port := v.port(i)
			vt := tuple{Src: netip.AddrPortFrom(tc.tp.Src.Addr(), port), Dst: tc.tp.Dst}
			tcp := checkFrame(t, tc.name, g, vt, tc.flags)
			if got := binary.BigEndian.Uint16(tcp[0:2]); got != port || slices.Contains(v.Skip, port) || port < synPorts || seen[port] {
				t.Errorf("%s frame %d: source port %d (want %d, new, not %d)", tc.name, i, got, port, v.Skip)
			}
			seen[port] = true
			if !csumWrong(vt, tcp) {
				t.Errorf("%s frame %d (port %d): the TCP checksum is right; it must be wrong", tc.name, i, port)
			}
			// The right checksum is the same for every port: so the
			// one in the frame, unchanged, is wrong for all 64,509.
			if got, want := segmentChecksum(vt.Src.Addr(), vt.Dst.Addr(), tcp), segmentChecksum(tc.tp.Src.Addr(), tc.tp.Dst.Addr(), f[v.Off:]); got != want {
				t.Errorf("%s frame %d (port %d): the right checksum is %#x, the first frame's %#x: some port gets it right", tc.name, i, port, got, want)
			}
		}
		if got := []uint16{v.port(10001 - synPorts - 1), v.port(10001 - synPorts), v.port(40000 - synPorts - 3), v.port(40000 - synPorts - 2)}; !slices.Equal(got, []uint16{10000, 10003, 39999, 40001}) {
			t.Errorf("%s: ports around the skipped ones %v, want 10000, 10003, 39999, 40001", tc.name, got)
		}
		if last := v.port(maxSYNs - 1); last != 65535 {
			t.Errorf("%s: the last SYN's port is %d, want 65535", tc.name, last)
		}
	}
}

// TestProgramFrame: the per-program frames have every checksum right.
func TestProgramFrame(t *testing.T) {
	for _, tp := range []tuple{
		{Src: mustAP("198.18.16.1:40000"), Dst: mustAP("198.18.16.2:9090")},
		{Src: mustAP("[fd00:10:244::1]:40000"), Dst: mustAP("[fd00:10:244::2]:9090")},
	} {
		for _, flags := range []byte{tcpSYN, tcpACK} {
			f := programFrame(testDstMAC, testSrcMAC, tp, flags)
			if tcp := checkFrame(t, tp.String(), f, tp, flags); csumWrong(tp, tcp) {
				t.Errorf("%s flags %#x: the TCP checksum is wrong", tp, flags)
			}
		}
	}
}

// TestInjectorVariesSYNs runs the injector's XDP program of a SYN run (not
// live: BPF_PROG_TEST_RUN hands the frame back) frame after frame, and
// checks that it writes the frame and gives each its own source port, as
// synVary says, with a checksum that stays wrong.
func TestInjectorVariesSYNs(t *testing.T) {
	testutil.RequirePrivileged(t)
	e := &env{}
	t.Cleanup(e.close)
	in := newInjector(e, 0)
	for _, tp := range []tuple{
		{Src: mustAP("198.18.16.1:1024"), Dst: mustAP("198.18.16.2:9090")},
		{Src: mustAP("[fd00:10:244::1]:1024"), Dst: mustAP("[fd00:10:244::2]:9090")},
	} {
		f := injectFrame(testDstMAC, testSrcMAC, tp, tcpSYN)
		v := synVary{Off: tcpOffset(tp), First: synPorts, Skip: []uint16{synPorts + 1, synPorts + 2, synPorts + 4}}
		ip, err := in.program(f, xdpPass, &v)
		if err != nil {
			t.Fatalf("%s: %+v", tp, err)
		}
		if err := ip.counter.Put(uint32(0), uint32(0)); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 6; i++ {
			// The program writes the whole frame: give it zeros.
			ret, out, err := ip.prog.Test(make([]byte, len(f)))
			if err != nil || ret != xdpPass {
				t.Fatalf("%s frame %d: returned %d, %v", tp, i, ret, err)
			}
			want := append([]byte(nil), f...)
			v.vary(want, i)
			if string(out[:len(want)]) != string(want) {
				t.Errorf("%s frame %d:\n got %x\nwant %x", tp, i, out[:len(want)], want)
			}
			vt := tuple{Src: netip.AddrPortFrom(tp.Src.Addr(), v.port(i)), Dst: tp.Dst}
			if !csumWrong(vt, out[v.Off:len(want)]) {
				t.Errorf("%s frame %d: the TCP checksum is right", tp, i)
			}
		}
	}
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
