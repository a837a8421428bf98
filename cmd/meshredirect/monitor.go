package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/dataplane"
)

// namesRefresh is how often monitor asks the API again for the node's pods.
const namesRefresh = 30 * time.Second

func newMonitorCmd() *cobra.Command {
	var (
		pinDir     string
		kubeconfig string
		nodeName   string
		kind       string
		output     string
		pod        string
	)
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Show the packets the programs drop (or every verdict), live",
		Long: `monitor prints a line per packet the node's programs drop, as they drop it:
the time, the program, the verdict (dropped_spoofed, parse_error, no_socket,
...), the interface index it ran on, the packet's protocol, addresses and
ports, and its length; with --type all, every packet the programs see, whatever
they do with it. The pods at either end are named from the API when it can be
reached (--kubeconfig or the in-cluster account, and --node-name); --pod keeps
the packets from or to one pod.

The programs write events only while a monitor is attached, to a ring buffer
the agent pins beside its maps: with none attached a packet costs them a
load and a compare. Watching drops costs only dropped packets; --type all
costs every packet of the node a few tens of nanoseconds while it runs.
monitor works beside the agent, or while it is down, and changes nothing it
uses; several monitors may run at once. Each extends its lease every second:
a monitor killed (even with SIGKILL) stops costing within two seconds.

Events that find the ring buffer full (256 KiB: a flood faster than monitor
prints) are lost; the programs count them, and monitor says on stderr how
many. The node must run programs of a version that has the
monitor ('status' shows whether the programs are this build's).`,
		Example: `  meshredirect monitor
  meshredirect monitor --type all --pod default/client -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kind != "drop" && kind != "all" {
				return fmt.Errorf("--type %q: want drop or all", kind)
			}
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			names := &podNamer{opts: agent.StatusOptions{NodeName: nodeName}}
			if nodeName != "" {
				if c, err := kubeClient(kubeconfig); err == nil {
					names.opts.Client = c
				} else {
					fmt.Fprintf(cmd.ErrOrStderr(), "monitor: no pod names (%v)\n", err)
				}
			}
			names.refresh(ctx)
			var want []netip.Addr
			if pod != "" {
				if want = names.ips(pod); len(want) == 0 {
					return fmt.Errorf("--pod %s: no such pod on this node in the API (pod names need --node-name and the API)", pod)
				}
			}
			go names.keepFresh(ctx)
			w := cmd.OutOrStdout()
			enc := json.NewEncoder(w)
			opts := dataplane.MonitorOptions{PinDir: pinDir, AllVerdicts: kind == "all",
				// On stderr, so that -o json stays one event per line.
				Lost: func(n uint64) {
					fmt.Fprintf(cmd.ErrOrStderr(), "%d events lost since the monitor started: the ring buffer was full (packets came faster than monitors read)\n", n)
				}}
			return dataplane.Monitor(ctx, opts, func(e dataplane.Event) error {
				if want != nil && !slices.Contains(want, e.Src) && !slices.Contains(want, e.Dst) {
					return nil
				}
				ev := monitorEvent{Event: e, SrcPod: names.of(e.Src), DstPod: names.of(e.Dst)}
				if output == "json" {
					return enc.Encode(ev)
				}
				return writeEvent(w, ev)
			})
		},
	}
	cmd.Flags().StringVar(&kind, "type", "drop", "drop: the packets the programs drop; all: every packet, whatever its verdict")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text, or json: one object per line")
	cmd.Flags().StringVar(&pod, "pod", "", "namespace/name: only the packets from or to this pod (needs the API)")
	cmd.Flags().StringVar(&pinDir, "pin-dir", dataplane.DefaultPinDir, "bpffs directory of the maps")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig for pod names; empty: the in-cluster service account")
	cmd.Flags().StringVar(&nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name, to look pod names up in the API (empty: no names)")
	return cmd
}

// monitorEvent is an event with the pods at its ends, as monitor prints it.
type monitorEvent struct {
	dataplane.Event
	SrcPod string `json:"srcPod,omitempty"`
	DstPod string `json:"dstPod,omitempty"`
}

func writeEvent(w io.Writer, e monitorEvent) error {
	line := e.Event.String()
	if e.SrcPod != "" || e.DstPod != "" {
		line += fmt.Sprintf(" (pods %s -> %s)", orUnknown(e.SrcPod), orUnknown(e.DstPod))
	}
	_, err := fmt.Fprintln(w, line)
	return err
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

// podNamer names pod IPs from the API, asking again every namesRefresh
// for the pods that came since.
type podNamer struct {
	opts  agent.StatusOptions
	mu    sync.Mutex
	names map[netip.Addr]string
}

func (p *podNamer) refresh(ctx context.Context) {
	if p.opts.Client == nil {
		return
	}
	names := agent.PodNames(ctx, p.opts)
	p.mu.Lock()
	p.names = names
	p.mu.Unlock()
}

func (p *podNamer) keepFresh(ctx context.Context) {
	if p.opts.Client == nil {
		return
	}
	t := time.NewTicker(namesRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.refresh(ctx)
		}
	}
}

// of names the pod of ip; empty when unknown.
func (p *podNamer) of(ip netip.Addr) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.names[ip.Unmap()]
}

// ips returns the IPs of the pod called name ("namespace/name").
func (p *podNamer) ips(name string) []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []netip.Addr
	for ip, n := range p.names {
		if n == name {
			out = append(out, ip)
		}
	}
	return out
}
