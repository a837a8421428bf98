package agent

import (
	"context"
	"errors"
	"time"

	"github.com/meshredirect/meshredirect/cni"
)

// installer is the CNI plugin's installer with the agent's settings: the
// plugin reaches this agent's socket and starts pods of the excluded
// namespaces without asking.
func (a *Agent) installer() cni.Installer {
	return cni.Installer{ConfDir: a.cfg.CNI.ConfDir, BinDir: a.cfg.CNI.BinDir, Binary: a.cfg.CNI.Plugin,
		Entry: map[string]any{"socket": a.cfg.CNI.Socket, "excludeNamespaces": a.cfg.ExcludedNamespaces}}
}

// keepCNIInstalled installs the plugin, and every 10 seconds puts its entry
// back if the primary CNI rewrote its conflist (as Calico and Cilium do on
// restart), until ctx ends. The plugin stays when the agent stops: while
// no agent answers, the plugin fails ADD rather than let a pod start
// outside the mesh.
func (a *Agent) keepCNIInstalled(ctx context.Context) {
	in := a.installer()
	for {
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
