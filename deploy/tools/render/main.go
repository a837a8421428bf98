// Command render writes deploy/meshredirect.yaml, the single-file manifest of the agent,
// from the Helm chart (see package chart). `make manifests` runs it with the default values:
//
//	cd deploy/tools && go run ./render -chart ../charts/meshredirect -o ../meshredirect.yaml
//
// With -set it renders other values, as `helm template --set` does (the real-node tests of
// testenv/realnode render the chart for their images this way):
//
//	go run ./render -set image.repository=meshredirect.test/meshredirect -set image.tag=dev
//
// A value is a bool (true, false), an integer, or else a string; -set-string keeps it a string.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/meshredirect/meshredirect/deploy/tools/chart"
)

// setFlag collects -set or -set-string key.path=value flags into nested values.
type setFlag struct {
	values map[string]any
	typed  bool // -set: parse bools and integers
}

func (f *setFlag) String() string { return fmt.Sprint(f.values) }

func (f *setFlag) Set(s string) error {
	key, raw, ok := strings.Cut(s, "=")
	if !ok || key == "" {
		return fmt.Errorf("want key.path=value, got %q", s)
	}
	var v any = raw
	if f.typed {
		if b, err := strconv.ParseBool(raw); err == nil && (raw == "true" || raw == "false") {
			v = b
		} else if i, err := strconv.ParseInt(raw, 10, 64); err == nil {
			v = i
		}
	}
	m := f.values
	parts := strings.Split(key, ".")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = v
	return nil
}

func main() {
	values := map[string]any{}
	dir := flag.String("chart", "../charts/meshredirect", "the chart's directory")
	out := flag.String("o", "-", "the file to write; - for standard output")
	namespace := flag.String("namespace", chart.Namespace, "the release's namespace")
	flag.Var(&setFlag{values: values, typed: true}, "set", "a value, key.path=value (repeatable)")
	flag.Var(&setFlag{values: values}, "set-string", "a string value, key.path=value (repeatable)")
	flag.Parse()
	if err := run(*dir, *out, chart.Options{Values: values, Namespace: *namespace}); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

func run(dir, out string, opts chart.Options) error {
	b, err := chart.Manifest(dir, opts)
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
