package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/meshredirect/meshredirect/dataplane"
)

func newDumpCmd() *cobra.Command {
	var (
		asJSON bool
		peer   string
	)
	cmd := &cobra.Command{
		Use:   "dump",
		Short: "Print each program's disassembly, or with --json its size as the kernel verified it",
		Long: `dump generates the five programs, loads them into the kernel (with maps of
their own, nothing pinned or attached) and prints each one's disassembly.
With --json it prints instead a JSON array of
{"name", "instructions", "verified_instructions", "attach"}, where
verified_instructions is what the kernel's verifier reports after loading.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			force, err := redirectPeer(peer)
			if err != nil {
				return err
			}
			peerOn, progs, err := dataplane.DescribePrograms(force)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), progs)
			}
			return writeListing(cmd.OutOrStdout(), peerOn, progs)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of the programs' sizes instead of their disassembly (verified_instructions is 0 on kernels before 5.16, which do not report it)")
	cmd.Flags().StringVar(&peer, "redirect-peer", "auto", "use bpf_redirect_peer from ingress hooks: auto (if the kernel has it), true or false")
	return cmd
}

// redirectPeer turns the --redirect-peer flag into DescribePrograms's
// argument.
func redirectPeer(peer string) (*bool, error) {
	switch peer {
	case "auto":
		return nil, nil
	case "true", "false":
		on := peer == "true"
		return &on, nil
	}
	return nil, fmt.Errorf("invalid --redirect-peer %q: want auto, true or false", peer)
}

func writeJSON(w io.Writer, progs []dataplane.ProgramInfo) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(progs)
}

func writeListing(w io.Writer, redirectPeer bool, progs []dataplane.ProgramInfo) error {
	for _, p := range progs {
		fmt.Fprintf(w, "; %s: %s\n; %d instructions, %d verified by the kernel, licence %q, redirect_peer %v\n",
			p.Name, p.Attach, p.Instructions, p.VerifiedInstructions, dataplane.License, redirectPeer)
		if _, err := fmt.Fprintf(w, "%s\n", p.Listing); err != nil {
			return err
		}
	}
	return nil
}
