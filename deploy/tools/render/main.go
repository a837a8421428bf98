// Command render writes deploy/meshredirect.yaml, the single-file manifest of the agent,
// from the Helm chart with its default values (see package chart). `make manifests` runs it:
//
//	cd deploy/tools && go run ./render -chart ../charts/meshredirect -o ../meshredirect.yaml
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/meshredirect/meshredirect/deploy/tools/chart"
)

func main() {
	dir := flag.String("chart", "../charts/meshredirect", "the chart's directory")
	out := flag.String("o", "-", "the file to write; - for standard output")
	flag.Parse()
	if err := run(*dir, *out); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

func run(dir, out string) error {
	b, err := chart.Manifest(dir)
	if err != nil {
		return err
	}
	if out == "-" {
		_, err = os.Stdout.Write(b)
		return err
	}
	if err := os.WriteFile(out, b, 0o644); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}
