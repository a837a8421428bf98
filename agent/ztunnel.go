package agent

import (
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshredirect/meshredirect/dataplane"
)

// ztunnelState is the ztunnel the datapath was last set up for.
type ztunnelState struct {
	uid   types.UID
	key   string
	ready bool
}

// chooseZtunnel picks the node's ztunnel among pods: the Ready pod matching
// the selector, the newest if several are (a rollout starts the new one
// before it stops the old), and the newest not-ready one with an IP if none
// is Ready, so that its datapath is set up before it becomes Ready.
func chooseZtunnel(pods []*corev1.Pod, sel labels.Selector) (pod *corev1.Pod, ready bool) {
	var best *corev1.Pod
	bestReady := false
	for _, p := range pods {
		if !sel.Matches(labels.Set(p.Labels)) || p.DeletionTimestamp != nil || len(podIPs(p)) == 0 {
			continue
		}
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		r := podReady(p)
		switch {
		case best == nil, r && !bestReady:
			best, bestReady = p, r
		case r == bestReady && newer(p, best):
			best = p
		}
	}
	return best, bestReady
}

func newer(a, b *corev1.Pod) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return b.CreationTimestamp.Before(&a.CreationTimestamp)
	}
	return a.Name > b.Name
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// syncZtunnel sets the datapath up for the chosen ztunnel and its readiness,
// and writes the ambient config. Without a Ready ztunnel, captured traffic
// is dropped (fail closed) and the config says ztunnelReady:false.
func (a *Agent) syncZtunnel() {
	pods, err := a.pods.List(labels.Everything())
	if err != nil {
		a.log.Error("list pods", "error", err)
		return
	}
	a.updateNode()
	if a.inPod() {
		// In-pod mode ztunnel is ready for a pod once it acked the pod
		// (the CNI ADD waits for that); nothing is set up in its netns.
		a.writeAmbientConfig(a.zds.Connected())
		return
	}
	zt, ready := chooseZtunnel(pods, a.policy.Ztunnel)

	a.mu.Lock()
	cur := a.ztunnel
	a.mu.Unlock()

	if zt != nil && zt.UID != cur.uid {
		if err := a.setZtunnel(zt); err != nil {
			a.log.Error("set up ztunnel", "ztunnel", zt.Namespace+"/"+zt.Name, "error", err)
			a.events.Eventf(zt, corev1.EventTypeWarning, "ZtunnelSetupFailed", "could not set up the datapath for this ztunnel: %v", err)
			ready = false
			a.queue.AddRateLimited(keyZtunnel)
		} else {
			cur = ztunnelState{uid: zt.UID, key: zt.Namespace + "/" + zt.Name}
		}
	}
	if zt == nil || zt.UID != cur.uid {
		ready = false
	}
	if err := a.dp.SetZtunnelReady(ready); err != nil && ready {
		a.log.Error("set ztunnel ready", "error", err)
		ready = false
	}
	if cur.ready != ready {
		a.log.Info("ztunnel readiness changed", "ztunnel", cur.key, "ready", ready)
	}
	cur.ready = ready
	a.mu.Lock()
	a.ztunnel = cur
	a.mu.Unlock()
	a.writeAmbientConfig(ready)
}

// writeAmbientConfig exports ztunnel's readiness: the metric and the
// ambient config file.
func (a *Agent) writeAmbientConfig(ready bool) {
	if ready {
		a.m.ztunnelReady.Set(1)
	} else {
		a.m.ztunnelReady.Set(0)
	}
	if err := a.conf.write(AmbientConfig{ZtunnelReady: ready, RedirectMode: RedirectModeEBPF}); err != nil {
		a.log.Error("write the ambient config", "error", err)
	}
}

// setZtunnel finds ztunnel's veth and netns and sets the datapath up for it.
func (a *Agent) setZtunnel(zt *corev1.Pod) error {
	ips := podIPs(zt)
	iface, err := a.loc.Resolve(ips)
	if err != nil {
		return fmt.Errorf("find ztunnel's interface: %w", err)
	}
	path, err := a.loc.NetnsPath(iface.PeerNetnsID)
	if err != nil {
		return fmt.Errorf("find ztunnel's network namespace: %w", err)
	}
	return a.dp.SetZtunnel(dataplane.Ztunnel{Name: zt.Namespace + "/" + zt.Name, Netns: path, HostIfindex: iface.Ifindex, IPs: ips})
}

// updateNode writes what the datapath must know of the node itself: its
// tunnel ports (RelayPorts), and its own addresses: every address its netns
// holds (the host IPs, a CNI's gateway on a bridge or on each host veth:
// whatever source the kernel picks for the node's connections to pods),
// and the configured ones.
func (a *Agent) updateNode() {
	if ports, err := a.dp.RelayPorts(); err != nil {
		a.log.Error("list the node's tunnel ports", "error", err)
	} else if err := a.dp.SetRelayPorts(ports); err != nil {
		a.log.Error("set the node's tunnel ports", "error", err)
	}
	addrs, err := a.dp.NodeAddresses()
	if err != nil {
		a.log.Error("list the node's addresses", "error", err)
		return
	}
	for _, ip := range a.cfg.NodeIPs {
		if !slices.Contains(addrs, ip) {
			addrs = append(addrs, ip)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	a.mu.Lock()
	same := slices.Equal(addrs, a.nodeAddrs)
	a.mu.Unlock()
	if same {
		return
	}
	if err := a.dp.SetNodeAddresses(addrs); err != nil {
		a.log.Error("set the node's addresses", "error", err)
		return
	}
	a.mu.Lock()
	a.nodeAddrs = addrs
	a.mu.Unlock()
}
