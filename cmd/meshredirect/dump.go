package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/spf13/cobra"

	mrasm "github.com/meshredirect/meshredirect/asm"
)

// programDump is one element of `dump --json`.
type programDump struct {
	Name                 string `json:"name"`
	Instructions         int    `json:"instructions"`
	VerifiedInstructions uint32 `json:"verified_instructions"`
	Attach               string `json:"attach"`
}

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
			opts, err := programOptions(peer)
			if err != nil {
				return err
			}
			dumps, err := loadAndMeasure(opts)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), dumps)
			}
			return writeListing(cmd.OutOrStdout(), opts, dumps)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of the programs' sizes instead of their disassembly (verified_instructions is 0 on kernels before 5.16, which do not report it)")
	cmd.Flags().StringVar(&peer, "redirect-peer", "auto", "use bpf_redirect_peer from ingress hooks: auto (if the kernel has it), true or false")
	return cmd
}

// programOptions turns the --redirect-peer flag into program options.
func programOptions(peer string) (mrasm.Options, error) {
	switch peer {
	case "auto":
		return mrasm.Detect()
	case "true", "false":
		opts := mrasm.DefaultOptions()
		opts.RedirectPeer = peer == "true"
		return opts, nil
	}
	return mrasm.Options{}, fmt.Errorf("invalid --redirect-peer %q: want auto, true or false", peer)
}

// loadAndMeasure loads every program and reads the verified instruction
// count from the kernel's program info.
func loadAndMeasure(opts mrasm.Options) ([]programDump, error) {
	spec := mrasm.CollectionSpec(opts)
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load programs: %-20v", ve)
		}
		return nil, fmt.Errorf("load programs: %w (run as root, or with CAP_BPF and CAP_NET_ADMIN)", err)
	}
	defer coll.Close()

	var out []programDump
	for _, p := range mrasm.Programs() {
		info, err := coll.Programs[p.Name].Info()
		if err != nil {
			return nil, fmt.Errorf("read program info of %s: %w", p.Name, err)
		}
		// Kernels before 5.16 do not report it: 0 then.
		verified, _ := info.VerifiedInstructions()
		out = append(out, programDump{
			Name:                 p.Name,
			Instructions:         len(spec.Programs[p.Name].Instructions),
			VerifiedInstructions: verified,
			Attach:               p.Attach,
		})
	}
	return out, nil
}

func writeJSON(w io.Writer, dumps []programDump) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(dumps)
}

func writeListing(w io.Writer, opts mrasm.Options, dumps []programDump) error {
	for i, p := range mrasm.Programs() {
		d := dumps[i]
		fmt.Fprintf(w, "; %s: %s\n; %d instructions, %d verified by the kernel, licence %q, redirect_peer %v\n",
			d.Name, d.Attach, d.Instructions, d.VerifiedInstructions, mrasm.License, opts.RedirectPeer)
		if _, err := fmt.Fprintf(w, "%v\n", p.Instructions(opts)); err != nil {
			return err
		}
	}
	return nil
}
