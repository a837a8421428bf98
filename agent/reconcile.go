package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	kscheme "k8s.io/client-go/kubernetes/scheme"

	"github.com/meshredirect/meshredirect/dataplane"
)

func scheme() *runtime.Scheme { return kscheme.Scheme }

// newLimiter bounds the overall retry rate of the queue (50/s, bursts of
// 300), so a node-wide failure cannot turn into a busy loop.
func newLimiter() *rate.Limiter { return rate.NewLimiter(rate.Limit(50), 300) }

// apiTimeout bounds every call to the API server.
const apiTimeout = 10 * time.Second

// syncPod brings one pod's capture in line with its decision. An error
// requeues the pod with backoff.
func (a *Agent) syncPod(key string) error {
	ns, name, _ := strings.Cut(key, "/")
	pod, err := a.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return a.leave(key, nil, "pod deleted")
	}
	if err != nil {
		return err
	}
	namespace, _ := a.namespaces.Get(pod.Namespace)
	d := a.policy.Decide(pod, namespace)
	if !d.Ambient {
		return a.leave(key, pod, d.Reason)
	}
	ips := podIPs(pod)
	if sb, ok := a.addedSandbox(pod, ips); ok {
		// Captured by a CNI ADD whose IPs the kubelet has not reported yet
		// (see cniAdd): the ADD's IPs stand for the status.
		return a.enrol(key, pod, sb.ips, sb.netns, d)
	}
	if len(ips) == 0 {
		a.noteDecision(key, "waiting for an IP", func() { a.log.Info("waiting for the pod's IP", "pod", key, "reason", d.Reason) })
		return nil
	}
	if sb, ok := a.tornDownSandbox(key, ips); ok {
		// Still Running with the IPs of a sandbox a CNI DEL tore down
		// (see cniDel): not captured again until its new sandbox is.
		return a.leave(key, pod, fmt.Sprintf("sandbox %s torn down by CNI DEL; waiting for a new sandbox", sb))
	}
	return a.enrol(key, pod, ips, "", d)
}

// enrol captures a pod's traffic and records it on the pod. netns is its
// network namespace when a CNI ADD gave it; empty means find it.
func (a *Agent) enrol(key string, pod *corev1.Pod, ips []netip.Addr, netns string, d Decision) error {
	reason := d.Reason
	p, err := a.locate(key, pod, ips, netns)
	if err != nil {
		return err
	}
	p.Policy = d.Policy
	a.mu.Lock()
	prev, had := a.enrolled[key]
	a.mu.Unlock()
	if had && (prev.uid != pod.UID || a.moved(prev.dp, p) || !slices.Equal(prev.dp.IPs, p.IPs)) {
		// The same name, another pod (or another interface): the old one's
		// capture goes first.
		if err := a.release(prev); err != nil {
			a.m.unenrolErrors.WithLabelValues(reasonDataplane).Inc()
			return err
		}
	}
	err = a.capture(p, pod)
	acked := err == nil
	if waitingForZtunnel(err) && !a.ready.Load() {
		// The first reconcile: ztunnel is served only after it (Run),
		// and gets this pod in its first snapshot. A ztunnel that was
		// connected to the agent before this one still serves the pod.
		a.noteDecision(key, "captured before ztunnel is served", func() {
			a.log.Info("pod captured; ztunnel gets it in its snapshot once the agent is ready", "pod", key)
		})
	} else if waitingForZtunnel(err) {
		// Captured, and kept for ztunnel's snapshot: its traffic is
		// dropped until ztunnel connects and opens its listeners.
		a.noteDecision(key, "waiting for ztunnel", func() {
			a.log.Warn("pod captured; no ztunnel connected to hand it to: its traffic is dropped until one connects", "pod", key)
		})
	} else if err != nil {
		if errors.Is(err, dataplane.ErrInterfaceGone) {
			// Deleted while we enrolled it, or not wired yet: the next
			// attempt finds out which.
			a.m.enrolErrors.WithLabelValues(reasonInterfaceNotFound).Inc()
			a.log.Warn("pod's interface went away during enrolment; retrying", "pod", key, "error", err)
			return err
		}
		reason := reasonAttach
		switch {
		case errors.Is(err, dataplane.ErrMapFull):
			reason = reasonMapFull
		case isZDSError(err):
			reason = reasonZtunnel
		}
		a.m.enrolErrors.WithLabelValues(reason).Inc()
		a.events.Eventf(pod, corev1.EventTypeWarning, "EnrolFailed", "could not capture the pod's traffic: %v", err)
		a.log.Error("enrol failed", "pod", key, "error", err)
		return err
	}
	a.mu.Lock()
	a.enrolled[key] = enrolledPod{uid: pod.UID, dp: p}
	a.m.podsEnrolled.Set(float64(len(a.enrolled)))
	a.mu.Unlock()
	a.noteDecision(key, "enrolled "+p.Policy.String(), func() {
		a.log.Info("enrolled pod", "pod", key, "ips", ips, "interface", p.HostIfindex, "reason", reason)
		a.events.Eventf(pod, corev1.EventTypeNormal, "Enrolled", "traffic captured into ztunnel (%s)", reason)
	})
	// In-pod mode the annotation says ztunnel has the pod (Istio's
	// istio-cni sets it once ztunnel acked): not while the pod only waits
	// for ztunnel. A resync annotates it once ztunnel took it.
	if acked && pod.Annotations[RedirectionAnnotation] != RedirectionEnabled {
		if err := a.annotate(pod, true); err != nil {
			a.m.enrolErrors.WithLabelValues(reasonAnnotate).Inc()
			a.log.Error("annotate pod", "pod", key, "error", err)
			return err
		}
	}
	return nil
}

// locate finds where the pod is on the node: its host interface (node mode)
// or its network namespace (in-pod mode; netns when a CNI ADD gave it).
func (a *Agent) locate(key string, pod *corev1.Pod, ips []netip.Addr, netns string) (dataplane.Pod, error) {
	if a.inPod() && netns != "" {
		return dataplane.Pod{Name: key, IPs: ips, Netns: netns}, nil
	}
	iface, err := a.loc.Resolve(ips)
	if err != nil {
		if isNotFound(err) {
			a.m.enrolErrors.WithLabelValues(reasonInterfaceNotFound).Inc()
			a.events.Eventf(pod, corev1.EventTypeWarning, "InterfaceNotFound", "no interface on node %s leads to %v yet; retrying", a.cfg.NodeName, ips)
			a.log.Warn("pod's interface not found yet; retrying", "pod", key, "ips", ips, "error", err)
		} else {
			a.m.enrolErrors.WithLabelValues(reasonResolve).Inc()
			a.events.Eventf(pod, corev1.EventTypeWarning, "EnrolFailed", "could not find the pod's interface: %v", err)
			a.log.Error("find pod's interface", "pod", key, "ips", ips, "error", err)
		}
		return dataplane.Pod{}, err
	}
	p := dataplane.Pod{Name: key, IPs: ips, HostIfindex: iface.Ifindex, MAC: iface.PeerMAC}
	if a.inPod() {
		if p.Netns, err = a.loc.NetnsPath(iface.PeerNetnsID); err != nil {
			a.m.enrolErrors.WithLabelValues(reasonResolve).Inc()
			a.log.Warn("pod's network namespace not found yet; retrying", "pod", key, "ips", ips, "error", err)
			return dataplane.Pod{}, err
		}
	}
	return p, nil
}

// leave stops capturing a pod if this agent captured it, and removes the
// enrolment annotation from the pod if it still exists.
func (a *Agent) leave(key string, pod *corev1.Pod, reason string) error {
	a.mu.Lock()
	prev, had := a.enrolled[key]
	a.mu.Unlock()
	if had {
		if err := a.release(prev); err != nil {
			a.m.unenrolErrors.WithLabelValues(reasonDataplane).Inc()
			a.log.Error("unenrol failed", "pod", key, "error", err)
			return err
		}
		a.mu.Lock()
		delete(a.enrolled, key)
		a.m.podsEnrolled.Set(float64(len(a.enrolled)))
		a.mu.Unlock()
		a.log.Info("unenrolled pod", "pod", key, "reason", reason)
		if pod != nil {
			a.events.Eventf(pod, corev1.EventTypeNormal, "Unenrolled", "traffic no longer captured (%s)", reason)
		}
	} else {
		a.noteDecision(key, "skip: "+reason, func() {
			if pod != nil {
				a.log.Info("skipped pod", "pod", key, "reason", reason)
			}
		})
	}
	if pod == nil {
		a.forget(key)
		return nil
	}
	if pod.Annotations[RedirectionAnnotation] == RedirectionEnabled {
		if err := a.annotate(pod, false); err != nil && !apierrors.IsNotFound(err) {
			a.m.unenrolErrors.WithLabelValues(reasonAnnotate).Inc()
			a.log.Error("remove the enrolment annotation", "pod", key, "error", err)
			return err
		}
	}
	return nil
}

// noteDecision runs log once per change of a pod's state.
func (a *Agent) noteDecision(key, state string, log func()) {
	a.mu.Lock()
	changed := a.decisions[key] != state
	a.decisions[key] = state
	a.mu.Unlock()
	if changed {
		log()
	}
}

func (a *Agent) forget(key string) {
	a.mu.Lock()
	delete(a.decisions, key)
	delete(a.tornDown, key)
	delete(a.added, key)
	a.mu.Unlock()
}

// annotate sets (or removes) ambient.istio.io/redirection=enabled on the
// pod through the pods/status subresource, as istio-cni does: the agent
// needs no right to patch pods themselves.
func (a *Agent) annotate(pod *corev1.Pod, enabled bool) error {
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, RedirectionAnnotation, RedirectionEnabled)
	if !enabled {
		patch = fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, RedirectionAnnotation)
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	_, err := a.cfg.Client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("patch pod %s/%s status: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// reconcileAll computes the complete set of ambient pods of the node from
// the informer caches and makes the datapath match it: missing capture is
// added, capture of pods that are gone or left the mesh is removed. Ambient
// pods whose interface cannot be found right now keep whatever capture
// they have (a restarted agent must not drop a pod it cannot resolve for a
// moment) and are retried.
func (a *Agent) reconcileAll() error {
	p, err := a.plan()
	if err != nil {
		return err
	}
	return a.reconcilePlan(p)
}

// plan is what reconcileAll does, computed from the informer caches: the
// pods, and what desired makes of them.
type plan struct {
	took    time.Duration // computing it
	pods    []*corev1.Pod
	desired []dataplane.Pod
	keep    []netip.Addr
	byName  map[string]*corev1.Pod
	retry   []string
}

// plan lists the node's pods and locates the ambient ones: one lookup per
// pod.
func (a *Agent) plan() (plan, error) {
	start := time.Now()
	var (
		p   plan
		err error
	)
	if p.pods, err = a.pods.List(labels.Everything()); err != nil {
		return p, err
	}
	p.desired, p.keep, p.byName, p.retry = a.desired(p.pods)
	p.took = time.Since(start)
	return p, nil
}

// reconcilePlan makes the datapath match p.
func (a *Agent) reconcilePlan(p plan) error {
	start := time.Now().Add(-p.took)
	defer func() { a.m.reconcileDuration.Observe(time.Since(start).Seconds()) }()
	a.updateNode()
	pods, desired, keep, byName, retry := p.pods, p.desired, p.keep, p.byName, p.retry
	res, err := a.reconcileDataplane(desired, keep, byName)
	a.mu.Lock()
	for key := range a.enrolled {
		if _, ok := byName[key]; !ok {
			delete(a.enrolled, key)
		}
	}
	for _, p := range desired {
		if _, failed := res.Failed[p.Name]; !failed {
			a.enrolled[p.Name] = enrolledPod{uid: byName[p.Name].UID, dp: p}
		}
	}
	a.m.podsEnrolled.Set(float64(len(a.enrolled)))
	a.mu.Unlock()
	for _, key := range retry {
		a.queue.AddRateLimited(key)
	}
	for name := range res.Failed {
		a.queue.AddRateLimited(name)
	}
	// Every pod is looked at once more by the queue: annotations, and pods
	// that left the mesh while no agent ran.
	for _, pod := range pods {
		a.queue.Add(pod.Namespace + "/" + pod.Name)
	}
	a.log.Info("reconciled the node", "desired", len(desired), "enrolled", len(res.Enrolled), "unchanged", res.Unchanged,
		"removed_attachments", len(res.Detached), "removed_entries", len(res.Deleted), "failed", len(res.Failed),
		"retrying", len(retry), "duration", time.Since(start).Round(time.Millisecond))
	return err
}

// desired computes, from pods, the ambient pods to capture (located on
// the node), the IPs of ambient pods that cannot be located now (keep
// their capture), the desired pods by namespace/name, and those to retry.
func (a *Agent) desired(pods []*corev1.Pod) (desired []dataplane.Pod, keep []netip.Addr, byName map[string]*corev1.Pod, retry []string) {
	byName = map[string]*corev1.Pod{}
	claimed := map[netip.Addr]bool{} // every IP a pod's status, or its CNI ADD, gives it
	waiting := false                 // an ambient pod has no IPs yet
	for _, pod := range pods {
		key := pod.Namespace + "/" + pod.Name
		ips := podIPs(pod)
		for _, ip := range ips {
			claimed[ip] = true
		}
		ns, _ := a.namespaces.Get(pod.Namespace)
		d := a.policy.Decide(pod, ns)
		if !d.Ambient {
			continue
		}
		netns := ""
		if sb, ok := a.addedSandbox(pod, ips); ok {
			// The status has not caught up with a CNI ADD (see cniAdd).
			ips, netns = sb.ips, sb.netns
			for _, ip := range ips {
				claimed[ip] = true
			}
		}
		if len(ips) == 0 {
			waiting = true
			continue
		}
		if _, ok := a.tornDownSandbox(key, ips); ok {
			// Neither captured nor kept: what is left of the sandbox goes.
			continue
		}
		p, err := a.locate(key, pod, ips, netns)
		if err != nil {
			keep = append(keep, ips...)
			retry = append(retry, key)
			continue
		}
		p.Policy = d.Policy
		desired = append(desired, p)
		byName[key] = pod
	}
	if waiting {
		keep = append(keep, a.unclaimedCapture(claimed)...)
	}
	return desired, keep, byName, retry
}

// unclaimedCapture returns the IPs of the endpoints map's pod entries that
// no pod's status claims but whose veth is still there and still the
// route to them. While an ambient pod waits for its IPs, these may be its
// capture, made at its CNI ADD by an agent that has since restarted and
// taken its record of the ADD with it: they are kept rather than removed
// until the status says whose they are. An entry of a deleted veth, or of
// an IP that now leads elsewhere, is not kept.
func (a *Agent) unclaimedCapture(claimed map[netip.Addr]bool) []netip.Addr {
	entries, err := a.dp.PodEntries()
	if err != nil {
		a.log.Error("read the endpoints map", "error", err)
		return nil
	}
	var keep []netip.Addr
	for ip, ifindex := range entries {
		if claimed[ip] {
			continue
		}
		if iface, err := a.loc.Resolve([]netip.Addr{ip}); err == nil && iface.Ifindex == ifindex {
			keep = append(keep, ip)
		}
	}
	return keep
}

// prefill writes the ambient pods' map entries before ztunnel's programs
// are (re)placed: when the agent replaced an incompatible endpoints map, the new
// ztunnel programs must find the pods at once, or for a moment a new
// connection of an enrolled pod would be taken for inbound. It takes the
// start's plan, which the first reconcile then carries out: the pods are
// located once, not once for each.
func (a *Agent) prefill(desired []dataplane.Pod) {
	if err := a.dp.PutEntries(desired); err != nil {
		a.log.Error("prefill the endpoints map", "error", err)
	}
}
