// Package nlmsg holds the two pieces of netlink handling that tc, resolve
// and dataplane share on top of github.com/mdlayher/netlink and
// github.com/jsimonetti/rtnetlink/v2's messages: a dump that reports the
// kernel's NLM_F_DUMP_INTR, and a scan of the attributes the library
// skips. Each package keeps its own socket and retry policy.
package nlmsg

import (
	"errors"
	"fmt"

	"github.com/jsimonetti/rtnetlink/v2"
	"github.com/mdlayher/netlink"
)

// ErrDumpInterrupted is returned by Dump when the kernel flags a message of
// the reply NLM_F_DUMP_INTR: a concurrent change may have made it miss or
// repeat objects, and the dump should be run again.
var ErrDumpInterrupted = errors.New("dump interrupted by a concurrent change (NLM_F_DUMP_INTR)")

// Dump sends a dump request of type typ with data on c and returns the
// reply's messages, or ErrDumpInterrupted. mdlayher/netlink consumes the
// closing NLMSG_DONE without showing its flags, so an interruption that the
// kernel reports on that message alone goes unseen.
func Dump(c *netlink.Conn, typ netlink.HeaderType, data []byte) ([]netlink.Message, error) {
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: typ, Flags: netlink.Request | netlink.Dump},
		Data:   data,
	})
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		if m.Header.Flags&netlink.DumpInterrupted != 0 {
			return nil, ErrDumpInterrupted
		}
	}
	return msgs, nil
}

// ScanAttrs passes the attributes after a message's fixed header of hdr
// bytes to decode, for those the library skips. Its errors include those of
// malformed attributes, which the library's LinkMessage ignores.
func ScanAttrs(msg []byte, hdr int, decode func(*netlink.AttributeDecoder)) error {
	if len(msg) < hdr {
		return fmt.Errorf("%d bytes, shorter than the %d-byte header", len(msg), hdr)
	}
	ad, err := netlink.NewAttributeDecoder(msg[hdr:])
	if err != nil {
		return err
	}
	for ad.Next() {
		decode(ad)
	}
	return ad.Err()
}

// SkipStats is RTEXT_FILTER_SKIP_STATS (include/uapi/linux/rtnetlink.h, not
// in x/sys) for IFLA_EXT_MASK: leave the per-family statistics out of link
// replies (inet6_fill_ifla6_attrs skips IFLA_INET6_STATS and
// IFLA_INET6_ICMP6STATS), about a quarter of their size, which a dump of
// many interfaces reads for nothing. IFLA_STATS and IFLA_STATS64 stay
// whatever the mask. Older kernels ignore the bit.
const SkipStats = 1 << 3

// LinkRequest encodes an RTM_GETLINK request for the interface index (or,
// with attrs.Name, the one of that name; a dump with neither), with attrs
// as its other attributes and the per-family statistics left out.
func LinkRequest(index uint32, attrs rtnetlink.LinkAttributes) ([]byte, error) {
	mask := uint32(SkipStats)
	attrs.ExtMask = &mask
	b, err := (&rtnetlink.LinkMessage{Index: index, Attributes: &attrs}).MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encode RTM_GETLINK: %w", err)
	}
	return b, nil
}
