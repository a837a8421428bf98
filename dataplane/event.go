package dataplane

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unsafe"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
)

// Event is what a program did with one packet, as the monitor sees it: the
// header the program wrote and what the packet's first bytes say. The
// fields of layers the captured bytes do not reach (or that the packet does
// not have) are zero.
type Event struct {
	// Time is when the program wrote the event.
	Time    time.Time `json:"time"`
	Program string    `json:"program"`
	Verdict string    `json:"verdict"`
	// Dropped: the program returned TC_ACT_SHOT.
	Dropped bool `json:"dropped"`
	// Ifindex is the device the program runs on, in its netns (a pod's
	// for the in-pod programs).
	Ifindex int    `json:"ifindex"`
	Mark    uint32 `json:"mark,omitempty"`
	// Len is the packet's length; Captured how many of its bytes the event
	// carries (in Data).
	Len      int    `json:"len"`
	Captured int    `json:"captured"`
	SrcMAC   string `json:"srcMAC,omitempty"`
	DstMAC   string `json:"dstMAC,omitempty"`
	// EtherType is the frame's EtherType, after any VLAN tags.
	EtherType uint16 `json:"etherType"`
	VLAN      bool   `json:"vlan,omitempty"`
	// Proto is "TCP", "UDP", "ICMP", "ICMPv6" or the IP protocol number.
	Proto string     `json:"proto,omitempty"`
	Src   netip.Addr `json:"src,omitzero"`
	Dst   netip.Addr `json:"dst,omitzero"`
	// SrcPort and DstPort are TCP's or UDP's.
	SrcPort uint16 `json:"srcPort,omitempty"`
	DstPort uint16 `json:"dstPort,omitempty"`
	// TCPFlags are the TCP segment's flags ("SYN", "ACK", ...).
	TCPFlags []string `json:"tcpFlags,omitempty"`
	// ICMPType and ICMPCode are ICMP's or ICMPv6's.
	ICMPType uint8 `json:"icmpType,omitempty"`
	ICMPCode uint8 `json:"icmpCode,omitempty"`
	// Fragment: a later IP fragment, without an L4 header.
	Fragment bool `json:"fragment,omitempty"`
	// Truncated says where the captured bytes ended before the headers
	// did ("IPv4 header", "TCP header", ...): the program may have dropped
	// the packet for just that (parse_error).
	Truncated string `json:"truncated,omitempty"`
	// Data are the captured bytes, from the Ethernet header.
	Data []byte `json:"data"`
}

// Tuple is the event's 5-tuple in words: "TCP 10.0.0.1:3456 ->
// 10.0.0.2:80", or as much of it as the packet has.
func (e Event) Tuple() string {
	switch {
	case !e.Src.IsValid():
		return fmt.Sprintf("ethertype %#04x", e.EtherType)
	case e.SrcPort != 0 || e.DstPort != 0:
		return fmt.Sprintf("%s %s -> %s", e.Proto, netip.AddrPortFrom(e.Src, e.SrcPort), netip.AddrPortFrom(e.Dst, e.DstPort))
	case e.Proto == "ICMP" || e.Proto == "ICMPv6":
		return fmt.Sprintf("%s %s -> %s type %d code %d", e.Proto, e.Src, e.Dst, e.ICMPType, e.ICMPCode)
	}
	return fmt.Sprintf("%s %s -> %s", e.Proto, e.Src, e.Dst)
}

// eventHeaderSize is the size of the header that starts a record.
const eventHeaderSize = int(unsafe.Sizeof(maps.EventHeader{}))

// DecodeEvent decodes one record of the events ring buffer. now is the
// wall clock to date it against (time.Now() for a live record).
func DecodeEvent(raw []byte, now time.Time) (Event, error) {
	if len(raw) < eventHeaderSize {
		return Event{}, fmt.Errorf("decode event: %d bytes, the header alone has %d", len(raw), eventHeaderSize)
	}
	h := maps.EventHeader{
		Timestamp: binary.NativeEndian.Uint64(raw[maps.EventOffTimestamp:]),
		Ifindex:   binary.NativeEndian.Uint32(raw[maps.EventOffIfindex:]),
		Len:       binary.NativeEndian.Uint32(raw[maps.EventOffLen:]),
		Mark:      binary.NativeEndian.Uint32(raw[maps.EventOffMark:]),
		Verdict:   maps.Verdict(binary.NativeEndian.Uint32(raw[maps.EventOffVerdict:])),
		CapLen:    binary.NativeEndian.Uint16(raw[maps.EventOffCapLen:]),
		Program:   raw[maps.EventOffProgram],
		Dropped:   raw[maps.EventOffDropped],
	}
	data := raw[eventHeaderSize:]
	if int(h.CapLen) > len(data) {
		return Event{}, fmt.Errorf("decode event: %d bytes captured, the record holds %d", h.CapLen, len(data))
	}
	data = data[:h.CapLen]
	e := Event{
		Program:  mrasm.ProgramName(h.Program),
		Verdict:  h.Verdict.String(),
		Dropped:  h.Dropped != 0,
		Ifindex:  int(h.Ifindex),
		Mark:     h.Mark,
		Len:      int(h.Len),
		Captured: len(data),
		Data:     append([]byte(nil), data...),
	}
	if h.Timestamp != 0 {
		e.Time = now.Add(-time.Duration(maps.KtimeNow() - h.Timestamp))
	}
	e.parse(data)
	return e, nil
}

// parse reads the headers in b, the first bytes of the frame.
func (e *Event) parse(b []byte) {
	if len(b) < 14 {
		e.Truncated = "Ethernet header"
		return
	}
	e.DstMAC, e.SrcMAC = fmtMAC([6]byte(b[0:6])), fmtMAC([6]byte(b[6:12]))
	e.EtherType = binary.BigEndian.Uint16(b[12:])
	b = b[14:]
	for e.EtherType == 0x8100 || e.EtherType == 0x88a8 {
		e.VLAN = true
		if len(b) < 4 {
			e.Truncated = "VLAN tag"
			return
		}
		e.EtherType = binary.BigEndian.Uint16(b[2:])
		b = b[4:]
	}
	switch e.EtherType {
	case 0x0800:
		e.parseIPv4(b)
	case 0x86dd:
		e.parseIPv6(b)
	}
}

func (e *Event) parseIPv4(b []byte) {
	if len(b) < 20 || len(b) < int(b[0]&0x0f)*4 {
		e.Truncated = "IPv4 header"
		return
	}
	e.Src, e.Dst = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
	proto := b[9]
	e.Fragment = binary.BigEndian.Uint16(b[6:])&0x1fff != 0
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 {
		e.Proto = protoName(proto)
		e.Truncated = "IPv4 header (IHL below 5)"
		return
	}
	e.parseL4(proto, b[ihl:])
}

func (e *Event) parseIPv6(b []byte) {
	if len(b) < 40 {
		e.Truncated = "IPv6 header"
		return
	}
	e.Src, e.Dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
	next, b := b[6], b[40:]
	for {
		switch next {
		case 0, 43, 60, 51: // hop-by-hop, routing, destination options, AH
			if len(b) < 8 {
				e.Proto = protoName(next)
				e.Truncated = "IPv6 extension header"
				return
			}
			n := (int(b[1]) + 1) * 8
			if next == 51 {
				n = (int(b[1]) + 2) * 4
			}
			if len(b) < n {
				e.Proto = protoName(next)
				e.Truncated = "IPv6 extension header"
				return
			}
			next, b = b[0], b[n:]
		case 44: // fragment
			if len(b) < 8 {
				e.Proto = protoName(next)
				e.Truncated = "IPv6 fragment header"
				return
			}
			if binary.BigEndian.Uint16(b[2:])&0xfff8 != 0 {
				e.Fragment = true
			}
			next, b = b[0], b[8:]
		default:
			e.parseL4(next, b)
			return
		}
	}
}

// parseL4 reads the L4 header of protocol proto in b.
func (e *Event) parseL4(proto uint8, b []byte) {
	e.Proto = protoName(proto)
	if e.Fragment {
		return
	}
	switch proto {
	case 6:
		if len(b) < 14 {
			e.Truncated = "TCP header"
			return
		}
		e.SrcPort, e.DstPort = binary.BigEndian.Uint16(b), binary.BigEndian.Uint16(b[2:])
		for i, name := range []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"} {
			if b[13]&(1<<i) != 0 {
				e.TCPFlags = append(e.TCPFlags, name)
			}
		}
	case 17:
		if len(b) < 4 {
			e.Truncated = "UDP header"
			return
		}
		e.SrcPort, e.DstPort = binary.BigEndian.Uint16(b), binary.BigEndian.Uint16(b[2:])
	case 1, 58:
		if len(b) < 2 {
			e.Truncated = e.Proto + " header"
			return
		}
		e.ICMPType, e.ICMPCode = b[0], b[1]
	}
}

func protoName(p uint8) string {
	switch p {
	case 6:
		return "TCP"
	case 17:
		return "UDP"
	case 1:
		return "ICMP"
	case 58:
		return "ICMPv6"
	}
	return fmt.Sprintf("proto %d", p)
}

// String is the event on one line, as meshredirect monitor prints it
// (without pod names).
func (e Event) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s %s %s ifindex %d: %s", e.Time.Format("15:04:05.000000"), e.Program, e.Verdict, e.Ifindex, e.Tuple())
	if len(e.TCPFlags) > 0 {
		fmt.Fprintf(&sb, " [%s]", strings.Join(e.TCPFlags, ","))
	}
	if e.Fragment {
		sb.WriteString(" fragment")
	}
	if e.VLAN {
		sb.WriteString(" vlan")
	}
	fmt.Fprintf(&sb, ", %d bytes", e.Len)
	if e.Truncated != "" {
		fmt.Fprintf(&sb, " (captured bytes end in the %s)", e.Truncated)
	}
	return sb.String()
}
