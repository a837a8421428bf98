package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// DefaultSocket is where the agent serves the plugin.
const DefaultSocket = "/var/run/meshredirect/cni.sock"

// Paths of the requests.
const (
	PathAdd   = "/v1/add"
	PathDel   = "/v1/del"
	PathCheck = "/v1/check"
)

// PodRequest describes a pod as the CNI runtime knows it.
type PodRequest struct {
	Namespace   string `json:"namespace"`
	Name        string `json:"name"`
	UID         string `json:"uid,omitempty"`
	ContainerID string `json:"containerID"`
	// Netns is the path of the pod's network namespace (CNI_NETNS).
	Netns string `json:"netns,omitempty"`
	// IPs are the pod's addresses from the primary CNI's result, known
	// before the kubelet reports them in the pod's status.
	IPs []string `json:"ips,omitempty"`
}

// Reply is the agent's answer.
type Reply struct {
	// Captured says the pod's traffic goes through ztunnel now.
	Captured bool `json:"captured"`
	// Reason says why (the ambient decision), or what is wrong.
	Reason string `json:"reason"`
}

// Client talks to the agent over its Unix socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the agent's socket.
func NewClient(socket string) *Client {
	if socket == "" {
		socket = DefaultSocket
	}
	return &Client{Socket: socket, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

// ErrUnreachable wraps failures to reach the agent at all (no socket, no
// listener), as opposed to a refusal the agent sent.
var ErrUnreachable = errors.New("meshredirect agent not reachable")

// Do sends req to path and returns the agent's reply. An error from the
// agent carries its message.
func (c *Client) Do(ctx context.Context, path string, req PodRequest) (Reply, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return Reply{}, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://meshredirect"+path, bytes.NewReader(body))
	if err != nil {
		return Reply{}, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(hr)
	if err != nil {
		return Reply{}, fmt.Errorf("%w at %s: %v", ErrUnreachable, c.Socket, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return Reply{}, fmt.Errorf("meshredirect agent at %s: %s", c.Socket, bytes.TrimSpace(raw))
	}
	var r Reply
	if err := json.Unmarshal(raw, &r); err != nil {
		return Reply{}, fmt.Errorf("meshredirect agent at %s: bad reply %q: %w", c.Socket, raw, err)
	}
	return r, nil
}

// DefaultTimeout bounds a plugin's wait for the agent: an enrolment that
// waits for the API and attaches programs takes well under a second; the
// kubelet retries a failed ADD.
const DefaultTimeout = 30 * time.Second
