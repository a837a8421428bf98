package realnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// echoPort is the test application's TCP echo (testapp -echo :9000).
const echoPort = 9000

// exchange dials dst over TCP from inside the network namespace that holds src (a pod's, or
// the node's when src is a node IP), sends payload, half-closes and checks that the echo
// returns it whole. It returns the client's address.
func exchange(src netip.Addr, dst netip.AddrPort, payload []byte) (netip.AddrPort, error) {
	var conn net.Conn
	dial := func() error {
		var err error
		d := net.Dialer{Timeout: 3 * time.Second}
		d.SetMultipathTCP(false)
		conn, err = d.Dial("tcp", dst.String())
		return err
	}
	var err error
	if slices.Contains([]netip.Addr{nodeIPv4, nodeIPv6}, src) {
		err = dial()
	} else {
		ns, nerr := PodNetns(src)
		if nerr != nil {
			return netip.AddrPort{}, nerr
		}
		err = testutil.Do(ns, dial)
		ns.Close()
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("dial %s from %s: %w", dst, src, err)
	}
	defer conn.Close()
	local := conn.LocalAddr().(*net.TCPAddr).AddrPort()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write(payload); err != nil {
		return local, fmt.Errorf("write to %s: %w", dst, err)
	}
	_ = conn.(*net.TCPConn).CloseWrite()
	back, err := io.ReadAll(conn)
	if err != nil {
		return local, fmt.Errorf("read the echo of %s: %w", dst, err)
	}
	if !bytes.Equal(back, payload) {
		return local, fmt.Errorf("echo of %s: %d bytes back of %d sent", dst, len(back), len(payload))
	}
	return unmap(local), nil
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// errNoRecord is a flow the stand-in did not record.
var errNoRecord = errors.New("no record of the flow at the ztunnel stand-in")

// recordOf waits for the stand-in's finished record of the connection from client to dst on
// listener, and checks that it carried n bytes each way.
func recordOf(ctx context.Context, zt Standin, listener int, client, dst netip.AddrPort, n int) (ztunnel.Record, error) {
	deadline := time.Now().Add(3 * time.Second)
	for {
		recs, err := zt.Records(ctx)
		if err != nil {
			return ztunnel.Record{}, err
		}
		for _, r := range recs {
			if r.Listener != listener || unmap(r.Source) != client || unmap(r.OrigDst) != dst {
				continue
			}
			if r.End.IsZero() {
				break // still open: wait for its byte counts
			}
			if r.ClientToServer != int64(n) || r.ServerToClient != int64(n) {
				return r, fmt.Errorf("record %d carried %d/%d bytes, want %d each way", r.ID, r.ClientToServer, r.ServerToClient, n)
			}
			return r, nil
		}
		if time.Now().After(deadline) {
			return ztunnel.Record{}, fmt.Errorf("%w: %s -> %s on %d", errNoRecord, client, dst, listener)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// anyRecordFrom reports whether the stand-in recorded a flow from client.
func anyRecordFrom(ctx context.Context, zt Standin, client netip.AddrPort) (bool, error) {
	recs, err := zt.Records(ctx)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(recs, func(r ztunnel.Record) bool { return unmap(r.Source) == client }), nil
}

// family returns the address of the family v6 among addrs.
func family(addrs []netip.Addr, v6 bool) netip.Addr {
	for _, a := range addrs {
		if a.Is6() == v6 {
			return a
		}
	}
	return netip.Addr{}
}

// flow is a row of §5 between real pods: a TCP exchange from a source to a destination, which
// must be recorded by the stand-in on a listener (captured) or not at all (direct).
type flow struct {
	name     string
	src, dst func(v6 bool) netip.Addr
	port     uint16
	listener int // 0: direct, no record
}

// checkFlows runs each flow for both families as a subtest.
func checkFlows(t *testing.T, ctx context.Context, zt Standin, flows []flow) {
	payload := bytes.Repeat([]byte("meshredirect real node "), 200)
	for _, f := range flows {
		for _, v6 := range []bool{false, true} {
			name := f.name + "/IPv4"
			if v6 {
				name = f.name + "/IPv6"
			}
			t.Run(name, func(t *testing.T) {
				src, dst := f.src(v6), netip.AddrPortFrom(f.dst(v6), f.port)
				client, err := exchange(src, dst, payload)
				if err != nil {
					t.Fatal(err)
				}
				if f.listener == 0 {
					if seen, err := anyRecordFrom(ctx, zt, client); err != nil || seen {
						t.Fatalf("%s -> %s went through ztunnel (or %v); want direct", client, dst, err)
					}
					return
				}
				if _, err := recordOf(ctx, zt, f.listener, client, dst, len(payload)); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// ipsOf returns a function of the family giving pod p's address.
func ipsOf(p *corev1.Pod) func(bool) netip.Addr {
	addrs := PodAddrs(p)
	return func(v6 bool) netip.Addr { return family(addrs, v6) }
}

// nodeAddr gives the node's address of a family.
func nodeAddr(v6 bool) netip.Addr {
	if v6 {
		return nodeIPv6
	}
	return nodeIPv4
}
