// Command images writes this project's container images, built from static
// binaries by internal/ociimage, to one docker-archive tarball that
// `ctr -n k8s.io images import FILE` and `docker load -i FILE` read: no
// registry, no container engine.
//
// `make image` runs it for the release image (agent); a real node
// (testenv/realnode) runs it for all four and imports them into its
// containerd.
//
// Usage:
//
//	images -o FILE -bin DIR [-images agent,ztunnel,testapp,pause] [-tag dev] [-revision SHA]
//
// DIR holds the binaries, built with CGO_ENABLED=0: meshredirect,
// meshredirect-cni (agent), ztunnel-standin, testapp, pause.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/meshredirect/meshredirect/internal/ociimage"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	out := fs.String("o", "", "the archive to write")
	bin := fs.String("bin", "bin", "directory of the static binaries")
	which := fs.String("images", strings.Join(ociimage.Names, ","), "images to include, comma-separated")
	tag := fs.String("tag", "dev", "tag of every image")
	revision := fs.String("revision", "", "VCS revision, for the org.opencontainers.image.revision label")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() > 0 {
		return fmt.Errorf("usage: images -o FILE [-bin DIR] [-images %s] [-tag dev] [-revision SHA]", strings.Join(ociimage.Names, ","))
	}
	specs, err := ociimage.Images(ociimage.ImagesOptions{Bin: *bin, Tag: *tag, Revision: *revision}, strings.Split(*which, ",")...)
	if err != nil {
		return err
	}
	if err := ociimage.Write(*out, specs...); err != nil {
		return err
	}
	st, err := os.Stat(*out)
	if err != nil {
		return err
	}
	fmt.Printf("%s (%.1f MB):\n", *out, float64(st.Size())/1e6)
	for _, s := range specs {
		fmt.Printf("  %s\n", s.Ref)
	}
	return nil
}
