package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/maps"
)

// An address's entry in the endpoints map carries up to three roles: an
// ambient pod's (with its interface, MAC and policy), the node's own, a DNS
// resolver's. Each verb of the dataplane sets or clears its own role and
// keeps the others, so that, say, a node-local DNS cache on a node address
// is both.
const (
	podFlags  = maps.EndpointPod | maps.EndpointBypassInbound | maps.EndpointBypassDNS | maps.EndpointUDPDrop
	roleFlags = maps.EndpointNode | maps.EndpointResolver
)

// Policy is a pod's own capture policy (DESIGN §5), from its annotations.
type Policy struct {
	// BypassInbound leaves inbound plaintext TCP uncaptured; HBONE still
	// goes to ztunnel (ambient.istio.io/bypass-inbound-capture: "true").
	BypassInbound bool
	// BypassDNS keeps the pod's DNS away from ztunnel's DNS proxy
	// (ambient.istio.io/bypass-dns-capture: "true").
	BypassDNS bool
	// UDPDrop applies the strict UDP policy to this pod whatever the
	// node's.
	UDPDrop bool
}

func (p Policy) flags() uint16 {
	f := maps.EndpointPod
	if p.BypassInbound {
		f |= maps.EndpointBypassInbound
	}
	if p.BypassDNS {
		f |= maps.EndpointBypassDNS
	}
	if p.UDPDrop {
		f |= maps.EndpointUDPDrop
	}
	return f
}

// String lists the policy's settings, for logs.
func (p Policy) String() string {
	var s []string
	if p.BypassInbound {
		s = append(s, "bypass-inbound-capture")
	}
	if p.BypassDNS {
		s = append(s, "bypass-dns-capture")
	}
	if p.UDPDrop {
		s = append(s, "udp=drop")
	}
	return strings.Join(s, ",")
}

// podEntry is the entry of a pod's address: ep's pod part, the roles cur
// already has.
func podEntry(cur, ep maps.Endpoint) maps.Endpoint {
	ep.Flags = ep.Flags&podFlags | cur.Flags&roleFlags
	return ep
}

// putPod writes the pod part of addr's entry, keeping its other roles. It
// reports whether the entry changed.
func (d *Dataplane) putPod(addr netip.Addr, ep maps.Endpoint) (bool, error) {
	cur, err := d.maps.Endpoints.Get(addr)
	if err != nil && !errors.Is(err, maps.ErrNotFound) {
		return false, err
	}
	next := podEntry(cur, ep)
	if err == nil && next == cur {
		return false, nil
	}
	return true, d.maps.Endpoints.Put(addr, next)
}

// putPods writes the pod part of each address's entry and returns the
// addresses whose entry it changed: clearPods(put) takes back what this call
// wrote, not what was there before it. On error it has taken back its own
// writes.
func (d *Dataplane) putPods(addrs []netip.Addr, ep maps.Endpoint) (put []netip.Addr, err error) {
	for _, ip := range addrs {
		changed, err := d.putPod(ip, ep)
		if err != nil {
			d.clearPods(put)
			return nil, err
		}
		if changed {
			put = append(put, ip)
		}
	}
	return put, nil
}

// clearPods undoes putPods: a best-effort clearPod of each address, for a
// failed enroll (the error that made it fail is the one to report).
func (d *Dataplane) clearPods(addrs []netip.Addr) {
	for _, ip := range addrs {
		d.clearPod(ip)
	}
}

// clearPod removes the pod part of addr's entry, and the entry with it
// unless another role keeps it.
func (d *Dataplane) clearPod(addr netip.Addr) error {
	cur, err := d.maps.Endpoints.Get(addr)
	if errors.Is(err, maps.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if cur.Flags&roleFlags == 0 {
		return d.maps.Endpoints.Delete(addr)
	}
	return d.maps.Endpoints.Put(addr, maps.Endpoint{Flags: cur.Flags & roleFlags})
}

// setRole makes addrs exactly the addresses with role: it is added to each
// of them and taken from every other entry.
func (d *Dataplane) setRole(role uint16, addrs []netip.Addr) (added, removed []netip.Addr, err error) {
	all, err := d.maps.Endpoints.All()
	if err != nil {
		return nil, nil, err
	}
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		want[a.Unmap()] = true
	}
	var errs []error
	for a, ep := range all {
		if ep.Flags&role == 0 || want[a] {
			continue
		}
		ep.Flags &^= role
		if ep.Flags == 0 {
			err = d.maps.Endpoints.Delete(a)
		} else {
			err = d.maps.Endpoints.Put(a, ep)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, a)
	}
	for a := range want {
		ep := all[a]
		if ep.Flags&role != 0 {
			continue
		}
		ep.Flags |= role
		if err := d.maps.Endpoints.Put(a, ep); err != nil {
			errs = append(errs, err)
			continue
		}
		added = append(added, a)
	}
	slices.SortFunc(added, netip.Addr.Compare)
	slices.SortFunc(removed, netip.Addr.Compare)
	return added, removed, errors.Join(errs...)
}

// SetNodeAddresses makes addrs the node's own addresses: a pod's TCP to one
// of them passes when it answers a connection the node opened (a probe's
// reply), and is captured otherwise. Every address the node's connections
// to pods can leave with belongs here: its host IPs, and a CNI's gateway
// on a bridge or on each host veth. NodeAddresses lists them.
func (d *Dataplane) SetNodeAddresses(addrs []netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	added, removed, err := d.setRole(maps.EndpointNode, addrs)
	if len(added)+len(removed) > 0 {
		d.log.Info("set node addresses", "addresses", addrs, "added", added, "removed", removed)
	}
	if err != nil {
		return fmt.Errorf("set node addresses: %w", err)
	}
	return nil
}

// SetResolvers makes addrs the DNS resolvers that pods may still query
// under the strict UDP policy.
func (d *Dataplane) SetResolvers(addrs []netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	added, removed, err := d.setRole(maps.EndpointResolver, addrs)
	if len(added)+len(removed) > 0 {
		d.log.Info("set DNS resolvers", "resolvers", addrs, "added", added, "removed", removed)
	}
	if err != nil {
		return fmt.Errorf("set DNS resolvers: %w", err)
	}
	return nil
}

// NodeAddresses lists the node's own addresses as its netns shows them:
// every address of every interface, but loopback, link-local (a pod never
// reaches a link-local address of another link) and the Service addresses
// that kube-proxy's IPVS mode puts on its dummy interface (those are not
// the node's, and none of their connections is the node's own).
func (d *Dataplane) NodeAddresses() ([]netip.Addr, error) {
	links, err := d.nl.links()
	if err != nil {
		return nil, fmt.Errorf("list the node's addresses in %s: %w", d.nl, err)
	}
	var addrs []address
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		a, err := d.nl.addresses(family)
		if err != nil {
			return nil, fmt.Errorf("list the node's addresses in %s: %w", d.nl, err)
		}
		addrs = append(addrs, a...)
	}
	skip := map[int]bool{}
	for _, l := range links {
		if l.flags&unix.IFF_LOOPBACK != 0 || l.name == "kube-ipvs0" {
			skip[l.index] = true
		}
	}
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, a := range addrs {
		ip := a.ip
		if skip[a.index] || a.scope == unix.RT_SCOPE_HOST {
			continue
		}
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() || seen[ip] {
			continue
		}
		seen[ip] = true
		out = append(out, ip)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// WatchNode calls changed after every change of an address or a link of
// the node's netns, until ctx ends: the caller reads the node's addresses
// and relay ports again (NodeAddresses, RelayPorts). It returns once the
// subscriptions are in place.
func (d *Dataplane) WatchNode(ctx context.Context, changed func()) error {
	// One socket in the groups of link and address notifications. Its
	// messages are not decoded: any of them means "read again", and one
	// that the library could not decode must not stop the watch.
	c, err := d.nl.subscribe(unix.RTNLGRP_LINK, unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR)
	if err != nil {
		return fmt.Errorf("subscribe to the node's address and link changes: %w", err)
	}
	// Closing the socket at the end makes its read fail, and the goroutine
	// return.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	go func() {
		defer c.Close()
		defer stop()
		for {
			msgs, err := c.Receive()
			if err != nil {
				if ctx.Err() == nil {
					d.log.Warn("updates from the node's netns stopped; the node is read again at every resync only", "error", err)
				}
				return
			}
			if len(msgs) > 0 {
				changed()
			}
		}
	}()
	return nil
}

// RelayPorts lists the UDP ports on which the node decapsulates and
// forwards: those of its VXLAN and Geneve devices and of its FOU
// receivers. Their traffic is an overlay's, and a pod's datagram to one of
// them would have the node forward whatever it carries past ztunnel.
// (bareudp devices are not read: neither the netlink library in use nor
// this package decodes them.)
func (d *Dataplane) RelayPorts() ([]uint16, error) {
	links, err := d.nl.links()
	if err != nil {
		return nil, fmt.Errorf("list the node's links in %s: %w", d.nl, err)
	}
	set := map[uint16]bool{}
	for _, l := range links {
		set[l.udpPort] = true
	}
	// FOU receivers are listed over generic netlink. A failure there (the
	// fou family exists, but does not answer) costs their ports only, as
	// it always did.
	if ports, err := d.nl.fouPorts(); err != nil {
		d.log.Warn("could not list the node's FOU receivers; their ports are not relay ports", "error", err)
	} else {
		for _, p := range ports {
			set[p] = true
		}
	}
	delete(set, 0)
	out := make([]uint16, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

// SetRelayPorts makes ports the node's relay ports (see RelayPorts).
func (d *Dataplane) SetRelayPorts(ports []uint16) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cur, err := d.maps.Relays.Get()
	if err != nil {
		return err
	}
	if slices.Equal(cur, ports) {
		return nil
	}
	if err := d.maps.Relays.Set(ports); err != nil {
		return err
	}
	d.log.Info("set the node's tunnel ports", "udp_ports", ports)
	return nil
}
