package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
)

// tcpCounter reads the Tcp counter name of /proc/net/snmp in ns:
// /proc/thread-self follows the reading thread's netns, /proc/self would
// show the process's.
func tcpCounter(ns *testenv.Namespace, name string) (uint64, error) {
	var v uint64
	err := ns.Do(func() error {
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		var header []string
		s := bufio.NewScanner(f)
		for s.Scan() {
			fields := strings.Fields(s.Text())
			if len(fields) == 0 || fields[0] != "Tcp:" {
				continue
			}
			if header == nil {
				header = fields
				continue
			}
			for i, h := range header {
				if h == name && i < len(fields) {
					v, err = strconv.ParseUint(fields[i], 10, 64)
					return err
				}
			}
		}
		return fmt.Errorf("no Tcp %s in /proc/net/snmp", name)
	})
	return v, err
}

// landing counts TcpInCsumErrors (nstat's name; Tcp InCsumErrors in
// /proc/net/snmp) in every namespace of a copy. IPv6 segments count there
// too: TCP keeps one MIB per netns for both families (tcp_v6_rcv counts
// TCP_MIB_CSUMERRORS in net->mib.tcp_statistics; /proc/net/snmp6 has no
// Tcp6 lines), as the IPv6 proofs show.
type landing map[string]uint64

func readLanding(c *Copy) (landing, error) { return readTCP(c, "InCsumErrors") }

// readTCP reads the Tcp counter name in every namespace of a copy.
func readTCP(c *Copy, name string) (landing, error) {
	l := landing{}
	for ns, n := range c.namespaces() {
		v, err := tcpCounter(n, name)
		if err != nil {
			return nil, fmt.Errorf("copy %s: read Tcp%s in the %s's netns: %w", c.Mode, name, ns, err)
		}
		l[ns] = v
	}
	return l, nil
}

// total is the sum over namespaces.
func (l landing) total() uint64 {
	var t uint64
	for _, v := range l {
		t += v
	}
	return t
}

// delta returns after - before per namespace, and the namespace that
// counted the most.
func (after landing) delta(before landing) (map[string]uint64, string) {
	d := map[string]uint64{}
	best := ""
	for k, v := range after {
		d[k] = v - before[k]
		if best == "" || d[k] > d[best] || (d[k] == d[best] && k < best) {
			best = k
		}
	}
	return d, best
}

// verdicts reads the eBPF copy's per-verdict packet counters.
func verdicts(c *Copy) (map[string]uint64, error) {
	if c.DP == nil {
		return nil, nil
	}
	st, err := c.DP.Maps().Stats.Read()
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, v := range maps.Verdicts() {
		out[v.String()] = st[v].Packets
	}
	return out, nil
}

// Conntrack netlink attributes and status bit of a filtered flush
// (include/uapi/linux/netfilter/nfnetlink_conntrack.h, nf_conntrack_common.h).
const (
	ctaStatus     = 3  // CTA_STATUS
	ctaStatusMask = 26 // CTA_STATUS_MASK (5.19+ for dumps, flushes)
	ipsSeenReply  = 1 << 1
)

// deleteSYNEntries deletes, in every namespace of c, the conntrack
// entries that never saw a reply (both families): the kernel path's SYN
// runs make them, and nothing else does while it runs (the held
// connections' entries have seen replies and stay). It returns how many
// each namespace had (nf_conntrack_count, per netns, before and after).
// One filtered flush (IPCTNL_MSG_CT_DELETE with no tuple, CTA_STATUS 0
// under CTA_STATUS_MASK IPS_SEEN_REPLY) instead of one delete per entry:
// tens of thousands of entries per run.
func deleteSYNEntries(c *Copy) (map[string]uint64, error) {
	out := map[string]uint64{}
	for name, ns := range c.namespaces() {
		err := ns.Do(func() error {
			n, err := deleteUnreplied()
			out[name] = n
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("copy %s: delete the SYNs' conntrack entries in the %s's netns: %w", c.Mode, name, err)
		}
	}
	return out, nil
}

// deleteUnreplied deletes the calling thread's netns's conntrack entries
// that never saw a reply and returns how many there were.
func deleteUnreplied() (uint64, error) {
	before, err := conntrackCount()
	if err != nil || before == 0 {
		return 0, err
	}
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if err := flushUnreplied(fam); err != nil {
			return 0, err
		}
	}
	after, err := conntrackCount()
	if err != nil {
		return 0, err
	}
	return before - after, nil
}

// flushUnreplied deletes the calling thread's netns's conntrack entries
// of family that never saw a reply.
func flushUnreplied(family uint8) error {
	req := nl.NewNetlinkRequest(int(netlink.ConntrackTable)<<8|nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_ACK)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: family, Version: nl.NFNETLINK_V0})
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	req.AddData(nl.NewRtAttr(ctaStatus, be32(0)))
	req.AddData(nl.NewRtAttr(ctaStatusMask, be32(ipsSeenReply)))
	if _, err := req.Execute(unix.NETLINK_NETFILTER, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("flush the unreplied conntrack entries: %w", err)
	}
	return nil
}

// conntrackCount reads the calling thread's netns's conntrack entries
// (net.netfilter.nf_conntrack_count; 0 where conntrack never ran).
func conntrackCount() (uint64, error) {
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}
