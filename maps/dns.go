package maps

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// SockAddr is an address and a port, the key and the value of the dnsorig
// map: a pod's socket that sent a DNS query, and where the query was going.
// The address is in 16 bytes (IPv4 v4-mapped, as [Key]); the port is in
// network byte order, as in the packet, so the programs copy both from the
// headers and back without swapping.
type SockAddr struct {
	Addr Key
	Port [2]byte
	_    [2]byte
}

// Offsets and size of SockAddr, read by pod_loopback.
const (
	SockAddrOffAddr = int16(0)
	SockAddrOffPort = int16(16)
	SockAddrSize    = uint32(20)
)

// SockAddrOf returns the SockAddr of ap.
func SockAddrOf(ap netip.AddrPort) SockAddr {
	s := SockAddr{Addr: KeyFor(ap.Addr())}
	binary.BigEndian.PutUint16(s.Port[:], ap.Port())
	return s
}

// AddrPort returns the address (IPv4 unmapped) and port of s.
func (s SockAddr) AddrPort() netip.AddrPort {
	return netip.AddrPortFrom(s.Addr.Addr(), binary.BigEndian.Uint16(s.Port[:]))
}

// DNSOrigMaxEntries is the size of the dnsorig map. It holds one entry per
// client socket whose DNS query pod_loopback gave to ztunnel's DNS proxy,
// until the LRU evicts it; an entry must outlive its query's reply, which
// comes within ztunnel's upstream timeout (seconds). 16384 entries of 40
// bytes are a few hundred KiB for the node, and cover 16384 client sockets
// asking within that time: about 3000 new queries a second with a five
// second wait (a client resolves through one socket per lookup, glibc sends
// A and AAAA from the same one). An evicted entry costs one retry: the
// reply reaches the client unchanged and is ignored, as without this map.
const DNSOrigMaxEntries = 16384

// DNSTCPMaxEntries is the size of the dnstcp map: one entry per client
// socket that opened a DNS connection captured by pod_loopback (the
// client's address and port -> the address and port it connected to). The
// program deletes none: a connection's last segments (the ACK of the
// second FIN, and the ACKs a TIME_WAIT socket repeats) follow the last
// FIN, and only sequence numbers, which the program does not track, tell
// them from the rest; a record deleted early would send them unrewritten
// to a destination no socket holds. The LRU evicts the least recently
// used record instead, and every segment of a connection refreshes its
// own (each is looked up), so only records of closed connections go: DNS
// over TCP is the fallback for truncated answers, and 16384 records of 40
// bytes cover far more connections than a node opens to its resolvers
// within a TIME_WAIT (60 s). A client port's next connection (a SYN)
// overwrites its record.
const DNSTCPMaxEntries = 16384

// DNSOrig is the dnsorig map, or the dnstcp map, written by pod_loopback
// only: a read-only view for tests and dumps, and the writes a test needs.
type DNSOrig struct{ *ebpf.Map }

// Get returns the original destination of the DNS query client sent, or
// an error wrapping ErrNotFound.
func (d *DNSOrig) Get(client netip.AddrPort) (netip.AddrPort, error) {
	var v SockAddr
	if err := d.Lookup(SockAddrOf(client), &v); err != nil {
		return netip.AddrPort{}, fmt.Errorf("look up DNS query of %s: %w", client, err)
	}
	return v.AddrPort(), nil
}

// Put records that client sent a DNS query to orig.
func (d *DNSOrig) Put(client, orig netip.AddrPort) error {
	if err := d.Map.Put(SockAddrOf(client), SockAddrOf(orig)); err != nil {
		return fmt.Errorf("record DNS query of %s: %w", client, err)
	}
	return nil
}
