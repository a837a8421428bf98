package resolve

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/nsrun"
)

// ErrNotFound says that what was looked for is not there (yet). From
// Resolve: no route to one of the pod's IPs leads to a device of this node
// (no route at all, an unreachable, prohibit or blackhole route, only the
// default route, a route via a gateway), no bridge port's peer holds it, or
// the veth, its peer or the pod's netns went down or away while they were
// read. A pod still being set up or already deleted looks like this; the
// caller retries. From NetnsPath: no bind mount or process is in the netns.
var ErrNotFound = errors.New("not found")

// ErrNotVeth says that the route to a pod IP leads to an interface that is
// not a pod's veth: a device of another type (a dummy, a NIC, an OVS port,
// the IP being the node's own), a veth whose peer is in the node's own netns,
// or a veth whose peer's netns does not hold the IP. Retrying will not help:
// the node's wiring is not one this package understands.
var ErrNotVeth = errors.New("not a pod veth")

// ErrMismatch says that a pod's IPs lead to different interfaces.
var ErrMismatch = errors.New("pod IPs lead to different interfaces")

// How Resolve found an interface (Interface.Via).
const (
	// ViaRoute: the node's route to every pod IP has the veth as its
	// output device (ptp-style CNIs: ptp, Calico, Cilium, AWS VPC CNI).
	ViaRoute = "route"
	// ViaPeerAddress: some pod IP is routed to a bridge, and the veth is
	// the bridge port whose peer's netns holds that IP (bridge CNIs:
	// bridge, flannel).
	ViaPeerAddress = "peer-address"
)

// Config configures New.
type Config struct {
	// NodeNetns is a path to the node's network namespace (a bind mount,
	// /proc/1/ns/net with hostPID, ...). Empty means the netns of the
	// calling thread when New is called.
	NodeNetns string
	// NetnsDirs are the directories NetnsPath searches first, for bind
	// mounts of network namespaces. Nil means /var/run/netns and
	// /run/netns; an empty, non-nil slice searches none.
	NetnsDirs []string
	// ProcDir is the procfs NetnsPath searches for /<pid>/ns/net; empty
	// means /proc. It must show the node's processes (hostPID).
	ProcDir string
}

// DefaultNetnsDirs are the directories NetnsPath searches when
// Config.NetnsDirs is nil: where `ip netns` and container runtimes bind
// mount named network namespaces.
var DefaultNetnsDirs = []string{"/var/run/netns", "/run/netns"}

// Interface is where a pod is on the node.
type Interface struct {
	// Ifindex is the host-side veth's index in the node's netns.
	Ifindex int
	// Name is the host-side veth's name.
	Name string
	// PeerIfindex is the index of the pod's end of the veth (its eth0) in
	// the pod's netns.
	PeerIfindex int
	// PeerMAC is the MAC address of the pod's end: the destination MAC
	// of frames delivered into the pod.
	PeerMAC net.HardwareAddr
	// PeerNetnsID is the id the node's netns gives the pod's netns
	// (IFLA_LINK_NETNSID); NetnsPath turns it into a path.
	PeerNetnsID int
	// Via says how the interface was found: ViaRoute or ViaPeerAddress
	// (if any of the pod's IPs needed the bridge fallback).
	Via string
}

// Resolver finds pods' interfaces in the node's netns. It is safe for
// concurrent use; its requests share one netlink socket, one at a time.
type Resolver struct {
	conn      *netlink.Conn
	netnsDirs []string
	procDir   string

	mu     sync.Mutex
	closed bool

	// pathMu serializes NetnsPath, which owns nsids: its cache of the ids
	// of the namespaces it has seen, by inode.
	pathMu sync.Mutex
	nsids  map[nsKey]int
}

// New opens a Resolver on the node's netns. It needs CAP_NET_ADMIN (and
// CAP_SYS_ADMIN to open another netns than the caller's) and Linux 4.20 or
// later (strict rtnetlink checking, IFA_TARGET_NETNSID).
func New(cfg Config) (*Resolver, error) {
	var nsfd int
	if cfg.NodeNetns != "" {
		f, err := nsrun.Open(cfg.NodeNetns)
		if err != nil {
			return nil, fmt.Errorf("node netns: %w", err)
		}
		defer f.Close()
		nsfd = int(f.Fd())
	}
	conn, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{
		NetNS: nsfd,
		// Extended acks (the kernel's reason travels up in
		// *netlink.OpError) and NETLINK_GET_STRICT_CHK, which the
		// target netns id of an address dump needs (see rtnl.go).
		Strict: true,
		// Receive into one buffer instead of peeking at each message's
		// size first: a syscall less per reply. Replies here are far
		// smaller (links without stats or VFs; dumps come in skbs of at
		// most 32 KiB, netlink_recvmsg).
		MessageBufferSize: 1 << 16,
	})
	if err != nil {
		where := "the caller's netns"
		if cfg.NodeNetns != "" {
			where = cfg.NodeNetns
		}
		if errors.Is(err, unix.ENOPROTOOPT) {
			err = fmt.Errorf("%w (strict checking needs Linux 4.20+)", err)
		}
		return nil, fmt.Errorf("open rtnetlink in %s: %w", where, err)
	}
	r := &Resolver{
		conn:      conn,
		netnsDirs: cfg.NetnsDirs,
		procDir:   cfg.ProcDir,
		nsids:     map[nsKey]int{},
	}
	if r.netnsDirs == nil {
		r.netnsDirs = slices.Clone(DefaultNetnsDirs)
	}
	if r.procDir == "" {
		r.procDir = "/proc"
	}
	return r, nil
}

// Close releases the Resolver's socket. Calls after Close fail.
func (r *Resolver) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	return r.conn.Close()
}

func (r *Resolver) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// Resolve finds the host-side veth of the pod with the IPs ips (all of
// status.podIPs, IPv4 and IPv6) and the MAC of the pod's end.
//
// Each IP's route is looked up as the node's FIB has it. A route whose
// output device is a veth gives that veth; a route to a bridge gives the
// bridge port whose peer's netns holds the IP. Either way the veth's peer
// must be in another netns that holds the IP, and every IP must lead to the
// same veth. The errors wrap ErrNotFound (the caller should retry later),
// ErrNotVeth or ErrMismatch, or are failures of the requests themselves;
// all name the pod's IPs.
func (r *Resolver) Resolve(ips []netip.Addr) (Interface, error) {
	norm, err := normalize(ips)
	if err != nil {
		return Interface{}, fmt.Errorf("resolve pod %v: %w", ips, err)
	}
	iface, err := r.resolve(norm)
	if err != nil {
		return Interface{}, fmt.Errorf("resolve pod %s: %w", podName(norm), err)
	}
	return iface, nil
}

func (r *Resolver) resolve(ips []netip.Addr) (Interface, error) {
	if r.isClosed() {
		return Interface{}, errors.New("resolver closed")
	}
	// Step 1: each IP's route, to a veth or a bridge. Links are read once
	// per resolve (a dual-stack pod's two routes share one).
	links := map[int]link{}
	getNodeLink := func(index int) (link, error) {
		if l, ok := links[index]; ok {
			return l, nil
		}
		l, err := getLink(r.conn, index, -1)
		if err != nil {
			return link{}, err
		}
		links[index] = l
		return l, nil
	}
	vethOf := make([]link, len(ips))
	bridgeOf := map[netip.Addr]link{}
	var miss missing
	for i, ip := range ips {
		l, err := r.routeLink(ip, getNodeLink)
		var m *missing
		switch {
		case errors.As(err, &m):
			miss.reasons = append(miss.reasons, m.reasons...)
			continue
		case err != nil:
			return Interface{}, err // a lasting error wins over one that may pass
		}
		if l.kind == "bridge" {
			bridgeOf[ip] = l
			continue
		}
		vethOf[i] = l
	}
	if len(miss.reasons) > 0 {
		return Interface{}, &miss
	}

	// Step 2: the peers' netns must hold the IPs. A route-found veth is
	// checked against its own peer; a bridge is searched port by port.
	cache := resolveCache{r: r, cache: map[int]map[netip.Addr]bool{}}
	via := ViaRoute
	for i, ip := range ips {
		if br, ok := bridgeOf[ip]; ok {
			l, err := r.bridgePortHolding(ip, br, &cache)
			if err != nil {
				return Interface{}, err
			}
			vethOf[i] = l
			via = ViaPeerAddress
			continue
		}
		l := vethOf[i]
		holds, err := cache.holds(l.peerNsid, ip)
		if err != nil {
			if gone(err) {
				return Interface{}, notFound("the netns of the peer of %s (id %d) is gone (%v)", l.name, l.peerNsid, err)
			}
			return Interface{}, fmt.Errorf("list addresses of the peer of %s (netns id %d): %w", l.name, l.peerNsid, err)
		}
		if !holds {
			// A pod being deleted looks like this for a moment: its veth
			// pair goes down (which takes eth0's IPv6 addresses,
			// addrconf_ifdown) before it is unlisted and its routes go
			// (unregister_netdevice_many). Only a peer that is still
			// there and up says that the IP is not the pod's.
			if p, err := getLink(r.conn, l.peer, l.peerNsid); gone(err) || err == nil && !p.up {
				return Interface{}, notFound("route to %s leads to veth %s, whose peer (ifindex %d in netns id %d) is down or gone, without %s", ip, l.name, l.peer, l.peerNsid, ip)
			}
			return Interface{}, fmt.Errorf("route to %s leads to veth %s, but its peer's netns (id %d) does not hold %s: %w",
				ip, l.name, l.peerNsid, ip, ErrNotVeth)
		}
	}

	// Step 3: one veth for all.
	first := vethOf[0]
	for i := 1; i < len(ips); i++ {
		if l := vethOf[i]; l.index != first.index {
			return Interface{}, fmt.Errorf("%s leads to %s (ifindex %d), %s to %s (ifindex %d): %w",
				ips[0], first.name, first.index, ips[i], l.name, l.index, ErrMismatch)
		}
	}

	// Step 4: the pod's end, read in its netns by id.
	peer, err := getLink(r.conn, first.peer, first.peerNsid)
	if err != nil {
		if gone(err) {
			return Interface{}, notFound("the peer of %s (ifindex %d in netns id %d) is gone (%v)", first.name, first.peer, first.peerNsid, err)
		}
		return Interface{}, fmt.Errorf("read the peer of %s (ifindex %d in netns id %d): %w", first.name, first.peer, first.peerNsid, err)
	}
	if len(peer.mac) != 6 {
		return Interface{}, fmt.Errorf("the peer of %s (%s in netns id %d) has no Ethernet MAC (%v)", first.name, peer.name, first.peerNsid, peer.mac)
	}
	return Interface{
		Ifindex:     first.index,
		Name:        first.name,
		PeerIfindex: first.peer,
		PeerMAC:     peer.mac,
		PeerNetnsID: first.peerNsid,
		Via:         via,
	}, nil
}

// routeLink returns the device the node's route to ip leads to, if it is a
// veth with a peer in another netns or a bridge; otherwise an error wrapping
// ErrNotFound or ErrNotVeth.
func (r *Resolver) routeLink(ip netip.Addr, getNodeLink func(int) (link, error)) (link, error) {
	rt, err := getRoute(r.conn, ip)
	if err != nil {
		if what := noRoute(err); what != "" {
			return link{}, notFound("%s to %s (%v)", what, ip, err)
		}
		return link{}, fmt.Errorf("look up the route to %s: %w", ip, err)
	}
	// Routes that say the IP is not on a link of this node: a pod being
	// added or deleted looks like this on a node with a default route or
	// routes to other nodes' pod CIDRs (and, with Calico, a blackhole
	// route for the node's own block, which the lookup reports as an
	// error above).
	switch {
	case rt.typ == unix.RTN_UNICAST && rt.dst.Bits() == 0:
		return link{}, notFound("no route to %s but the default route", ip)
	case rt.typ == unix.RTN_UNICAST && rt.gateway.IsValid():
		dev := fmt.Sprintf("ifindex %d", rt.oif)
		if l, err := getNodeLink(rt.oif); err == nil {
			dev = l.name
		}
		return link{}, notFound("route to %s is %s via gateway %s on %s, off this node", ip, rt.dst, rt.gateway, dev)
	case rt.typ == unix.RTN_UNICAST && rt.multipath:
		return link{}, notFound("route to %s is %s over several next hops, off this node", ip, rt.dst)
	case rt.typ == unix.RTN_UNREACHABLE || rt.typ == unix.RTN_BLACKHOLE || rt.typ == unix.RTN_PROHIBIT || rt.typ == unix.RTN_THROW:
		// The kernel fails the lookup instead (noRoute); kept in case a
		// kernel answers with the route.
		return link{}, notFound("route to %s is %s, %s", ip, rt.dst, routeType(rt.typ))
	}
	if rt.oif == 0 {
		if rt.nhid != 0 {
			// Only without net.ipv4.nexthop_compat_mode does the FIB
			// answer leave out the nexthop object's device.
			return link{}, fmt.Errorf("route to %s is %s via nexthop object %d, whose device the kernel did not report (is net.ipv4.nexthop_compat_mode 0?): %w", ip, rt.dst, rt.nhid, ErrNotVeth)
		}
		return link{}, fmt.Errorf("route to %s is %s, %s with no output device: %w", ip, rt.dst, routeType(rt.typ), ErrNotVeth)
	}
	l, err := getNodeLink(rt.oif)
	if err != nil {
		if gone(err) {
			return link{}, notFound("route to %s leads to ifindex %d, now gone", ip, rt.oif)
		}
		return link{}, fmt.Errorf("read ifindex %d, the route to %s: %w", rt.oif, ip, err)
	}
	if rt.typ == unix.RTN_LOCAL {
		return link{}, fmt.Errorf("%s is an address of the node (on %s): %w", ip, l.name, ErrNotVeth)
	}
	if rt.typ != unix.RTN_UNICAST {
		return link{}, fmt.Errorf("route to %s is %s, %s on %s: %w", ip, rt.dst, routeType(rt.typ), l.name, ErrNotVeth)
	}
	switch l.kind {
	case "bridge":
		return l, nil
	case "veth":
		if l.peerNsid < 0 {
			return link{}, fmt.Errorf("route to %s leads to veth %s, whose peer is in the node's own netns: %w", ip, l.name, ErrNotVeth)
		}
		return l, nil
	default:
		return link{}, fmt.Errorf("route to %s leads to %s, %s: %w", ip, l.name, l.describe(), ErrNotVeth)
	}
}

// bridgePortHolding returns the veth enslaved to br whose peer's netns holds
// ip: how bridge CNIs' pods are found, whose IPs the node routes to the
// bridge as a whole.
func (r *Resolver) bridgePortHolding(ip netip.Addr, br link, cache *resolveCache) (link, error) {
	ports, err := cache.ports(br.index)
	if err != nil {
		return link{}, fmt.Errorf("list the ports of bridge %s: %w", br.name, err)
	}
	var found []link
	for _, p := range ports {
		if p.kind != "veth" || p.peerNsid < 0 {
			continue
		}
		holds, err := cache.holds(p.peerNsid, ip)
		if err != nil {
			if gone(err) {
				continue // that pod is going away
			}
			return link{}, fmt.Errorf("list addresses of the peer of %s (netns id %d): %w", p.name, p.peerNsid, err)
		}
		if holds {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 0:
		return link{}, notFound("route to %s leads to bridge %s, and no veth on it has a peer whose netns holds %s", ip, br.name, ip)
	case 1:
		return found[0], nil
	default:
		names := make([]string, len(found))
		for i, p := range found {
			names[i] = p.name
		}
		return link{}, fmt.Errorf("route to %s leads to bridge %s, where the peers of %s all hold %s", ip, br.name, strings.Join(names, ", "), ip)
	}
}

// resolveCache holds what one Resolve has read of the peers' namespaces'
// addresses (by netns id and family) and of bridges' ports, so that each is
// read at most once per resolve and never reused by another.
type resolveCache struct {
	r       *Resolver
	cache   map[int]map[netip.Addr]bool // nsid -> addresses, of the families asked for so far
	fetched map[[2]int]bool             // {nsid, family} listed
	bridges map[int][]link
}

func (h *resolveCache) holds(nsid int, ip netip.Addr) (bool, error) {
	family := uint8(unix.AF_INET)
	if ip.Is6() {
		family = unix.AF_INET6
	}
	if h.fetched == nil {
		h.fetched = map[[2]int]bool{}
	}
	key := [2]int{nsid, int(family)}
	if !h.fetched[key] {
		addrs, err := addresses(h.r.conn, nsid, family)
		if err != nil {
			return false, err
		}
		set := h.cache[nsid]
		if set == nil {
			set = map[netip.Addr]bool{}
			h.cache[nsid] = set
		}
		for _, a := range addrs {
			set[a] = true
		}
		h.fetched[key] = true
	}
	return h.cache[nsid][ip], nil
}

func (h *resolveCache) ports(bridge int) ([]link, error) {
	if p, ok := h.bridges[bridge]; ok {
		return p, nil
	}
	p, err := bridgePorts(h.r.conn, bridge)
	if err != nil {
		return nil, err
	}
	if h.bridges == nil {
		h.bridges = map[int][]link{}
	}
	h.bridges[bridge] = p
	return p, nil
}

// missing says why a pod's interface is not found (yet), one reason per
// IP, and wraps ErrNotFound.
type missing struct{ reasons []string }

func notFound(format string, args ...any) error {
	return &missing{reasons: []string{fmt.Sprintf(format, args...)}}
}

func (m *missing) Error() string { return strings.Join(m.reasons, "; ") + ": " + ErrNotFound.Error() }
func (m *missing) Unwrap() error { return ErrNotFound }

// noRoute says what a route lookup that failed found, if it failed because
// the FIB has no usable route, or "". The kernel answers a lookup that hits
// an unreachable, prohibit or blackhole route with that route's error
// (fib_props[type].error; ip6_route_output's dst.error): EHOSTUNREACH,
// EACCES and EINVAL. A request the kernel refuses as malformed gets EINVAL
// too, but with an extended ack message; a blackhole's has none.
func noRoute(err error) string {
	switch {
	case errors.Is(err, unix.ENETUNREACH):
		return "no route"
	case errors.Is(err, unix.EHOSTUNREACH):
		return "an unreachable route"
	case errors.Is(err, unix.EACCES):
		return "a prohibit route"
	case errors.Is(err, unix.EINVAL):
		var oe *netlink.OpError
		if errors.As(err, &oe) && oe.Message == "" {
			return "a blackhole route"
		}
	}
	return ""
}

// gone reports whether a request failed because its object went away: the
// interface (ENODEV) or the netns id (EINVAL from rtnl_get_net_ns_capable: a
// pod's netns loses its id before its veth is deleted, cleanup_net). An
// address dump says so in its extended ack ("ipv4: Invalid target network
// namespace id"); RTM_GETLINK says nothing. Other EINVALs, a request the
// kernel refuses as malformed, come with another message and are not this.
func gone(err error) bool {
	if errors.Is(err, unix.ENODEV) {
		return true
	}
	var oe *netlink.OpError
	return errors.Is(err, unix.EINVAL) && errors.As(err, &oe) &&
		(oe.Message == "" || strings.Contains(oe.Message, "target network namespace id"))
}

// normalize checks ips and returns them unmapped, deduplicated, IPv4 first.
func normalize(ips []netip.Addr) ([]netip.Addr, error) {
	if len(ips) == 0 {
		return nil, errors.New("no pod IPs")
	}
	out := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		if !ip.IsValid() {
			return nil, fmt.Errorf("invalid pod IP in %v", ips)
		}
		ip = ip.Unmap().WithZone("")
		if !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	slices.SortStableFunc(out, func(a, b netip.Addr) int {
		switch {
		case a.Is4() && !b.Is4():
			return -1
		case !a.Is4() && b.Is4():
			return 1
		}
		return 0
	})
	return out, nil
}

// podName names a pod by its IPs in error messages.
func podName(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(s, ",")
}
