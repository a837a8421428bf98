package nlmsg

import (
	"errors"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
)

func TestScanAttrs(t *testing.T) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: 1, Data: []byte{7}}, {Type: 3, Data: []byte{8, 9}}})
	if err != nil {
		t.Fatal(err)
	}
	msg := append([]byte{0xaa, 0xbb, 0xcc, 0xdd}, attrs...)
	got := map[uint16][]byte{}
	if err := ScanAttrs(msg, 4, func(ad *netlink.AttributeDecoder) { got[ad.Type()] = ad.Bytes() }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || string(got[1]) != "\x07" || string(got[3]) != "\x08\x09" {
		t.Errorf("attributes after the header: %v", got)
	}
	if err := ScanAttrs(msg[:3], 4, func(*netlink.AttributeDecoder) {}); err == nil {
		t.Error("a message shorter than its header was scanned")
	}
	// An attribute whose length runs past the message.
	bad := append([]byte{0xaa, 0xbb, 0xcc, 0xdd}, 0x20, 0x00, 0x01, 0x00, 0x07)
	if err := ScanAttrs(bad, 4, func(*netlink.AttributeDecoder) {}); err == nil {
		t.Error("a malformed attribute was scanned without an error")
	}
}

func TestDumpInterrupted(t *testing.T) {
	for _, flagged := range []bool{false, true} {
		c := nltest.Dial(func(req []netlink.Message) ([]netlink.Message, error) {
			if req[0].Header.Flags&netlink.Dump == 0 {
				t.Errorf("request flags %v, want a dump", req[0].Header.Flags)
			}
			m := netlink.Message{Header: netlink.Header{Type: req[0].Header.Type, Sequence: req[0].Header.Sequence, PID: req[0].Header.PID}, Data: []byte{1}}
			if flagged {
				m.Header.Flags |= netlink.DumpInterrupted
			}
			return []netlink.Message{m}, nil
		})
		msgs, err := Dump(c, 18, nil)
		c.Close()
		switch {
		case flagged && !errors.Is(err, ErrDumpInterrupted):
			t.Errorf("a reply flagged NLM_F_DUMP_INTR: %v, want ErrDumpInterrupted", err)
		case !flagged && (err != nil || len(msgs) != 1):
			t.Errorf("a whole reply: %d messages, %v", len(msgs), err)
		}
	}
}
