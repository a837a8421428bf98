package realnode

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/testenv"
)

// pinDir is the chart's default --pin-dir.
const pinDir = "/sys/fs/bpf/meshredirect"

// status runs `meshredirect status --json` on the node, as an operator would.
func (c *cluster) status(t *testing.T) (pods, inPod []string, problems []string) {
	t.Helper()
	out, err := exec.Command(filepath.Join(c.Bin, "meshredirect"), "status", "--json", "--pin-dir", pinDir).Output()
	if err != nil {
		t.Fatalf("meshredirect status: %v", err)
	}
	var st struct {
		Pods     []struct{ IPs []string } `json:"pods"`
		InPod    []struct{ IPs []string } `json:"inPod"`
		Problems []string                 `json:"problems"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("meshredirect status --json: %v", err)
	}
	for _, p := range st.Pods {
		pods = append(pods, p.IPs...)
	}
	for _, p := range st.InPod {
		inPod = append(inPod, p.IPs...)
	}
	slices.Sort(pods)
	slices.Sort(inPod)
	return pods, inPod, st.Problems
}

// ambientPods returns the IPs and UIDs of the ambient namespace's running pods, from the API.
func (c *cluster) ambientPods(t *testing.T, ctx context.Context) (ips, uids []string) {
	t.Helper()
	list, err := c.Client.CoreV1().Pods(AmbientNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			for _, a := range PodAddrs(&p) {
				ips = append(ips, a.String())
			}
			uids = append(uids, string(p.UID))
		}
	}
	slices.Sort(ips)
	slices.Sort(uids)
	return ips, uids
}

// ztunnelPods returns the UIDs of the pods ztunnel's stand-in holds with listeners open.
func (c *cluster) ztunnelPods(ctx context.Context) []string {
	pods, err := c.zt.Pods(ctx)
	if err != nil {
		return []string{err.Error()}
	}
	var uids []string
	for _, p := range pods {
		if p.Up {
			uids = append(uids, p.UID)
		}
	}
	slices.Sort(uids)
	return uids
}

// statusMatchesAPI waits until `meshredirect status` lists exactly the API's ambient pods (by
// host veth in node mode, by netns in in-pod mode) and no problem, and in in-pod mode until
// ztunnel holds exactly those pods: nothing leaked, nothing missing.
func (c *cluster) statusMatchesAPI(t *testing.T, ctx context.Context) {
	t.Helper()
	var pods, inPod, problems, want, uids, zds []string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		want, uids = c.ambientPods(t, ctx)
		pods, inPod, problems = c.status(t)
		if c.mode == "inpod" {
			if zds = c.ztunnelPods(ctx); !slices.Equal(zds, uids) {
				return false, nil
			}
		}
		// In-pod mode lists the pods under their netns, node mode by their host veth.
		got := pods
		if c.mode == "inpod" {
			got = inPod
			if len(pods) > 0 {
				return false, nil
			}
		}
		return slices.Equal(got, want) && len(problems) == 0, nil
	})
	if err != nil {
		t.Fatalf("meshredirect status: pods %v, in-pod %v, problems %q; ztunnel's pods %v; the API's ambient pods: %v (uids %v)",
			pods, inPod, problems, zds, want, uids)
	}
}

// firstDial is a line testapp prints for each -dial-at-start.
type firstDial struct {
	Dial  string `json:"dial"`
	Local string `json:"local"`
	OK    bool   `json:"ok"`
	Err   string `json:"err"`
}

// firstDials reads pod ns/name's -dial-at-start lines from its container log.
func firstDials(ns, name string) []firstDial {
	var out []firstDial
	sc := bufio.NewScanner(strings.NewReader(logOf(ns, name, "app")))
	for sc.Scan() {
		// CRI log lines: "<time> stdout F <line>".
		_, line, ok := strings.Cut(sc.Text(), " stdout F ")
		var d firstDial
		if ok && json.Unmarshal([]byte(line), &d) == nil && d.Dial != "" {
			out = append(out, d)
		}
	}
	return out
}

// testFirstPacket: a pod whose application connects the moment it starts is captured from its
// first packet, because the chained CNI plugin holds the pod's ADD until the agent has captured
// it (and in-pod mode, until ztunnel acked it).
func (c *cluster) testFirstPacket(t *testing.T, ctx context.Context) {
	var args []string
	var dsts []netip.AddrPort
	for _, v6 := range []bool{false, true} {
		dst := netip.AddrPortFrom(ipsOf(c.a2)(v6), echoPort)
		dsts = append(dsts, dst)
		args = append(args, "-dial-at-start", dst.String())
	}
	if _, err := c.Apply(ctx, AppManifest(AmbientNamespace, "first", args...)); err != nil {
		t.Fatal(err)
	}
	c.readyPod(t, ctx, AmbientNamespace, "first")
	var dials []firstDial
	_ = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		dials = firstDials(AmbientNamespace, "first")
		return len(dials) == len(dsts), nil
	})
	if len(dials) != len(dsts) {
		t.Fatalf("pod first printed %d dial lines, want %d:\n%s", len(dials), len(dsts), logOf(AmbientNamespace, "first", "app"))
	}
	for i, d := range dials {
		if !d.OK {
			t.Fatalf("pod first's dial at start to %s failed: %s", d.Dial, d.Err)
		}
		local, err := netip.ParseAddrPort(d.Local)
		if err != nil {
			t.Fatal(err)
		}
		n := len("first first\n")
		if _, err := recordOf(ctx, c.zt, 15001, unmap(local), dsts[i], n); err != nil {
			t.Fatalf("the first connection of pod first (%s -> %s): %v", local, dsts[i], err)
		}
	}
}

// restartContainer makes a1's liveness probe fail, and waits until the kubelet has restarted
// the container and it is Ready again.
func (c *cluster) restartContainer(t *testing.T, ctx context.Context) {
	url := fmt.Sprintf("http://%s/fail", netip.AddrPortFrom(ipsOf(c.a1)(false), 8080))
	resp, err := http.Post(url, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods(AmbientNamespace).Get(ctx, "a1", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) == 0 {
			return false, nil
		}
		return p.Status.ContainerStatuses[0].RestartCount >= 1 && podReady(p), nil
	})
	if err != nil {
		t.Fatalf("a1's container was not restarted by its liveness probe: %v\n%s", err, c.PodTable())
	}
	c.a1 = c.readyPod(t, ctx, AmbientNamespace, "a1")
}

// recreateSandbox kills a1's sandbox (its pause process): the kubelet makes a new sandbox, a new
// network namespace through a new CNI ADD, and restarts the container in it.
func (c *cluster) recreateSandbox(t *testing.T, ctx context.Context) {
	old := PodAddrs(c.a1)
	pause, err := pauseOf(old[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pause, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods(AmbientNamespace).Get(ctx, "a1", metav1.GetOptions{})
		if err != nil || !podReady(p) {
			return false, nil
		}
		// Ready in a new sandbox: its pause process is another.
		addrs := PodAddrs(p)
		if len(addrs) == 0 {
			return false, nil
		}
		now, err := pauseOf(addrs[0])
		return err == nil && now != pause, nil
	})
	if err != nil {
		t.Fatalf("a1's sandbox was not recreated: %v\n%s", err, c.PodTable())
	}
	c.a1 = c.readyPod(t, ctx, AmbientNamespace, "a1")
	t.Logf("a1's sandbox recreated: %v -> %v", old, PodAddrs(c.a1))
}

// pauseOf finds the sandbox process of the pod that holds addr: the pause process in its
// network namespace.
func pauseOf(addr netip.Addr) (int, error) {
	ns, err := PodNetns(addr)
	if err != nil {
		return 0, err
	}
	defer ns.Close()
	var want syscall.Stat_t
	if err := syscall.Fstat(int(ns), &want); err != nil {
		return 0, err
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) != nil || st.Ino != want.Ino || st.Dev != want.Dev {
			continue
		}
		if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); bytes.HasPrefix(cmd, []byte("/pause\x00")) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no pause process in the netns of %s", addr)
}

// deletePod deletes ambient pod name and waits until it is gone.
func (c *cluster) deletePod(t *testing.T, ctx context.Context, name string) {
	if err := c.Delete(ctx, AppManifest(AmbientNamespace, name)); err != nil {
		t.Fatal(err)
	}
}

// streamResult is what a stream of requests came to.
type streamResult struct {
	sent      int
	failed    []error         // an exchange that failed, or one the stand-in has no record of
	latencies []time.Duration // of the requests that succeeded
	retrans   testenv.TCPCounters
}

// stream sends requests from src (a pod) to dst, one connection each, until stop is closed,
// and returns what they came to: every exchange must succeed and have its record on
// listener; the client's netns's retransmission counters are read before and after.
func (c *cluster) stream(ctx context.Context, src, dst netip.AddrPort, listener int, stop <-chan struct{}) streamResult {
	var res streamResult
	ns, err := PodNetns(src.Addr())
	if err != nil {
		res.failed = append(res.failed, err)
		return res
	}
	defer ns.Close()
	before, err := testenv.ReadTCPCounters(ns)
	if err != nil {
		res.failed = append(res.failed, err)
		return res
	}
	payload := []byte("stream request\n")
	var clients []netip.AddrPort
	for {
		select {
		case <-stop:
			for _, cl := range clients {
				if _, err := recordOf(ctx, c.zt, listener, cl, dst, len(payload)); err != nil {
					res.failed = append(res.failed, err)
				}
			}
			after, err := testenv.ReadTCPCounters(ns)
			if err != nil {
				res.failed = append(res.failed, err)
			}
			res.retrans = after.Sub(before)
			return res
		default:
		}
		res.sent++
		start := time.Now()
		client, err := exchange(src.Addr(), dst, payload)
		if err != nil {
			res.failed = append(res.failed, fmt.Errorf("request %d: %w", res.sent, err))
		} else {
			res.latencies = append(res.latencies, time.Since(start))
			clients = append(clients, client)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gapMargin: a request slower than the stream's p99 by this much waited for a SYN sent again
// (1 s), not for the scheduler; a lost data segment shows in the client's counters.
const gapMargin = 500 * time.Millisecond

// gaps returns what shows that traffic stalled during the stream: requests slower than its
// p99 by gapMargin, and segments the client sent again because one was lost (not those the
// peer reported as duplicates: tail loss probes for a late ACK).
func (r streamResult) gaps() []string {
	var out []string
	if len(r.latencies) > 0 {
		sorted := slices.Sorted(slices.Values(r.latencies))
		p99 := sorted[(len(sorted)-1)*99/100]
		for i, l := range r.latencies {
			if l > p99+gapMargin {
				out = append(out, fmt.Sprintf("a request (%d of those that succeeded) took %v, over the p99 %v + %v", i+1, l.Round(time.Millisecond), p99.Round(time.Millisecond), gapMargin))
			}
		}
	}
	if c := r.retrans; c.Stalled() {
		out = append(out, "in the client's netns "+c.String())
	}
	return out
}

// restartAgent deletes the agent's pod while a1 streams requests to p1, waits until the
// DaemonSet's new pod is Ready, and checks that no request failed, every one went through
// ztunnel, and none stalled (no gap): the new agent hands the ztunnel still connected every
// pod in its first snapshot.
func (c *cluster) restartAgent(t *testing.T, ctx context.Context) {
	old, err := c.WaitPodsReady(ctx, agentNamespace, agentSelector, 1)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var res streamResult
	var wg sync.WaitGroup
	wg.Go(func() {
		res = c.stream(ctx, netip.AddrPortFrom(ipsOf(c.a1)(false), 0),
			netip.AddrPortFrom(ipsOf(c.p1)(false), echoPort), 15001, stop)
	})
	time.Sleep(time.Second)
	t0 := time.Now()
	err = c.Client.CoreV1().Pods(agentNamespace).Delete(ctx, old[0].Name, metav1.DeleteOptions{})
	if err == nil {
		err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			pods, err := c.WaitPodsReady(ctx, agentNamespace, agentSelector, 1)
			return err == nil && pods[0].Name != old[0].Name, nil
		})
	}
	replaced := time.Since(t0)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("the agent's pod was not replaced: %v\n%s", err, c.PodTable())
	}
	maxLatency := time.Duration(0)
	if len(res.latencies) > 0 {
		maxLatency = slices.Max(res.latencies)
	}
	t.Logf("agent pod replaced in %.1f s under a stream of %d requests, %d failed; slowest %v; client: %s",
		replaced.Seconds(), res.sent, len(res.failed), maxLatency.Round(time.Millisecond), res.retrans)
	if len(res.failed) > 0 {
		t.Fatalf("%d of %d requests failed or bypassed ztunnel, first: %v", len(res.failed), res.sent, errors.Join(res.failed[:min(len(res.failed), 5)]...))
	}
	if gaps := res.gaps(); len(gaps) > 0 {
		t.Errorf("gap while the agent's pod was replaced:\n%s", strings.Join(gaps, "\n"))
	}
}

// uninstall deletes the chart's objects as `helm uninstall` does, runs the uninstall
// DaemonSet of deploy/meshredirect-uninstall.yaml until its pod is Ready (the node is clean
// then), and checks the node: no pins, no plugin in the CNI configuration or binary directory,
// no in-pod capture in any pod's netns, and in the ambient pods' netns, none of the policy
// routing of either family (there before) and the sysctls as a pod's outside the mesh.
func (c *cluster) uninstall(t *testing.T, ctx context.Context) {
	// What the ambient pods' netns hold before (the checkers see both
	// families, and the pods' sysctls), and what they should hold after:
	// what a pod outside the mesh, made by the same CNI, has.
	ambient := []*corev1.Pod{c.a1, c.a2}
	plain := podNetns(t, c.p1)
	was := testenv.ReadSysctls(t, plain, testenv.InPodSysctls)
	plain.Close()
	for _, p := range ambient {
		ns := podNetns(t, p)
		testenv.CheckPolicyRouting(t, ns, p.Name+"'s netns (captured)", true)
		testenv.CheckSysctls(t, ns, p.Name+"'s netns (captured)", testenv.InPodSysctls)
		ns.Close()
	}
	if err := c.Delete(ctx, c.chart); err != nil {
		t.Fatal(err)
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := os.ReadFile(filepath.Join(root, "deploy", "meshredirect-uninstall.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	manifest = bytes.ReplaceAll(manifest, []byte("ghcr.io/meshredirect/meshredirect:0.1.0"), []byte(AgentImage))
	manifest = bytes.ReplaceAll(manifest, []byte("registry.k8s.io/pause:3.10"), []byte(PauseImage))
	if _, err := c.Apply(ctx, manifest); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitPodsReady(ctx, "meshredirect-uninstall", "app.kubernetes.io/name=meshredirect-uninstall", 1); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, manifest); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s is still there after uninstall (%v)", pinDir, err)
	}
	conf, err := os.ReadFile("/etc/cni/net.d/10-realnode.conflist")
	if err != nil || bytes.Contains(conf, []byte("meshredirect")) {
		t.Errorf("the primary conflist still chains meshredirect (or %v):\n%s", err, conf)
	}
	if _, err := os.Stat("/opt/cni/bin/meshredirect-cni"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/opt/cni/bin/meshredirect-cni is still there after uninstall (%v)", err)
	}
	left, err := dataplane.FindInPodNetns(dataplane.Config{PinDir: pinDir}, nil)
	if err != nil || len(left) > 0 {
		t.Errorf("in-pod capture left in %v (%v)", left, err)
	}
	for _, p := range ambient {
		ns := podNetns(t, p)
		testenv.CheckPolicyRouting(t, ns, p.Name+"'s netns", false)
		testenv.CheckSysctls(t, ns, p.Name+"'s netns (as p1's, outside the mesh)", was)
		ns.Close()
	}
}

// podNetns opens the network namespace of pod p, by its IPv4 address.
func podNetns(t *testing.T, p *corev1.Pod) netns.NsHandle {
	t.Helper()
	ns, err := PodNetns(ipsOf(p)(false))
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// TestInPodLifecycle runs a pod's whole life on the default install, checking capture and
// `meshredirect status` against the API after each step: a pod's first packet, a container
// restart, a sandbox recreated, a pod deleted, the agent's pod replaced under a stream of
// requests, and the uninstall.
func TestInPodLifecycle(t *testing.T) {
	c, ctx := install(t, PTP, "inpod")
	captured := func(t *testing.T) {
		t.Helper()
		checkFlows(t, ctx, c.zt, c.flows()[:1])
		c.statusMatchesAPI(t, ctx)
	}
	steps := []struct {
		name string
		do   func(*testing.T, context.Context)
	}{
		{"first packet", c.testFirstPacket},
		{"container restart", c.restartContainer},
		{"sandbox recreation", c.recreateSandbox},
		{"pod deleted", func(t *testing.T, ctx context.Context) { c.deletePod(t, ctx, "first") }},
		{"agent pod replaced under a stream", c.restartAgent},
	}
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) {
			s.do(t, ctx)
			captured(t)
		}) {
			return
		}
	}
	t.Run("uninstall", func(t *testing.T) { c.uninstall(t, ctx) })
}
