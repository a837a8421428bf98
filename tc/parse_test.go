package tc

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
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

// FuzzParsePinName: a name parses only if the package would write it
// exactly so, and every name the package writes parses back to what made
// it.
func FuzzParsePinName(f *testing.F) {
	for _, s := range []string{"tcx-nsc5-if12-ingress", "clsact-nsi4026531840-if3", "tcx-nsc5-if12-egress-x"} {
		f.Add(s, uint64(5), false, uint32(12), false, false)
	}
	f.Add("", uint64(1<<64-1), true, uint32(1<<31-1), true, false)
	f.Add("", uint64(0), false, uint32(1), false, true)
	f.Fuzz(func(t *testing.T, name string, nsNumber uint64, inode bool, ifindex uint32, egress, marker bool) {
		// Whatever parses is a name the package would make.
		if p, ok := parsePinName(name); ok {
			m := &Manager{pinDir: "d", ns: &netnsRef{id: p.netns}}
			want := m.linkPinPath(p.ifindex, p.dir)
			if p.marker {
				want = m.markerPath(p.ifindex)
			}
			if "d/"+name != want {
				t.Errorf("parsed %q as %+v, which the package writes %q", name, p, want)
			}
		}

		// Whatever the package makes parses back: any namespace id
		// (netnsRef.identify), any interface index the kernel hands out
		// (a positive int32).
		if ifindex == 0 || ifindex > 1<<31-1 {
			return
		}
		id := fmt.Sprintf("nsc%d", nsNumber)
		if inode {
			id = fmt.Sprintf("nsi%d", nsNumber)
		}
		m := &Manager{pinDir: "d", ns: &netnsRef{id: id}}
		want := pinName{marker: marker, netns: id, ifindex: int(ifindex)}
		path := m.markerPath(want.ifindex)
		if !marker {
			want.dir = Ingress
			if egress {
				want.dir = Egress
			}
			path = m.linkPinPath(want.ifindex, want.dir)
		}
		got, ok := parsePinName(strings.TrimPrefix(path, "d/"))
		if !ok || got != want {
			t.Errorf("the package writes %+v as %q, which parses as %+v, %v", want, path, got, ok)
		}
	})
}

// encodeFilter encodes a filter the way the kernel dumps one
// (tcf_fill_node, cls_bpf_dump): TCA_KIND, TCA_CHAIN unless 0, and
// TCA_OPTIONS holding the bpf name, program ID and, if set, the flags,
// with an option of a future kernel. The options are written whatever the
// kind, to show that only a bpf filter's are read as bpf options.
func encodeFilter(f filter, extra func(ae *netlink.AttributeEncoder)) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.TCA_KIND, f.kind)
	if f.chain != 0 {
		ae.Uint32(unix.TCA_CHAIN, f.chain)
	}
	ae.Nested(unix.TCA_OPTIONS, func(nae *netlink.AttributeEncoder) error {
		nae.String(tcaBPFName, f.name)
		nae.Uint32(tcaBPFID, uint32(f.progID))
		if f.direct {
			nae.Uint32(tcaBPFFlags, tcaBPFFlagActDirect)
		}
		nae.Bytes(99, []byte{1, 2, 3})
		return nil
	})
	if extra != nil {
		extra(ae)
	}
	b, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	return append(f.marshal(), b...), nil
}

func filterMessage(tb testing.TB, f filter, extra func(ae *netlink.AttributeEncoder)) []byte {
	tb.Helper()
	b, err := encodeFilter(f, extra)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestParseFilterSkipsUnknownAttributes: attributes no kernel sends yet
// (a newer kernel's, top level and in the bpf options) are skipped, not
// errors. Encoded here, as no kernel can produce them; TestParseFilter
// holds the parser to the kernel's own bytes.
func TestParseFilterSkipsUnknownAttributes(t *testing.T) {
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
}

// TestFilterOurs: a filter is ours when it is a bpf filter (not a
// priority's header, handle 0) named with our prefix.
func TestFilterOurs(t *testing.T) {
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

// FuzzParseFilter holds parseFilter to two properties:
//
//   - fields encoded as the kernel would are read back exactly (name,
//     program ID and flags only of a bpf filter; strings without a
//     trailing NUL, which a netlink string cannot carry), priority() is
//     the priority and ours() says whether it is a bpf filter named with
//     our prefix;
//   - whatever bytes parse, the filter read, encoded again, parses to the
//     same filter, so ours() and priority() agree on both.
//
// The seeds in testdata/fuzz/FuzzParseFilter include every message of the
// recorded kernel dump (testdata/filter-dump.txt).
func FuzzParseFilter(f *testing.F) {
	add := func(b []byte, g filter) {
		f.Add(b, int32(g.ifindex), g.handle, g.parent, g.priority(), uint16(g.info), g.kind, g.chain, g.name, uint32(g.progID), g.direct)
	}
	ours := filter{tcmsg: tcmsg{ifindex: 3, handle: 1, parent: ingressParent, info: 2<<16 | filterProtocol}, kind: "bpf", name: "meshredirect:x", progID: 9, direct: true}
	add(filterMessage(f, ours, nil), ours)
	u32 := filter{kind: "u32", chain: 9}
	add(filterMessage(f, u32, nil), u32)
	add([]byte{}, filter{})
	f.Fuzz(func(t *testing.T, b []byte, ifindex int32, handle, parent uint32, prio, proto uint16, kind string, chain uint32, name string, progID uint32, direct bool) {
		// Fields to bytes and back.
		in := filter{
			tcmsg: tcmsg{ifindex: int(ifindex), handle: handle, parent: parent, info: uint32(prio)<<16 | uint32(proto)},
			kind:  kind, chain: chain, name: name, progID: ebpf.ProgramID(progID), direct: direct,
		}
		if !strings.HasSuffix(kind, "\x00") && !strings.HasSuffix(name, "\x00") && fits(in) {
			want := in
			if want.kind != "bpf" {
				want.name, want.progID, want.direct = "", 0, false
			}
			got, err := parseFilter(filterMessage(t, in, nil))
			if err != nil || got != want {
				t.Errorf("%+v encoded parses as %+v, %v; want %+v", in, got, err, want)
			}
			if got.priority() != prio {
				t.Errorf("priority %d protocol %#04x encoded: priority() = %d", prio, proto, got.priority())
			}
			wantOurs := kind == "bpf" && handle != 0 && strings.HasPrefix(name, "meshredirect:")
			if got.ours() != wantOurs {
				t.Errorf("%+v: ours() = %v, want %v", got, got.ours(), wantOurs)
			}
		}

		// Bytes to fields, and again.
		first, err := parseFilter(b)
		if err != nil {
			return
		}
		if strings.HasSuffix(first.kind, "\x00") || strings.HasSuffix(first.name, "\x00") {
			t.Fatalf("parsed %x as %+v: a netlink string keeps its NUL terminator", b, first)
		}
		if !fits(first) {
			return
		}
		again, err := parseFilter(filterMessage(t, first, nil))
		if err != nil || again != first {
			t.Errorf("parsed %x as %+v; that encoded parses as %+v, %v", b, first, again, err)
		}
		if again.ours() != first.ours() || again.priority() != first.priority() {
			t.Errorf("%+v: ours %v, priority %d; after a round trip ours %v, priority %d",
				first, first.ours(), first.priority(), again.ours(), again.priority())
		}
	})
}

// fits reports whether encodeFilter's attributes fit in a netlink
// attribute's 64 KiB.
func fits(f filter) bool {
	return len(f.kind) < 1<<15 && len(f.name) < 1<<15
}

// fuzzSeed writes a filter message as a seed of FuzzParseFilter, with its
// fields (as parsed) as the other arguments.
func fuzzSeed(tb testing.TB, msg []byte) []byte {
	tb.Helper()
	f, err := parseFilter(msg)
	if err != nil {
		tb.Fatal(err)
	}
	return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\nint32(%d)\nuint32(%d)\nuint32(%d)\nuint16(%d)\nuint16(%d)\nstring(%q)\nuint32(%d)\nstring(%q)\nuint32(%d)\nbool(%v)\n",
		msg, int32(f.ifindex), f.handle, f.parent, f.priority(), uint16(f.info), f.kind, f.chain, f.name, uint32(f.progID), f.direct)
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
