package main

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/meshredirect/meshredirect/bench/report"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/zds"
)

// allModes lists every mode in the order tables show them.
var allModes = []string{
	report.ModeDirect, report.ModeExplicit, report.ModeIptablesNode, report.ModeIptablesInpod,
	report.ModeNftablesInpod, report.ModeEBPFInpod, report.ModeEBPFTC, report.ModeEBPFTCX, report.ModeEBPFTCRedirect, report.ModeEBPFTCXRedir,
}

// hasKernelPath reports whether the kernel path is measured for mode: the
// explicit mode is measured end to end only (the choice: it is the
// floor of a redirection, which only the whole request shows).
func hasKernelPath(mode string) bool { return mode != report.ModeExplicit }

// hasProxy reports whether mode's traffic goes through the stand-in.
func hasProxy(mode string) bool { return mode != report.ModeDirect }

// Ports of the benchmark's servers.
const (
	// HTTPPort is where the fortio server listens in the server pod.
	HTTPPort = 8080
	// HoldPort is where the benchmark itself listens in the server pod
	// for the connection whose tuples the kernel path injects.
	HoldPort = 9090
	// explicitPort is the port the explicit mode's client dials: the
	// stand-in's outbound listener (see modeExplicit).
	explicitPort = 15001
	// adminPort is the stand-ins' admin listener (GET /records), on
	// 127.0.0.1 in their namespace.
	adminPort = 15000
)

// Copy is one copy of the topology, for one mode: a node in a box with a
// client, a server and a ztunnel pod, at the same addresses as every other
// copy (each copy has its own namespaces), the mode's redirection, and
// the processes of the end-to-end workload in the copy's cgroup.
type Copy struct {
	Mode                    string
	Node                    *testenv.Node
	Client, Server, Ztunnel *testenv.Pod
	// Scripts are the commands the mode ran, for the report.
	Scripts []script
	// DP is the dataplane of an eBPF mode.
	DP *dataplane.Dataplane
	// Cgroup holds every process of the copy: Proxy (the stand-ins),
	// ServerCG (the HTTP server) and ClientCG (the load generator).
	Cgroup, Proxy, ServerCG, ClientCG *cgroup
	// Standins are the stand-in processes with the namespace each runs
	// in: one, in ztunnel's pod (in the in-pod modes it opens its
	// listeners in the client's and the server's netns).
	Standins []standin
	// ZDS is the ZDS server an in-pod copy's stand-in is connected to.
	ZDS *zds.Server
	// Agent is the load generator in the client pod.
	Agent *process
}

// standin is a running stand-in and the pod it runs in.
type standin struct {
	pod  *testenv.Pod
	proc *process
}

// namespaces returns the copy's namespaces by the names proofs use.
func (c *Copy) namespaces() map[string]*testenv.Namespace {
	return map[string]*testenv.Namespace{
		"node":    &c.Node.Namespace,
		"client":  &c.Client.Namespace,
		"server":  &c.Server.Namespace,
		"ztunnel": &c.Ztunnel.Namespace,
	}
}

// ServerPort is the port the copy's client dials.
func (c *Copy) ServerPort() int {
	if c.Mode == report.ModeExplicit {
		return explicitPort
	}
	return HTTPPort
}

// buildOptions is what building a copy needs besides its mode.
type buildOptions struct {
	// BPFFS is a private bpffs; each eBPF copy pins under its own
	// directory in it.
	BPFFS string
	// Cgroup is the benchmark's parent cgroup.
	Cgroup *cgroup
	// Standin is the path of the ztunnel-standin binary; Self the
	// benchmark's own, run as the server and the load generator.
	Standin, Self string
	// CPU pins the copy's processes, -1 for none.
	CPU int
	// E2E starts the processes of the end-to-end workload.
	E2E bool
}

// buildCopy builds the copy of mode.
func buildCopy(e *env, mode string, o buildOptions) *Copy {
	c := &Copy{Mode: mode}
	c.Node = testenv.NewNode(e, testenv.NodeOptions{Name: "node1"})
	c.Client = c.Node.AddPod("client", testenv.Ambient)
	c.Server = c.Node.AddPod("server", testenv.Ambient)
	c.Ztunnel = c.Node.AddZtunnel()
	for name, ns := range c.namespaces() {
		if err := rpFilterOff(ns); err != nil {
			e.Fatalf("copy %s: turn reverse path filtering off in the %s's netns: %v", mode, name, err)
		}
	}
	// Disjoint ephemeral ports per pod: the proxies connect upstream
	// with their client's address, so a connection the client opened
	// (client:C -> server) and one a proxy opened for another
	// (client:P -> server) share a tuple space. Where both meet one
	// namespace (the node's conntrack in iptables-node; the server pod
	// in the in-pod modes, where the HBONE connection from the client
	// pod, client:x -> server:15008, and the stand-in's connection to the
	// server, client:y -> server:8080, meet) an equal port would be two
	// connections on one tuple, or a conntrack clash.
	for _, r := range []struct {
		pod   *testenv.Pod
		ports string
	}{{c.Client, "10000 29999"}, {c.Ztunnel, "30000 44999"}, {c.Server, "45000 60999"}} {
		if err := r.pod.Do(func() error { return writeSysctl("net/ipv4/ip_local_port_range=" + r.ports) }); err != nil {
			e.Fatalf("copy %s: %v", mode, err)
		}
	}
	c.Cgroup = o.Cgroup.child(e, mode)
	c.Proxy = c.Cgroup.child(e, "proxy")
	c.ServerCG = c.Cgroup.child(e, "server")
	c.ClientCG = c.Cgroup.child(e, "client")

	switch mode {
	case report.ModeDirect:
	case report.ModeExplicit:
		c.setupExplicit(e)
	case report.ModeIptablesNode:
		c.setupIptablesNode(e)
	case report.ModeIptablesInpod:
		c.setupIptablesInpod(e)
	case report.ModeNftablesInpod:
		c.setupNftablesInpod(e)
	case report.ModeEBPFInpod:
		c.setupEBPFInpod(e, o.BPFFS)
	default:
		c.setupEBPF(e, o.BPFFS)
	}

	ports := fmt.Sprint(HTTPPort)
	if mode == report.ModeExplicit {
		ports += fmt.Sprintf(",%d", explicitPort)
	}
	goenv := "GODEBUG=multipathtcp=0"
	startProcess(e, &c.Server.Namespace, c.ServerCG, o.CPU, mode+" server",
		[]string{o.Self, "serve", "-ports", ports}, goenv)
	switch {
	case report.IsInPod(mode):
		// ztunnel in-pod (see inpod.go): one process, its listeners
		// inside each pod's netns, its sockets marked 0x539.
		c.startInPodStandin(e, o)
	case hasProxy(mode):
		c.startStandin(e, c.Ztunnel, o)
	}
	if o.E2E {
		c.Agent = startProcess(e, &c.Client.Namespace, c.ClientCG, o.CPU, mode+" load generator",
			[]string{o.Self, "load"}, goenv)
	}
	return c
}

// startStandin starts the stand-in binary in pod's netns, in the proxy
// cgroup, with its admin listener for the records and args.
func (c *Copy) startStandin(e *env, pod *testenv.Pod, o buildOptions, args ...string) {
	p := startProcess(e, &pod.Namespace, c.Proxy, o.CPU, fmt.Sprintf("%s stand-in in %s", c.Mode, pod.Name),
		append([]string{o.Standin, "-admin", fmt.Sprintf("127.0.0.1:%d", adminPort)}, args...))
	c.Standins = append(c.Standins, standin{pod: pod, proc: p})
}

// ip4 returns an address as a string, for scripts.
func ip4(a netip.Addr) string { return a.String() }

// pinDir is an eBPF copy's pin directory in the private bpffs.
func pinDir(bpffs, mode string) string { return filepath.Join(bpffs, mode) }
