// Package ztunnel is a stand-in for Istio's ztunnel: a small transparent
// proxy that keeps ztunnel's contract with the node's redirection, so that
// the dataplane can be tested without the real ztunnel, and that records
// every connection it carries, so that a test can prove a flow went
// through it.
//
// The contract (the listeners, in ztunnel's network namespace, each for
// IPv4 and IPv6, IP_TRANSPARENT, SO_REUSEADDR, IPV6_V6ONLY on the IPv6 ones,
// MPTCP off):
//
//	15001  TCP  outbound: what ambient pods send
//	15006  TCP  inbound plaintext: what is sent to ambient pods
//	15008  TCP  inbound HBONE: HTTP/2 CONNECT (plaintext, prior knowledge)
//	15053  UDP  DNS: pods' queries when DNS capture is on
//
// Redirection (bpf_sk_assign, or TPROXY) hands these sockets packets whose
// destination is not one of ztunnel's addresses. An accepted connection's
// local address is therefore the original destination, the address the
// client dialled, and its remote address the client. Redirection by NAT
// (iptables or nftables REDIRECT, Istio's in-pod rules since 1.24) rewrites
// the destination to the listener's; the stand-in then reads the original
// from conntrack, as ztunnel does on every accepted TCP connection
// (src/socket.rs orig_dst_addr_or_default): SO_ORIGINAL_DST, then
// IP6T_SO_ORIGINAL_DST, else (no NAT, ENOENT) the local address.
//
// On 15001 and 15006 the stand-in connects to the original destination
// with the client's address as source (IP_TRANSPARENT and IP_FREEBIND, bound
// to the client's IP with port 0), as ztunnel does for same-node delivery,
// and copies bytes both ways (splice(2) between the two sockets). On 15006
// the destination is a pod of this node; the dataplane recognises the
// stand-in's connection as ztunnel's and does not capture it again, so the
// stand-in just dials. It refuses an original destination that is one of
// its own listeners (a client dialling ztunnel's own address), which would
// loop.
//
// On 15008 each CONNECT stream names its target in the :authority
// (ip:port); the stand-in connects to the target with the HBONE
// connection's source address as source (the original client when the peer
// connected with the client's address, as ztunnel does; Options.HBONEOwnSource
// uses ztunnel's own address instead) and streams bytes both ways. DialHBONE
// and HBONE are the client side.
//
// On 15053 the stand-in answers A and AAAA queries from Options.DNS (or
// Options.DNSAnswer for any other name; NXDOMAIN without one), from the
// original destination: it learns that with IP_RECVORIGDSTADDR and sends
// its reply with that address (and port) as source, with IP_PKTINFO when the
// port is the listener's, else from a transparent socket bound to it.
//
// # In-pod mode
//
// With Options.ZDS the stand-in is ztunnel of Istio 1.21 and later. The
// facts it keeps, read in istio/ztunnel (commit 62d82653, August 2026;
// paths in that repository):
//
//   - ZDS client: it dials the agent's SOCK_SEQPACKET socket
//     (INPOD_UDS, default /var/run/ztunnel/ztunnel.sock: src/config.rs),
//     sends ZdsHello V1 and acks every request, "" or the error text
//     (src/inpod/protocol.rs). A failed dial is retried after 20ms,
//     doubling, at most 15s; a connection that ends is redialled at once
//     (src/inpod/workloadmanager.rs).
//   - add: it enters the netns from the fd and opens the pod's proxies
//     there, through a socket factory that creates every socket inside the
//     netns and sets SO_MARK (PACKET_MARK, default 1337 = 0x539 in in-pod
//     mode) on each, listeners and outgoing connections alike
//     (src/inpod/config.rs, src/config.rs DEFAULT_INPOD_MARK). With
//     INPOD_PORT_REUSE (default true) each listener gets SO_REUSEPORT and
//     no SO_REUSEADDR; without it Rust's std bind sets SO_REUSEADDR on
//     TCP listeners (src/inpod/config.rs).
//   - Listeners in the pod: 15001 outbound, 15006 inbound plaintext and
//     15008 HBONE on the wildcard [::] (one dual-stack socket; 0.0.0.0
//     with IPV6_ENABLED=false) (src/config.rs bind_wildcard, inbound_addr,
//     inbound_plaintext_addr, outbound_addr; src/proxy/outbound.rs,
//     inbound.rs, inbound_passthrough.rs). IP_TRANSPARENT is set on each,
//     best effort unless ENABLE_ORIG_SRC demands it (src/proxy.rs
//     maybe_set_transparent; src/socket.rs set_transparent).
//   - DNS: 15053 TCP and UDP on 127.0.0.1 and ::1 (Address::Localhost;
//     ::1 only when lo has IPv6), not the wildcard, not transparent
//     (src/config.rs dns_proxy_addr, src/dns/server.rs).
//   - Original destination: SO_ORIGINAL_DST (IPv4, then IPv6), else the
//     accepted socket's local address (src/socket.rs
//     orig_dst_addr_or_default).
//   - Inbound (15006 and 15008): it connects to the app at the original
//     destination (15006) or the CONNECT target (15008) with the original
//     client's IP as source (IP_TRANSPARENT and IP_FREEBIND, bound to it
//     with port 0) when its listener is transparent, the client being the
//     accepted connection's peer (15006) or the HBONE connection's peer
//     (15008); when that IP is the destination's it connects without
//     binding (src/proxy.rs freebind_connect; inbound_passthrough.rs,
//     inbound.rs serve_connect).
//   - Outbound (15001): to a workload of the mesh, HBONE to its IP on
//     15008 (outbound.rs build_request: actual_destination = workload
//     IP:hbone_port); to anything else, plaintext passthrough to the
//     original destination; both connect from the pod with no source
//     bound, so the pod's own address (outbound.rs proxy_to_tcp,
//     src/proxy/pool.rs).
//   - add of a uid already served: a no-op for the same netns (inode), a
//     replacement for another; a failed add is nacked and retried every
//     5s; an add without workload_info is a protocol error
//     (src/inpod/statemanager.rs).
//   - del: the pod's proxy is drained at once (DrainMode::Immediate),
//     live connections included; before snapshot_sent it also un-names the
//     pod (statemanager.rs).
//   - keep (before snapshot_sent only; after it, a protocol error) names a
//     pod the agent could not send; snapshot_sent drops every pod served
//     that the connection did not add or keep (statemanager.rs reconcile);
//     a second one is a protocol error.
//   - Disconnect: pods' proxies keep running; the next connection starts
//     a new snapshot (workloadmanager.rs, statemanager.rs
//     reset_snapshot). A restart of ztunnel starts with no pods: the
//     agent's snapshot adds them all again.
//
// The stand-in follows these, except: a failed add is not retried (the
// agent resends), protocol errors are nacked without ending the
// connection, and its UDP DNS sockets also ask for each datagram's original
// destination (IP_RECVORIGDSTADDR) and reply from it (no NAT under
// bpf_sk_assign; ztunnel relies on iptables REDIRECT). Outbound counts a
// destination as "in the mesh" when it is an address of a pod the stand-in
// serves; the HBONE it speaks is plaintext HTTP/2 (no mTLS), as in node
// mode. Every flow's Record names its pod (Record.Pod); Pods, WaitPod,
// WaitPods, ZDS and WaitZDS show the pods and the connection, and
// Options.AckError makes it refuse requests.
//
// Run it in-process (Start with Options.Netns: the listeners and every
// outbound socket are opened on a thread inside that namespace, the rest
// runs anywhere), or as the binary testenv/cmd/ztunnel-standin started
// inside ztunnel's namespace. IP_TRANSPARENT needs CAP_NET_ADMIN.
package ztunnel
