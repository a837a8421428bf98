// Package tc owns how meshredirect's programs are hooked to interfaces: the
// clsact qdisc, bpf filters in direct-action mode (legacy TC, kernel 4.13+),
// tcx links (kernel 6.6+) and their pins, in the current network namespace
// or in another one. It speaks rtnetlink itself (github.com/florianl/go-tc,
// github.com/jsimonetti/rtnetlink/v2 and github.com/mdlayher/netlink) and
// the bpf syscall through github.com/cilium/ebpf/link; it knows nothing of
// what the programs do.
//
// A [Manager] works on one network namespace:
//
//	m, err := tc.New(tc.Config{NetnsPath: "/proc/1234/ns/net"})
//	a, err := m.Attach(ifindex, tc.Ingress, "app_outbound", prog)
//	all, err := m.ListAll()
//	err = m.Detach(ifindex, tc.Ingress)
//
// # What is ours
//
// A Manager keeps no state of its own: what it attached is found again in the
// kernel and under its pin directory, so a restarted agent sees what the
// previous one left.
//
//   - A bpf filter is ours when its name (TCA_BPF_NAME) starts with
//     [FilterNamePrefix]. Filters of other tools, whatever their priority, are
//     never replaced or deleted; a foreign filter in the slot (priority and
//     handle) we are configured to use is an error ([ErrForeignFilter]).
//   - A tcx link is ours when it is pinned in the pin directory under a name
//     built from the network namespace's cookie, the interface index and the
//     direction ("tcx-nsc<cookie>-if<ifindex>-<direction>"). tcx links carry
//     no name of their own; a link not pinned there is someone else's.
//   - A clsact qdisc is ours when we created it: Manager creates one only
//     with NLM_F_EXCL (never replacing one) and then records it with a marker
//     directory in the pin directory ("clsact-nsc<cookie>-if<ifindex>").
//     Detach deletes the qdisc only when the marker exists and no filter of
//     anyone is left on either hook. A crash between creating the qdisc and
//     writing the marker leaves a qdisc nobody removes, which is harmless;
//     the opposite order could delete someone else's.
//
// Interface indexes are handed out cyclically in each namespace, so an old
// pin or marker does not meet a new interface under the same index in
// practice; should it happen, the pinned link reports its interface gone
// and is replaced.
//
// The network namespace cookie (SO_NETNS_COOKIE, kernel 5.14) is used rather
// than the namespace's inode number because the kernel reuses inode numbers
// of dead namespaces, and never reuses cookies. On kernels without cookies
// the inode stands in ("nsi<inode>"); only legacy filters exist there.
//
// # Modes
//
// [ModeAuto] picks tcx when the kernel has it and legacy filters otherwise;
// either can be forced. Attaching in one mode removes our attachment of the
// other mode on the same hook afterwards, so a migration in either direction
// never leaves the hook without one of the two. While both exist (a few
// system calls long) a packet can meet both programs: tcx programs run
// before the clsact filters (net/core/dev.c:sch_handle_ingress and
// sch_handle_egress), so a redirect by the first ends it and a pass reaches
// the second. A migration to tcx leaves our clsact qdisc in place: adding
// or deleting a qdisc on a running interface drops what it transmits for a
// moment, so only Detach deletes one.
//
// Replacing is atomic in both modes: a legacy filter is replaced in place
// (RTM_NEWTFILTER with NLM_F_CREATE|NLM_F_REPLACE at the same priority,
// handle and protocol; cls_bpf swaps the program under RCU) and a tcx link
// is updated in place (BPF_LINK_UPDATE).
//
// Programs are expected to return TC_ACT_UNSPEC (-1, TCX_NEXT in tcx) to
// pass a packet on, so that the filters and links of other tools after ours
// still run. The package does not depend on it.
//
// # Kernels
//
// Legacy filters need kernel 4.13 (clsact and direct action came in 4.5,
// program IDs in filter dumps, which listing reads, in 4.13); tcx links
// need 6.6. Pin names use the namespace cookie from 5.14 on. The pin
// directory must be on a bpf filesystem in both modes: it also holds the
// clsact markers.
//
// # Errors
//
// Errors name the interface and the direction and keep the kernel's
// extended acknowledgement: "attach filter to veth12ab ingress: netlink
// receive: file exists, offset: 0, message: ...". Transient failures
// (EBUSY, EAGAIN, EINTR, ENOBUFS, interrupted dumps) are retried a few times
// with a short backoff before they are returned.
package tc
