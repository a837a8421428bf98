package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshredirect/meshredirect/cni"
)

// installer is the CNI plugin's installer with the agent's settings: the
// plugin reaches this agent's socket, starts pods of the excluded
// namespaces without asking, and, with a kubeconfig, decides other pods
// from the API while the agent is down.
func (a *Agent) installer() cni.Installer {
	in := cni.Installer{ConfDir: a.cfg.CNI.ConfDir, BinDir: a.cfg.CNI.BinDir, Binary: a.cfg.CNI.Plugin,
		Entry: map[string]any{"socket": a.cfg.CNI.Socket, "excludeNamespaces": a.cfg.ExcludedNamespaces}}
	if a.cfg.CNI.APIAccess != nil {
		in.Kubeconfig = a.cfg.CNI.Kubeconfig
		if in.Kubeconfig == "" {
			in.Kubeconfig = filepath.Join(in.ConfDir, cni.KubeconfigName)
		}
	}
	return in
}

// keepCNIInstalled installs the plugin, and every 10 seconds puts its entry
// back if the primary CNI rewrote its conflist (as Calico and Cilium do on
// restart) and rewrites its kubeconfig if the token changed, until ctx
// ends. The plugin stays when the agent stops: while no agent answers, the
// plugin fails ADD for ambient pods (and for all, without a kubeconfig)
// rather than let one start outside the mesh.
func (a *Agent) keepCNIInstalled(ctx context.Context) {
	in := a.installer()
	for {
		// The kubeconfig first: an entry never names a file not there yet.
		a.writeCNIKubeconfig(in.Kubeconfig)
		ok, err := in.Installed()
		switch {
		case errors.Is(err, cni.ErrNoPrimary):
			a.log.Info("waiting for the primary CNI's configuration", "dir", in.ConfDir)
		case err != nil:
			a.log.Error("read the CNI configuration", "error", err)
		case !ok || in.Binary != "": // the first pass also copies the binary
			if path, err := in.Install(); err != nil {
				a.log.Error("install the CNI plugin", "error", err)
			} else {
				a.log.Info("installed the CNI plugin", "conflist", path, "bin_dir", in.BinDir)
				in.Binary = ""
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
}

// writeCNIKubeconfig writes the plugin's kubeconfig at path, if the agent
// has one to give, when its content changed: the projected ServiceAccount
// token rotates (the kubelet renews it at 80% of its life, an hour by
// default), and a stale one would make the plugin fail closed.
func (a *Agent) writeCNIKubeconfig(path string) {
	if path == "" {
		return
	}
	access, err := a.cfg.CNI.APIAccess()
	if err != nil {
		a.log.Error("read the API access for the CNI plugin's kubeconfig", "error", err)
		return
	}
	if wrote, err := cni.WriteKubeconfig(path, access); err != nil {
		a.log.Error("write the CNI plugin's kubeconfig", "error", err)
	} else if wrote {
		a.log.Info("wrote the CNI plugin's kubeconfig", "path", path, "server", access.Server)
	}
}

// ServiceAccountDir is where a pod's ServiceAccount token and CA are
// mounted.
const ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// InClusterAPIAccess returns a CNIConfig.APIAccess that gives the plugin
// the agent pod's own access, found as client-go's rest.InClusterConfig
// finds it: the API server at KUBERNETES_SERVICE_HOST and
// KUBERNETES_SERVICE_PORT (a Service address the host reaches too, and the
// agent runs on the host network), and the CA and token of its
// ServiceAccount in dir. It reads the files on every call: the token
// rotates.
func InClusterAPIAccess(dir string) func() (cni.APIAccess, error) {
	return func() (cni.APIAccess, error) {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return cni.APIAccess{}, fmt.Errorf("KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT not set (not in a pod?)")
		}
		ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
		if err != nil {
			return cni.APIAccess{}, fmt.Errorf("read the ServiceAccount's CA: %w", err)
		}
		token, err := os.ReadFile(filepath.Join(dir, "token"))
		if err != nil {
			return cni.APIAccess{}, fmt.Errorf("read the ServiceAccount's token: %w", err)
		}
		return cni.APIAccess{Server: "https://" + net.JoinHostPort(host, port), CA: ca,
			Token: strings.TrimSpace(string(token))}, nil
	}
}
