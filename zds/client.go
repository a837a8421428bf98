package zds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// MaxMessageSize is the largest ZDS packet ztunnel reads: it receives into a
// 1024-byte buffer and refuses a truncated packet (istio/ztunnel
// src/inpod/protocol.rs). The server refuses to send anything larger, and
// the Client reads with the same limit, so a test against it catches what
// ztunnel would refuse.
const MaxMessageSize = 1024

// maxFDs is how many descriptors Recv makes room for: one is the contract,
// the rest are received only to be closed rather than leaked.
const maxFDs = 8

// Client is ztunnel's side of a ZDS connection: it announces itself, then
// receives the agent's requests one at a time and acks each. It is what the
// ztunnel stand-in of the test environment speaks; a Client is not safe for
// concurrent Recv calls (the protocol has one request in flight).
type Client struct {
	conn *net.UnixConn
}

// Dial connects to the agent's ZDS socket at path and sends Hello{V1}.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("dial ZDS socket %s: %w (is the node agent running?)", path, err)
	}
	c := &Client{conn: conn.(*net.UnixConn)}
	if err := c.sendHello(Hello{Version: V1}); err != nil {
		c.conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) sendHello(h Hello) error {
	b, err := h.Marshal()
	if err != nil {
		return err
	}
	if _, err := c.conn.Write(b); err != nil {
		return fmt.Errorf("send hello to %s: %w", c.conn.RemoteAddr(), err)
	}
	return nil
}

// Recv returns the next request. For an add it also returns the pod's
// network namespace received with it (the caller closes it); descriptors
// beyond the one expected are closed. As ztunnel does, Recv refuses a
// truncated packet, an add without a descriptor and any other request with
// one; the packet is consumed either way, so the caller may Ack the error and
// go on. At the end of the connection it returns an error wrapping io.EOF.
func (c *Client) Recv() (Request, *os.File, error) {
	buf := make([]byte, MaxMessageSize)
	oob := make([]byte, unix.CmsgSpace(4*maxFDs))
	n, oobn, flags, _, err := c.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return Request{}, nil, fmt.Errorf("receive ZDS request: %w", err)
	}
	fds, fdErr := parseRights(oob[:oobn])
	var netns *os.File
	for i, fd := range fds {
		if i == 0 {
			netns = os.NewFile(uintptr(fd), "netns")
			continue
		}
		unix.Close(fd)
	}
	fail := func(err error) (Request, *os.File, error) {
		if netns != nil {
			netns.Close()
		}
		return Request{}, nil, err
	}
	switch {
	case fdErr != nil:
		return fail(fdErr)
	case flags&unix.MSG_TRUNC != 0:
		return fail(fmt.Errorf("receive ZDS request: packet longer than %d bytes (truncated)", MaxMessageSize))
	case flags&unix.MSG_CTRUNC != 0:
		return fail(errors.New("receive ZDS request: control data truncated (more than one descriptor?)"))
	case len(fds) > 1:
		return fail(fmt.Errorf("receive ZDS request: %d descriptors, want at most 1", len(fds)))
	}
	var r Request
	if err := r.Unmarshal(buf[:n]); err != nil {
		return fail(err)
	}
	switch kind := r.Kind(); {
	case kind == "empty":
		return fail(errors.New("receive ZDS request: no payload"))
	case kind == "add" && netns == nil:
		return fail(fmt.Errorf("receive ZDS add for uid %s: no network namespace descriptor", r.Add.UID))
	case kind != "add" && netns != nil:
		return fail(fmt.Errorf("receive ZDS %s: unexpected descriptor", kind))
	}
	return r, netns, nil
}

// Ack answers the last request; an empty errMsg is success.
func (c *Client) Ack(errMsg string) error {
	b, err := Response{Ack: &Ack{Error: errMsg}}.Marshal()
	if err != nil {
		return err
	}
	if _, err := c.conn.Write(b); err != nil {
		return fmt.Errorf("send ack to %s: %w", c.conn.RemoteAddr(), err)
	}
	return nil
}

// SetDeadline bounds the Recv and Ack calls in flight and to come, as
// net.Conn's SetDeadline does.
func (c *Client) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// Close ends the connection; the agent sees ztunnel leave.
func (c *Client) Close() error { return c.conn.Close() }

// parseRights returns the descriptors of every SCM_RIGHTS message in oob.
func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control data: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fds, fmt.Errorf("parse SCM_RIGHTS: %w", err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}
