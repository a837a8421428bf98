package asm_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

// TestTruncatedOnHook sends frames whose IP header is cut short through a
// real tc ingress hook, which BPF_PROG_TEST_RUN cannot do (it refuses such
// frames): app_outbound on one end of a veth pair, raw frames written with
// an AF_PACKET socket to the other end. Each must be dropped as a parse
// error; none may pass.
func TestTruncatedOnHook(t *testing.T) {
	f := newFixture(t, mrasm.DefaultOptions())
	ns := testutil.NewNetns(t)

	var hostIfindex, podIfindex int
	testutil.MustDo(t, ns, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "host0"}, PeerName: "pod0"}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		for _, name := range []string{"host0", "pod0"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
			if name == "host0" {
				hostIfindex = l.Attrs().Index
			} else {
				podIfindex = l.Attrs().Index
			}
		}
		qdisc := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: hostIfindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
		if err := netlink.QdiscAdd(qdisc); err != nil {
			return fmt.Errorf("add clsact: %w", err)
		}
		filter := &netlink.BpfFilter{
			FilterAttrs:  netlink.FilterAttrs{LinkIndex: hostIfindex, Parent: netlink.HANDLE_MIN_INGRESS, Priority: 1, Protocol: unix.ETH_P_ALL},
			Fd:           f.coll.Programs[mrasm.AppOutbound].FD(),
			Name:         "meshredirect-test",
			DirectAction: true,
		}
		if err := netlink.FilterAdd(filter); err != nil {
			return fmt.Errorf("add filter: %w", err)
		}
		return nil
	})

	send := func(frame []byte) {
		t.Helper()
		testutil.MustDo(t, ns, func() error {
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			sa := &unix.SockaddrLinklayer{Ifindex: podIfindex, Halen: 6}
			copy(sa.Addr[:], gatewayMAC)
			return unix.Sendto(fd, frame, 0, sa)
		})
	}

	for _, v6 := range []bool{false, true} {
		whole := packet{src: pick(v6, clientV4, clientV6), dst: pick(v6, remoteV4, remoteV6)}.build(t)
		ipLen := 20
		if v6 {
			ipLen = 40
		}
		for n := 14; n < 14+ipLen; n++ {
			before := f.stats(t)
			send(whole[:n])
			// The frame crosses the veth in this thread's softirq, before
			// sendto returns; a short wait covers a deferred one.
			var after map[maps.Verdict]maps.Counter
			for i := 0; i < 100; i++ {
				if after = f.stats(t); after[maps.VerdictParseError].Packets != before[maps.VerdictParseError].Packets {
					break
				}
				time.Sleep(time.Millisecond)
			}
			if d := after[maps.VerdictParseError].Packets - before[maps.VerdictParseError].Packets; d != 1 {
				moved := map[string]uint64{}
				for v, c := range after {
					if dd := c.Packets - before[v].Packets; dd != 0 {
						moved[v.String()] = dd
					}
				}
				t.Errorf("IPv6=%v, %d bytes: parse errors +%d, all counters moved: %v", v6, n, d, moved)
			}
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
