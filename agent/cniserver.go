package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshredirect/meshredirect/cni"
)

// ServeCNI serves the chained CNI plugin on a Unix socket (mode 0600: only
// root, which the kubelet runs plugins as, may connect) until ctx ends.
// A request is handled like an informer event, under the same lock, so an
// enrolment from the plugin and one from the informer for the same pod
// leave one set of programs and entries.
func (a *Agent) ServeCNI(ctx context.Context, socket string) error {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return fmt.Errorf("create the directory of %s: %w", socket, err)
	}
	l, err := listenPrivate(socket)
	if err != nil {
		return err
	}
	bound, err := os.Stat(socket)
	if err != nil {
		l.Close()
		return fmt.Errorf("stat %s: %w", socket, err)
	}
	defer func() {
		// Remove the socket on the way out, unless another agent has
		// bound the path since.
		if now, err := os.Stat(socket); err == nil && os.SameFile(now, bound) {
			os.Remove(socket)
		}
	}()
	mux := http.NewServeMux()
	mux.HandleFunc(cni.PathAdd, a.cniHandler("add", a.cniAdd))
	mux.HandleFunc(cni.PathDel, a.cniHandler("del", a.cniDel))
	mux.HandleFunc(cni.PathCheck, a.cniHandler("check", a.cniCheck))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	shutDown := make(chan struct{})
	go func() {
		defer close(shutDown)
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	a.log.Info("serving the CNI plugin", "socket", socket)
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	// Serve returns as soon as Shutdown begins; the requests in flight
	// finish (or time out) before the caller may close the datapath.
	<-shutDown
	return nil
}

// cniHandler serves one command of the plugin (add, del or check), counted
// in meshredirect_cni_requests_total by result and timed.
func (a *Agent) cniHandler(command string, fn func(context.Context, cni.PodRequest) (cni.Reply, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		result := cniResultOK
		defer func() {
			a.m.cniRequests.WithLabelValues(command, result).Inc()
			a.m.cniDuration.WithLabelValues(command).Observe(time.Since(start).Seconds())
		}()
		var req cni.PodRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			result = cniResultBadRequest
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		if req.Namespace == "" || req.Name == "" {
			result = cniResultBadRequest
			http.Error(w, "bad request: no pod namespace and name", http.StatusBadRequest)
			return
		}
		if !a.Ready() && r.URL.Path == cni.PathAdd {
			// Before the first reconcile the node's state is not known;
			// the kubelet retries.
			result = cniResultStarting
			http.Error(w, "the agent is starting; retry", http.StatusServiceUnavailable)
			return
		}
		reply, err := fn(r.Context(), req)
		if err != nil {
			result = cniResultError
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(reply)
	}
}

// cniAdd captures a new pod before its first packet: decided from the
// informer cache, or the API for a pod the cache has not seen yet; IPs from
// the primary CNI's result, which the kubelet has not reported yet.
//
// Until it does, the pod's status shows no IPs (a new pod) or those of the
// sandbox a CNI DEL tore down (a recreated one), and a resync or an
// informer event deciding from the status would take the capture away
// again, or retry "interface not found" at the old IPs. So the sandbox is
// remembered (see addedSandbox) and stands for the status until the status
// shows its IPs, other IPs, or the pod or the sandbox is deleted. A
// restarted agent remembers none: the pins keep the capture, and its
// reconciles keep the entries that no pod's status claims while their
// veth still leads to them and an ambient pod waits for its IPs (see
// unclaimedCapture); the status then enrols the pod as usual. Until then
// it does not count the pod as enrolled: a CHECK says it is not captured.
func (a *Agent) cniAdd(ctx context.Context, req cni.PodRequest) (cni.Reply, error) {
	key := req.Namespace + "/" + req.Name
	// A new sandbox: whatever a DEL tore down before no longer holds the
	// pod back, whether or not this one is captured; its IPs may stay in
	// the status for a while yet.
	a.mu.Lock()
	replaced := a.tornDown[key].ips
	delete(a.tornDown, key)
	a.mu.Unlock()
	pod, d, err := a.decideCNI(ctx, req)
	if err != nil {
		return cni.Reply{}, err
	}
	if !d.Ambient {
		a.log.Info("CNI ADD: pod not ambient", "pod", key, "reason", d.Reason)
		return cni.Reply{Captured: false, Reason: d.Reason}, nil
	}
	var ips []netip.Addr
	for _, s := range req.IPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return cni.Reply{}, fmt.Errorf("pod %s: bad IP %q in the CNI result", key, s)
		}
		// A pod's address is unicast and routable: 0.0.0.0, loopback,
		// link-local or multicast in the endpoints map would let any pod's
		// packets from it pass as this pod's.
		if !ip.IsGlobalUnicast() {
			return cni.Reply{}, fmt.Errorf("pod %s: IP %s in the CNI result is not a unicast pod address", key, s)
		}
		ips = append(ips, ip.Unmap())
	}
	if len(ips) == 0 {
		ips = podIPs(pod)
	}
	if len(ips) == 0 {
		return cni.Reply{}, fmt.Errorf("pod %s: no IP in the CNI result (is meshredirect-cni chained after the primary CNI?)", key)
	}
	a.work.Lock()
	err = a.enrol(key, pod, ips, req.Netns, d)
	if err == nil && a.inPod() {
		// Fail closed, as istio-cni does: the pod starts only once
		// ztunnel has its listeners in the pod's netns.
		if acked, ackErr := a.zds.Acked(string(pod.UID)); !acked {
			err = fmt.Errorf("ztunnel has not taken the pod (is ztunnel running on this node and connected to %s?)", a.cfg.ZDSSocket)
			if ackErr != nil {
				err = fmt.Errorf("ztunnel refused the pod: %w", ackErr)
			}
		}
	}
	if err == nil {
		// Recorded before the lock goes: a resync waiting for it must find
		// the sandbox.
		a.mu.Lock()
		a.added[key] = addedSandbox{
			sandbox:  sandbox{containerID: req.ContainerID, netns: req.Netns, ips: ips},
			uid:      pod.UID,
			replaced: replaced,
		}
		a.mu.Unlock()
	}
	a.work.Unlock()
	if err != nil {
		return cni.Reply{}, fmt.Errorf("capture pod %s: %w", key, err)
	}
	a.log.Info("CNI ADD: captured", "pod", key, "ips", ips)
	a.queue.Add(key) // the informer's view settles it again later
	return cni.Reply{Captured: true, Reason: d.Reason}, nil
}

// cniDel lets a pod's sandbox go. A DEL for an old sandbox of a pod that
// has a new one (other IPs) leaves the new one's capture alone.
//
// The kubelet runs the chain's DELs in reverse, ours before the primary
// plugin's, which deletes the veth, and the pod object stays Running with
// the sandbox's IPs meanwhile (the kubelet recreates the sandbox, or the
// pod's deletion is not finished). The informer or a resync would capture
// the pod again: on the veth about to go, leaving entries that point at a
// deleted interface, or on none, retrying "interface not found". So the
// sandbox is remembered as torn down, and the pod is not captured while its
// IPs are that sandbox's: until an ADD (a new sandbox, captured by the ADD),
// other IPs (a new sandbox whose ADD this agent missed) or the pod's
// deletion. A restarted agent remembers none: it retries such a pod until
// its object is updated or deleted, as before.
func (a *Agent) cniDel(_ context.Context, req cni.PodRequest) (cni.Reply, error) {
	key := req.Namespace + "/" + req.Name
	var ips []netip.Addr
	for _, s := range req.IPs {
		if ip, err := netip.ParseAddr(s); err == nil {
			ips = append(ips, ip.Unmap())
		}
	}
	a.work.Lock()
	defer a.work.Unlock()
	a.mu.Lock()
	prev, had := a.enrolled[key]
	added, pending := a.added[key]
	a.mu.Unlock()
	if had && len(ips) > 0 && !slices.ContainsFunc(prev.dp.IPs, func(ip netip.Addr) bool { return slices.Contains(ips, ip) }) {
		return cni.Reply{Captured: true, Reason: "the DEL is for an older sandbox"}, nil
	}
	if pending && req.ContainerID != "" && added.containerID != "" && req.ContainerID != added.containerID {
		// The last ADD was another container's: this DEL is an older
		// sandbox's, whatever IPs the IPAM gave both.
		return cni.Reply{Captured: true, Reason: "the DEL is for an older sandbox"}, nil
	}
	if len(ips) == 0 && had {
		ips = prev.dp.IPs // no result cached for this DEL: the sandbox we captured
	}
	a.mu.Lock()
	delete(a.added, key)
	if len(ips) > 0 {
		a.tornDown[key] = sandbox{containerID: req.ContainerID, netns: req.Netns, ips: ips}
	}
	a.mu.Unlock()
	if !had {
		return cni.Reply{Reason: "not captured"}, nil
	}
	pod, _ := a.pods.Pods(req.Namespace).Get(req.Name)
	if err := a.leave(key, pod, "CNI DEL"); err != nil {
		return cni.Reply{}, err
	}
	return cni.Reply{Reason: "released"}, nil
}

// sandbox is a pod's sandbox as a CNI DEL described it.
type sandbox struct {
	containerID string
	netns       string
	ips         []netip.Addr
}

func (s sandbox) String() string {
	if s.netns == "" { // DEL may come after the netns is gone
		return s.containerID
	}
	return s.containerID + " (netns " + s.netns + ")"
}

// tornDownSandbox returns the sandbox of pod key that a CNI DEL tore down,
// if ips, the pod's IPs in the API, are still that sandbox's. Other IPs
// are a new sandbox's, whose ADD this agent missed: the record is dropped.
func (a *Agent) tornDownSandbox(key string, ips []netip.Addr) (sandbox, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, ok := a.tornDown[key]
	if !ok {
		return sandbox{}, false
	}
	for _, ip := range ips {
		if !slices.Contains(sb.ips, ip) {
			delete(a.tornDown, key)
			return sandbox{}, false
		}
	}
	return sb, true
}

// addedSandbox is the sandbox a CNI ADD captured, kept until the pod's
// status catches up with it (see cniAdd).
type addedSandbox struct {
	sandbox
	// uid is the pod's: a pod of the same name created since is another.
	uid types.UID
	// replaced are the IPs of the sandbox a CNI DEL tore down before the
	// ADD, which the status may still show.
	replaced []netip.Addr
}

// addedSandbox returns the sandbox the last CNI ADD of pod captured while
// the pod's status, ips, has not caught up with it: it shows no IPs, or
// only those of the sandbox torn down before the ADD. Once it shows the
// ADD's IPs (the normal path takes over) or others (a newer sandbox: the
// status wins), the record is dropped.
func (a *Agent) addedSandbox(pod *corev1.Pod, ips []netip.Addr) (addedSandbox, bool) {
	key := pod.Namespace + "/" + pod.Name
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, ok := a.added[key]
	if !ok {
		return addedSandbox{}, false
	}
	caughtUp := len(ips) > 0 && subset(ips, sb.ips)
	behind := len(ips) == 0 || subset(ips, sb.replaced)
	if sb.uid == pod.UID && behind && !caughtUp {
		return sb, true
	}
	delete(a.added, key)
	return addedSandbox{}, false
}

// subset reports whether every one of ips is in of.
func subset(ips, of []netip.Addr) bool {
	for _, ip := range ips {
		if !slices.Contains(of, ip) {
			return false
		}
	}
	return true
}

// cniCheck verifies that an ambient pod's capture is in place.
func (a *Agent) cniCheck(ctx context.Context, req cni.PodRequest) (cni.Reply, error) {
	key := req.Namespace + "/" + req.Name
	_, d, err := a.decideCNI(ctx, req)
	if err != nil {
		return cni.Reply{}, err
	}
	if !d.Ambient {
		return cni.Reply{Reason: d.Reason}, nil
	}
	a.mu.Lock()
	e, had := a.enrolled[key]
	a.mu.Unlock()
	if !had {
		return cni.Reply{}, fmt.Errorf("pod %s is ambient (%s) but not captured", key, d.Reason)
	}
	attachments, err := a.dp.Attachments()
	if err != nil {
		return cni.Reply{}, err
	}
	hooks := 0
	for _, at := range attachments {
		if at.Ifindex == e.dp.HostIfindex {
			hooks++
		}
	}
	if hooks < 2 {
		return cni.Reply{}, fmt.Errorf("pod %s is ambient but its veth (ifindex %d) has %d of its 2 programs", key, e.dp.HostIfindex, hooks)
	}
	return cni.Reply{Captured: true, Reason: d.Reason}, nil
}

// decideCNI returns the request's pod and the ambient decision on it.
func (a *Agent) decideCNI(ctx context.Context, req cni.PodRequest) (*corev1.Pod, Decision, error) {
	pod, ns, err := a.lookupPod(ctx, req)
	if err != nil {
		return nil, Decision{}, err
	}
	return pod, a.policy.Decide(pod, ns), nil
}

// lookupPod returns the pod and its namespace from the informer caches, or
// from the API when the cache has not seen them yet (a pod created a
// moment ago).
func (a *Agent) lookupPod(ctx context.Context, req cni.PodRequest) (*corev1.Pod, *corev1.Namespace, error) {
	pod, err := a.pods.Pods(req.Namespace).Get(req.Name)
	if err != nil || (req.UID != "" && string(pod.UID) != req.UID) {
		ctx, cancel := context.WithTimeout(ctx, apiTimeout)
		defer cancel()
		pod, err = a.cfg.Client.CoreV1().Pods(req.Namespace).Get(ctx, req.Name, metav1.GetOptions{})
		if err != nil {
			return nil, nil, fmt.Errorf("get pod %s/%s: %w", req.Namespace, req.Name, err)
		}
	}
	ns, err := a.namespaces.Get(req.Namespace)
	if apierrors.IsNotFound(err) {
		ctx, cancel := context.WithTimeout(ctx, apiTimeout)
		defer cancel()
		ns, err = a.cfg.Client.CoreV1().Namespaces().Get(ctx, req.Namespace, metav1.GetOptions{})
	}
	if err != nil {
		return nil, nil, fmt.Errorf("get namespace %s: %w", req.Namespace, err)
	}
	return pod, ns, nil
}

// listenPrivate listens on a Unix socket at path that only root may
// connect to from its first instant: it is bound in a fresh 0700 directory
// beside path, restricted to 0600, then renamed over path (replacing a
// socket an earlier agent left). Binding at path and then changing the
// mode would leave a moment in which anyone could connect.
func listenPrivate(path string) (*net.UnixListener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".cni-sock-")
	if err != nil {
		return nil, fmt.Errorf("create a private directory beside %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// The listener would unlink tmp, which is gone once renamed; ServeCNI
	// removes path itself.
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict %s to root: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("move the CNI socket to %s: %w", path, err)
	}
	return l, nil
}
