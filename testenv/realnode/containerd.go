package realnode

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// containerdSocket is containerd's CRI endpoint, on the node's private /run.
const containerdSocket = "/run/containerd/containerd.sock"

// containerdConfig is containerd 1.6's configuration (version 2): the CRI plugin with cgroupfs
// (the kubelet's driver here), the local pause image as the sandbox image (no registry is
// reachable), and restrict_oom_score_adj, without which runc fails every sandbox on a machine
// whose root lacks CAP_SYS_RESOURCE (it sets oom_score_adj -998).
const containerdConfig = `version = 2
root = %[1]q
state = "/run/containerd"
[grpc]
  address = %[2]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[3]q
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q
`

// startContainerd runs containerd with the node's configuration and imports the images.
func (n *Node) startContainerd(ctx context.Context) error {
	root := filepath.Join(n.dir, "containerd")
	cfg := filepath.Join(n.dir, "containerd.toml")
	text := fmt.Sprintf(containerdConfig, root, containerdSocket, PauseImage, filepath.Join(root, "opt"))
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		return err
	}
	p, err := n.start("containerd", "containerd", "--config", cfg)
	if err != nil {
		return err
	}
	err = waitFor(ctx, p, "containerd's socket", func() bool {
		c, err := net.DialTimeout("unix", containerdSocket, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if err != nil {
		return err
	}
	// --all-platforms: every blob of each image's index, as a multi-platform release archive
	// needs; without it ctr imports the host's platform only.
	out, err := exec.CommandContext(ctx, "ctr", "--address", containerdSocket, "-n", "k8s.io",
		"images", "import", "--all-platforms", n.images).CombinedOutput()
	if err != nil {
		return fmt.Errorf("import %s: %v: %s", n.images, err, out)
	}
	return nil
}

// cniConfig is the primary CNI's conflist: the reference plugin with host-local IPAM over both
// families, its state on the node's private /run.
const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "realnode",
  "plugins": [
    {
      "type": %q,%s
      "ipam": {
        "type": "host-local",
        "dataDir": "/run/cni/ipam",
        "ranges": [[{"subnet": %q}], [{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
      }
    }
  ]
}
`

// installCNI copies the reference plugins to /opt/cni/bin and writes the primary conflist, as a
// CNI's own DaemonSet would before the kubelet starts pods.
func (n *Node) installCNI(plugins string) error {
	bin := "/opt/cni/bin"
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	for _, p := range []string{"ptp", "bridge", "host-local", "loopback"} {
		if err := copyFile(filepath.Join(plugins, p), filepath.Join(bin, p), 0o755); err != nil {
			return err
		}
	}
	var extra string
	switch n.cni {
	case PTP:
		n.PodCIDRs = parsePrefixes("198.19.100.0/24", "fd6e:6f64:65:100::/64")
	case Bridge:
		n.PodCIDRs = parsePrefixes("198.19.101.0/24", "fd6e:6f64:65:101::/64")
		extra = `
      "bridge": "cni0", "isGateway": true,`
	default:
		return fmt.Errorf("unknown CNI %q (ptp or bridge)", n.cni)
	}
	if err := os.MkdirAll("/etc/cni/net.d", 0o755); err != nil {
		return err
	}
	conf := fmt.Sprintf(cniConfig, string(n.cni), extra, n.PodCIDRs[0], n.PodCIDRs[1])
	return os.WriteFile("/etc/cni/net.d/10-realnode.conflist", []byte(conf), 0o644)
}

// copyFile copies src to dst with mode.
func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

// parsePrefixes parses CIDRs written in this package.
func parsePrefixes(cidrs ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, c := range cidrs {
		out = append(out, netip.MustParsePrefix(c))
	}
	return out
}
