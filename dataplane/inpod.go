package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/tc"
)

// In-pod mode (DESIGN §6): ztunnel opens its listeners inside each ambient
// pod's netns, and the capture sits there too, on the pod's own interface
// and its loopback. Nothing is attached in the node's netns, so the capture
// holds under any primary CNI, also one that delivers into pods with
// bpf_redirect_peer and never runs the host veth's egress hook.

// podHook is where one in-pod program goes: onLoopback on lo, else on the
// pod's interface.
type podHook struct {
	name       string
	onLoopback bool
	dir        tc.Direction
}

// podHooks are attached in this order: pod_loopback first (it acts only on
// what pod_egress hands it), pod_egress last (it starts the capture), so no
// packet is captured before what receives it is in place. Detached in the
// reverse order.
var podHooks = []podHook{
	{mrasm.PodLoopback, true, tc.Ingress},
	{mrasm.PodIngress, false, tc.Ingress},
	{mrasm.PodEgress, false, tc.Egress},
}

// inPodState is what EnrollInPod last attached in one pod's netns.
type inPodState struct {
	cfg     mrasm.PodConfig
	ifindex int // the pod's interface, in its netns
	progIDs map[string]ebpf.ProgramID
}

// podNetns is what setupPodNetns found in a pod's netns.
type podNetns struct {
	ifindex  int    // the interface holding the pod's address
	ifname   string // its name
	hostNsid int32  // the node's netns id in the pod's netns; -1 unknown
}

// EnrollInPod captures pod p's traffic inside its own network namespace
// (p.Netns): its addresses go into the endpoints map (the roles other pods'
// programs read), the netns gets the policy routing that delivers captured
// packets to ztunnel's sockets there, and the three in-pod programs, built
// for p's addresses, are attached to its interface and its loopback.
// p.HostIfindex and p.MAC are not needed. Enrolling an enrolled pod again
// changes nothing, or repairs what is missing. On error no program of this
// call stays attached.
func (d *Dataplane) EnrollInPod(p Pod) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(p.IPs) == 0 {
		return fmt.Errorf("enroll pod %s in its netns: no IP", p)
	}
	if p.Netns == "" {
		return fmt.Errorf("enroll pod %s in its netns: no network namespace", p)
	}
	for _, ip := range p.IPs {
		if !ip.IsValid() {
			return fmt.Errorf("enroll pod %s in its netns: invalid IP", p)
		}
	}

	ns, err := setupPodNetns(d.cfg.sysctls(), p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || isGone(err) {
			err = fmt.Errorf("%w (%v)", ErrInterfaceGone, err)
		}
		return fmt.Errorf("enroll pod %s in its netns: %w", p, err)
	}

	entry := maps.Endpoint{Flags: p.Policy.flags()}
	if p.HostIfindex > 0 {
		entry.Ifindex = uint32(p.HostIfindex)
	}
	put, err := d.putPods(p.IPs, entry)
	if err != nil {
		return fmt.Errorf("enroll pod %s in its netns: %w", p, err)
	}

	cfg := mrasm.PodConfig{IPs: slices.Clone(p.IPs), HostNetnsID: ns.hostNsid}
	m, err := tc.New(d.cfg.tcConfig(p.Netns))
	if err != nil {
		d.clearPods(put)
		return fmt.Errorf("enroll pod %s in its netns: open tc manager: %w", p, err)
	}
	defer m.Close()
	if st, ok := d.inpod[p.Netns]; ok && st.ifindex == ns.ifindex && slices.Equal(st.cfg.IPs, cfg.IPs) &&
		st.cfg.HostNetnsID == cfg.HostNetnsID && podHooksAttached(m, ns.ifindex, st.progIDs) {
		return nil
	}
	ids, err := d.attachPodPrograms(m, ns.ifindex, cfg)
	if err != nil {
		d.clearPods(put)
		return fmt.Errorf("enroll pod %s in its netns: %w", p, err)
	}
	if d.inpod == nil {
		d.inpod = map[string]inPodState{}
	}
	d.inpod[p.Netns] = inPodState{cfg: cfg, ifindex: ns.ifindex, progIDs: ids}
	d.log.Info("enrolled pod in its netns", "pod", p.Name, "ips", p.IPs, "netns", p.Netns, "interface", ns.ifname,
		"node_netns_id", ns.hostNsid, "policy", p.Policy.String(), "attach_mode", m.Mode().String())
	return nil
}

// attachPodPrograms loads the in-pod programs for cfg and attaches them in
// the netns of m, returning their IDs. On error it detaches what it
// attached.
func (d *Dataplane) attachPodPrograms(m *tc.Manager, ifindex int, cfg mrasm.PodConfig) (map[string]ebpf.ProgramID, error) {
	spec, err := mrasm.PodCollectionSpec(cfg, d.opts)
	if err != nil {
		return nil, err
	}
	// pod_loopback knows nothing of the pod: one instance, loaded once,
	// serves every pod (a third of an enrolment's verifier time).
	if d.loopback == nil {
		one := &ebpf.CollectionSpec{Maps: spec.Maps, Programs: map[string]*ebpf.ProgramSpec{mrasm.PodLoopback: spec.Programs[mrasm.PodLoopback]}}
		lc, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{MapReplacements: d.maps.Maps()})
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", mrasm.PodLoopback, verifierError(err))
		}
		d.loopback = lc.DetachProgram(mrasm.PodLoopback)
		lc.Close()
	}
	delete(spec.Programs, mrasm.PodLoopback)
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: d.maps.Maps()})
	if err != nil {
		return nil, fmt.Errorf("load in-pod programs: %w", verifierError(err))
	}
	// The attachments hold the programs; this process needs no reference.
	defer coll.Close()
	ids := map[string]ebpf.ProgramID{}
	for i, h := range podHooks {
		prog := coll.Programs[h.name]
		if h.name == mrasm.PodLoopback {
			prog = d.loopback
		}
		if _, err := m.Attach(h.ifindex(ifindex), h.dir, h.name, prog); err != nil {
			for _, done := range slices.Backward(podHooks[:i]) {
				m.Detach(done.ifindex(ifindex), done.dir)
			}
			return nil, err
		}
		if info, err := prog.Info(); err == nil {
			ids[h.name], _ = info.ID()
		}
	}
	return ids, nil
}

func (h podHook) ifindex(pod int) int {
	if h.onLoopback {
		return mrasm.LoopbackIfindex
	}
	return pod
}

// podHooksAttached tells whether every in-pod hook holds the program of ids.
func podHooksAttached(m *tc.Manager, ifindex int, ids map[string]ebpf.ProgramID) bool {
	for _, h := range podHooks {
		current, err := m.List(h.ifindex(ifindex))
		if err != nil {
			return false
		}
		found := false
		for _, a := range current {
			if a.Direction == h.dir && a.ProgramID == ids[h.name] && a.Mode == m.Mode() {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// UnenrollInPod stops capturing pod p's traffic in its netns: the programs
// leave its interfaces (pod_egress first), the policy routing goes, and its
// addresses leave the endpoints map (unless another role keeps them). A
// netns that is gone (the pod was deleted) took the programs with it: only
// the pins of tcx links are left, which Prune removes once the kernel has
// torn the netns down (asynchronously: lo's link is defunct only then), at
// the latest at the next reconcile.
func (d *Dataplane) UnenrollInPod(p Pod) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if p.Netns != "" {
		if err := detachPodPrograms(d.cfg.tcConfig(p.Netns), d.inpod[p.Netns].ifindex); err != nil {
			errs = append(errs, err)
		}
		if err := removeLocalDelivery(p.Netns); err != nil {
			errs = append(errs, err)
		}
		if err := d.resetPodSysctls(p.Netns); err != nil {
			errs = append(errs, err)
		}
		delete(d.inpod, p.Netns)
	}
	if _, err := d.node.Prune(); err != nil {
		errs = append(errs, err)
	}
	for _, ip := range p.IPs {
		if cur, err := d.maps.Endpoints.Get(ip); err == nil && !cur.IsPod() {
			continue
		}
		d.clearPod(ip)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unenroll pod %s in its netns: %w", p, err)
	}
	d.log.Info("unenrolled pod in its netns", "pod", p.Name, "ips", p.IPs, "netns", p.Netns)
	return nil
}

// detachPodPrograms removes our programs from every interface of the netns
// tcCfg names: the pod's (ifindex, or any found with one of ours when 0)
// and lo. A netns that is gone has none.
func detachPodPrograms(tcCfg tc.Config, ifindex int) error {
	m, err := tc.New(tcCfg)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	defer m.Close()
	all, err := m.ListAll()
	if err != nil {
		return err
	}
	var errs []error
	// pod_egress first: the capture stops before what receives it goes.
	for _, h := range slices.Backward(podHooks) {
		for _, a := range all {
			if a.Direction != h.dir || a.ProgramName != h.name {
				continue
			}
			if h.onLoopback && a.Ifindex != mrasm.LoopbackIfindex || !h.onLoopback && ifindex > 0 && a.Ifindex != ifindex {
				continue
			}
			if err := m.Detach(a.Ifindex, a.Direction); err != nil && !isGone(err) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// setupPodNetns finds the pod's interface (the one holding its address,
// else eth0) and the node's netns id as the pod's netns knows it, installs
// the policy routing of captured packets and lets lo accept them: a packet
// pod_egress hands to lo's ingress keeps the pod's own address as source,
// which IPv4 takes for a martian on input unless accept_local is on
// (fib_validate_source; the dst the packet had on its way out is dropped
// by the redirect, so the input route lookup runs).
func setupPodNetns(sys sysctlDir, p Pod) (podNetns, error) {
	h, err := openNetns(p.Netns)
	if err != nil {
		return podNetns{}, err
	}
	defer h.Close()
	out := podNetns{hostNsid: -1}
	var eth link
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		addrs, err := h.addresses(fam)
		if err != nil {
			return podNetns{}, fmt.Errorf("list addresses in %s: %w", h, err)
		}
		for _, a := range addrs {
			if slices.Contains(p.IPs, a.ip) && eth.index == 0 {
				if eth, err = h.link(a.index); err != nil {
					return podNetns{}, fmt.Errorf("find interface %d in %s: %w", a.index, h, err)
				}
			}
		}
	}
	if eth.index == 0 {
		if eth, err = h.linkByName("eth0"); err != nil {
			return podNetns{}, fmt.Errorf("find the interface with %v in %s (nor eth0): %w", p.IPs, h, err)
		}
	}
	out.ifindex, out.ifname = eth.index, eth.name
	// The id of the netns holding the other end of the pod's veth: the
	// node's, for every CNI that wires pods with veths (and ipvlan or
	// macvlan, whose parent lives on the node).
	if eth.peerNsid >= 0 {
		out.hostNsid = int32(eth.peerNsid)
	}
	lo, err := h.linkByName("lo")
	if err != nil {
		return podNetns{}, fmt.Errorf("find lo in %s: %w", h, err)
	}
	if lo.flags&unix.IFF_UP == 0 {
		// A CNI ADD may come before the runtime's loopback plugin has
		// brought lo up; the local route needs it up, and so does
		// everything captured, which reaches ztunnel through it.
		if err := h.setUp(lo.index); err != nil {
			return podNetns{}, fmt.Errorf("bring lo up in %s: %w", h, err)
		}
	}
	if err := ensureLocalDelivery(h, lo.index, p.Netns); err != nil {
		return podNetns{}, err
	}
	if err := h.Do(func() error {
		return sys.write(map[string]string{
			"ipv4/conf/lo/accept_local": "1",
			// DNS over TCP is handed to ztunnel's listener on
			// 127.0.0.1:15053 with its destination rewritten
			// (pod_loopback); the redirect dropped the packet's
			// route, and IPv4 input drops a loopback destination as a
			// martian unless lo allows it. Only what arrives on lo
			// without a route is concerned: the redirected packets.
			"ipv4/conf/lo/route_localnet": "1",
			// No TIME_WAIT in the pod: ztunnel's side of a captured
			// connection has the application's very tuple (no NAT), so
			// when ztunnel closes first its TIME_WAIT socket holds the
			// tuple the application's kernel considers free. A
			// reconnect from that port (a client cycling through its
			// ephemeral ports under load) has its SYN assigned to the
			// listener, and the kernel drops it as a duplicate of the
			// TIME_WAIT socket until that expires a minute later;
			// given to the TIME_WAIT socket instead it costs a reset
			// dance, or with tcp_rfc1337 no connection at all. What
			// TIME_WAIT guards against costs little here: nearly every
			// connection of the pod's application is one to ztunnel in
			// the same netns, over lo, which neither loses nor reorders
			// segments, and ztunnel's own connections keep PAWS
			// (timestamps) against an old connection's segments.
			"ipv4/tcp_max_tw_buckets": "0",
		})
	}); err != nil {
		return podNetns{}, fmt.Errorf("set sysctls in %s: %w", h, err)
	}
	return out, nil
}

// resetPodSysctls sets back what setupPodNetns changed in the netns at
// path: lo's accept_local and route_localnet to the kernel's default, tcp_max_tw_buckets to
// the node's (what a new netns starts with: both follow the size of the
// kernel's TCP hash table). A netns that is gone has nothing to reset.
func (d *Dataplane) resetPodSysctls(path string) error {
	return resetPodSysctls(d.cfg.sysctls(), d.nl, path)
}

// resetPodSysctls is (*Dataplane).resetPodSysctls with the node's netns
// node and the sysctls in sys.
func resetPodSysctls(sys sysctlDir, node *nsLink, path string) error {
	var twBuckets string
	if err := node.Do(func() error {
		var err error
		twBuckets, err = sys.read("ipv4/tcp_max_tw_buckets")
		return err
	}); err != nil {
		return fmt.Errorf("read the node's tcp_max_tw_buckets: %w", err)
	}
	h, err := openNetns(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	defer h.Close()
	if err := h.Do(func() error {
		return sys.write(map[string]string{"ipv4/conf/lo/accept_local": "0", "ipv4/conf/lo/route_localnet": "0",
			"ipv4/tcp_max_tw_buckets": twBuckets})
	}); err != nil {
		return fmt.Errorf("reset sysctls in %s: %w", h, err)
	}
	return nil
}

// PruneInPod removes, in in-pod mode, what no desired pod needs on the
// node: the node mode's programs on host veths and on ztunnel's veth (left
// by an agent of the other mode: a pod's traffic would still be taken to a
// node-level ztunnel), endpoints map entries of pods that are neither
// desired nor kept (another pod may get the address, and the in-pod
// programs take TCP from an enrolled pod's address as forged), and the
// pins of tcx links whose interface is gone. desired and keep are as for
// Reconcile; the pods themselves are enrolled with EnrollInPod.
func (d *Dataplane) PruneInPod(desired []Pod, keep []netip.Addr) (ReconcileResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	res := ReconcileResult{Failed: map[string]error{}}
	attachments, err := d.node.ListAll()
	if err != nil {
		return res, fmt.Errorf("prune for in-pod mode: %w", err)
	}
	var errs []error
	for _, a := range attachments {
		switch programOf(a) {
		case mrasm.AppOutbound, mrasm.AppInbound, mrasm.ZtunnelIngress, mrasm.ZtunnelEgress:
		default:
			continue
		}
		if a.Defunct {
			continue
		}
		if err := d.node.Detach(a.Ifindex, a.Direction); err != nil && !isGone(err) {
			errs = append(errs, err)
			continue
		}
		res.Detached = append(res.Detached, a)
	}
	if len(res.Detached) > 0 || d.ztunnel.HostIfindex != 0 {
		// No node-level ztunnel any more: the map forgets it too.
		if zt, err := d.maps.Ztunnel.Get(); err == nil && zt.Ifindex != 0 {
			if err := d.maps.Ztunnel.Set(maps.Ztunnel{Flags: d.configFlags()}); err != nil {
				errs = append(errs, err)
			}
		}
		d.ztunnel = Ztunnel{}
	}
	want := map[netip.Addr]bool{}
	for _, p := range desired {
		for _, ip := range p.IPs {
			want[ip] = true
		}
	}
	for _, ip := range keep {
		want[ip] = true
	}
	entries, err := d.maps.Endpoints.Pods()
	if err != nil {
		return res, fmt.Errorf("prune for in-pod mode: %w", err)
	}
	errs = append(errs, d.clearUnwanted(entries, want, &res)...)
	pruned, err := d.node.Prune()
	if err != nil {
		errs = append(errs, err)
	}
	res.Detached = append(res.Detached, pruned...)
	if len(res.Detached)+len(res.Deleted) > 0 {
		d.log.Info("pruned for in-pod mode", "detached", len(res.Detached), "deleted_entries", len(res.Deleted))
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("prune for in-pod mode: %w", errors.Join(errs...))
	}
	return res, nil
}

// verifierError gives a verifier's refusal its last lines, which say why.
func verifierError(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("%-20v", ve)
	}
	return err
}

// ReleaseInPod removes the in-pod capture of a pod that is no longer
// captured, if its netns (at netns) holds ours: a pod that left the mesh,
// or whose capture an earlier agent made, while no agent ran. ips are the
// addresses its endpoints map entries are under. It reports whether it
// found capture there; a netns with none of ours is left as it is (the
// address may belong to another pod by now).
func (d *Dataplane) ReleaseInPod(ips []netip.Addr, netns string) (bool, error) {
	s, err := scanOne(d.cfg, netns)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look for in-pod capture in %s: %w", netns, err)
	}
	if len(s.attachments) == 0 && !s.routed() {
		return false, nil
	}
	return true, d.UnenrollInPod(Pod{Name: netns, IPs: ips, Netns: netns})
}
