package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/meshredirect/meshredirect/internal/version"
)

func newVersionCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit, Go version and platform of this binary",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := version.Get()
			out := cmd.OutOrStdout()
			switch output {
			case "":
				fmt.Fprintf(out, "version:  %s\ncommit:   %s\ngo:       %s\nplatform: %s\n", info.Version, info.Commit, info.GoVersion, info.Platform)
			case "json":
				b, err := json.Marshal(info)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "%s\n", b)
			default:
				return fmt.Errorf("invalid --output %q: want json or nothing", output)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json (one object), or empty for lines of text")
	return cmd
}
