// Package zds speaks ZDS, the protocol by which Istio's node agent hands
// ztunnel (1.21 and later, "in-pod mode") the network namespace of each
// ambient pod, so that ztunnel runs that pod's listeners inside it. It owns
// both ends: Server, the agent's side, which keeps the set of workloads and
// keeps the connected ztunnel in step with it; and Client, ztunnel's side,
// which the ztunnel stand-in of package testenv speaks. It knows nothing of
// Kubernetes, eBPF or netlink: agent decides which pods are workloads and
// calls Add and Del (internal/layers keeps it below agent).
//
// # Wire contract
//
// The messages are those of zds.proto in this directory, encoded by hand
// with protowire (messages.go); the package name istio.workload.zds and the
// field numbers are the contract. Facts come from istio/istio
// pkg/zdsapi/zds.proto (the messages and the protocol comment),
// cni/pkg/nodeagent/ztunnelserver.go and ztunnelserver_linux.go (the agent:
// snapshot, keep, the 5s read/write deadline) and istio/ztunnel
// src/inpod/protocol.rs (ztunnel: a 1024-byte receive buffer, truncated
// packets refused, exactly one descriptor with an add and none otherwise).
//
//   - The socket is a Unix SOCK_SEQPACKET socket, by default
//     /var/run/ztunnel/ztunnel.sock; one packet is one protobuf message of at
//     most 1024 bytes (MaxMessageSize).
//   - ztunnel connects and sends ZdsHello{version: V1}.
//   - The agent sends WorkloadRequest messages strictly one at a time, each
//     answered by WorkloadResponse{ack} (an empty error is success) before
//     the next. An add carries the pod's netns as SCM_RIGHTS in the same
//     packet.
//   - First a snapshot: an add for every known workload, or a keep for one
//     whose netns the agent cannot open ("keep it if you have it"); then
//     snapshot_sent, after which ztunnel drops what it was not sent. Then add
//     and del as pods come and go. del's uid is field 2.
//
// Decoding skips unknown fields (newer ztunnels and agents may add some) and
// refuses malformed input with an error naming the message; wire_test.go
// checks against the protobuf library, driven by a descriptor of zds.proto,
// that both encode the same bytes and decode each other's, and the fuzz
// targets check the same on arbitrary input.
//
// # Failure behaviour
//
// The Server serves one ztunnel at a time: a connection whose hello is V1
// replaces the current one (ztunnel restarted); any other hello, or none
// within the ack timeout, is logged and the connection closed. Every write
// and every wait for an ack is bounded by ServerOptions.AckTimeout (5s, as
// istio-cni): a ztunnel that misses it is disconnected and will reconnect to
// a fresh snapshot. A ztunnel that leaves is noticed at once, also when
// nothing is in flight, and ends every Add or Del waiting on it with an
// error wrapping ErrDisconnected. Add with no ztunnel returns ErrNoZtunnel
// at once. An add ztunnel refuses is an *AckError for the caller, is logged
// with the pod and counted (Stats.AckErrors), and is sent again with backoff
// (ServerOptions.RetryBackoff) while the connection lasts. In every case the
// workload stays in the set, so the next connection's snapshot carries it.
// The Server opens a pod's netns only to send it and closes it right after:
// it holds no namespace between sends.
package zds
