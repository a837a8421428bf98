package scenario

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
	"sync"
	"time"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
	"github.com/meshredirect/meshredirect/zds"
)

// EchoPort is where the pods' echo servers listen.
const EchoPort = 8080

// Box is a node in a box with the dataplane on it: ambient Client and
// Server, Plain outside the mesh, ztunnel running the stand-in, and Remote,
// a host outside the mesh on a second node.
type Box struct {
	Node                  *testenv.Node
	Client, Server, Plain *testenv.Pod
	Ztunnel               *testenv.Pod
	Remote                *testenv.Pod
	DP                    *dataplane.Dataplane
	Config                dataplane.Config
	Standin               *ztunnel.Server
	// InPod says the box runs in-pod mode (Options.InPod): the stand-in
	// opens its listeners in the ambient pods, handed to it over ZDS by
	// ZDS (nil with Options.NoDataplane: the agent under test listens at
	// ZDSPath).
	InPod   bool
	ZDS     *zds.Server
	ZDSPath string

	// With Options.PolicyPods, three more ambient pods, each with a
	// policy of its own (Policies): DNSBypass bypasses DNS capture,
	// Strict has the strict UDP policy (and bypasses DNS capture),
	// BypassIn bypasses inbound capture.
	DNSBypass, Strict, BypassIn *testenv.Pod
	// Policies are the ambient pods' own policies, by pod name.
	Policies map[string]dataplane.Policy

	tb    testenv.TB
	opts  Options
	mu    sync.Mutex
	echos map[string]*testenv.Echo
	dns   *DNSServer
	// closers is the remote host's Closer, once started.
	closers *Closer
}

// Options shape a Box.
type Options struct {
	// Dataplane configures the dataplane; NodeNetns is filled in.
	Dataplane dataplane.Config
	// PinDir is the bpffs directory of the pins (required).
	PinDir string
	// DNSAnswer is what the stand-in answers to DNS queries.
	DNSAnswer []netip.Addr
	// ExtraPods adds that many more ambient pods.
	ExtraPods int
	// RPFilter, if set, is written to the node's conf/all and conf/default
	// rp_filter before ztunnel is set up (1 strict, 2 loose).
	RPFilter int
	// NoEnrolment leaves the ambient pods unenrolled.
	NoEnrolment bool
	// NoDataplane builds the node, the pods and the stand-in only: the
	// datapath is left to someone else (an agent under test). DP stays nil.
	NoDataplane bool
	// Wiring is how both nodes' pods are wired (testenv.NodeOptions).
	Wiring testenv.Wiring
	// PolicyPods adds the ambient pods DNSBypass, Strict and BypassIn, and
	// makes the remote host's addresses the DNS resolvers.
	PolicyPods bool
	// ZtunnelAckError, in in-pod mode, is asked by the stand-in before it
	// acts on each ZDS request: a non-empty answer is acked as an error
	// (ztunnel refusing the request).
	ZtunnelAckError func(ztunnel.ZDSRequest) string
	// InPod runs in-pod mode (DESIGN §6): the ambient pods are captured
	// inside their netns, and the stand-in, as ztunnel 1.21+ does, takes
	// them over ZDS from the box's ZDS server and listens inside each.
	InPod bool
}

// New builds the box, opens the dataplane in its node, sets ztunnel up and
// ready, starts the stand-in and enrols the ambient pods. Everything is
// removed by tb's cleanups, the dataplane's kernel objects by
// dataplane.Uninstall.
func New(tb testenv.TB, o Options) *Box {
	tb.Helper()
	b := &Box{Node: testenv.NewNode(tb, testenv.NodeOptions{Wiring: o.Wiring}), echos: map[string]*testenv.Echo{},
		Policies: map[string]dataplane.Policy{}, tb: tb}
	b.Client = b.Node.AddPod("client", testenv.Ambient)
	b.Server = b.Node.AddPod("server", testenv.Ambient)
	b.Plain = b.Node.AddPod("plain", testenv.NotAmbient)
	if o.PolicyPods {
		b.DNSBypass = b.Node.AddPod("dnsbypass", testenv.Ambient)
		b.Strict = b.Node.AddPod("strict", testenv.Ambient)
		b.BypassIn = b.Node.AddPod("bypassin", testenv.Ambient)
		b.Policies[b.DNSBypass.Name] = dataplane.Policy{BypassDNS: true}
		// Strict also bypasses DNS capture: its queries go to the
		// resolvers themselves, which the strict policy lets through.
		b.Policies[b.Strict.Name] = dataplane.Policy{UDPDrop: true, BypassDNS: true}
		b.Policies[b.BypassIn.Name] = dataplane.Policy{BypassInbound: true}
	}
	for i := 0; i < o.ExtraPods; i++ {
		b.Node.AddPod(fmt.Sprintf("pod%03d", i), testenv.Ambient)
	}
	b.Ztunnel = b.Node.AddZtunnel()
	b.Remote = b.Node.AddPeerNode("node2").AddPod("remote", testenv.NotAmbient)

	if o.RPFilter != 0 {
		if err := b.Node.Do(func() error {
			for _, k := range []string{"all", "default"} {
				if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+k+"/rp_filter", []byte(strconv.Itoa(o.RPFilter)), 0o644); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			tb.Fatal(err)
		}
	}

	b.Config = o.Dataplane
	b.Config.NodeNetns = b.Node.Path()
	b.Config.PinDir = o.PinDir
	if o.InPod {
		b.InPod = true
		dir, err := os.MkdirTemp("", "meshredirect-zds-")
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { os.RemoveAll(dir) })
		b.ZDSPath = filepath.Join(dir, "ztunnel.sock")
	}
	if o.NoDataplane {
		b.startStandin(tb, o)
		return b
	}
	dp, err := dataplane.Open(b.Config)
	if err != nil {
		tb.Fatal(err)
	}
	b.DP = dp
	tb.Cleanup(func() {
		dp.Close()
		if err := dataplane.Uninstall(b.Config, b.Ztunnel.Path()); err != nil {
			tb.Errorf("uninstall: %v", err)
		}
	})
	check := func(err error) {
		if err != nil {
			tb.Fatal(err)
		}
	}
	check(b.SyncNode())
	if o.PolicyPods {
		check(dp.SetResolvers(b.Resolvers()))
	}
	if o.InPod {
		b.startZDS(tb)
		b.startStandin(tb, o)
		if !o.NoEnrolment {
			for _, p := range b.AmbientPods() {
				check(b.Enroll(p))
			}
		}
		return b
	}
	check(dp.SetZtunnel(dataplane.Ztunnel{Name: "istio-system/ztunnel", Netns: b.Ztunnel.Path(),
		HostIfindex: b.Ztunnel.HostVethIndex, IPs: []netip.Addr{b.Ztunnel.IPv4, b.Ztunnel.IPv6}}))
	check(dp.SetZtunnelReady(true))

	b.startStandin(tb, o)

	if !o.NoEnrolment {
		for _, p := range b.Node.Pods() {
			if p.Ambient {
				check(dp.Enroll(b.PodOf(p)))
			}
		}
	}
	return b
}

// startZDS listens for the stand-in at ZDSPath, as the agent does.
func (b *Box) startZDS(tb testenv.TB) {
	srv, err := zds.Listen(zds.ServerOptions{Path: b.ZDSPath})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ctx)
	}()
	b.ZDS = srv
	tb.Cleanup(func() {
		cancel()
		srv.Close()
		<-done
	})
}

// ZtunnelOf is where ztunnel's sockets serving pod live: ztunnel's own pod
// in node mode, pod itself in in-pod mode.
func (b *Box) ZtunnelOf(p *testenv.Pod) *testenv.Pod {
	if b.InPod {
		return p
	}
	return b.Ztunnel
}

// UID is the uid the box gives pod's workload over ZDS.
func UID(p *testenv.Pod) string { return "uid-" + p.Node.Name + "-" + p.Name }

// Enroll captures pod: on its host veth (node mode), or inside its netns and
// handed to the stand-in over ZDS, returning once the stand-in acked it
// with its listeners up (in-pod mode).
func (b *Box) Enroll(p *testenv.Pod) error {
	if !b.InPod {
		return b.DP.Enroll(b.PodOf(p))
	}
	if err := b.DP.EnrollInPod(b.PodOf(p)); err != nil {
		return err
	}
	return b.giveZtunnel(p)
}

// giveZtunnel hands p to the stand-in over ZDS and waits for its listeners.
func (b *Box) giveZtunnel(p *testenv.Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.ZDS.Add(ctx, zds.Workload{UID: UID(p), Info: zds.WorkloadInfo{Name: p.Name, Namespace: "default", ServiceAccount: "default"}, Netns: p.Path()}); err != nil {
		return err
	}
	_, err := b.Standin.WaitPod(ctx, UID(p))
	return err
}

// Unenroll releases pod: ztunnel lets it go first (in-pod mode), then its
// capture goes.
func (b *Box) Unenroll(p *testenv.Pod) error {
	if !b.InPod {
		return b.DP.Unenroll(PodOf(p))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.ZDS.Del(ctx, UID(p)); err != nil {
		return err
	}
	return b.DP.UnenrollInPod(b.PodOf(p))
}

// SetZtunnelReady makes ztunnel unavailable to the ambient pods (false) or
// available again: the ready flag in node mode; in in-pod mode ztunnel
// drops the pods over ZDS (its listeners in them close, their capture
// stays) and takes them back.
func (b *Box) SetZtunnelReady(ready bool) error {
	if !b.InPod {
		return b.DP.SetZtunnelReady(ready)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, p := range b.AmbientPods() {
		if ready {
			if err := b.giveZtunnel(p); err != nil {
				return err
			}
		} else if err := b.ZDS.Del(ctx, UID(p)); err != nil {
			return err
		}
	}
	return nil
}

// Resolvers are the DNS resolvers of a box with policy pods: the remote
// host, where the flows' DNS server runs.
func (b *Box) Resolvers() []netip.Addr {
	return []netip.Addr{b.Remote.IPv4, b.Remote.IPv6}
}

// PodOf is what the dataplane needs of a pod of the box, with its policy.
func (b *Box) PodOf(p *testenv.Pod) dataplane.Pod {
	dp := PodOf(p)
	dp.Policy = b.Policies[p.Name]
	return dp
}

// RestartStandin stops the stand-in as ztunnel's pod stops (SIGTERM: it
// drains, letting the flows in progress finish) and starts a new one with
// the same options: in in-pod mode its listeners in the pods close, and the
// new one takes the pods back from the agent's snapshot. It returns the
// records of the one that stopped.
func (b *Box) RestartStandin(tb testenv.TB) []ztunnel.Record {
	old := b.Standin
	old.Drain(5 * time.Second)
	records := old.Records()
	b.startStandin(tb, b.opts)
	return records
}

func (b *Box) startStandin(tb testenv.TB, o Options) {
	b.opts = o
	zo := ztunnel.Options{Netns: b.Ztunnel.Netns, DNSAnswer: o.DNSAnswer, DialTimeout: 3 * time.Second}
	if o.InPod {
		// ztunnel's own choice, SO_REUSEPORT on its listeners, where
		// bpf_sk_assign takes such a listener (Linux 6.5); before, the
		// setting that ztunnel's INPOD_PORT_REUSE=false gives.
		zo.ZDS, zo.NoPortReuse, zo.AckError = b.ZDSPath, !mrasm.AssignsReuseport(), o.ZtunnelAckError
	}
	zts, err := ztunnel.Start(zo)
	if err != nil {
		tb.Fatal(err)
	}
	b.Standin = zts
	tb.Cleanup(func() { zts.Close() })
}

// PodOf is what the dataplane needs of a pod of the box.
func PodOf(p *testenv.Pod) dataplane.Pod {
	return dataplane.Pod{Name: "default/" + p.Name, IPs: []netip.Addr{p.IPv4, p.IPv6}, HostIfindex: p.HostVethIndex, Netns: p.Path()}
}

// AmbientPods lists the box's ambient pods.
func (b *Box) AmbientPods() []*testenv.Pod {
	var out []*testenv.Pod
	for _, p := range b.Node.Pods() {
		if p.Ambient {
			out = append(out, p)
		}
	}
	return out
}

// Echo starts (once) an echo server on port in pod and returns it.
func (b *Box) Echo(pod *testenv.Pod, port int) *testenv.Echo {
	return b.EchoIn(&pod.Namespace, pod.Name, port)
}

// EchoIn starts (once) an echo server on port in ns, named name, and
// returns it: the node's, or a pod's.
func (b *Box) EchoIn(ns *testenv.Namespace, name string, port int) *testenv.Echo {
	b.mu.Lock()
	defer b.mu.Unlock()
	key := name + ":" + strconv.Itoa(port)
	if e, ok := b.echos[key]; ok {
		return e
	}
	e := ns.StartEcho(port)
	b.echos[key] = e
	return e
}

// IP is pod's address of one family.
func IP(p *testenv.Pod, v6 bool) netip.Addr {
	if v6 {
		return p.IPv6
	}
	return p.IPv4
}

// Family names an address family.
func Family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// ExchangeSize is how many bytes Exchange sends and expects back.
const ExchangeSize = 64 << 10

// Exchange sends ExchangeSize random bytes from inside src to dst over TCP,
// reads them back from the echo server there and checks that they arrived
// intact. It returns the client's local address.
func Exchange(src *testenv.Namespace, v6 bool, dst netip.AddrPort, timeout time.Duration) (netip.AddrPort, error) {
	network := "tcp4"
	if v6 {
		network = "tcp6"
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := src.DialContext(ctx, network, dst.String())
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	payload := make([]byte, ExchangeSize)
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

// Record waits for the stand-in's finished record of the flow from src to
// dst (the address the client dialled).
func (b *Box) Record(src, dst netip.AddrPort, timeout time.Duration) (ztunnel.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r, err := b.Standin.WaitFor(ctx, func(r ztunnel.Record) bool {
		return r.Done() && Unmap(r.Source) == Unmap(src) && Unmap(r.OrigDst) == Unmap(dst)
	})
	if err != nil {
		return r, fmt.Errorf("no record of %s -> %s in the stand-in: %w", src, dst, err)
	}
	return r, nil
}

// RecordsFrom returns the stand-in's records of flows from src.
func (b *Box) RecordsFrom(src netip.Addr) []ztunnel.Record {
	var out []ztunnel.Record
	for _, r := range b.Standin.Records() {
		if r.Source.Addr().Unmap() == src.Unmap() {
			out = append(out, r)
		}
	}
	return out
}

// Unmap turns a v4-mapped address into IPv4.
func Unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// SawAddr reports whether an echo server saw a peer with addr's IP (the
// stand-in connects with the client's IP, from a port of its own).
func SawAddr(e *testenv.Echo, addr netip.Addr) bool {
	for _, q := range e.Peers() {
		if q.Addr().Unmap() == addr.Unmap() {
			return true
		}
	}
	return false
}
