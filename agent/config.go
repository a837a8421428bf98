package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/meshredirect/meshredirect/cni"
	"github.com/meshredirect/meshredirect/dataplane"
)

// Defaults of Config.
const (
	DefaultConfigFile      = "/etc/ambient-config/config.json"
	DefaultZtunnelSelector = "app=ztunnel"
	DefaultResyncPeriod    = 5 * time.Minute
)

// Config configures an Agent.
type Config struct {
	// NodeName is the node this agent serves (NODE_NAME from the downward API).
	NodeName string
	// Client talks to the API server.
	Client kubernetes.Interface
	// Dataplane configures the datapath (pins, attach mode, DNS capture, ...).
	Dataplane dataplane.Config
	// Resolve configures how pods' interfaces are found; its NodeNetns is
	// taken from Dataplane.NodeNetns.
	Resolve dataplane.LocatorConfig
	// ExcludedNamespaces are never captured; nil means DefaultExcludedNamespaces.
	ExcludedNamespaces []string
	// ZtunnelSelector is the label selector of ztunnel's pods; empty means
	// DefaultZtunnelSelector.
	ZtunnelSelector string
	// ConfigFile is where the ambient config is written; empty means
	// DefaultConfigFile.
	ConfigFile string
	// NodeIPs are addresses of the node besides those its netns holds,
	// which the agent reads (and follows) itself.
	NodeIPs []netip.Addr
	// DNSResolvers are the DNS servers pods may still query under the strict
	// UDP policy (Dataplane.StrictUDP): the cluster DNS Service IP, a
	// node-local cache.
	DNSResolvers []netip.Addr
	// ResyncPeriod is how often a full reconcile runs besides the one at
	// start; zero means DefaultResyncPeriod.
	ResyncPeriod time.Duration
	// Log receives the agent's log lines; nil discards them.
	Log *slog.Logger
	// Metrics registers the agent's metrics; nil means none are exported.
	Metrics prometheus.Registerer
	// CNI configures the chained CNI plugin's side of the agent.
	CNI CNIConfig
	// ZtunnelMode is ZtunnelModeInPod (ztunnel of Istio 1.21+, the
	// default when empty) or ZtunnelModeNode (ztunnel 1.18-1.20, or a node
	// proxy with transparent listeners).
	ZtunnelMode string
	// ZDSSocket is where ztunnel connects in in-pod mode; empty means
	// DefaultZDSSocket.
	ZDSSocket string
}

// DefaultZDSSocket is where ztunnel looks for the node agent's ZDS socket.
const DefaultZDSSocket = "/var/run/ztunnel/ztunnel.sock"

// CNIConfig is the agent's side of the chained CNI plugin.
type CNIConfig struct {
	// Socket is where the plugin reaches the agent; empty serves no plugin.
	Socket string
	// Install copies the plugin into BinDir and keeps its entry at the end
	// of the primary CNI's conflist in ConfDir (re-adding it if the primary
	// CNI rewrites its file).
	Install bool
	ConfDir string
	BinDir  string
	// Plugin is the plugin's executable to copy (in the agent's image).
	Plugin string
	// APIAccess returns the API server, CA and token that the plugin's
	// kubeconfig holds, with which the plugin decides pods while the agent
	// is down. It is asked again on every pass of the installer (a
	// ServiceAccount token rotates) and the file rewritten when it
	// changed. nil installs no kubeconfig: while the agent is down, the
	// plugin fails ADD for every pod outside the excluded namespaces.
	APIAccess func() (cni.APIAccess, error)
	// Kubeconfig is where the plugin's kubeconfig is installed (mode
	// 0600); empty means ConfDir/cni.KubeconfigName.
	Kubeconfig string
}

func (c *Config) setDefaults() error {
	if c.NodeName == "" {
		return fmt.Errorf("no node name (set NODE_NAME or --node-name)")
	}
	if c.Client == nil {
		return fmt.Errorf("no Kubernetes client")
	}
	if c.ExcludedNamespaces == nil {
		c.ExcludedNamespaces = DefaultExcludedNamespaces
	}
	if c.ZtunnelSelector == "" {
		c.ZtunnelSelector = DefaultZtunnelSelector
	}
	if c.ConfigFile == "" {
		c.ConfigFile = DefaultConfigFile
	}
	switch c.ZtunnelMode {
	case "":
		c.ZtunnelMode = ZtunnelModeInPod
	case ZtunnelModeInPod, ZtunnelModeNode:
	default:
		return fmt.Errorf("unknown ztunnel mode %q (want %s or %s)", c.ZtunnelMode, ZtunnelModeInPod, ZtunnelModeNode)
	}
	if c.ZDSSocket == "" {
		c.ZDSSocket = DefaultZDSSocket
	}
	if c.ResyncPeriod == 0 {
		c.ResyncPeriod = DefaultResyncPeriod
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	c.Resolve.NodeNetns = c.Dataplane.NodeNetns
	c.Dataplane.Log = c.Log
	return nil
}

func (c *Config) policy() (Policy, error) {
	sel, err := labels.Parse(c.ZtunnelSelector)
	if err != nil {
		return Policy{}, fmt.Errorf("parse ztunnel selector %q: %w", c.ZtunnelSelector, err)
	}
	excluded := map[string]bool{}
	for _, ns := range c.ExcludedNamespaces {
		excluded[ns] = true
	}
	return Policy{ExcludedNamespaces: excluded, Ztunnel: sel}, nil
}

// AmbientConfig is the content of the ambient config file, read by tools
// that ask whether capture is in place on the node (as istio-cni writes it).
type AmbientConfig struct {
	ZtunnelReady bool   `json:"ztunnelReady"`
	RedirectMode string `json:"redirectMode"`
}

// RedirectModeEBPF is the redirect mode this agent implements.
const RedirectModeEBPF = "eBPF"

// configWriter writes the ambient config file atomically (a temporary file
// renamed over it) whenever its content changes.
type configWriter struct {
	path string
	log  *slog.Logger
	last []byte
}

func (w *configWriter) write(c AmbientConfig) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if bytes.Equal(b, w.last) {
		return nil
	}
	w.log.Info("Writing ambient config: " + string(b))
	dir := filepath.Dir(w.path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write ambient config %s: %w", w.path, err)
	}
	tmp, err := os.CreateTemp(dir, ".config-*.json")
	if err != nil {
		return fmt.Errorf("write ambient config %s: %w", w.path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write ambient config %s: %w", w.path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write ambient config %s: %w", w.path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write ambient config %s: %w", w.path, err)
	}
	if err := os.Rename(tmp.Name(), w.path); err != nil {
		return fmt.Errorf("write ambient config %s: %w", w.path, err)
	}
	w.last = b
	return nil
}
