package realnode

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshredirect/meshredirect/testenv/kubeapi"
)

// kubernetesServiceIP is the default/kubernetes Service's ClusterIP: the first address of
// kubeapi's default --service-cluster-ip-range. Pods reach the API server there (the
// in-cluster configuration's KUBERNETES_SERVICE_HOST).
const kubernetesServiceIP = "10.96.0.1"

// startControlPlane runs etcd and kube-apiserver (testenv/kubeapi), the kubernetes Service's
// one rule of kube-proxy, kube-controller-manager (DaemonSets, ServiceAccounts, the root CA
// ConfigMap) and kube-scheduler (a DaemonSet's pods stay Pending without it).
func (n *Node) startControlPlane(ctx context.Context) error {
	api, err := kubeapi.Start(ctx, kubeapi.Options{
		// Mount ServiceAccount tokens into pods, as a cluster does: the agent's pod uses one.
		ServiceAccountAdmission: true,
		ExtraAPIServerArgs: []string{
			// Reach the kubelet (logs) at the node IP, not by resolving the node's name.
			"--kubelet-preferred-address-types=InternalIP",
		}})
	if err != nil {
		return err
	}
	n.API = api
	kubeconfig := filepath.Join(n.dir, "admin.kubeconfig")
	if err := os.WriteFile(kubeconfig, api.Kubeconfig(kubeapi.AdminUser), 0o600); err != nil {
		return err
	}
	n.kubeconfig = kubeconfig
	n.Config, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	n.Client, err = kubernetes.NewForConfig(n.Config)
	if err != nil {
		return err
	}
	if err := serviceRule(api.Host); err != nil {
		return err
	}
	ca := filepath.Join(n.dir, "ca.crt")
	if err := os.WriteFile(ca, api.CA, 0o644); err != nil {
		return err
	}
	bin := kubeapi.CacheDir()
	kcm, err := n.start("kube-controller-manager", filepath.Join(bin, "kube-controller-manager"),
		"--kubeconfig="+kubeconfig,
		"--root-ca-file="+ca,
		"--leader-elect=false",
		"--use-service-account-credentials=false",
		"--secure-port=0",
		// The default grace of 50 s before a node that stopped reporting is NotReady is
		// fine; pods of a deleted node are not a case here.
	)
	if err != nil {
		return err
	}
	sched, err := n.start("kube-scheduler", filepath.Join(bin, "kube-scheduler"),
		"--kubeconfig="+kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
	)
	if err != nil {
		return err
	}
	// Both are ready once they run: give an early exit (a flag refused) a moment to show.
	select {
	case <-kcm.Done():
		return kcm.ExitError()
	case <-sched.Done():
		return sched.ExitError()
	case <-time.After(time.Second):
	}
	return nil
}

// serviceRule DNATs the kubernetes Service to the API server on loopback, for the node's own
// processes (the agent's pod is on the host network): the one rule kube-proxy would give it.
func serviceRule(host string) error {
	u, err := url.Parse(host)
	if err != nil {
		return err
	}
	rules := fmt.Sprintf(`table ip realnode {
	chain output {
		type nat hook output priority -100; policy accept;
		ip daddr %s tcp dport 443 dnat to %s
	}
}
`, kubernetesServiceIP, u.Host)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: kubernetes Service rule: %v: %s", err, out)
	}
	return nil
}

// kubeletConfig is the kubelet's configuration: cgroupfs under the node's own cgroup root,
// containerd's socket, no swap check, no eviction (the machine's disk and memory are not the
// node's to judge), no image garbage collection (the images cannot be pulled again), and
// anonymous access to its API on the node IP (tests only: the API server reads logs there).
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %[1]s
containerRuntimeEndpoint: unix://%[2]s
address: %[3]s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
failSwapOn: false
volumePluginDir: /var/lib/kubelet/volumeplugins
podLogsDir: /var/log/pods
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
  nodefs.inodesFree: "1%%"
localStorageCapacityIsolation: false
nodeStatusUpdateFrequency: 2s
syncFrequency: 10s
serializeImagePulls: false
`

// startKubelet runs the kubelet and waits until the node is Ready.
func (n *Node) startKubelet(ctx context.Context) error {
	cfg := filepath.Join(n.dir, "kubelet.yaml")
	text := fmt.Sprintf(kubeletConfig, cgroupRoot(), containerdSocket, nodeIPv4)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		return err
	}
	var err error
	n.kubelet, err = n.start("kubelet", filepath.Join(kubeapi.CacheDir(), "kubelet"),
		"--config="+cfg,
		"--kubeconfig="+n.kubeconfig,
		"--hostname-override="+NodeName,
		"--node-ip="+nodeIPv4.String()+","+nodeIPv6.String(),
	)
	if err != nil {
		return err
	}
	return n.waitNodeReady(ctx)
}
