package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/testutil"
)

// TestDeleteUnreplied: the SYN runs' flush deletes the conntrack entries
// that never saw a reply, of both families, counts them, and leaves the
// entries that did (a held connection's).
func TestDeleteUnreplied(t *testing.T) {
	testutil.RequirePrivileged(t)
	ns := testutil.NewNetns(t)
	flow := func(fam uint8, src, dst string, sport uint16) *netlink.ConntrackFlow {
		return &netlink.ConntrackFlow{FamilyType: fam, TimeOut: 100,
			Forward: netlink.IPTuple{Protocol: unix.IPPROTO_UDP, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst), SrcPort: sport, DstPort: 9090},
			Reverse: netlink.IPTuple{Protocol: unix.IPPROTO_UDP, SrcIP: net.ParseIP(dst), DstIP: net.ParseIP(src), SrcPort: 9090, DstPort: sport}}
	}
	testutil.MustDo(t, ns, func() error {
		if _, err := conntrackCount(); err != nil {
			testutil.SkipOrFail(t, "no conntrack in this kernel: "+err.Error())
		}
		for _, f := range []*netlink.ConntrackFlow{
			flow(unix.AF_INET, "198.18.0.1", "198.18.0.2", 1024),
			flow(unix.AF_INET, "198.18.0.1", "198.18.0.2", 1025),
			flow(unix.AF_INET6, "fd00::1", "fd00::2", 1024),
		} {
			if err := netlink.ConntrackCreate(netlink.ConntrackTable, netlink.InetFamily(f.FamilyType), f); err != nil {
				return fmt.Errorf("create %v: %w", f, err)
			}
		}
		if err := createReplied(flow(unix.AF_INET, "198.18.0.1", "198.18.0.2", 40000)); err != nil {
			return fmt.Errorf("create a replied entry: %w", err)
		}
		n, err := deleteUnreplied()
		if err != nil {
			return err
		}
		if n != 3 {
			t.Errorf("deleted %d unreplied entries, want 3", n)
		}
		left, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			return err
		}
		left6, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET6)
		if err != nil {
			return err
		}
		if len(left) != 1 || len(left6) != 0 || left[0].Forward.SrcPort != 40000 {
			t.Errorf("left %v and %v, want the replied entry from port 40000 alone", left, left6)
		}
		return nil
	})
}

// createReplied creates f as an entry that has seen a reply (CTA_STATUS
// IPS_SEEN_REPLY), which netlink.ConntrackCreate cannot say.
func createReplied(f *netlink.ConntrackFlow) error {
	req := nl.NewNetlinkRequest(int(netlink.ConntrackTable)<<8|nl.IPCTNL_MSG_CT_NEW, unix.NLM_F_ACK|unix.NLM_F_CREATE)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: f.FamilyType, Version: nl.NFNETLINK_V0})
	tuple := func(typ int, t netlink.IPTuple) *nl.RtAttr {
		a := nl.NewRtAttr(unix.NLA_F_NESTED|typ, nil)
		ip := a.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_IP, nil)
		ip.AddRtAttr(nl.CTA_IP_V4_SRC, t.SrcIP.To4())
		ip.AddRtAttr(nl.CTA_IP_V4_DST, t.DstIP.To4())
		p := a.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
		p.AddRtAttr(nl.CTA_PROTO_NUM, []byte{t.Protocol})
		p.AddRtAttr(nl.CTA_PROTO_SRC_PORT, binary.BigEndian.AppendUint16(nil, t.SrcPort))
		p.AddRtAttr(nl.CTA_PROTO_DST_PORT, binary.BigEndian.AppendUint16(nil, t.DstPort))
		return a
	}
	req.AddData(tuple(nl.CTA_TUPLE_ORIG, f.Forward))
	req.AddData(tuple(nl.CTA_TUPLE_REPLY, f.Reverse))
	// IPS_CONFIRMED too: the kernel refuses to change it (EBUSY), and a
	// new entry has it by the time the status is applied.
	const ipsConfirmed = 1 << 3
	req.AddData(nl.NewRtAttr(ctaStatus, binary.BigEndian.AppendUint32(nil, ipsSeenReply|ipsConfirmed)))
	req.AddData(nl.NewRtAttr(nl.CTA_TIMEOUT, binary.BigEndian.AppendUint32(nil, 100)))
	_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	return err
}
