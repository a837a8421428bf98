package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/cni"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/version"
)

// agentFlags are the flags of `meshredirect agent`; each has an environment
// variable of the same name in upper case with MESHREDIRECT_ in front.
type agentFlags struct {
	nodeName        string
	nodeNetns       string
	kubeconfig      string
	pinDir          string
	podsMaxEntries  uint32
	attachMode      string
	priority        uint16
	redirectPeer    string
	captureDNS      bool
	udp             string
	dnsResolvers    []string
	failOpen        bool
	ztunnelSelector string
	excluded        []string
	configFile      string
	nodeIPs         []string
	netnsDirs       []string
	resyncPeriod    time.Duration
	logFormat       string
	logLevel        string
	metricsAddr     string
	cniSocket       string
	cniInstall      bool
	cniConfDir      string
	cniBinDir       string
	cniPlugin       string
	cniKubeconfig   string
	mountBPFFS      string
	replacePins     bool
	ztunnelMode     string
	zdsSocket       string
	procSysNet      string
}

func (f *agentFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "the node this agent serves (default $NODE_NAME, from the downward API)")
	fl.StringVar(&f.nodeNetns, "node-netns", "", "the node's network namespace as a path, if the agent does not run in it (default: this process's; the DaemonSet runs on the host network)")
	fl.StringVar(&f.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; empty: the in-cluster service account")
	fl.StringVar(&f.pinDir, "pin-dir", dataplane.DefaultPinDir, "bpffs directory of the maps, tcx links and qdisc markers")
	fl.StringVar(&f.procSysNet, "proc-sys-net", dataplane.DefaultProcSysNet, "where the net sysctls are written: the host's /proc/sys/net, mounted elsewhere in a container (a container runtime refuses mounts under /proc); its files show the netns of the thread that opens them, wherever it is mounted")
	fl.Uint32Var(&f.podsMaxEntries, "pods-max-entries", dataplane.DefaultPodsMaxEntries, "capacity of the endpoints map: one entry per pod IP and node address (a new size replaces the pinned map without dropping capture)")
	fl.StringVar(&f.attachMode, "attach-mode", "auto", "attach programs as tcx links (kernel 6.6+) or legacy tc filters: auto, tcx or tc")
	fl.Uint16Var(&f.priority, "priority", dataplane.DefaultPriority, "priority of the legacy tc filters (Cilium uses 1)")
	fl.StringVar(&f.redirectPeer, "redirect-peer", "auto", "use bpf_redirect_peer (kernel 5.10+) from ingress hooks: auto, true or false")
	fl.BoolVar(&f.captureDNS, "capture-dns", false, "send pods' DNS (UDP and TCP to port 53) to ztunnel's DNS proxy on 15053 (a pod opts out with ambient.istio.io/bypass-dns-capture: \"true\")")
	fl.StringVar(&f.udp, "udp", "pass", "what becomes of pods' UDP other than captured DNS: pass (as Istio does: ztunnel proxies no UDP) or drop (strict: only DNS to --dns-resolvers leaves a pod, and inbound UDP and ICMP are dropped too); a pod tightens it with meshredirect.io/udp: drop")
	fl.StringSliceVar(&f.dnsResolvers, "dns-resolvers", nil, "DNS servers pods may still query under --udp=drop (the cluster DNS Service IP, a node-local cache)")
	fl.StringVar(&f.ztunnelMode, "ztunnel-mode", agent.ZtunnelModeInPod, "which ztunnel the node runs: inpod (Istio 1.21 and later, without istio-cni: the agent hands each ambient pod's netns to ztunnel over ZDS and captures inside the pod) or node (ztunnel 1.18-1.20, or a node proxy with transparent listeners in its own netns)")
	fl.StringVar(&f.zdsSocket, "zds-socket", agent.DefaultZDSSocket, "in-pod mode: the Unix socket ztunnel connects to (ztunnel's ZDS; istio-cni's path)")
	fl.BoolVar(&f.failOpen, "fail-open", false, "let captured traffic pass while ztunnel is not ready (default: drop it, fail closed)")
	fl.StringVar(&f.ztunnelSelector, "ztunnel-selector", agent.DefaultZtunnelSelector, "label selector of ztunnel's pods")
	fl.StringSliceVar(&f.excluded, "exclude-namespaces", agent.DefaultExcludedNamespaces, "namespaces whose pods are never captured")
	fl.StringVar(&f.configFile, "config-file", agent.DefaultConfigFile, "where the ambient config ({\"ztunnelReady\":...}) is written")
	fl.StringSliceVar(&f.nodeIPs, "node-ip", nil, "addresses of the node besides those its network namespace holds, which the agent reads and follows itself (a pod's TCP to the node passes only as a reply of the node's own connection, such as a kubelet probe)")
	fl.StringSliceVar(&f.netnsDirs, "netns-dir", []string{"/var/run/netns", "/run/netns"}, "directories of network namespace bind mounts, searched (with /proc) for ztunnel's and in-pod pods'")
	fl.DurationVar(&f.resyncPeriod, "resync-period", agent.DefaultResyncPeriod, "how often the whole node is reconciled besides on every change")
	fl.StringVar(&f.logFormat, "log-format", "json", "log format: json or text")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fl.StringVar(&f.metricsAddr, "metrics-addr", ":15014", "address of the HTTP server for /metrics (Prometheus), /healthz and /readyz; empty: none")
	fl.StringVar(&f.mountBPFFS, "mount-bpffs", "auto", "mount a bpffs at /sys/fs/bpf if the pin directory is not on one: auto (only in the host's mount namespace, where the mount outlives the agent), always or never")
	fl.BoolVar(&f.replacePins, "replace-incompatible-pins", true, "replace pinned maps of another layout or size with new ones, refilled without dropping capture (false: stop with an error)")
	fl.StringVar(&f.cniSocket, "cni-socket", cni.DefaultSocket, "Unix socket (mode 0600) where the chained CNI plugin reaches the agent; empty: serve no plugin")
	fl.BoolVar(&f.cniInstall, "cni-install", false, "copy the CNI plugin into --cni-bin-dir and keep it chained at the end of the primary CNI's conflist in --cni-conf-dir")
	fl.StringVar(&f.cniConfDir, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
	fl.StringVar(&f.cniBinDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
	fl.StringVar(&f.cniPlugin, "cni-plugin", "/usr/local/bin/meshredirect-cni", "the CNI plugin's executable to install (it is in the agent's image)")
	fl.StringVar(&f.cniKubeconfig, "cni-kubeconfig", "", "with --cni-install in a cluster: where the CNI plugin's kubeconfig goes (mode 0600; the agent's ServiceAccount token, rewritten when it rotates), with which the plugin lets pods that are not ambient start while the agent is down (default: "+cni.KubeconfigName+" in --cni-conf-dir); outside a cluster (--kubeconfig given) none is written and the plugin fails every ADD outside the excluded namespaces while the agent is down")
}

// validate checks the flags before anything is touched, so that a wrong
// flag fails at start with a message that names it.
func (f *agentFlags) config() (agent.Config, error) {
	var cfg agent.Config
	if f.nodeName == "" {
		return cfg, fmt.Errorf("no node name: set --node-name or NODE_NAME (the downward API's spec.nodeName)")
	}
	mode, err := dataplane.ParseMode(f.attachMode)
	if err != nil {
		return cfg, fmt.Errorf("invalid --attach-mode: %w", err)
	}
	var peer *bool
	switch f.redirectPeer {
	case "auto":
	case "true", "false":
		v := f.redirectPeer == "true"
		peer = &v
	default:
		return cfg, fmt.Errorf("invalid --redirect-peer %q: want auto, true or false", f.redirectPeer)
	}
	switch f.mountBPFFS {
	case dataplane.MountBPFFSAuto, dataplane.MountBPFFSAlways, dataplane.MountBPFFSNever:
	default:
		return cfg, fmt.Errorf("invalid --mount-bpffs %q: want auto, always or never", f.mountBPFFS)
	}
	if f.podsMaxEntries == 0 {
		return cfg, fmt.Errorf("invalid --pods-max-entries 0: the endpoints map needs room")
	}
	if f.resyncPeriod < time.Second {
		return cfg, fmt.Errorf("invalid --resync-period %s: at least 1s", f.resyncPeriod)
	}
	nodeIPs, err := parseIPs("--node-ip", f.nodeIPs)
	if err != nil {
		return cfg, err
	}
	resolvers, err := parseIPs("--dns-resolvers", f.dnsResolvers)
	if err != nil {
		return cfg, err
	}
	if f.ztunnelMode != agent.ZtunnelModeInPod && f.ztunnelMode != agent.ZtunnelModeNode {
		return cfg, fmt.Errorf("invalid --ztunnel-mode %q: want %s or %s", f.ztunnelMode, agent.ZtunnelModeInPod, agent.ZtunnelModeNode)
	}
	if f.udp != agent.UDPPass && f.udp != agent.UDPDrop {
		return cfg, fmt.Errorf("invalid --udp %q: want %s or %s", f.udp, agent.UDPPass, agent.UDPDrop)
	}
	log, err := newLogger(f.logFormat, f.logLevel)
	if err != nil {
		return cfg, err
	}
	cfg = agent.Config{
		NodeName: f.nodeName,
		Dataplane: dataplane.Config{NodeNetns: f.nodeNetns, PinDir: f.pinDir, PodsMaxEntries: f.podsMaxEntries, AttachMode: mode, Priority: f.priority,
			RedirectPeer: peer, CaptureDNS: f.captureDNS, StrictUDP: f.udp == agent.UDPDrop, FailOpen: f.failOpen,
			MountBPFFS: f.mountBPFFS, ReplaceIncompatiblePins: f.replacePins, ProcSysNet: f.procSysNet},
		ExcludedNamespaces: f.excluded,
		ZtunnelSelector:    f.ztunnelSelector,
		ConfigFile:         f.configFile,
		NodeIPs:            nodeIPs,
		DNSResolvers:       resolvers,
		ResyncPeriod:       f.resyncPeriod,
		Log:                log,
		ZtunnelMode:        f.ztunnelMode,
		ZDSSocket:          f.zdsSocket,
	}
	cfg.Resolve.NetnsDirs = f.netnsDirs
	cfg.CNI = agent.CNIConfig{Socket: f.cniSocket, Install: f.cniInstall, ConfDir: f.cniConfDir, BinDir: f.cniBinDir, Plugin: f.cniPlugin,
		Kubeconfig: f.cniKubeconfig}
	if f.kubeconfig == "" {
		// In a cluster: the plugin gets the agent's own access.
		cfg.CNI.APIAccess = agent.InClusterAPIAccess(agent.ServiceAccountDir)
	}
	if f.cniInstall && f.cniSocket == "" {
		return cfg, fmt.Errorf("--cni-install needs --cni-socket: the plugin must reach the agent")
	}
	return cfg, nil
}

// parseIPs parses the addresses of a flag.
func parseIPs(flag string, values []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range values {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("invalid %s %q: %w", flag, s, err)
		}
		if !ip.IsGlobalUnicast() && !ip.IsLinkLocalUnicast() {
			return nil, fmt.Errorf("invalid %s %q: not a unicast address", flag, s)
		}
		out = append(out, ip.Unmap())
	}
	return out, nil
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("invalid --log-format %q: want json or text", format)
}

// kubeClient builds a client from a kubeconfig, or the in-cluster service
// account when kubeconfig is empty.
// kubeQPS and kubeBurst bound the agent's requests to the API server
// (the kubelet's --kube-api-qps and --kube-api-burst defaults).
const (
	kubeQPS   = 50
	kubeBurst = 100
)

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var (
		rc  *rest.Config
		err error
	)
	if kubeconfig == "" {
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config: %w (outside a pod, pass --kubeconfig)", err)
		}
	} else if rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	rc.UserAgent = "meshredirect"
	// client-go's defaults (5 requests/s, bursts of 10) let the agent
	// enrol 2.5 pods/s, since each enrolment writes the pod's annotation
	// and an Event: 1,000 pods took 397 s in the benchmark's scale phase.
	// The kubelet's own defaults, a client on every node like this one.
	rc.QPS, rc.Burst = kubeQPS, kubeBurst
	return kubernetes.NewForConfig(rc)
}

func newAgentCmd() *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent: capture every ambient pod of this node into ztunnel",
		Long: `agent watches the pods of this node (spec.nodeName = --node-name) and the
namespaces, and keeps the datapath in step: every ambient pod (label
istio.io/dataplane-mode=ambient on the pod or its namespace) gets the
redirection programs on its veth and its IPs in the endpoints map; pods that leave
the mesh or go away lose them. It tracks the node's ztunnel (the newest Ready
pod matching --ztunnel-selector) and fails closed without one.

Capture outlives the agent: on SIGTERM it stops watching and leaves every
program and pin in place, and a restarted agent takes them over without a gap.
'meshredirect uninstall' removes everything.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			routeKlog(cfg.Log)
			info := version.Get()
			cfg.Log.Info("meshredirect agent starting", "version", info.Version, "commit", info.Commit,
				"goversion", info.GoVersion, "platform", info.Platform, "node", cfg.NodeName)
			// Before anything is touched: a missing capability would
			// otherwise fail halfway through start.
			if err := agent.CheckCapabilities(cfg.Log); err != nil {
				return err
			}
			if cfg.Client, err = kubeClient(f.kubeconfig); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			reg := agent.NewRegistry()
			cfg.Metrics = reg
			a, err := agent.New(cfg)
			if err != nil {
				return err
			}
			errc := make(chan error, 2)
			if f.metricsAddr != "" {
				go func() {
					if err := a.Serve(ctx, f.metricsAddr, reg); err != nil {
						stop() // without probes the kubelet would restart us anyway
						errc <- err
					}
				}()
			}
			errc <- a.Run(ctx)
			return <-errc
		},
	}
	f.register(cmd)
	return cmd
}

func newUninstallCmd() *cobra.Command {
	var (
		nodeNetns  string
		pinDir     string
		procSysNet string
		netnsDirs  []string
		configFile string
		kubeconfig string
		nodeName   string
		cniConfDir string
		cniBinDir  string
	)
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove everything meshredirect made on this node",
		Long: `uninstall removes what the agent made on this node: the programs on every
interface (filters and tcx links, and the qdiscs it created), ztunnel's
policy routing rules, the capture inside each pod of in-pod mode (its
programs, policy routing and sysctls; the pods' network namespaces are found
in --netns-dir and /proc/*/ns/net), the pins under --pin-dir, the ambient config file, and,
when the API is reachable, the enrolment annotation of this node's pods, and
the CNI plugin (its conflist entry and binary). Run
it after stopping the agent; pods' traffic is no longer captured afterwards.
It is safe to repeat. net.ipv4.conf.all.rp_filter, lowered to 0 for ztunnel
(every other interface keeping its effective value), is left as it is.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			var errs []string
			dpCfg := dataplane.Config{NodeNetns: nodeNetns, PinDir: pinDir, ProcSysNet: procSysNet}
			ztNetns, err := dataplane.FindZtunnelNetns(dpCfg, netnsDirs)
			if err != nil {
				fmt.Fprintf(out, "ztunnel's netns not found (%v): its rules stay until its pod goes\n", err)
			}
			podNetns, err := dataplane.FindInPodNetns(dpCfg, netnsDirs)
			if err != nil {
				fmt.Fprintf(out, "some network namespaces could not be read (%v): an in-pod capture in them stays\n", err)
			}
			if len(podNetns) > 0 {
				fmt.Fprintf(out, "found in-pod capture in %d network namespaces\n", len(podNetns))
			}
			if err := dataplane.Uninstall(dpCfg, append(ztNetns, podNetns...)...); err != nil {
				errs = append(errs, err.Error())
			} else {
				fmt.Fprintf(out, "removed programs, links and pins (%s)\n", pinDir)
			}
			if err := (cni.Installer{ConfDir: cniConfDir, BinDir: cniBinDir}).Uninstall(); err != nil {
				errs = append(errs, "CNI plugin: "+err.Error())
			} else {
				fmt.Fprintf(out, "removed the CNI plugin from %s and %s\n", cniConfDir, cniBinDir)
			}
			if err := os.Remove(configFile); err == nil {
				fmt.Fprintf(out, "removed %s\n", configFile)
			} else if !os.IsNotExist(err) {
				errs = append(errs, err.Error())
			}
			if nodeName != "" {
				client, err := kubeClient(kubeconfig)
				if err == nil {
					var n int
					n, err = agent.RemoveAnnotations(cmd.Context(), client, nodeName)
					fmt.Fprintf(out, "removed the enrolment annotation from %d pods\n", n)
				}
				if err != nil {
					errs = append(errs, "annotations: "+err.Error())
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("uninstall incomplete:\n  %s", strings.Join(errs, "\n  "))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&nodeNetns, "node-netns", "", "the node's network namespace as a path, if this process does not run in it")
	cmd.Flags().StringVar(&pinDir, "pin-dir", dataplane.DefaultPinDir, "bpffs directory of the maps, tcx links and qdisc markers")
	cmd.Flags().StringVar(&procSysNet, "proc-sys-net", dataplane.DefaultProcSysNet, "where the net sysctls of in-pod pods are set back: the host's /proc/sys/net, mounted elsewhere in a container (a container runtime refuses mounts under /proc)")
	cmd.Flags().StringSliceVar(&netnsDirs, "netns-dir", []string{"/var/run/netns", "/run/netns"}, "directories of network namespace bind mounts, searched (with /proc) for ztunnel's and in-pod pods'")
	cmd.Flags().StringVar(&configFile, "config-file", agent.DefaultConfigFile, "the ambient config file to remove")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; empty: the in-cluster service account")
	cmd.Flags().StringVar(&nodeName, "node-name", os.Getenv("NODE_NAME"), "remove the enrolment annotation from this node's pods (empty: skip)")
	cmd.Flags().StringVar(&cniConfDir, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory, to take the plugin out of")
	cmd.Flags().StringVar(&cniBinDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI plugin directory, to remove the plugin from")
	return cmd
}
