package tc

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	gotc "github.com/florianl/go-tc"
	"github.com/florianl/go-tc/core"
	"github.com/jsimonetti/rtnetlink/v2"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/nlmsg"
)

// TestConstants checks the kernel constants spelled out here against go-tc
// and golang.org/x/sys.
func TestConstants(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uint32
	}{
		{"ingress parent", hookParent(Ingress), core.BuildHandle(gotc.HandleRoot, gotc.HandleMinIngress)},
		{"egress parent", hookParent(Egress), core.BuildHandle(gotc.HandleRoot, gotc.HandleMinEgress)},
		{"clsact handle", clsactHandle, core.BuildHandle(gotc.HandleRoot, 0)},
		{"direct action", tcaBPFFlagActDirect, gotc.BpfActDirect},
		{"protocol all", filterProtocol, uint32(htons(unix.ETH_P_ALL))},
	} {
		if c.got != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func htons(v uint16) uint16 { return v>>8 | v<<8 }

func TestPinNames(t *testing.T) {
	m := &Manager{pinDir: "/sys/fs/bpf/x", ns: &netnsRef{id: "nsc4096"}}
	for _, c := range []struct {
		path string
		want pinName
	}{
		{m.linkPinPath(12, Ingress), pinName{netns: "nsc4096", ifindex: 12, dir: Ingress}},
		{m.linkPinPath(2147483647, Egress), pinName{netns: "nsc4096", ifindex: 2147483647, dir: Egress}},
		{m.markerPath(3), pinName{marker: true, netns: "nsc4096", ifindex: 3}},
	} {
		name := c.path[len(m.pinDir)+1:]
		got, ok := parsePinName(name)
		if !ok || got != c.want {
			t.Errorf("parsePinName(%q) = %+v, %v; want %+v", name, got, ok, c.want)
		}
	}
	for _, name := range []string{
		"pods", "tcx-", "tcx-nsc1-if2", "tcx-nsc1-if2-sideways", "tcx-nsx1-if2-ingress",
		"tcx-nsc1-if0-ingress", "tcx-nsc1-2-ingress", "tcx-nsc-if2-ingress", "clsact-nsc1-if2-ingress",
		"clsact-nsi1-ifx", "tcx-nsc1-if-2-ingress", "tcx-nsc1-if99999999999-ingress",
		"tcx-nsc1-if012-ingress", "tcx-nsc01-if12-ingress", "tcx-nsc1-if+12-ingress",
	} {
		if p, ok := parsePinName(name); ok {
			t.Errorf("parsePinName(%q) = %+v, want no match", name, p)
		}
	}
}

func FuzzParsePinName(f *testing.F) {
	for _, s := range []string{"tcx-nsc5-if12-ingress", "clsact-nsi4026531840-if3", "tcx-nsc5-if12-egress-x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		p, ok := parsePinName(name)
		if !ok {
			return
		}
		// Whatever parses is a name the package would make.
		m := &Manager{pinDir: "d", ns: &netnsRef{id: p.netns}}
		want := m.linkPinPath(p.ifindex, p.dir)
		if p.marker {
			want = m.markerPath(p.ifindex)
		}
		if "d/"+name != want {
			t.Errorf("parsed %q as %+v, which the package writes %q", name, p, want)
		}
	})
}

// filterMessage encodes a filter as the kernel dumps it.
func filterMessage(t testing.TB, f filter, extra func(ae *netlink.AttributeEncoder)) []byte {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.TCA_KIND, f.kind)
	if f.chain != 0 {
		ae.Uint32(unix.TCA_CHAIN, f.chain)
	}
	ae.Nested(unix.TCA_OPTIONS, func(nae *netlink.AttributeEncoder) error {
		nae.String(tcaBPFName, f.name)
		nae.Uint32(tcaBPFID, uint32(f.progID))
		nae.Uint32(tcaBPFFlags, tcaBPFFlagActDirect)
		nae.Bytes(99, []byte{1, 2, 3}) // an option of a future kernel
		return nil
	})
	if extra != nil {
		extra(ae)
	}
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return append(f.marshal(), b...)
}

// TestParseFilter: what we need is read, and attributes we do not know
// (another tool's, a newer kernel's) are skipped, not errors.
func TestParseFilter(t *testing.T) {
	want := filter{
		tcmsg:  tcmsg{ifindex: 7, handle: 1, parent: ingressParent, info: 2<<16 | filterProtocol},
		kind:   "bpf",
		chain:  3,
		name:   FilterNamePrefix + "app_outbound",
		progID: 42,
		direct: true,
	}
	b := filterMessage(t, want, func(ae *netlink.AttributeEncoder) {
		ae.Bytes(unix.TCA_STATS2, []byte{0, 0, 0, 0})
		ae.Bytes(200, []byte("future attribute"))
	})
	got, err := parseFilter(b)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("parseFilter = %+v, want %+v", got, want)
	}
	if !got.ours() || got.priority() != 2 {
		t.Errorf("ours %v, priority %d", got.ours(), got.priority())
	}

	for _, c := range []struct {
		f    filter
		ours bool
	}{
		{filter{kind: "bpf", tcmsg: tcmsg{handle: 1}, name: "meshredirect:x"}, true},
		{filter{kind: "bpf", tcmsg: tcmsg{handle: 0}, name: "meshredirect:x"}, false},
		{filter{kind: "bpf", tcmsg: tcmsg{handle: 1}, name: "cil_from_container"}, false},
		{filter{kind: "bpf", tcmsg: tcmsg{handle: 1}, name: "meshredirectx"}, false},
		{filter{kind: "u32", tcmsg: tcmsg{handle: 1}, name: "meshredirect:x"}, false},
	} {
		if c.f.ours() != c.ours {
			t.Errorf("%+v: ours() = %v", c.f, !c.ours)
		}
	}
}

func FuzzParseFilter(f *testing.F) {
	f.Add(filterMessage(f, filter{kind: "bpf", name: "meshredirect:x", tcmsg: tcmsg{handle: 1}}, nil))
	f.Add(filterMessage(f, filter{kind: "u32", chain: 9}, nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		f, err := parseFilter(b)
		if err != nil {
			return
		}
		_ = fmt.Sprint(f.ours(), f.priority())
	})
}

// TestTcmsgRoundTrip: the hand-written tcmsg decodes to what it encoded,
// leaves the attributes after it alone, and lays the header out as go-tc
// does (tc.Msg, written in native byte order by its marshalStruct).
func TestTcmsgRoundTrip(t *testing.T) {
	for _, want := range []tcmsg{
		{},
		{ifindex: 7, handle: 1, parent: ingressParent, info: 2<<16 | filterProtocol},
		{ifindex: 1<<31 - 1, handle: 0xffffffff, parent: egressParent, info: 0xffff<<16 | filterProtocol},
	} {
		b := want.marshal()
		gotcb, err := binary.Append(nil, binary.NativeEndian, gotc.Msg{
			Family: unix.AF_UNSPEC, Ifindex: uint32(want.ifindex), Handle: want.handle, Parent: want.parent, Info: want.info,
		})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, gotcb) {
			t.Errorf("%+v encodes as %x, go-tc as %x", want, b, gotcb)
		}
		attrs := []byte{8, 0, 1, 0, 'b', 'p', 'f', 0}
		got, rest, err := parseTcmsg(append(b, attrs...))
		if err != nil {
			t.Fatal(err)
		}
		if got != want || !bytes.Equal(rest, attrs) {
			t.Errorf("%+v decodes as %+v with attributes %x, want %x", want, got, rest, attrs)
		}
	}
	if _, _, err := parseTcmsg(make([]byte, sizeofTcmsg-1)); err == nil {
		t.Error("a short tcmsg decodes")
	}
}

// TestLinkRequest: interface lookups ask for one interface, or all, without
// the per-family statistics.
func TestLinkRequest(t *testing.T) {
	for _, index := range []int{0, 12} {
		b, err := linkRequest(index)
		if err != nil {
			t.Fatal(err)
		}
		var m rtnetlink.LinkMessage
		if err := m.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		ad, err := netlink.NewAttributeDecoder(b[unix.SizeofIfInfomsg:])
		if err != nil {
			t.Fatal(err)
		}
		var mask uint32
		for ad.Next() {
			if ad.Type() == unix.IFLA_EXT_MASK {
				mask = ad.Uint32()
			}
		}
		if err := ad.Err(); err != nil {
			t.Fatal(err)
		}
		if int(m.Index) != index || mask != nlmsg.SkipStats {
			t.Errorf("request for ifindex %d: ifindex %d, IFLA_EXT_MASK %#x", index, m.Index, mask)
		}
	}
}

// TestParseLink: the name and index are read; the rest, attributes the
// library does not know included, is skipped.
func TestParseLink(t *testing.T) {
	m := rtnetlink.LinkMessage{
		Index:      2147483647,
		Type:       unix.ARPHRD_ETHER,
		Attributes: &rtnetlink.LinkAttributes{Name: "veth12ab", MTU: 1450, Info: &rtnetlink.LinkInfo{Kind: "veth"}},
	}
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, nltest.MustMarshalAttributes([]netlink.Attribute{{Type: 500, Data: []byte("future")}})...)
	got, err := parseLink(b)
	if err != nil {
		t.Fatal(err)
	}
	if want := (iface{2147483647, "veth12ab"}); got != want {
		t.Errorf("parseLink = %v, want %v", got, want)
	}
	if _, err := parseLink(b[:unix.SizeofIfInfomsg-1]); err == nil {
		t.Error("a short ifinfomsg decodes")
	}
}
