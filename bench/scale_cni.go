package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshredirect/meshredirect/bench/report"
	"github.com/meshredirect/meshredirect/testenv/cnichain"
)

// cniADDs runs n pods' CNI ADD one after the other, as a kubelet runs a
// pod's chain: the primary plugin (ptp, host-local) through libcni, then
// meshredirect-cni exec'd by hand with ptp's result as its prevResult, as
// libcni would, so that each is timed alone. The plugin returns once the
// agent has captured the pod. Each pod's Pod object exists (Pending, in
// the ambient namespace) before its ADD, as the kubelet's does.
func (sc *scaleCluster) cniADDs(e *env, n int) (primary, ours, chain []float64, err error) {
	ref, err := cnichain.ReferencePlugins()
	if err != nil {
		return nil, nil, nil, err
	}
	pluginDir, err := cnichain.Plugin()
	if err != nil {
		return nil, nil, nil, err
	}
	e.Cleanup(cnichain.Cleanup)
	ipam := filepath.Join(sc.tmp, "ipam")
	// The upper half of the node's pod CIDR, as cnichain carves it:
	// testenv numbers its pods from the bottom.
	v4 := sc.Node.PodCIDRv4
	b := v4.Addr().As4()
	start := netip.AddrFrom4([4]byte{b[0], b[1], b[2] + 8, 1})
	end := netip.AddrFrom4([4]byte{b[0], b[1], b[2] + 8, 254})
	gw := netip.AddrFrom4([4]byte{b[0], b[1], b[2] + 15, 254})
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "scale", "plugins": [
  {"type": "ptp", "mtu": 1500, "ipam": {"type": "host-local", "dataDir": %q,
    "ranges": [[{"subnet": %q, "rangeStart": %q, "rangeEnd": %q, "gateway": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}`,
		ipam, v4, start, end, gw)
	list, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		return nil, nil, nil, err
	}
	cfg := libcni.NewCNIConfigWithCacheDir([]string{ref}, filepath.Join(sc.tmp, "libcni-cache"), nil)
	if n > 250 {
		n = 250 // the range's addresses
	}
	ctx := context.Background()
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("cni-%d", i)
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: sc.appNS},
			Spec: corev1.PodSpec{NodeName: scaleNodeName, Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}},
				TerminationGracePeriodSeconds: new(int64)},
		}
		if _, err := sc.client.CoreV1().Pods(sc.appNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return nil, nil, nil, fmt.Errorf("create pod %s: %w", name, err)
		}
		sb, err := cnichain.NewSandbox(e)
		if err != nil {
			return nil, nil, nil, err
		}
		rt := &libcni.RuntimeConf{ContainerID: sb.ID, NetNS: sb.Path(), IfName: "eth0",
			Args: [][2]string{{"K8S_POD_NAMESPACE", sc.appNS}, {"K8S_POD_NAME", name}, {"IgnoreUnknown", "true"}}}
		var prev []byte
		var tPrimary, tOurs time.Duration
		err = sc.Node.Do(func() error {
			t := time.Now()
			r, err := cfg.AddNetworkList(ctx, list, rt)
			tPrimary = time.Since(t)
			if err != nil {
				return fmt.Errorf("ptp ADD of %s: %w", name, err)
			}
			prev, err = json.Marshal(r)
			return err
		})
		if err != nil {
			return nil, nil, nil, err
		}
		stdin := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "scale", "type": "meshredirect-cni", "socket": %q,
  "excludeNamespaces": ["kube-system"], "timeoutSeconds": 10, "prevResult": %s}`, sc.cniSocket(), prev)
		cmd := exec.Command(filepath.Join(pluginDir, "meshredirect-cni"))
		cmd.Stdin = strings.NewReader(stdin)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		cmd.Env = append(os.Environ(), "CNI_COMMAND=ADD", "CNI_CONTAINERID="+sb.ID, "CNI_NETNS="+sb.Path(), "CNI_IFNAME=eth0",
			"CNI_ARGS=IgnoreUnknown=true;K8S_POD_NAMESPACE="+sc.appNS+";K8S_POD_NAME="+name, "CNI_PATH="+pluginDir+":"+ref)
		t := time.Now()
		if err := sc.Node.Start(cmd); err != nil {
			return nil, nil, nil, err
		}
		err = cmd.Wait()
		tOurs = time.Since(t)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("meshredirect-cni ADD of %s: %v: %s%s", name, err, out.String(), errOut.String())
		}
		primary = append(primary, ms(tPrimary))
		ours = append(ours, ms(tOurs))
		chain = append(chain, ms(tPrimary+tOurs))
	}
	// Every ADD said captured: the agent's log has each.
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s/cni-%d", sc.appNS, i)
	}
	if _, err := sc.agent.waitEnrolled(keys, 10*time.Second); err != nil {
		return nil, nil, nil, fmt.Errorf("the agent's log: %w", err)
	}
	return primary, ours, chain, nil
}

// pluginStarts execs meshredirect-cni n times with CNI_COMMAND=VERSION:
// the process's start, its packages' init and one line out, with no
// agent and no pod. What any ADD pays before it does anything: the part
// of the plugin's latency that is not the agent's.
func pluginStarts(n int) ([]float64, error) {
	dir, err := cnichain.Plugin()
	if err != nil {
		return nil, err
	}
	var out []float64
	for i := 0; i < n; i++ {
		cmd := exec.Command(filepath.Join(dir, "meshredirect-cni"))
		cmd.Stdin = strings.NewReader(`{"cniVersion": "1.0.0"}`)
		cmd.Env = append(os.Environ(), "CNI_COMMAND=VERSION")
		t := time.Now()
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("meshredirect-cni VERSION: %v: %s", err, b)
		}
		out = append(out, ms(time.Since(t)))
	}
	return out, nil
}

// latency summarises xs as a report.ScaleLatency.
func latency(what string, xs []float64) report.ScaleLatency {
	l := report.ScaleLatency{What: what, N: len(xs)}
	l.P50ms, l.P99ms, l.Maxms = percentiles(xs)
	return l
}
