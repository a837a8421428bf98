package tc

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jsimonetti/rtnetlink/v2"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// fakeRetrier is defaultRetrier without the pauses, which it records.
func fakeRetrier(pauses *[]time.Duration) retrier {
	r := defaultRetrier
	r.sleep = func(d time.Duration) { *pauses = append(*pauses, d) }
	return r
}

func TestRetry(t *testing.T) {
	busy := &netlink.OpError{Op: "receive", Err: unix.EBUSY, Message: "Current ingress or clsact Qdisc has ongoing filter requests"}
	for _, c := range []struct {
		name      string
		errs      []error // what each call returns; nil after the end
		wantCalls int
		wantErr   error
		wantPause []time.Duration
	}{
		{"success", nil, 1, nil, nil},
		{"busy twice", []error{busy, busy}, 3, nil, []time.Duration{5 * time.Millisecond, 10 * time.Millisecond}},
		{"interrupted dump", []error{errDumpInterrupted}, 2, nil, []time.Duration{5 * time.Millisecond}},
		{"no buffer space", []error{os.NewSyscallError("recvmsg", unix.ENOBUFS)}, 2, nil, []time.Duration{5 * time.Millisecond}},
		{"interrupted call", []error{fmt.Errorf("wrapped: %w", unix.EINTR), unix.EAGAIN}, 3, nil, []time.Duration{5 * time.Millisecond, 10 * time.Millisecond}},
		{"permanent", []error{unix.EINVAL, unix.EINVAL}, 1, unix.EINVAL, nil},
		{"transient then permanent", []error{unix.EBUSY, unix.EEXIST}, 2, unix.EEXIST, []time.Duration{5 * time.Millisecond}},
		{"busy for ever", slices.Repeat([]error{busy}, 10), 5, unix.EBUSY,
			[]time.Duration{5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var pauses []time.Duration
			r := fakeRetrier(&pauses)
			calls := 0
			err := r.do(func() error {
				calls++
				if calls <= len(c.errs) {
					return c.errs[calls-1]
				}
				return nil
			})
			if calls != c.wantCalls {
				t.Errorf("%d calls, want %d", calls, c.wantCalls)
			}
			if c.wantErr == nil && err != nil || c.wantErr != nil && !errors.Is(err, c.wantErr) {
				t.Errorf("error %v, want %v", err, c.wantErr)
			}
			if !slices.Equal(pauses, c.wantPause) {
				t.Errorf("pauses %v, want %v", pauses, c.wantPause)
			}
		})
	}
}

// TestRetryKeepsKernelMessage: the error of the last try, with the kernel's
// extended acknowledgement, is what the caller gets.
func TestRetryKeepsKernelMessage(t *testing.T) {
	var pauses []time.Duration
	r := fakeRetrier(&pauses)
	err := r.do(func() error {
		return &netlink.OpError{Op: "receive", Err: unix.EBUSY, Message: "Current ingress or clsact Qdisc has ongoing filter requests"}
	})
	for _, want := range []string{"ongoing filter requests", "tried 5 times", "device or resource busy"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
}

// TestDumpRetriesInterrupted: a dump whose messages carry NLM_F_DUMP_INTR
// is run again, and only the complete one is used.
func TestDumpRetriesInterrupted(t *testing.T) {
	calls := 0
	c := nltest.Dial(func(req []netlink.Message) ([]netlink.Message, error) {
		calls++
		if req[0].Header.Type != unix.RTM_GETLINK || req[0].Header.Flags&netlink.Dump == 0 {
			t.Errorf("request %v, want a link dump", req[0].Header)
		}
		names := []string{"lo", "eth0"}
		var flags netlink.HeaderFlags
		if calls == 1 {
			names = []string{"lo", "eth0-renamed-meanwhile", "eth0"}
			flags = netlink.DumpInterrupted
		}
		var msgs []netlink.Message
		for i, name := range names {
			msgs = append(msgs, linkMessage(t, req[0], i+1, name, flags))
		}
		msgs = append(msgs, netlink.Message{Header: netlink.Header{Sequence: req[0].Header.Sequence, PID: nltest.PID}})
		return nltest.Multipart(msgs)
	})
	defer c.Close()
	var pauses []time.Duration
	r := &rtnl{c: c, retry: fakeRetrier(&pauses)}

	ifcs, err := r.links()
	if err != nil {
		t.Fatal(err)
	}
	if calls != 2 {
		t.Errorf("%d dumps, want 2 (the interrupted one and its retry)", calls)
	}
	want := []iface{{1, "lo"}, {2, "eth0"}}
	if !slices.Equal(ifcs, want) {
		t.Errorf("links %v, want %v", ifcs, want)
	}
}

// TestLookupRetriesBusy: EBUSY from the kernel is retried; ENODEV is the
// answer "no such interface", not retried.
func TestLookupRetriesBusy(t *testing.T) {
	var answers []int // errno per call, 0 for the link
	c := nltest.Dial(func(req []netlink.Message) ([]netlink.Message, error) {
		var lm rtnetlink.LinkMessage
		if err := lm.UnmarshalBinary(req[0].Data); err != nil || req[0].Header.Type != unix.RTM_GETLINK || lm.Index != 7 {
			t.Errorf("request %v (%+v, %v), want RTM_GETLINK for ifindex 7", req[0].Header, lm, err)
		}
		errno := answers[0]
		answers = answers[1:]
		if errno != 0 {
			return nltest.Error(errno, req)
		}
		return []netlink.Message{linkMessage(t, req[0], 7, "veth12ab", 0)}, nil
	})
	defer c.Close()
	var pauses []time.Duration
	r := &rtnl{c: c, retry: fakeRetrier(&pauses)}

	answers = []int{int(unix.EBUSY), int(unix.EBUSY), 0}
	ifc, err := r.link(7)
	if err != nil {
		t.Fatal(err)
	}
	if ifc != (iface{7, "veth12ab"}) || len(pauses) != 2 || len(answers) != 0 {
		t.Errorf("got %v after %d pauses, %d answers unused", ifc, len(pauses), len(answers))
	}

	pauses = nil
	answers = []int{int(unix.ENODEV), 0}
	if _, err := r.link(7); !errors.Is(err, ErrNoInterface) {
		t.Errorf("lookup of a missing interface: %v, want ErrNoInterface", err)
	}
	if len(pauses) != 0 {
		t.Errorf("ENODEV was retried")
	}
}

// linkMessage is an RTM_NEWLINK reply to req.
func linkMessage(tb testing.TB, req netlink.Message, index int, name string, flags netlink.HeaderFlags) netlink.Message {
	tb.Helper()
	m := rtnetlink.LinkMessage{Index: uint32(index), Attributes: &rtnetlink.LinkAttributes{Name: name}}
	data, err := m.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	return netlink.Message{
		Header: netlink.Header{
			Type:     unix.RTM_NEWLINK,
			Flags:    flags,
			Sequence: req.Header.Sequence,
			PID:      nltest.PID,
		},
		Data: data,
	}
}
