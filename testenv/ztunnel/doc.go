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
// client dialled, and its remote address the client.
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
// Run it in-process (Start with Options.Netns: the listeners and every
// outbound socket are opened on a thread inside that namespace, the rest
// runs anywhere), or as the binary testenv/cmd/ztunnel-standin started
// inside ztunnel's namespace. IP_TRANSPARENT needs CAP_NET_ADMIN.
package ztunnel
