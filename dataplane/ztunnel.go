package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"

	"github.com/jsimonetti/rtnetlink/v2"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/tc"
)

// Ztunnel is the node's proxy, as the dataplane needs it.
type Ztunnel struct {
	// Name says which pod it is in logs ("namespace/name").
	Name string
	// Netns is the path of its network namespace.
	Netns string
	// HostIfindex is the index of its host-side veth in the node's netns.
	HostIfindex int
	// IPs are its pod addresses: packets to them were not captured.
	IPs []netip.Addr
	// Interface is its interface towards the node; empty means "eth0".
	Interface string
}

func (z Ztunnel) iface() string {
	if z.Interface == "" {
		return "eth0"
	}
	return z.Interface
}

// SetZtunnel makes z the node's ztunnel: its netns gets the policy routing
// for marked packets and the ztunnel_assign program, its host veth the
// ztunnel_ingress and ztunnel_egress programs, and the ztunnel map its
// interface, MAC, IPs and netns id. A previous ztunnel's host veth loses
// its programs. The ready flag is kept as it was: call SetZtunnelReady when
// ztunnel is ready.
func (d *Dataplane) SetZtunnel(z Ztunnel) error {
	d.mu.Lock()
	defer d.mu.Unlock()

	if z.Netns == "" || z.HostIfindex <= 0 {
		return fmt.Errorf("set ztunnel %s: its netns and host interface are needed", z.Name)
	}
	mac, err := setupZtunnelNetns(d.cfg.sysctls(), z)
	if err != nil {
		return fmt.Errorf("set ztunnel %s: %w", z.Name, err)
	}
	inner, err := tc.New(d.cfg.tcConfig(z.Netns))
	if err != nil {
		return fmt.Errorf("set ztunnel %s: open tc manager in its netns: %w", z.Name, err)
	}
	defer inner.Close()
	innerIfindex, err := interfaceIndex(z.Netns, z.iface())
	if err != nil {
		return fmt.Errorf("set ztunnel %s: %w", z.Name, err)
	}
	if err := d.attach(inner, innerIfindex, tc.Ingress, mrasm.ZtunnelAssign); err != nil {
		return fmt.Errorf("set ztunnel %s: %w", z.Name, err)
	}
	for _, zp := range ztunnelPrograms {
		if err := d.attach(d.node, z.HostIfindex, zp.dir, zp.name); err != nil {
			return fmt.Errorf("set ztunnel %s: %w", z.Name, err)
		}
	}
	if err := d.allowForeignSource(z.HostIfindex); err != nil {
		d.log.Warn("could not turn reverse path filtering off on ztunnel's host veth", "ztunnel", z.Name, "error", err)
	}

	prev, err := d.maps.Ztunnel.Get()
	if err != nil {
		return err
	}
	entry := maps.Ztunnel{Ifindex: uint32(z.HostIfindex), Flags: prev.Flags & maps.ZtunnelReady}
	if entry.MAC, err = maps.MAC(mac); err != nil {
		return fmt.Errorf("set ztunnel %s: %w", z.Name, err)
	}
	entry.Flags |= d.configFlags()
	// ztunnel's netns as the node's knows it: the peer netns id of its
	// host veth, which the kernel allocates when a link's peer lives
	// elsewhere. The app programs look up ztunnel's sockets by it.
	if host, err := d.nl.link(z.HostIfindex); err != nil {
		return fmt.Errorf("set ztunnel %s: find host interface %d: %w", z.Name, z.HostIfindex, err)
	} else if id := host.peerNsid; id >= 0 {
		entry.NetnsID = uint32(id)
		entry.Flags |= maps.ZtunnelNetnsID
	} else {
		d.log.Warn("ztunnel's host veth has no peer netns id: the node's replies to ztunnel's connections made with a pod's address will reach the pod instead",
			"ztunnel", z.Name, "interface", host.name)
	}
	for _, ip := range z.IPs {
		if ip.Is4() || ip.Is4In6() {
			entry.IPv4 = ip.As16()
		} else {
			entry.IPv6 = ip.As16()
		}
	}
	if err := d.maps.Ztunnel.Set(entry); err != nil {
		return err
	}

	// The previous ztunnel's veth, if it still exists, is ztunnel's no more.
	if old := d.ztunnel.HostIfindex; old != 0 && old != z.HostIfindex {
		for _, zp := range ztunnelPrograms {
			if err := d.node.Detach(old, zp.dir); err != nil && !isGone(err) {
				d.log.Warn("could not detach from the previous ztunnel's veth", "ifindex", old, "error", err)
			}
		}
	}
	d.ztunnel = z
	d.log.Info("set ztunnel", "ztunnel", z.Name, "host_ifindex", z.HostIfindex, "mac", mac.String(), "ips", z.IPs,
		"netns_id", int32(entry.NetnsID), "netns_id_known", entry.Flags&maps.ZtunnelNetnsID != 0)
	return nil
}

// ztunnelPrograms are attached to ztunnel's host veth.
var ztunnelPrograms = []struct {
	name string
	dir  tc.Direction
}{
	{mrasm.ZtunnelIngress, tc.Ingress},
	{mrasm.ZtunnelEgress, tc.Egress},
}

// SetZtunnelReady sets or clears the ready flag. Without it, captured
// traffic is dropped (or, with Config.FailOpen, passed).
func (d *Dataplane) SetZtunnelReady(ready bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	zt, err := d.maps.Ztunnel.Get()
	if err != nil {
		return err
	}
	zt.Flags = zt.Flags&maps.ZtunnelNetnsID | d.configFlags()
	if ready {
		if zt.Ifindex == 0 {
			return errors.New("set ztunnel ready: no ztunnel was set")
		}
		zt.Flags |= maps.ZtunnelReady
	}
	if err := d.maps.Ztunnel.Set(zt); err != nil {
		return err
	}
	d.log.Info("set ztunnel ready", "ready", ready)
	return nil
}

// SetCaptureDNS turns DNS capture on or off while running: with it, pods'
// DNS (UDP and TCP to port 53) goes to ztunnel's port 15053.
func (d *Dataplane) SetCaptureDNS(on bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cfg.CaptureDNS = on
	if err := d.writeConfigFlags(); err != nil {
		return err
	}
	d.log.Info("set DNS capture", "on", on)
	return nil
}

// writeConfigFlags writes the configuration's flags (DNS capture, strict
// UDP, fail open) into the ztunnel map, keeping what SetZtunnel and
// SetZtunnelReady set: the in-pod programs read them from there, and no
// SetZtunnel comes in in-pod mode.
func (d *Dataplane) writeConfigFlags() error {
	zt, err := d.maps.Ztunnel.Get()
	if err != nil {
		return err
	}
	zt.Flags = zt.Flags&(maps.ZtunnelReady|maps.ZtunnelNetnsID) | d.configFlags()
	return d.maps.Ztunnel.Set(zt)
}

func (d *Dataplane) configFlags() uint16 {
	var f uint16
	if d.cfg.CaptureDNS {
		f |= maps.ZtunnelCaptureDNS
	}
	if d.cfg.FailOpen {
		f |= maps.ZtunnelFailOpen
	}
	if d.cfg.StrictUDP {
		f |= maps.ZtunnelUDPDrop
	}
	return f
}

// setupZtunnelNetns installs, in ztunnel's netns, what delivers a marked
// packet to a local socket whatever its destination address, and turns off
// reverse path filtering (a captured packet's source is routed elsewhere),
// forwarding and TIME_WAIT.
// It returns the MAC of ztunnel's interface. Repeating it changes nothing.
func setupZtunnelNetns(sys sysctlDir, z Ztunnel) (net.HardwareAddr, error) {
	h, err := openNetns(z.Netns)
	if err != nil {
		return nil, err
	}
	defer h.Close()

	eth, err := h.linkByName(z.iface())
	if err != nil {
		return nil, fmt.Errorf("find %s in ztunnel's netns: %w", z.iface(), err)
	}
	lo, err := h.linkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo in ztunnel's netns: %w", err)
	}
	if err := ensureLocalDelivery(h, lo.index, "ztunnel's netns"); err != nil {
		return nil, err
	}
	if err := h.Do(func() error {
		// No forwarding: a netns starts with the host's ip_forward, and
		// ztunnel, a proxy, routes nothing (ztunnel_assign drops what
		// it cannot give a socket; this is the second line).
		//
		// No TIME_WAIT: ztunnel's side of a proxied connection lives here,
		// not in the pod's netns, so the pod's kernel cannot see that a
		// tuple is still held (in the pod's own netns connect() would
		// avoid it). A client that reuses the tuple within the minute
		// would meet the TIME_WAIT socket: the kernel drops a SYN given to
		// the listener while one holds its tuple (Linux 6.11+, the
		// duplicate request check), and given to the TIME_WAIT socket it
		// is answered with an ACK (a reset dance, or with tcp_rfc1337 no
		// answer at all). Timestamps (PAWS) still guard a new connection
		// against an old one's segments.
		return sys.write(map[string]string{
			"ipv4/conf/all/rp_filter":               "0",
			"ipv4/conf/" + z.iface() + "/rp_filter": "0",
			"ipv4/ip_forward":                       "0",
			"ipv6/conf/all/forwarding":              "0",
			"ipv4/tcp_max_tw_buckets":               "0",
		})
	}); err != nil {
		return nil, fmt.Errorf("set sysctls in ztunnel's netns: %w", err)
	}
	return eth.mac, nil
}

// ensureLocalDelivery installs, in the netns of h (named where in errors),
// what delivers a packet marked TProxyMark to a local socket whatever its
// destination address, for both families: the rule
// `fwmark TProxyMark/TProxyMask lookup TProxyTable` and the route
// `local default dev lo table TProxyTable`. Repeating it changes nothing.
func ensureLocalDelivery(h *nsLink, lo int, where string) error {
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if err := ensureMarkRule(h, fam, where); err != nil {
			return err
		}
		dst := netip.IPv4Unspecified()
		if fam == unix.AF_INET6 {
			dst = netip.IPv6Unspecified()
		}
		// `ip route replace local default dev lo table TProxyTable`,
		// protocol boot as ip's default.
		if err := h.replaceRoute(localDefault(fam, lo)); err != nil {
			return fmt.Errorf("add route local %s dev lo table %d in %s: %w", netip.PrefixFrom(dst, 0), mrasm.TProxyTable, where, err)
		}
	}
	return nil
}

// localDefault is the route `local default dev lo table TProxyTable`.
func localDefault(family uint8, lo int) *rtnetlink.RouteMessage {
	dst := netip.IPv4Unspecified()
	if family == unix.AF_INET6 {
		dst = netip.IPv6Unspecified()
	}
	return &rtnetlink.RouteMessage{
		Family:   family,
		Table:    mrasm.TProxyTable,
		Protocol: unix.RTPROT_BOOT,
		Scope:    unix.RT_SCOPE_HOST,
		Type:     unix.RTN_LOCAL,
		Attributes: rtnetlink.RouteAttributes{
			Dst:      dst.AsSlice(),
			OutIface: uint32(lo),
			Table:    mrasm.TProxyTable,
		},
	}
}

// markRule is the rule `fwmark TProxyMark/TProxyMask lookup TProxyTable`.
func markRule(family uint8) *rtnetlink.RuleMessage {
	mark, mask, table := uint32(mrasm.TProxyMark), uint32(mrasm.TProxyMask), uint32(mrasm.TProxyTable)
	return &rtnetlink.RuleMessage{
		Family:     family,
		Table:      mrasm.TProxyTable,
		Action:     unix.FR_ACT_TO_TBL,
		Attributes: &rtnetlink.RuleAttributes{FwMark: &mark, FwMask: &mask, Table: &table},
	}
}

// isMarkRule tells whether r is markRule's rule.
func isMarkRule(r rtnetlink.RuleMessage) bool {
	mark, mask := ruleMark(r)
	return mark == mrasm.TProxyMark && mask != nil && *mask == mrasm.TProxyMask && ruleTable(r) == mrasm.TProxyTable
}

// ensureMarkRule adds markRule's rule for family unless it is there.
func ensureMarkRule(h *nsLink, family uint8, where string) error {
	rules, err := h.rules(family)
	if err != nil {
		return fmt.Errorf("list rules in %s: %w", where, err)
	}
	for _, r := range rules {
		if isMarkRule(r) {
			return nil
		}
	}
	if err := h.addRule(markRule(family)); err != nil {
		return fmt.Errorf("add rule fwmark %#x/%#x lookup %d in %s: %w", mrasm.TProxyMark, mrasm.TProxyMask, mrasm.TProxyTable, where, err)
	}
	return nil
}

// allowForeignSource turns IPv4 reverse path filtering off for packets
// that enter the node from ztunnel's host veth: ztunnel sends with its
// clients' addresses as source (IP_TRANSPARENT), which the node routes
// through the clients' veths, so any reverse path check drops them. Even
// loose mode does: fib_validate_source fails a foreign source on an
// interface without an IPv4 address, which host veths never have.
//
// The kernel filters with the larger of conf/all and conf/<interface>, so
// zero on ztunnel's veth is not enough while "all" is not zero (systemd
// sets 2). Then every other interface, and "default" for those made later,
// first gets its own value raised to the old "all", and only then is "all"
// lowered: no interface but ztunnel's filters less than before.
func (d *Dataplane) allowForeignSource(ifindex int) error {
	l, err := d.nl.link(ifindex)
	if err != nil {
		return fmt.Errorf("find interface %d: %w", ifindex, err)
	}
	zt := l.name
	sys := d.cfg.sysctls()
	return d.nl.Do(func() error {
		all, err := sys.readInt("ipv4/conf/all/rp_filter")
		if err != nil {
			return err
		}
		if err := sys.write(map[string]string{"ipv4/conf/" + zt + "/rp_filter": "0"}); err != nil {
			return err
		}
		if all == 0 {
			return nil
		}
		entries, err := os.ReadDir(sys.path("ipv4/conf"))
		if err != nil {
			return err
		}
		raise := map[string]string{}
		for _, e := range entries {
			if e.Name() == "all" || e.Name() == zt {
				continue
			}
			key := "ipv4/conf/" + e.Name() + "/rp_filter"
			if v, err := sys.readInt(key); err == nil && v < all {
				raise[key] = strconv.Itoa(all)
			}
		}
		if err := sys.write(raise); err != nil {
			return err
		}
		if err := sys.write(map[string]string{"ipv4/conf/all/rp_filter": "0"}); err != nil {
			return err
		}
		d.log.Info("lowered net.ipv4.conf.all.rp_filter to 0 so that ztunnel's veth alone stops filtering; the other interfaces keep their effective value",
			"previous_all", all, "raised", len(raise), "ztunnel_veth", zt)
		return nil
	})
}
