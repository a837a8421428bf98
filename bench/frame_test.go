package main

import (
	"net/netip"
	"testing"
)

// TestAckFrame: the injected segment's IPv4 checksum is right and its TCP
// checksum wrong, so that the stack accepts it up to TCP.
func TestAckFrame(t *testing.T) {
	tp := tuple{Src: mustAP("198.18.16.1:40000"), Dst: mustAP("198.18.16.2:9090")}
	f := ackFrame([]byte{1, 2, 3, 4, 5, 6}, []byte{6, 5, 4, 3, 2, 1}, tp)
	if len(f) != 54 {
		t.Fatalf("frame of %d bytes, want 54", len(f))
	}
	if checksum(f[14:34]) != 0 {
		t.Errorf("IPv4 header checksum does not verify")
	}
	seg := f[34:]
	got := uint16(seg[16])<<8 | uint16(seg[17])
	if got == tcpChecksum(tp.Src.Addr(), tp.Dst.Addr(), seg) {
		t.Errorf("TCP checksum is right; it must be wrong")
	}
	s := synFrame([]byte{1, 2, 3, 4, 5, 6}, []byte{6, 5, 4, 3, 2, 1}, tp)
	if got := uint16(s[50])<<8 | uint16(s[51]); got != tcpChecksum(tp.Src.Addr(), tp.Dst.Addr(), s[34:]) || s[47] != 0x02 {
		t.Errorf("SYN frame: flags %#x, checksum %#x", s[47], got)
	}
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
