package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/dataplane"
)

func newStatusCmd() *cobra.Command {
	var (
		pinDir     string
		nodeNetns  string
		kubeconfig string
		nodeName   string
		asJSON     bool
		netnsDirs  []string
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the node's datapath: enrolled pods, ztunnel, programs, counters",
		Long: `status shows what captures traffic on this node, read from the pins and the
kernel, so it works while the agent is down: every enrolled pod (its IPs, host
veth, attach mode and the veth's packet counters), ztunnel (interface, MAC,
IPs, ready, DNS capture, fail open), the programs attached (ID, tag, and
whether they are this build's), the kernel features in use, the node-wide
counters per verdict, and the problems it sees. Pods captured in their own
network namespace (in-pod mode) are found in --netns-dir and /proc/*/ns/net
and listed with their programs, policy routing and whether ztunnel acked
them. Pod names come from the API when it can be reached (--kubeconfig or
the in-cluster account, and --node-name).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := agent.StatusOptions{InspectOptions: dataplane.InspectOptions{NodeNetns: nodeNetns, PinDir: pinDir, NetnsDirs: netnsDirs}, NodeName: nodeName}
			if nodeName != "" {
				if c, err := kubeClient(kubeconfig); err == nil {
					o.Client = c
				} else {
					fmt.Fprintf(os.Stderr, "status: no pod names (%v)\n", err)
				}
			}
			st, err := agent.NodeStatus(cmd.Context(), o)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			return writeStatus(cmd.OutOrStdout(), st)
		},
	}
	cmd.Flags().StringVar(&pinDir, "pin-dir", dataplane.DefaultPinDir, "bpffs directory of the maps, tcx links and qdisc markers")
	cmd.Flags().StringVar(&nodeNetns, "node-netns", "", "the node's network namespace as a path, if this process does not run in it")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig for pod names; empty: the in-cluster service account")
	cmd.Flags().StringVar(&nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name, to look pod names up in the API (empty: no names)")
	cmd.Flags().StringSliceVar(&netnsDirs, "netns-dir", []string{"/var/run/netns", "/run/netns"}, "directories of network namespace bind mounts, searched (with /proc) for pods captured in-pod")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

func writeStatus(w io.Writer, st dataplane.Status) error {
	f := st.Features
	fmt.Fprintf(w, "kernel %s: bpf_redirect_peer %s, tcx %s; attached as %s\n", st.Kernel, yesNo(f.RedirectPeer), yesNo(f.TCX), orNone(strings.Join(f.AttachModes, ", ")))
	fmt.Fprintf(w, "node addresses: %s\n", orNone(strings.Join(st.NodeAddresses, ", ")))
	fmt.Fprintf(w, "DNS resolvers: %s\n", orNone(strings.Join(st.Resolvers, ", ")))
	fmt.Fprintf(w, "tunnel ports of the node (pods' UDP to them dropped): %s\n", orNone(strings.Trim(fmt.Sprint(st.RelayPorts), "[]")))
	z := st.Ztunnel
	if z.Ifindex == 0 && len(st.InPod) > 0 && len(st.Pods) == 0 {
		fmt.Fprintf(w, "ztunnel: in each pod (in-pod mode; see ZTUNNEL below)\n\n")
	} else {
		fmt.Fprintf(w, "ztunnel: %s (ifindex %d, netns id %d), MAC %s, IPs %s; ready %s, DNS capture %s, UDP %s, fail open %s\n\n",
			orNone(z.Interface), z.Ifindex, z.NetnsID, z.MAC, orNone(strings.Join(z.IPs, ", ")), yesNo(z.Ready), yesNo(z.CaptureDNS), z.UDP, yesNo(z.FailOpen))
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tIPS\tINTERFACE\tMODE\tPOLICY\tPKTS OUT\tPKTS IN")
	for _, p := range st.Pods {
		name := "?"
		if p.Name != "" {
			name = p.Namespace + "/" + p.Name
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", name, strings.Join(p.IPs, ","), orNone(p.Interface), p.Mode, orNone(p.Policy), p.PacketsOut, p.PacketsIn)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d pods enrolled\n\n", len(st.Pods))

	if len(st.InPod) > 0 {
		writeInPod(w, st.InPod)
	}

	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROGRAM\tID\tTAG\tATTACHED\tTHIS BUILD")
	for _, p := range st.Programs {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\n", p.Name, p.ID, p.Tag, p.Attachments, yesNo(p.Current))
	}
	tw.Flush()

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "verdict\tpackets\tbytes\t")
	for _, v := range dataplane.Verdicts() {
		n := v.String()
		c := st.Verdicts[n]
		fmt.Fprintf(tw, "%s\t%d\t%d\t\n", n, c.Packets, c.Bytes)
	}
	tw.Flush()

	if len(st.Problems) > 0 {
		fmt.Fprintln(w, "\nproblems:")
		for _, p := range st.Problems {
			fmt.Fprintln(w, "  -", p)
		}
	}
	return nil
}

// writeInPod writes the pods captured in their own netns: where, which
// programs on which interface, the policy routing, and whether ztunnel has
// the pod (from the API's enrolment annotation; "?" without the API).
func writeInPod(w io.Writer, pods []dataplane.InPodStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IN-POD POD\tIPS\tNETNS\tINTERFACE\tMODE\tPROGRAMS\tPOLICY ROUTING\tPOLICY\tZTUNNEL")
	for _, p := range pods {
		name := "?"
		if p.Name != "" {
			name = p.Namespace + "/" + p.Name
		}
		var progs []string
		for _, prog := range p.Programs {
			progs = append(progs, fmt.Sprintf("%s@%s/%s", prog.Name, prog.Interface, prog.Direction))
		}
		zt := p.Ztunnel
		if zt == "" {
			zt = "?"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, strings.Join(p.IPs, ","), p.Netns, orNone(p.Interface), p.Mode,
			orNone(strings.Join(progs, ",")), yesNo(p.PolicyRouting), orNone(p.Policy), zt)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d pods captured in their netns (in-pod mode)\n\n", len(pods))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
