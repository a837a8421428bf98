// Command meshredirect is the node agent of an ambient mesh and its operator
// tool: it generates, loads and attaches the redirection programs.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/meshredirect/meshredirect/internal/version"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "meshredirect:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "meshredirect",
		Short: "Redirect ambient pods' traffic into the node's ztunnel with eBPF on TC hooks",
		Long: `meshredirect moves every ambient pod's traffic into the node's proxy (ztunnel)
with five eBPF programs on the TC hooks of the pods' veths. The programs are
generated in Go (no C, no clang) and loaded by this same binary.

Most commands need root, or CAP_BPF and CAP_NET_ADMIN.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// --version (and -v): the one line of version.Info.String.
		Version: version.Get().String(),
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.AddCommand(newVersionCmd(), newDumpCmd(), newAttachCmd(), newDetachCmd(), newListCmd(), newAgentCmd(), newUninstallCmd(), newStatusCmd(), newMonitorCmd())
	return root
}
