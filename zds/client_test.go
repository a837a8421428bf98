package zds

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openFDs counts the process's open descriptors.
func openFDs(tb testing.TB) int {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	return len(ents)
}

// mustRawAgent listens like an agent and returns the accepted connection of
// a Client, after checking its hello, so a test can send any packet.
func mustRawAgent(tb testing.TB) (*net.UnixConn, *Client) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "ztunnel.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	c := mustDial(tb, path)
	agent, err := ln.AcceptUnix()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { agent.Close() })
	buf := make([]byte, 64)
	agent.SetDeadline(time.Now().Add(5 * time.Second))
	n, err := agent.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], []byte{0x08, 0x01}) {
		tb.Fatalf("hello = %x, %v; want 0801 (version V1)", buf[:n], err)
	}
	return agent, c
}

// TestClientRecv: the Client refuses what ztunnel refuses (protocol.rs) and
// never leaks a descriptor it was sent.
func TestClientRecv(t *testing.T) {
	add, _ := Request{Add: &AddWorkload{UID: "u1", WorkloadInfo: &WorkloadInfo{Name: "web-0"}}}.Marshal()
	del, _ := Request{Del: &DelWorkload{UID: "u1"}}.Marshal()
	unknownOnly := appendMessage(nil, 9, nil)
	for _, tc := range []struct {
		name   string
		packet []byte
		fds    int
		want   string // "" for success
	}{
		{"add with its netns", add, 1, ""},
		{"del", del, 0, ""},
		{"add without a descriptor", add, 0, "no network namespace descriptor"},
		{"add with two descriptors", add, 2, "2 descriptors"},
		{"del with a descriptor", del, 1, "unexpected descriptor"},
		{"no payload", unknownOnly, 0, "no payload"},
		{"longer than ztunnel reads", append(add, bytes.Repeat([]byte{0}, MaxMessageSize)...), 0, "truncated"},
		{"malformed", []byte{0x0a, 0x09}, 1, "decode WorkloadRequest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			agent, c := mustRawAgent(t)
			before := openFDs(t)
			var oob []byte
			if tc.fds > 0 {
				fds := make([]int, tc.fds)
				for i := range fds {
					f, err := os.Open("/proc/self/ns/net")
					if err != nil {
						t.Fatal(err)
					}
					defer f.Close()
					fds[i] = int(f.Fd())
				}
				oob = unix.UnixRights(fds...)
			}
			if _, _, err := agent.WriteMsgUnix(tc.packet, oob, nil); err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			r, f, err := c.Recv()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Recv: %v", err)
				}
				if (f != nil) != (r.Add != nil) {
					t.Errorf("Recv = %s with netns %v", r.Kind(), f)
				}
				if f != nil {
					f.Close()
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.want) || f != nil {
				t.Fatalf("Recv = %s, %v, %v; want an error about %q", r.Kind(), f, err, tc.want)
			}
			if after := openFDs(t); after != before+tc.fds {
				t.Errorf("%d descriptors open after Recv, want %d (the sender's own)", after, before+tc.fds)
			}
			// The connection goes on after a refused packet.
			if err := c.Ack(tc.want); err != nil {
				t.Errorf("Ack: %v", err)
			}
		})
	}
}

// TestDialNobody: dialing a path nobody listens on is an error with a hint.
func TestDialNobody(t *testing.T) {
	_, err := Dial(context.Background(), filepath.Join(t.TempDir(), "none.sock"))
	if err == nil || !strings.Contains(err.Error(), "node agent") || !errors.Is(err, unix.ENOENT) {
		t.Errorf("Dial = %v, want ENOENT with a hint", err)
	}
}
