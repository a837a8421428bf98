package dataplane_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// echoPort is where the pods' echo servers listen.
const echoPort = 8080

// box is a node in a box with the dataplane on it: ambient client and
// server, a plain pod outside the mesh, ztunnel with the stand-in, and a
// host on a second node.
type box struct {
	node                  *testenv.Node
	client, server, plain *testenv.Pod
	zt                    *testenv.Pod
	remote                *testenv.Pod
	dp                    *dataplane.Dataplane
	cfg                   dataplane.Config
	zts                   *ztunnel.Server
}

type boxOptions struct {
	cfg dataplane.Config
	// rpFilter, if set, is written to the node's conf/all and conf/default
	// rp_filter before the dataplane sets ztunnel up (1 strict, 2 loose).
	rpFilter    int
	dnsAnswer   []netip.Addr
	extraPods   int
	noEnrolment bool
}

func newBox(t *testing.T, o boxOptions) *box {
	t.Helper()
	testutil.RequirePrivileged(t)
	b := &box{node: testenv.NewNode(t, testenv.NodeOptions{})}
	b.client = b.node.AddPod("client", testenv.Ambient)
	b.server = b.node.AddPod("server", testenv.Ambient)
	b.plain = b.node.AddPod("plain", testenv.NotAmbient)
	for i := 0; i < o.extraPods; i++ {
		b.node.AddPod(fmt.Sprintf("pod%03d", i), testenv.Ambient)
	}
	b.zt = b.node.AddZtunnel()
	b.remote = b.node.AddPeerNode("node2").AddPod("remote", testenv.NotAmbient)

	if o.rpFilter != 0 {
		must(t, b.node.Do(func() error {
			for _, k := range []string{"all", "default"} {
				if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+k+"/rp_filter", []byte(strconv.Itoa(o.rpFilter)), 0o644); err != nil {
					return err
				}
			}
			return nil
		}))
	}
	b.cfg = o.cfg
	b.cfg.NodeNetns = b.node.Path()
	b.cfg.PinDir = filepath.Join(testutil.BPFFS(t), "meshredirect")
	dp, err := dataplane.Open(b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.dp = dp
	t.Cleanup(func() {
		dp.Close()
		if err := dataplane.Uninstall(b.cfg, b.zt.Path()); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	must(t, dp.SetNodeIPs(b.node.IPv4, b.node.IPv6))
	must(t, dp.SetZtunnel(dataplane.Ztunnel{Name: "istio-system/ztunnel", Netns: b.zt.Path(),
		HostIfindex: b.zt.HostVethIndex, IPs: []netip.Addr{b.zt.IPv4, b.zt.IPv6}}))
	must(t, dp.SetZtunnelReady(true))

	zts, err := ztunnel.Start(ztunnel.Options{Netns: b.zt.Netns, DNSAnswer: o.dnsAnswer, DialTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b.zts = zts
	t.Cleanup(func() { zts.Close() })

	if !o.noEnrolment {
		for _, p := range b.node.Pods() {
			if p.Ambient {
				must(t, dp.Enroll(podOf(p)))
			}
		}
	}
	return b
}

func podOf(p *testenv.Pod) dataplane.Pod {
	return dataplane.Pod{Name: "default/" + p.Name, IPs: []netip.Addr{p.IPv4, p.IPv6}, HostIfindex: p.HostVethIndex, Netns: p.Path()}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ipOf(p *testenv.Pod, v6 bool) netip.Addr {
	if v6 {
		return p.IPv6
	}
	return p.IPv4
}

func network(v6 bool) string {
	if v6 {
		return "tcp6"
	}
	return "tcp4"
}

// exchange sends 64 KiB of random bytes from inside src to dst over TCP,
// reads them back from the echo server, and fails unless they arrived
// intact. It returns the local address the client used.
func exchange(t *testing.T, src *testenv.Namespace, v6 bool, dst netip.AddrPort) netip.AddrPort {
	t.Helper()
	local, err := tryExchange(src, v6, dst, 5*time.Second)
	if err != nil {
		t.Fatalf("exchange with %s: %v", dst, err)
	}
	return local
}

func tryExchange(src *testenv.Namespace, v6 bool, dst netip.AddrPort, timeout time.Duration) (netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := src.DialContext(ctx, network(v6), dst.String())
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	payload := make([]byte, 64<<10)
	rand.Read(payload)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		errc <- err
	}()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil {
		return netip.AddrPort{}, fmt.Errorf("read echo: %w", err)
	}
	if err := <-errc; err != nil {
		return netip.AddrPort{}, fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, payload) {
		return netip.AddrPort{}, fmt.Errorf("the echo differs from what was sent")
	}
	return c.LocalAddr().(*net.TCPAddr).AddrPort(), nil
}

// record waits for the stand-in's finished record of the flow from src to
// dst (dst's port as the client dialled it).
func (b *box) record(t *testing.T, src netip.AddrPort, dst netip.AddrPort) ztunnel.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := b.zts.WaitFor(ctx, func(r ztunnel.Record) bool {
		return r.Done() && unmap(r.Source) == src && unmap(r.OrigDst) == dst
	})
	if err != nil {
		t.Fatalf("no record of %s -> %s in the stand-in: %v; it has %+v", src, dst, err, b.zts.Records())
	}
	return r
}

// noRecordFrom fails if the stand-in carried any flow from src.
func (b *box) noRecordFrom(t *testing.T, src netip.Addr) {
	t.Helper()
	for _, r := range b.zts.Records() {
		if unmap(r.Source).Addr() == src {
			t.Fatalf("the stand-in carried a flow from %s: %+v", src, r)
		}
	}
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// stats returns the counters summed over CPUs.
func (b *box) stats(t *testing.T) map[maps.Verdict]maps.Counter {
	t.Helper()
	s, err := b.dp.Maps().Stats.Read()
	if err != nil {
		t.Fatal(err)
	}
	return s
}
