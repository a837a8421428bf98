package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/tc"
)

// Pod is an ambient pod of this node, as the dataplane needs it.
type Pod struct {
	// Name says which pod it is in logs and errors ("namespace/name").
	Name string
	// IPs are all of its addresses (dual stack: one of each family).
	IPs []netip.Addr
	// HostIfindex is the index of its host-side veth in the node's netns.
	HostIfindex int
	// Netns is the path of its network namespace, where its eth0 MAC is
	// read. Not needed when MAC is set.
	Netns string
	// MAC is its eth0 address; empty means read it in Netns.
	MAC net.HardwareAddr
	// Policy is its own capture policy, from its annotations.
	Policy Policy
}

func (p Pod) String() string {
	if p.Name != "" {
		return p.Name
	}
	return fmt.Sprintf("pod on ifindex %d", p.HostIfindex)
}

func (p Pod) validate() error {
	if len(p.IPs) == 0 {
		return fmt.Errorf("pod %s: no IP", p)
	}
	for _, ip := range p.IPs {
		if !ip.IsValid() {
			return fmt.Errorf("pod %s: invalid IP", p)
		}
	}
	if p.HostIfindex <= 0 {
		return fmt.Errorf("pod %s: no host interface", p)
	}
	if p.MAC == nil && p.Netns == "" {
		return fmt.Errorf("pod %s: neither its MAC nor its network namespace is known", p)
	}
	return nil
}

// ErrInterfaceGone is wrapped by errors of an enrolment whose pod interface
// does not exist (any more): the pod is being deleted, or not yet wired.
var ErrInterfaceGone = errors.New("pod interface is gone")

// testHookBeforeAttach, set by tests only, runs between an enrolment's map
// writes and its attachments: a test removes the pod's interface there.
var testHookBeforeAttach func(Pod)

// appPrograms are attached to every enrolled pod's host veth.
var appPrograms = []struct {
	name string
	dir  tc.Direction
}{
	{mrasm.AppOutbound, tc.Ingress},
	{mrasm.AppInbound, tc.Egress},
}

// Enroll captures pod's traffic: its IPs go into the endpoints map (so that
// ztunnel's packets reach it directly, and its own packets pass the source
// check) and the app programs onto its host veth. Enrolling an enrolled pod again changes nothing, or repairs what is
// missing. On error nothing of this call stays behind.
func (d *Dataplane) Enroll(p Pod) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.enroll(p)
}

func (d *Dataplane) enroll(p Pod) error {
	if err := p.validate(); err != nil {
		return err
	}
	host, err := d.nl.link(p.HostIfindex)
	if err != nil {
		if isGone(err) {
			err = fmt.Errorf("%w (%v)", ErrInterfaceGone, err)
		}
		return fmt.Errorf("enroll pod %s: find host interface %d: %w", p, p.HostIfindex, err)
	}
	if host.kind != "veth" {
		return fmt.Errorf("enroll pod %s: host interface %s is a %s, not a veth", p, host.name, host.typ())
	}
	mac := p.MAC
	if mac == nil {
		if mac, err = podMAC(p.Netns, host); err != nil {
			if isGone(err) {
				err = fmt.Errorf("%w (%v)", ErrInterfaceGone, err)
			}
			return fmt.Errorf("enroll pod %s: %w", p, err)
		}
	}
	entry := maps.Endpoint{Ifindex: uint32(p.HostIfindex), Flags: p.Policy.flags()}
	if entry.MAC, err = maps.MAC(mac); err != nil {
		return fmt.Errorf("enroll pod %s: %w", p, err)
	}

	put, err := d.putPods(p.IPs, entry)
	if err != nil {
		return fmt.Errorf("enroll pod %s: %w", p, err)
	}
	if testHookBeforeAttach != nil {
		testHookBeforeAttach(p)
	}
	for _, ap := range appPrograms {
		if err := d.attach(d.node, p.HostIfindex, ap.dir, ap.name); err != nil {
			d.clearPods(put)
			for _, done := range appPrograms {
				if done == ap {
					break
				}
				d.node.Detach(p.HostIfindex, done.dir)
			}
			if errors.Is(err, tc.ErrNoInterface) {
				err = fmt.Errorf("%w (%v)", ErrInterfaceGone, err)
			}
			return fmt.Errorf("enroll pod %s: %w", p, err)
		}
	}
	if len(put) > 0 {
		d.log.Info("enrolled pod", "pod", p.Name, "ips", p.IPs, "interface", host.name, "mac", mac.String(), "policy", p.Policy.String())
	}
	return nil
}

// PutEntries writes the endpoints map entries of pods, without attaching
// anything: a restarted agent whose maps were replaced fills the new
// endpoints map this way before ztunnel's programs, which read it, are
// replaced. Pods whose MAC is not given are skipped.
func (d *Dataplane) PutEntries(pods []Pod) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, p := range pods {
		mac, err := maps.MAC(p.MAC)
		if err != nil || p.HostIfindex <= 0 {
			continue
		}
		for _, ip := range p.IPs {
			if _, err := d.putPod(ip, maps.Endpoint{Ifindex: uint32(p.HostIfindex), MAC: mac, Flags: p.Policy.flags()}); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Unenroll stops capturing pod's traffic: the app programs leave its host
// veth, its IPs leave the endpoints map (unless the node's or a resolver's
// role keeps them there). The programs go first, so no packet of
// the pod is captured while ztunnel can no longer hand replies back. The
// host veth may already be gone (the pod was deleted): that is not an error.
func (d *Dataplane) Unenroll(p Pod) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.unenroll(p)
}

func (d *Dataplane) unenroll(p Pod) error {
	var errs []error
	if p.HostIfindex > 0 {
		for _, ap := range appPrograms {
			if err := d.node.Detach(p.HostIfindex, ap.dir); err != nil && !isGone(err) {
				errs = append(errs, err)
			}
		}
	}
	for _, ip := range p.IPs {
		// Only entries that still point at this pod's veth: the IP may
		// already belong to a new pod.
		if cur, err := d.maps.Endpoints.Get(ip); err == nil && (!cur.IsPod() || p.HostIfindex > 0 && int(cur.Ifindex) != p.HostIfindex) {
			continue
		}
		if err := d.clearPod(ip); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unenroll pod %s: %w", p, err)
	}
	d.log.Info("unenrolled pod", "pod", p.Name, "ips", p.IPs, "ifindex", p.HostIfindex)
	return nil
}

// podMAC reads the MAC of the pod end of host (a veth) in the pod's netns.
func podMAC(path string, host link) (net.HardwareAddr, error) {
	if host.peer == 0 {
		return nil, fmt.Errorf("host interface %s: no peer index", host.name)
	}
	h, err := openNetns(path)
	if err != nil {
		return nil, fmt.Errorf("pod netns: %w", err)
	}
	defer h.Close()
	l, err := h.link(host.peer)
	if err != nil {
		return nil, fmt.Errorf("find the peer of %s (index %d) in %s: %w", host.name, host.peer, path, err)
	}
	if len(l.mac) != 6 {
		return nil, fmt.Errorf("pod interface %s has no Ethernet MAC", l.name)
	}
	return l.mac, nil
}

// isGone reports whether err says that an interface no longer exists:
// ENODEV is the kernel's answer to RTM_GETLINK for an index or a name it
// does not know (rtnl_getlink). (tc's Detach already treats a vanished
// interface as detached.)
func isGone(err error) bool {
	return errors.Is(err, unix.ENODEV) || errors.Is(err, tc.ErrNoInterface)
}
