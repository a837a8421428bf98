package dataplane_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/testenv"
)

// A mark makes each trick's frames recognisable wherever they turn up:
// in their payload, an 8-byte tag (6 random bytes of the run and the
// trick's number); in their IP header, an IPv4 identification or an IPv6
// flow label of the run's range. Headers count when the payload is not
// there (a fragment without it, a truncated frame) and the source is the
// trick's.
type mark struct {
	idx  int
	id   uint16
	flow uint32
	tag  []byte
}

// markBook hands out marks and tells which trick a frame belongs to.
type markBook struct {
	prefix   [6]byte
	idBase   uint16
	flowBase uint32

	mu  sync.Mutex
	src []netip.Addr // by trick: the source of its IP packets
}

func newMarkBook() *markBook {
	mb := &markBook{}
	var r [6]byte
	rand.Read(mb.prefix[:])
	rand.Read(r[:])
	mb.idBase = be.Uint16(r[0:])
	mb.flowBase = be.Uint32(r[2:]) & 0xfffff
	return mb
}

func (mb *markBook) next() mark {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	idx := len(mb.src)
	mb.src = append(mb.src, netip.Addr{})
	tag := append(mb.prefix[:], byte(idx>>8), byte(idx))
	return mark{idx: idx, id: mb.idBase + uint16(idx), flow: (mb.flowBase + uint32(idx)) & 0xfffff, tag: tag}
}

// sent records the source address of a trick's frames, for header matches.
func (mb *markBook) sent(idx int, f frame) {
	if _, src, ok := parseIP(f.ether(make(net.HardwareAddr, 6), make(net.HardwareAddr, 6))); ok {
		mb.mu.Lock()
		mb.src[idx] = src
		mb.mu.Unlock()
	}
}

// match returns the number of the trick frame b belongs to, or -1.
func (mb *markBook) match(b []byte) int {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	if i := bytes.Index(b, mb.prefix[:]); i >= 0 && i+8 <= len(b) {
		if idx := int(be.Uint16(b[i+6:])); idx < len(mb.src) {
			return idx
		}
	}
	hdr, src, ok := parseIP(b)
	if !ok {
		return -1
	}
	idx := -1
	if src.Is4() {
		idx = int(be.Uint16(hdr[4:]) - mb.idBase)
	} else {
		idx = int((be.Uint32(hdr[0:])&0xfffff - mb.flowBase) & 0xfffff)
	}
	if idx >= 0 && idx < len(mb.src) && mb.src[idx] == src {
		return idx
	}
	return -1
}

// parseIP finds the IP header of an Ethernet frame (after VLAN tags) and
// its source address; the header must be there up to the addresses.
func parseIP(b []byte) ([]byte, netip.Addr, bool) {
	if len(b) < 14 {
		return nil, netip.Addr{}, false
	}
	off := 12
	etype := be.Uint16(b[off:])
	for (etype == ether8021Q || etype == ether8021AD) && len(b) >= off+6 {
		off += 4
		etype = be.Uint16(b[off:])
	}
	hdr := b[off+2:]
	switch {
	case etype == etherIPv4 && len(hdr) >= 20 && hdr[0]>>4 == 4:
		return hdr, netip.AddrFrom4([4]byte(hdr[12:16])), true
	case etype == etherIPv6 && len(hdr) >= 40 && hdr[0]>>4 == 6:
		return hdr, netip.AddrFrom16([16]byte(hdr[8:24])), true
	}
	return nil, netip.Addr{}, false
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// sender writes raw frames out of an interface of a namespace with an
// AF_PACKET socket, from the interface's MAC to dst (the next hop's MAC).
type sender struct {
	fd      int
	ifindex int
	src     net.HardwareAddr
	dst     net.HardwareAddr
}

func newSender(t *testing.T, ns *testenv.Namespace, ifname string, dst net.HardwareAddr) *sender {
	t.Helper()
	s := &sender{dst: dst}
	must(t, ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		s.ifindex, s.src = ifi.Index, ifi.HardwareAddr
		s.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	}))
	t.Cleanup(func() { unix.Close(s.fd) })
	return s
}

func (s *sender) send(f frame) error {
	// ETH_P_ALL: the kernel takes the protocol from the frame's header
	// (packet_parse_headers), as the veth's peer does (eth_type_trans).
	sa := &unix.SockaddrLinklayer{Ifindex: s.ifindex, Protocol: htons(unix.ETH_P_ALL), Halen: 6}
	copy(sa.Addr[:], s.dst)
	return unix.Sendto(s.fd, f.ether(s.dst, s.src), 0, sa)
}

// sniffer counts, by number, the frames an interface receives (AF_PACKET,
// every frame but those it sends itself) that its match numbers: the
// tricks' marked frames, by trick.
type sniffer struct {
	where string
	fd    int
	match func(frame []byte) int
	stop  atomic.Bool
	wg    sync.WaitGroup

	mu   sync.Mutex
	hits map[int]int
	err  error
}

func startSniffer(t *testing.T, ns *testenv.Namespace, ifname, where string, book *markBook) *sniffer {
	t.Helper()
	return startMatchSniffer(t, ns, ifname, where, book.match)
}

// startMatchSniffer is startSniffer counting the frames match numbers
// (-1: none of the sniffer's), such as the kernel's own segments of a
// connection, which carry no mark.
func startMatchSniffer(t *testing.T, ns *testenv.Namespace, ifname, where string, match func(frame []byte) int) *sniffer {
	t.Helper()
	s := &sniffer{where: where, match: match, hits: map[int]int{}}
	must(t, ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		s.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		if err := unix.Bind(s.fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(s.fd)
			return fmt.Errorf("bind AF_PACKET to %s: %w", ifname, err)
		}
		unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
		return unix.SetsockoptTimeval(s.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50_000})
	}))
	s.wg.Add(1)
	go s.loop()
	t.Cleanup(s.close)
	return s
}

func (s *sniffer) loop() {
	defer s.wg.Done()
	buf := make([]byte, 65536)
	for !s.stop.Load() {
		n, from, err := unix.Recvfrom(s.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if idx := s.match(buf[:n]); idx >= 0 {
			s.mu.Lock()
			s.hits[idx]++
			s.mu.Unlock()
		}
	}
}

// close stops the sniffer; its counts stay readable.
func (s *sniffer) close() {
	if s.stop.Swap(true) {
		return
	}
	s.wg.Wait()
	unix.Close(s.fd)
}

// seen returns how many frames of trick idx arrived, and the error that
// stopped the sniffer early, if any.
func (s *sniffer) seen(idx int) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[idx], s.err
}
