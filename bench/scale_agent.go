package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/bench/report"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/cluster"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
)

// scaleNodeName is the scale phase's node as the API server knows it.
const scaleNodeName = "scale-node"

// agentProc is the agent binary running as a process of its own (so that
// its RSS is the real figure), with the times its log says it enrolled
// each pod.
type agentProc struct {
	cmd  *exec.Cmd
	tail *tail
	done chan struct{}

	mu       sync.Mutex
	enrolled map[string]time.Time // "namespace/name" -> first "enrolled pod"
	lastLine time.Time
	changed  chan struct{}
}

// agentLine is the part of the agent's JSON log lines the phase reads.
type agentLine struct {
	Time time.Time `json:"time"`
	Msg  string    `json:"msg"`
	Pod  string    `json:"pod"`
}

// startAgent runs bin as `meshredirect agent` in node mode against srv for
// node, its pins under pinDir, and reads its log.
func startAgent(e *env, bin string, args []string) *agentProc {
	cmd := exec.Command(bin, append([]string{"agent"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	e.check(err)
	a := &agentProc{cmd: cmd, tail: &tail{max: 16 << 10}, done: make(chan struct{}), enrolled: map[string]time.Time{}, changed: make(chan struct{}, 1)}
	// Pdeathsig fires when the thread that started the child ends, not the
	// process: Go ends the threads of goroutines that exit locked (as
	// cnichain.NewSandbox's do), which killed the agent mid-phase. A
	// thread of its own, locked until the agent exits, starts it.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		<-a.done
		runtime.UnlockOSThread()
	}()
	if err := <-started; err != nil {
		e.Fatalf("scale: start the agent: %v", err)
	}
	go func() {
		s := bufio.NewScanner(stderr)
		s.Buffer(make([]byte, 64<<10), 4<<20)
		for s.Scan() {
			line := s.Bytes()
			a.tail.Write(append(line, '\n'))
			var l agentLine
			if json.Unmarshal(line, &l) != nil {
				continue
			}
			a.mu.Lock()
			a.lastLine = time.Now()
			if l.Msg == "enrolled pod" || l.Msg == "CNI ADD: captured" {
				if _, ok := a.enrolled[l.Pod]; !ok {
					a.enrolled[l.Pod] = l.Time
				}
			}
			a.mu.Unlock()
			select {
			case a.changed <- struct{}{}:
			default:
			}
		}
		cmd.Wait()
		close(a.done)
	}()
	e.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-a.done
		}
	})
	return a
}

// waitEnrolled waits until every pod of keys has been enrolled and returns
// the times.
func (a *agentProc) waitEnrolled(keys []string, timeout time.Duration) (map[string]time.Time, error) {
	deadline := time.After(timeout)
	for {
		a.mu.Lock()
		out := map[string]time.Time{}
		for _, k := range keys {
			if t, ok := a.enrolled[k]; ok {
				out[k] = t
			}
		}
		a.mu.Unlock()
		if len(out) == len(keys) {
			return out, nil
		}
		select {
		case <-a.changed:
		case <-time.After(50 * time.Millisecond):
		case <-a.done:
			return nil, fmt.Errorf("the agent exited: %s", a.tail.String())
		case <-deadline:
			return out, fmt.Errorf("%d of %d pods enrolled after %s", len(out), len(keys), timeout)
		}
	}
}

// state says whether the agent process still runs.
func (a *agentProc) state() string {
	select {
	case <-a.done:
		return "exited: " + a.cmd.ProcessState.String()
	default:
		return "running"
	}
}

// count is how many pods the agent has said it enrolled.
func (a *agentProc) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.enrolled)
}

// quiet waits until the agent has logged nothing for d (at most max).
func (a *agentProc) quiet(d, max time.Duration) {
	end := time.Now().Add(max)
	for time.Now().Before(end) {
		a.mu.Lock()
		last := a.lastLine
		a.mu.Unlock()
		if time.Since(last) >= d {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// usage is a process's resident memory and CPU time.
type usage struct {
	rssKiB, hwmKiB int
	threads        int
	cpu            time.Duration
}

// readUsage reads /proc/<pid>/status (VmRSS, VmHWM, Threads) and
// /proc/<pid>/stat (utime + stime).
func readUsage(pid int) (usage, error) {
	var u usage
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "VmRSS:":
			u.rssKiB = n
		case "VmHWM:":
			u.hwmKiB = n
		case "Threads:":
			u.threads = n
		}
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// The fields after the command's closing parenthesis: utime and
	// stime are the 14th and 15th of the whole line.
	rest := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+2:]))
	if len(rest) < 13 {
		return u, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	ut, _ := strconv.ParseInt(rest[11], 10, 64)
	stime, _ := strconv.ParseInt(rest[12], 10, 64)
	const hz = 100 // USER_HZ
	u.cpu = time.Duration(ut+stime) * time.Second / hz
	return u, nil
}

// window measures the agent's CPU over d and its memory at the end.
func (a *agentProc) window(pods, enrolled int, d time.Duration) (report.ScaleAgent, error) {
	pid := a.cmd.Process.Pid
	u0, err := readUsage(pid)
	if err != nil {
		return report.ScaleAgent{}, err
	}
	t0 := time.Now()
	time.Sleep(d)
	u1, err := readUsage(pid)
	if err != nil {
		return report.ScaleAgent{}, err
	}
	wall := time.Since(t0)
	return report.ScaleAgent{Pods: pods, Enrolled: enrolled, RSSMiB: float64(u1.rssKiB) / 1024, HWMMiB: float64(u1.hwmKiB) / 1024,
		CPUPct: 100 * float64(u1.cpu-u0.cpu) / float64(wall), Window: wall.Round(time.Millisecond).String(), Threads: u1.threads}, nil
}

// settle waits until the agent's CPU over a second falls under 10% of a
// core (at most max) and returns how long that took.
func (a *agentProc) settle(max time.Duration) (time.Duration, error) {
	start := time.Now()
	pid := a.cmd.Process.Pid
	for time.Since(start) < max {
		u0, err := readUsage(pid)
		if err != nil {
			return 0, err
		}
		t0 := time.Now()
		time.Sleep(time.Second)
		u1, err := readUsage(pid)
		if err != nil {
			return 0, err
		}
		if float64(u1.cpu-u0.cpu)/float64(time.Since(t0)) < 0.10 {
			break
		}
	}
	return time.Since(start), nil
}

// buildAgent builds cmd/meshredirect into a directory removed at the end.
func buildAgent(e *env) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("go is not on PATH to build the agent (bench/run.sh puts /usr/local/go/bin there)")
	}
	dir, err := os.MkdirTemp("", "meshredirect-bench-agent-")
	if err != nil {
		return "", err
	}
	e.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "meshredirect")
	cmd := exec.Command(goBin, "build", "-o", bin, "github.com/meshredirect/meshredirect/cmd/meshredirect")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build cmd/meshredirect: %v: %s", err, out)
	}
	return bin, nil
}

// scaleCluster is the phase's node, mirrored in a real API server, with
// the agent running for it.
type scaleCluster struct {
	*cluster.Cluster
	srv    *kubeapi.Server
	client kubernetes.Interface // no client-side rate limit
	agent  *agentProc
	dpCfg  dataplane.Config
	appNS  string
	tmp    string
}

// startScaleCluster starts the API server, the node with its ztunnel pod,
// and the agent.
func startScaleCluster(e *env, agentBin string) (*scaleCluster, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := kubeapi.Start(ctx, kubeapi.Options{})
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver and etcd: %w", err)
	}
	e.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			e.Errorf("scale: stop the API server: %v", err)
		}
	})
	tmp, err := os.MkdirTemp("", "meshredirect-bench-scale-")
	if err != nil {
		return nil, err
	}
	e.Cleanup(func() { os.RemoveAll(tmp) })
	sc := &scaleCluster{srv: srv, tmp: tmp}
	// The writes of the phase are the kubelet's and the test's, not
	// the agent's: no client-side limit on them.
	if sc.client, err = kubernetes.NewForConfig(&rest.Config{Host: srv.Host, BearerToken: srv.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: srv.CA}, QPS: -1}); err != nil {
		return nil, err
	}
	node := testenv.NewNode(e, testenv.NodeOptions{Name: "scale"})
	zt := node.AddZtunnel()
	if sc.Cluster, err = cluster.New(e, srv, node, scaleNodeName); err != nil {
		return nil, err
	}
	if err := sc.BindNetns(zt, "ztunnel"); err != nil {
		return nil, err
	}
	sys, err := sc.Namespace("system-", nil)
	if err != nil {
		return nil, err
	}
	if _, err := sc.MirrorPod(zt, sys, map[string]string{"app": "ztunnel"}); err != nil {
		return nil, err
	}
	if sc.appNS, err = sc.Namespace("app-", map[string]string{agent.DataplaneModeLabel: agent.ModeAmbient}); err != nil {
		return nil, err
	}

	bpffs := e.bpffs()
	sc.dpCfg = dataplane.Config{NodeNetns: node.Path(), PinDir: filepath.Join(bpffs, "agent")}
	e.Cleanup(func() {
		if err := dataplane.Uninstall(sc.dpCfg, zt.Path()); err != nil {
			e.Errorf("scale: uninstall the agent's dataplane: %v", err)
		}
	})
	kubeconfig := filepath.Join(tmp, "kubeconfig")
	if err := os.WriteFile(kubeconfig, srv.Kubeconfig(kubeapi.AdminUser), 0o600); err != nil {
		return nil, err
	}
	configFile := filepath.Join(tmp, "ambient", "config.json")
	sc.agent = startAgent(e, agentBin, []string{
		"--node-name", scaleNodeName, "--kubeconfig", kubeconfig, "--node-netns", node.Path(),
		"--pin-dir", sc.dpCfg.PinDir, "--mount-bpffs", "never", "--ztunnel-mode", agent.ZtunnelModeNode,
		"--netns-dir", sc.NetnsDir, "--config-file", configFile, "--metrics-addr", "",
		"--cni-socket", sc.cniSocket(), "--log-format", "json",
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, _ := os.ReadFile(configFile)
		if strings.Contains(string(b), `"ztunnelReady":true`) {
			return sc, nil
		}
		select {
		case <-sc.agent.done:
			return nil, fmt.Errorf("the agent exited: %s", sc.agent.tail.String())
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the agent did not find ztunnel ready within 60 s: %s", sc.agent.tail.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (sc *scaleCluster) cniSocket() string { return filepath.Join(sc.tmp, "cni.sock") }

// parallel runs fn for 0..n-1 on workers goroutines and returns the
// errors joined.
func parallel(n, workers int, fn func(i int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Go(func() {
			for i := range next {
				errs[i] = fn(i)
			}
		})
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return errors.Join(errs...)
}

// enrolFromAPI adds n pods to the node and to the API (Pending, bound to
// the node), then writes their status as kubelets would (Running, their
// IPs) and times each pod from its write to the agent's enrolment.
func (sc *scaleCluster) enrolFromAPI(e *env, prefix string, n int, timeout time.Duration) (report.ScaleEnrolment, []string, error) {
	var setup []string
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	t := time.Now()
	pods := sc.Node.AddPods(testenv.Ambient, names...)
	setup = append(setup, fmt.Sprintf("%d pods made on the node (netns, veth, addresses, routes) in %s", n, time.Since(t).Round(time.Millisecond)))
	ctx := context.Background()
	objs := make([]*corev1.Pod, n)
	t = time.Now()
	err := parallel(n, 16, func(i int) error {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: names[i], Namespace: sc.appNS},
			Spec: corev1.PodSpec{NodeName: scaleNodeName, Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}},
				TerminationGracePeriodSeconds: new(int64)},
		}
		var err error
		objs[i], err = sc.client.CoreV1().Pods(sc.appNS).Create(ctx, pod, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		return report.ScaleEnrolment{}, setup, fmt.Errorf("create the pods in the API: %w", err)
	}
	setup = append(setup, fmt.Sprintf("%d Pod objects created (Pending, bound to the node) in %s", n, time.Since(t).Round(time.Millisecond)))

	starts := make([]time.Time, n)
	first := time.Now()
	err = parallel(n, 16, func(i int) error {
		p, obj := pods[i], objs[i]
		obj.Status = corev1.PodStatus{
			Phase:   corev1.PodRunning,
			PodIP:   p.IPv4.String(),
			PodIPs:  []corev1.PodIP{{IP: p.IPv4.String()}, {IP: p.IPv6.String()}},
			HostIP:  sc.Node.IPv4.String(),
			HostIPs: []corev1.HostIP{{IP: sc.Node.IPv4.String()}, {IP: sc.Node.IPv6.String()}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue,
				LastTransitionTime: metav1.Now()}},
		}
		starts[i] = time.Now()
		_, err := sc.client.CoreV1().Pods(sc.appNS).UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		return err
	})
	writes := time.Since(first)
	if err != nil {
		return report.ScaleEnrolment{}, setup, fmt.Errorf("write the pods' status: %w", err)
	}
	keys := make([]string, n)
	for i := range keys {
		keys[i] = sc.appNS + "/" + names[i]
	}
	got, waitErr := sc.agent.waitEnrolled(keys, timeout)
	var lat []float64
	var firstEnrol, last time.Time
	for i, k := range keys {
		at, ok := got[k]
		if !ok {
			continue
		}
		lat = append(lat, ms(at.Sub(starts[i])))
		if at.After(last) {
			last = at
		}
		if firstEnrol.IsZero() || at.Before(firstEnrol) {
			firstEnrol = at
		}
	}
	res := report.ScaleEnrolment{Source: report.EnrolFromAPI, Mode: agent.ZtunnelModeNode, Pods: n, Enrolled: len(got),
		Spanms: ms(last.Sub(first)), Writesms: ms(writes)}
	if len(got) > 1 {
		res.PerSecond = float64(len(got)-1) / last.Sub(firstEnrol).Seconds()
	}
	res.P50ms, res.P99ms, res.Maxms = percentiles(lat)
	if waitErr != nil {
		// A slow agent is the finding, not a failure of the phase: the
		// figures are those of the pods it enrolled in time.
		res.Spanms = ms(timeout)
		return res, setup, fmt.Errorf("enrol %d pods from the API: %w", n, waitErr)
	}
	t = time.Now()
	if err := sc.verify(pods); err != nil {
		return res, setup, err
	}
	res.Verified = true
	setup = append(setup, fmt.Sprintf("the dataplane state of %d pods checked in %s", n, time.Since(t).Round(time.Millisecond)))
	return res, setup, nil
}

// verify checks the dataplane as the agent left it: each pod's IPs in the
// endpoints map, its two programs on its host veth.
func (sc *scaleCluster) verify(pods []*testenv.Pod) error {
	set, err := maps.OpenPinned(sc.dpCfg.PinDir)
	if err != nil {
		return fmt.Errorf("open the agent's maps: %w", err)
	}
	defer set.Close()
	entries, err := set.Endpoints.Pods()
	if err != nil {
		return err
	}
	atts, err := dataplane.ListAttachments(sc.dpCfg, "")
	if err != nil {
		return fmt.Errorf("list the node's attachments: %w", err)
	}
	hooks := map[int]int{}
	for _, a := range atts {
		hooks[a.Ifindex]++
	}
	for _, p := range pods {
		if _, ok := entries[p.IPv4]; !ok {
			return fmt.Errorf("pod %s: %s is not in the endpoints map", p.Name, p.IPv4)
		}
		if _, ok := entries[p.IPv6]; !ok {
			return fmt.Errorf("pod %s: %s is not in the endpoints map", p.Name, p.IPv6)
		}
		if hooks[p.HostVethIndex] < 2 {
			return fmt.Errorf("pod %s: %d programs on its host veth %s, want 2", p.Name, hooks[p.HostVethIndex], p.HostVeth)
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentiles returns the p50, p99 and max of xs (nearest rank).
func percentiles(xs []float64) (p50, p99, maxv float64) {
	if len(xs) == 0 {
		return 0, 0, 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	rank := func(q float64) float64 {
		i := int(q*float64(len(s))+0.999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return rank(0.50), rank(0.99), s[len(s)-1]
}
