package asm

// ztunnel's listener ports, as Istio's ztunnel opens them.
const (
	// PortOutbound receives what ambient pods send (transparent, TCP).
	PortOutbound = 15001
	// PortInbound receives plaintext traffic for ambient pods (transparent, TCP).
	PortInbound = 15006
	// PortHBONE receives HBONE (HTTP/2 CONNECT) for ambient pods.
	PortHBONE = 15008
	// PortDNS receives pods' DNS queries when DNS capture is on (UDP).
	PortDNS = 15053
)

// Policy routing of ztunnel's netns: the assign program sets TProxyMark on
// every packet it hands to a socket, and the rule
// `fwmark TProxyMark/TProxyMask lookup TProxyTable` with
// `local 0.0.0.0/0 dev lo table TProxyTable` (and the IPv6 twin) makes such
// packets local, whatever their destination address.
const (
	TProxyMark  = 0x400
	TProxyMask  = 0xfff
	TProxyTable = 100
)
