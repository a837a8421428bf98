package dataplane_test

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv/scenario"
)

// TestStatusAssignFailedRising: Inspect (what `status` shows) reports a problem while ztunnel's
// sockets refuse bpf_sk_assign, and none once the refusals stop (a count
// that stays where it is). The refusals are the kernel's own: the
// ztunnel_assign program, on the node's maps, run with BPF_PROG_TEST_RUN in
// ztunnel's netns on SYNs for the stand-in's outbound listener, which it
// finds and tries to assign; a test run is no tc ingress hook, so the kernel
// refuses, as it refuses a SO_REUSEPORT listener before Linux 6.5.
func TestStatusAssignFailedRising(t *testing.T) {
	testutil.RequirePrivileged(t)
	pinDir := filepath.Join(testutil.BPFFS(t), "meshredirect")
	b := scenario.New(t, scenario.Options{PinDir: pinDir})

	coll, err := ebpf.NewCollectionWithOptions(mrasm.CollectionSpec(b.DP.Options()),
		ebpf.CollectionOptions{MapReplacements: b.DP.Maps().Maps()})
	must(t, err)
	t.Cleanup(coll.Close)
	assign := coll.Programs[mrasm.ZtunnelAssign]
	syn := synFrame(t, b.Client.MAC, netip.AddrPortFrom(b.Client.IPv4, 40000), netip.AddrPortFrom(b.Remote.IPv4, 80))

	opts := dataplane.InspectOptions{NodeNetns: b.Node.Path(), PinDir: pinDir, AssignFailedWait: 300 * time.Millisecond}
	refuse := func(ctx context.Context) {
		for ctx.Err() == nil {
			err := b.Ztunnel.Do(func() error {
				_, err := assign.Run(&ebpf.RunOptions{Data: syn})
				return err
			})
			if err != nil {
				t.Errorf("run ztunnel_assign: %v", err)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	problem := func(st dataplane.Status) string {
		for _, p := range st.Problems {
			if strings.Contains(p, "assign_failed is rising") {
				return p
			}
		}
		return ""
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); refuse(ctx) }()
	time.Sleep(50 * time.Millisecond) // a non-zero count to start from
	st, err := dataplane.Inspect(context.Background(), opts)
	cancel()
	wg.Wait()
	must(t, err)
	if problem(st) == "" {
		t.Errorf("assign_failed rose during status (%d packets), but no problem reported: %v", st.Verdicts[maps.VerdictAssignFailed.String()].Packets, st.Problems)
	} else {
		t.Logf("problem: %s", problem(st))
	}

	st, err = dataplane.Inspect(context.Background(), opts)
	must(t, err)
	if n := st.Verdicts[maps.VerdictAssignFailed.String()].Packets; n == 0 {
		t.Fatalf("assign_failed is 0 after the refusals: the program did not take the path the test needs")
	}
	if p := problem(st); p != "" {
		t.Errorf("assign_failed no longer rises, but status reports: %s", p)
	}
}

// synFrame is an Ethernet frame with an IPv4 TCP SYN from src to dst.
func synFrame(t *testing.T, srcMAC []byte, src, dst netip.AddrPort) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: []byte{2, 0, 0, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), SYN: true, Seq: 1, Window: 64240}
	must(t, tcp.SetNetworkLayerForChecksum(ip))
	buf := gopacket.NewSerializeBuffer()
	must(t, gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp))
	return buf.Bytes()
}
