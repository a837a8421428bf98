package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/meshredirect/meshredirect/dataplane"
)

// hookFlags are the flags that say where the programs and pins are.
type hookFlags struct {
	netns    string
	pinDir   string
	mode     string
	priority uint16
}

func (f *hookFlags) register(cmd *cobra.Command, withMode bool) {
	cmd.Flags().StringVar(&f.netns, "netns", "", "network namespace to work in, as a path (/proc/<pid>/ns/net, /run/netns/<name>); default: this process's")
	cmd.Flags().StringVar(&f.pinDir, "pin-dir", dataplane.DefaultPinDir, "bpffs directory of the maps, tcx links and qdisc markers")
	cmd.Flags().Uint16Var(&f.priority, "priority", dataplane.DefaultPriority, "priority of the legacy tc filters")
	if withMode {
		cmd.Flags().StringVar(&f.mode, "mode", "auto", "attach as a tcx link (kernel 6.6+) or a legacy tc filter: auto, tcx or tc")
	}
}

func (f *hookFlags) config() (dataplane.Config, error) {
	mode, err := dataplane.ParseMode(f.mode)
	if err != nil {
		return dataplane.Config{}, fmt.Errorf("invalid --mode: %w", err)
	}
	return dataplane.Config{NodeNetns: f.netns, PinDir: f.pinDir, AttachMode: mode, Priority: f.priority}, nil
}

func newAttachCmd() *cobra.Command {
	var (
		hf        hookFlags
		program   string
		iface     string
		direction string
	)
	cmd := &cobra.Command{
		Use:   "attach --program NAME --interface IFACE",
		Short: "Attach one of the programs to an interface",
		Long: `attach loads the programs with the pinned maps (creating them if needed) and
attaches the named one to a TC hook of an interface, replacing our previous
attachment there atomically. It stays attached after this command exits: a
legacy filter lives on its hook, a tcx link is pinned under --pin-dir.

Programs: app_outbound (ingress), app_inbound (egress), ztunnel_ingress
(ingress), ztunnel_assign (ingress). --direction defaults to the program's.
The agent does this itself for every ambient pod; attach is for operators
and experiments.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := dataplane.ProgramDirection(program)
			if err != nil {
				return err
			}
			if direction != "" {
				if dir, err = dataplane.ParseDirection(direction); err != nil {
					return err
				}
			}
			cfg, err := hf.config()
			if err != nil {
				return err
			}
			dp, err := dataplane.Open(cfg)
			if err != nil {
				return err
			}
			defer dp.Close()
			ifindex, err := dp.Interface(iface)
			if err != nil {
				return err
			}
			a, err := dp.Attach(ifindex, program, dir)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "attached:", a)
			return nil
		},
	}
	hf.register(cmd, true)
	cmd.Flags().StringVar(&program, "program", "", "program to attach (required)")
	cmd.Flags().StringVar(&iface, "interface", "", "interface to attach to, by name (required)")
	cmd.Flags().StringVar(&direction, "direction", "", "hook: ingress or egress (default: the program's)")
	cmd.MarkFlagRequired("program")
	cmd.MarkFlagRequired("interface")
	return cmd
}

func newDetachCmd() *cobra.Command {
	var (
		hf        hookFlags
		iface     string
		direction string
	)
	cmd := &cobra.Command{
		Use:   "detach --interface IFACE",
		Short: "Take our programs off an interface",
		Long: `detach removes meshredirect's filters and tcx links from the hooks of an
interface (both, or the one --direction names). Other tools' filters and
links stay; the clsact qdisc goes only if meshredirect created it and it is
left empty.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dirs := []dataplane.Direction{dataplane.Ingress, dataplane.Egress}
			if direction != "" {
				d, err := dataplane.ParseDirection(direction)
				if err != nil {
					return err
				}
				dirs = []dataplane.Direction{d}
			}
			cfg, err := hf.config()
			if err != nil {
				return err
			}
			if err := dataplane.Detach(cfg, iface, dirs...); err != nil {
				return err
			}
			for _, d := range dirs {
				fmt.Fprintf(cmd.OutOrStdout(), "detached: %s %s\n", iface, d)
			}
			return nil
		},
	}
	hf.register(cmd, false)
	cmd.Flags().StringVar(&iface, "interface", "", "interface to detach from, by name (required)")
	cmd.Flags().StringVar(&direction, "direction", "", "hook: ingress or egress (default: both)")
	cmd.MarkFlagRequired("interface")
	return cmd
}

func newListCmd() *cobra.Command {
	var (
		hf     hookFlags
		iface  string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List our programs' attachments in a network namespace",
		Long: `list shows every hook where one of meshredirect's programs is attached, on one
interface or on all of them: interface, direction, mode (tc or tcx), program,
and the filter's priority or the link's pin. It reads the kernel, so it
works whether or not the agent runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := hf.config()
			if err != nil {
				return err
			}
			all, err := dataplane.ListAttachments(cfg, iface)
			if err != nil {
				return err
			}
			if asJSON {
				return writeAttachmentsJSON(cmd.OutOrStdout(), all)
			}
			return writeAttachments(cmd.OutOrStdout(), all)
		},
	}
	hf.register(cmd, false)
	cmd.Flags().StringVar(&iface, "interface", "", "only this interface, by name")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// attachmentJSON is one element of `list --json`.
type attachmentJSON struct {
	Interface string `json:"interface"`
	Ifindex   int    `json:"ifindex"`
	Direction string `json:"direction"`
	Mode      string `json:"mode"`
	Program   string `json:"program"`
	ProgramID uint32 `json:"program_id"`
	Priority  uint16 `json:"priority,omitempty"`
	Handle    uint32 `json:"handle,omitempty"`
	Pin       string `json:"pin,omitempty"`
	Defunct   bool   `json:"defunct,omitempty"`
}

func writeAttachmentsJSON(w io.Writer, all []dataplane.Attachment) error {
	out := make([]attachmentJSON, 0, len(all))
	for _, a := range all {
		name := a.Name
		if name == "" {
			name = a.ProgramName
		}
		out = append(out, attachmentJSON{Interface: a.Ifname, Ifindex: a.Ifindex, Direction: string(a.Direction), Mode: a.Mode.String(),
			Program: name, ProgramID: uint32(a.ProgramID), Priority: a.Priority, Handle: a.Handle, Pin: a.PinPath, Defunct: a.Defunct})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func writeAttachments(w io.Writer, all []dataplane.Attachment) error {
	if len(all) == 0 {
		_, err := fmt.Fprintln(w, "no meshredirect program is attached here")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "INTERFACE\tDIRECTION\tMODE\tPROGRAM\tID\tPLACE")
	for _, a := range all {
		name := a.Name
		if name == "" {
			name = a.ProgramName
		}
		place := fmt.Sprintf("pref %d handle %#x", a.Priority, a.Handle)
		if a.Mode == dataplane.ModeTCX {
			place = a.PinPath
		}
		ifname := a.Ifname
		if a.Defunct {
			ifname = fmt.Sprintf("(gone, was %d)", a.Ifindex)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", ifname, a.Direction, a.Mode, name, a.ProgramID, place)
	}
	return tw.Flush()
}
