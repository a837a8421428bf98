package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/zds"
)

// The ztunnel modes (DESIGN §6): which ztunnel the node runs.
const (
	// ZtunnelModeInPod serves ztunnel of Istio 1.21 and later: the agent
	// hands it each ambient pod's network namespace over ZDS, ztunnel
	// opens its listeners there, and the capture sits inside the pod.
	ZtunnelModeInPod = "inpod"
	// ZtunnelModeNode serves ztunnel 1.18-1.20, or any node proxy with
	// transparent listeners in its own network namespace: the capture
	// sits on the pods' host veths.
	ZtunnelModeNode = "node"
)

// zdsAckTimeout bounds the wait for ztunnel's answer to one add or del.
const zdsAckTimeout = 10 * time.Second

func (a *Agent) inPod() bool { return a.cfg.ZtunnelMode == ZtunnelModeInPod }

// ZtunnelConnected reports, in in-pod mode, whether a ztunnel is connected
// to the ZDS socket; in node mode, false.
func (a *Agent) ZtunnelConnected() bool { return a.zds != nil && a.zds.Connected() }

// moved tells whether p is somewhere else than prev: another host
// interface (node mode) or another network namespace (in-pod mode).
func (a *Agent) moved(prev, p dataplane.Pod) bool {
	if a.inPod() {
		return prev.Netns != p.Netns
	}
	return prev.HostIfindex != p.HostIfindex
}

// capture puts the datapath in place for p. In-pod mode it also hands the
// pod to ztunnel and waits for its ack: a pod's first packet must meet
// ztunnel's listeners, not only the capture. With no ztunnel connected the
// pod is kept for ztunnel's snapshot and the error says so; callers decide
// whether that fails the pod (a CNI ADD, fail closed) or waits for ztunnel
// (a reconcile: the capture holds, and drops, until ztunnel comes).
func (a *Agent) capture(p dataplane.Pod, pod *corev1.Pod) error {
	if !a.inPod() {
		return a.dp.Enroll(p)
	}
	if err := a.dp.EnrollInPod(p); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), zdsAckTimeout)
	defer cancel()
	err := a.zds.Add(ctx, zds.Workload{
		UID:   string(pod.UID),
		Info:  zds.WorkloadInfo{Name: pod.Name, Namespace: pod.Namespace, ServiceAccount: pod.Spec.ServiceAccountName},
		Netns: p.Netns,
	})
	if err != nil {
		return &zdsError{pod: p.Name, err: err}
	}
	return nil
}

// release undoes capture: ztunnel lets the pod go first (its listeners in
// the pod close), then the capture goes.
func (a *Agent) release(prev enrolledPod) error {
	if !a.inPod() {
		return a.dp.Unenroll(prev.dp)
	}
	ctx, cancel := context.WithTimeout(context.Background(), zdsAckTimeout)
	defer cancel()
	if err := a.zds.Del(ctx, string(prev.uid)); err != nil && !errors.Is(err, zds.ErrNoZtunnel) {
		// ztunnel is told at its next snapshot, which leaves the pod out.
		a.log.Warn("ztunnel did not acknowledge the pod's removal; its next snapshot leaves it out", "pod", prev.dp.Name, "error", err)
	}
	return a.dp.UnenrollInPod(prev.dp)
}

// zdsError is a capture that is in place but that ztunnel has not taken
// (none connected, an error ack, no ack in time).
type zdsError struct {
	pod string
	err error
}

func (e *zdsError) Error() string {
	return fmt.Sprintf("hand pod %s to ztunnel: %v", e.pod, e.err)
}

func (e *zdsError) Unwrap() error { return e.err }

func isZDSError(err error) bool {
	var z *zdsError
	return errors.As(err, &z)
}

// waitingForZtunnel tells whether err only says that no ztunnel is
// connected: the pod is captured and in the set ztunnel's snapshot will
// carry.
func waitingForZtunnel(err error) bool {
	return isZDSError(err) && errors.Is(err, zds.ErrNoZtunnel)
}

// reconcileDataplane makes the datapath match desired: node mode in one
// pass over the maps and the host veths, in-pod mode pod by pod (each has
// its own netns), releasing the pods this process enrolled that are no
// longer desired.
func (a *Agent) reconcileDataplane(desired []dataplane.Pod, keep []netip.Addr, byName map[string]*corev1.Pod) (dataplane.ReconcileResult, error) {
	if !a.inPod() {
		return a.dp.Reconcile(desired, keep)
	}
	res := dataplane.ReconcileResult{Failed: map[string]error{}}
	var errs []error
	for _, p := range desired {
		err := a.capture(p, byName[p.Name])
		switch {
		case err == nil:
			res.Enrolled = append(res.Enrolled, p.Name)
		case waitingForZtunnel(err):
			// Captured; ztunnel gets it in its snapshot when it connects.
			res.Enrolled = append(res.Enrolled, p.Name)
		default:
			res.Failed[p.Name] = err
			errs = append(errs, err)
		}
	}
	a.mu.Lock()
	var stale []enrolledPod
	for key, e := range a.enrolled {
		if _, ok := byName[key]; !ok {
			stale = append(stale, e)
		}
	}
	a.mu.Unlock()
	for _, e := range stale {
		if err := a.release(e); err != nil {
			errs = append(errs, err)
		}
	}
	// What no desired pod needs: the other mode's programs, the entries
	// of pods gone while no agent ran. A pod that failed keeps its
	// entries until it is retried.
	for _, p := range desired {
		if _, failed := res.Failed[p.Name]; failed {
			keep = append(keep, p.IPs...)
		}
	}
	errs = append(errs, a.releaseStale(desired, keep))
	pruned, err := a.dp.PruneInPod(desired, keep)
	res.Detached, res.Deleted = pruned.Detached, pruned.Deleted
	if err != nil {
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

// zdsCollector exports the ZDS server's counters: is ztunnel connected,
// and what was sent and acknowledged.
type zdsCollector struct {
	stats     func() zds.Stats
	connected *prometheus.Desc
	requests  *prometheus.Desc
	acks      *prometheus.Desc
	events    *prometheus.Desc
	workloads *prometheus.Desc
}

func newZDSCollector(stats func() zds.Stats) *zdsCollector {
	return &zdsCollector{
		stats: stats,
		connected: prometheus.NewDesc("meshredirect_zds_connected",
			"1 while a ztunnel is connected to the ZDS socket (in-pod mode), else 0.", nil, nil),
		requests: prometheus.NewDesc("meshredirect_zds_requests_total",
			"Requests sent to ztunnel over ZDS, by kind (add, keep, del, snapshot_sent).", []string{"kind"}, nil),
		acks: prometheus.NewDesc("meshredirect_zds_acks_total",
			"Acknowledgements ztunnel sent, by result (ok, error).", []string{"result"}, nil),
		events: prometheus.NewDesc("meshredirect_zds_connection_events_total",
			"ZDS connection events: accepted, hello_rejected, ack_timeout (the connection was dropped), disconnected (the connected ztunnel's connection ended and none replaced it).", []string{"event"}, nil),
		workloads: prometheus.NewDesc("meshredirect_zds_workloads",
			"Pods in the set handed to ztunnel (every connection's snapshot carries them).", nil, nil),
	}
}

func (c *zdsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.connected, c.requests, c.acks, c.events, c.workloads} {
		ch <- d
	}
}

func (c *zdsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	connected := 0.0
	if s.Connected {
		connected = 1
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(c.connected, connected)
	gauge(c.workloads, float64(s.Workloads))
	counter(c.requests, s.Adds, "add")
	counter(c.requests, s.Keeps, "keep")
	counter(c.requests, s.Dels, "del")
	counter(c.requests, s.SnapshotsSent, "snapshot_sent")
	counter(c.acks, s.Acks-s.AckErrors, "ok")
	counter(c.acks, s.AckErrors, "error")
	counter(c.events, s.Connections, "accepted")
	counter(c.events, s.HellosRejected, "hello_rejected")
	counter(c.events, s.AckTimeouts, "ack_timeout")
	counter(c.events, s.Disconnects, "disconnected")
}

// releaseStale releases the in-pod capture of the pods whose addresses the
// endpoints map holds but no desired (or kept) pod claims: pods that left
// the mesh while no agent ran, their capture still in their netns (pinned
// programs and maps outlive the agent). ztunnel, whose snapshot leaves
// them out, has let them go: captured, their TCP would meet no listener.
// A pod that was deleted took its netns along; only its entries are left,
// which PruneInPod removes.
func (a *Agent) releaseStale(desired []dataplane.Pod, keep []netip.Addr) error {
	want := map[netip.Addr]bool{}
	for _, p := range desired {
		for _, ip := range p.IPs {
			want[ip] = true
		}
	}
	for _, ip := range keep {
		want[ip] = true
	}
	entries, err := a.dp.PodEntries()
	if err != nil {
		return err
	}
	byNetns := map[string][]netip.Addr{}
	for ip := range entries {
		if want[ip] {
			continue
		}
		iface, err := a.loc.Resolve([]netip.Addr{ip})
		if err != nil {
			continue // no interface leads there: the pod is gone
		}
		path, err := a.loc.NetnsPath(iface.PeerNetnsID)
		if err != nil {
			continue
		}
		byNetns[path] = append(byNetns[path], ip)
	}
	var errs []error
	for path, ips := range byNetns {
		found, err := a.dp.ReleaseInPod(ips, path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if found {
			a.log.Info("released the in-pod capture of a pod no longer in the mesh", "netns", path, "ips", ips)
		}
	}
	return errors.Join(errs...)
}
