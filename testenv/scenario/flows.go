package scenario

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// Paths a flow can take.
const (
	Direct  = "direct"
	Dropped = "dropped"
)

// ViaZtunnel names the path through one of ztunnel's listeners.
func ViaZtunnel(port int) string { return fmt.Sprintf("ztunnel :%d", port) }

// Flow is one flow of DESIGN.md, run for one address family.
type Flow struct {
	// ID numbers the flow as the issue does ("7b" for a step of flow 7).
	ID     string
	Name   string
	Expect string
	Run    func(b *Box, v6 bool) Observation
}

// Observation is what a run of a flow showed.
type Observation struct {
	// Path is the path observed: ViaZtunnel(port), Direct or Dropped.
	Path string
	// Bytes is how many bytes came back intact (both ways for a relay).
	Bytes int64
	// Err says what went wrong, if anything did.
	Err error
}

// OK reports whether o is what f expects.
func (f Flow) OK(o Observation) bool { return o.Err == nil && o.Path == f.Expect }

const timeout = 5 * time.Second

// Observe exchanges bytes from src to dst and reports the path from the
// stand-in's records: a record of the flow names its listener, none means
// the flow went direct.
func Observe(b *Box, src *testenv.Namespace, v6 bool, dst netip.AddrPort) Observation {
	seen := len(b.Standin.Records())
	local, err := Exchange(src, v6, dst, timeout)
	if err != nil {
		return Observation{Err: err}
	}
	o := Observation{Bytes: 2 * ExchangeSize}
	if r, err := b.Record(local, dst, time.Second); err == nil {
		o.Path = ViaZtunnel(r.Listener)
		if r.ClientToServer != ExchangeSize || r.ServerToClient != ExchangeSize {
			o.Err = fmt.Errorf("the stand-in carried %d/%d bytes", r.ClientToServer, r.ServerToClient)
		}
		return o
	}
	if slices.ContainsFunc(b.Standin.Records()[seen:], func(r ztunnel.Record) bool { return r.Source.Addr().Unmap() == local.Addr() }) {
		o.Err = errors.New("the stand-in carried a flow from this client meanwhile, but not this one")
	}
	o.Path = Direct
	return o
}

// Flows are the flows of issue 4, in order. They leave the box as they found
// it; run them one at a time.
func Flows() []Flow {
	return []Flow{
		{ID: "1", Name: "ambient pod -> ambient pod, same node", Expect: ViaZtunnel(ztunnel.PortOutbound),
			Run: func(b *Box, v6 bool) Observation {
				echo := b.Echo(b.Server, EchoPort)
				o := Observe(b, &b.Client.Namespace, v6, netip.AddrPortFrom(IP(b.Server, v6), EchoPort))
				if o.Err == nil && !SawAddr(echo, IP(b.Client, v6)) {
					o.Err = errors.New("the server did not see the client's own IP")
				}
				return o
			}},
		{ID: "2", Name: "pod outside the mesh -> ambient pod", Expect: ViaZtunnel(ztunnel.PortInbound),
			Run: func(b *Box, v6 bool) Observation {
				b.Echo(b.Server, EchoPort)
				return Observe(b, &b.Plain.Namespace, v6, netip.AddrPortFrom(IP(b.Server, v6), EchoPort))
			}},
		{ID: "3", Name: "second node -> ambient pod, HBONE", Expect: ViaZtunnel(ztunnel.PortHBONE),
			Run: func(b *Box, v6 bool) Observation {
				b.Echo(b.Server, EchoPort)
				return hbone(b, v6)
			}},
		{ID: "4", Name: "ambient pod -> host on second node", Expect: ViaZtunnel(ztunnel.PortOutbound),
			Run: func(b *Box, v6 bool) Observation {
				b.Echo(b.Remote, EchoPort)
				return Observe(b, &b.Client.Namespace, v6, netip.AddrPortFrom(IP(b.Remote, v6), EchoPort))
			}},
		{ID: "5", Name: "node IP (kubelet probe) -> ambient pod", Expect: Direct,
			Run: func(b *Box, v6 bool) Observation {
				b.Echo(b.Server, EchoPort)
				return Observe(b, &b.Node.Namespace, v6, netip.AddrPortFrom(IP(b.Server, v6), EchoPort))
			}},
		{ID: "6a", Name: "DNS from ambient pod, capture on", Expect: ViaZtunnel(ztunnel.PortDNS),
			Run: func(b *Box, v6 bool) Observation { return dns(b, v6, true) }},
		{ID: "6b", Name: "DNS from ambient pod, capture off", Expect: Direct,
			Run: func(b *Box, v6 bool) Observation { return dns(b, v6, false) }},
		{ID: "7a", Name: "ztunnel not ready: ambient pod -> host", Expect: Dropped,
			Run: func(b *Box, v6 bool) Observation {
				b.Echo(b.Remote, EchoPort)
				if err := b.SetZtunnelReady(false); err != nil {
					return Observation{Err: err}
				}
				defer b.SetZtunnelReady(true)
				if _, err := Exchange(&b.Client.Namespace, v6, netip.AddrPortFrom(IP(b.Remote, v6), EchoPort), time.Second); err == nil {
					return Observation{Path: Direct, Err: errors.New("the ambient pod got through")}
				}
				return Observation{Path: Dropped}
			}},
		{ID: "7b", Name: "ztunnel not ready: pod outside the mesh -> host", Expect: Direct,
			Run: func(b *Box, v6 bool) Observation {
				b.Echo(b.Remote, EchoPort)
				if err := b.SetZtunnelReady(false); err != nil {
					return Observation{Err: err}
				}
				defer b.SetZtunnelReady(true)
				return Observe(b, &b.Plain.Namespace, v6, netip.AddrPortFrom(IP(b.Remote, v6), EchoPort))
			}},
		{ID: "7c", Name: "ztunnel ready again: ambient pod -> host", Expect: ViaZtunnel(ztunnel.PortOutbound),
			Run: func(b *Box, v6 bool) Observation {
				b.Echo(b.Remote, EchoPort)
				if err := b.SetZtunnelReady(false); err != nil {
					return Observation{Err: err}
				}
				if err := b.SetZtunnelReady(true); err != nil {
					return Observation{Err: err}
				}
				return Observe(b, &b.Client.Namespace, v6, netip.AddrPortFrom(IP(b.Remote, v6), EchoPort))
			}},
		{ID: "8", Name: "unenrolled pod -> host", Expect: Direct,
			Run: func(b *Box, v6 bool) Observation {
				b.Echo(b.Remote, EchoPort)
				if err := b.Unenroll(b.Client); err != nil {
					return Observation{Err: err}
				}
				defer b.Enroll(b.Client)
				o := Observe(b, &b.Client.Namespace, v6, netip.AddrPortFrom(IP(b.Remote, v6), EchoPort))
				if o.Err == nil {
					o.Err = b.leftovers(b.Client)
				}
				return o
			}},
		{ID: "9", Name: "sample of pairs among all ambient pods", Expect: ViaZtunnel(ztunnel.PortOutbound),
			Run: samplePairs},
	}
}

// leftovers reports our filters or map entries still there for pod.
func (b *Box) leftovers(pod *testenv.Pod) error {
	all, err := b.DP.Attachments()
	if err != nil {
		return err
	}
	for _, a := range all {
		if a.Ifindex == pod.HostVethIndex {
			return fmt.Errorf("still attached to %s: %s", pod.HostVeth, a)
		}
	}
	entries, err := b.DP.Maps().Endpoints.Pods()
	if err != nil {
		return err
	}
	for _, ip := range []netip.Addr{pod.IPv4, pod.IPv6} {
		if _, ok := entries[ip]; ok {
			return fmt.Errorf("the endpoints map still holds %s as a pod", ip)
		}
	}
	return nil
}

// hbone dials the server's port 15008 from the second node, asks for the
// server's echo port with HTTP/2 CONNECT, and echoes a message.
func hbone(b *Box, v6 bool) Observation {
	proxy := netip.AddrPortFrom(IP(b.Server, v6), ztunnel.PortHBONE)
	target := netip.AddrPortFrom(IP(b.Server, v6), EchoPort)
	msg := []byte("hello through HBONE")
	err := b.Remote.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c, err := ztunnel.DialHBONE(ctx, proxy.String(), target.String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write(msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if string(got) != string(msg) {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
		return nil
	})
	if err != nil {
		return Observation{Err: err}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r, err := b.Standin.WaitFor(ctx, func(r ztunnel.Record) bool {
		return r.Listener == ztunnel.PortHBONE && Unmap(r.Target) == target && r.Source.Addr().Unmap() == IP(b.Remote, v6) &&
			r.ServerToClient >= int64(len(msg))
	})
	if err != nil {
		return Observation{Path: Direct, Err: fmt.Errorf("no HBONE record: %w", err)}
	}
	if Unmap(r.OrigDst) != proxy {
		return Observation{Err: fmt.Errorf("HBONE original destination %s, want %s", r.OrigDst, proxy)}
	}
	return Observation{Path: ViaZtunnel(r.Listener), Bytes: 2 * int64(len(msg))}
}

// dns sends a DNS query from the client to the DNS server on the second
// node with DNS capture on or off. With capture on the stand-in answers,
// from the server's address.
func dns(b *Box, v6, capture bool) Observation {
	b.DNS()
	if err := b.DP.SetCaptureDNS(capture); err != nil {
		return Observation{Err: err}
	}
	defer b.DP.SetCaptureDNS(b.Config.CaptureDNS)
	server := netip.AddrPortFrom(IP(b.Remote, v6), 53)
	seen := len(b.Standin.Records())
	reply, from, n, err := Query(&b.Client.Namespace, v6, server)
	if err != nil {
		return Observation{Err: err}
	}
	o := Observation{Path: Direct, Bytes: int64(n)}
	if from != server {
		o.Err = fmt.Errorf("reply from %s, want %s", from, server)
	}
	if slices.ContainsFunc(b.Standin.Records()[seen:], func(r ztunnel.Record) bool {
		return r.Listener == ztunnel.PortDNS && Unmap(r.OrigDst) == server
	}) {
		o.Path = ViaZtunnel(ztunnel.PortDNS)
		if len(reply.Answers) == 0 {
			o.Err = errors.New("the stand-in's reply has no answer")
		}
	}
	return o
}

// Query sends an A (IPv4) or AAAA (IPv6) query for svc.example. from inside
// src to server over UDP, and returns the reply, its sender and its size.
func Query(src *testenv.Namespace, v6 bool, server netip.AddrPort) (dnsmessage.Message, netip.AddrPort, int, error) {
	qtype, network := dnsmessage.TypeA, "udp4"
	if v6 {
		qtype, network = dnsmessage.TypeAAAA, "udp6"
	}
	q := dnsmessage.Message{Header: dnsmessage.Header{ID: uint16(rand.Uint32()), RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName("svc.example."), Type: qtype, Class: dnsmessage.ClassINET}}}
	wire, err := q.Pack()
	if err != nil {
		return dnsmessage.Message{}, netip.AddrPort{}, 0, err
	}
	c, err := src.ListenPacket(network, ":0")
	if err != nil {
		return dnsmessage.Message{}, netip.AddrPort{}, 0, err
	}
	defer c.Close()
	buf := make([]byte, 1500)
	for attempt := 0; attempt < 3; attempt++ {
		if _, err := c.WriteTo(wire, net.UDPAddrFromAddrPort(server)); err != nil {
			return dnsmessage.Message{}, netip.AddrPort{}, 0, err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, addr, err := c.ReadFrom(buf)
		if err != nil {
			continue
		}
		var reply dnsmessage.Message
		if err := reply.Unpack(buf[:n]); err != nil {
			return reply, netip.AddrPort{}, n, err
		}
		return reply, Unmap(addr.(*net.UDPAddr).AddrPort()), n, nil
	}
	return dnsmessage.Message{}, netip.AddrPort{}, 0, fmt.Errorf("no DNS reply from %s", server)
}

// samplePairs runs ten flows between random pairs of ambient pods; every
// one must go through 15001.
func samplePairs(b *Box, v6 bool) Observation {
	pods := b.AmbientPods()
	seed := uint64(1)
	if v6 {
		seed = 2
	}
	rng := rand.New(rand.NewPCG(seed, uint64(len(pods))))
	var o Observation
	for i := 0; i < 10; i++ {
		src := pods[rng.IntN(len(pods))]
		dst := pods[rng.IntN(len(pods))]
		if src == dst {
			continue
		}
		b.Echo(dst, EchoPort)
		step := Observe(b, &src.Namespace, v6, netip.AddrPortFrom(IP(dst, v6), EchoPort))
		o.Bytes += step.Bytes
		if step.Err != nil || step.Path != ViaZtunnel(ztunnel.PortOutbound) {
			return Observation{Path: step.Path, Bytes: o.Bytes, Err: fmt.Errorf("%s -> %s: path %q: %v", src.Name, dst.Name, step.Path, step.Err)}
		}
		o.Path = step.Path
	}
	return o
}
