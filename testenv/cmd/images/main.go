// Command images writes this project's container images, built from static
// binaries by internal/ociimage, to one tar archive of an OCI image layout
// (each image an index of its platforms) that
// `ctr -n k8s.io images import --all-platforms FILE` reads: no registry, no
// container engine. It prints each image's index digest, the digest the
// image keeps once pushed (the chart's image.digest).
//
// `make image` runs it for the release image (agent, linux/amd64 and
// linux/arm64); a real node (testenv/realnode) runs it for all four and
// imports them into its containerd.
//
// Usage:
//
//	images -o FILE -bin DIR [-arch amd64,arm64] [-images agent,ztunnel,testapp,pause]
//	       [-tag dev] [-version v0.2.0] [-revision SHA] [-created UNIX-SECONDS]
//
// DIR holds a directory per arch of binaries built with CGO_ENABLED=0:
// DIR/amd64/meshredirect, DIR/amd64/meshredirect-cni (agent),
// ztunnel-standin, testapp, pause. -created defaults to $SOURCE_DATE_EPOCH,
// else 0 (1970): never the time of the build, which would change the digests.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/meshredirect/meshredirect/internal/ociimage"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	out := fs.String("o", "", "the archive to write")
	bin := fs.String("bin", "bin", "directory of the static binaries, a directory per arch")
	arch := fs.String("arch", strings.Join(ociimage.ReleaseArches, ","), "GOARCHes of every image, comma-separated")
	which := fs.String("images", strings.Join(ociimage.Names, ","), "images to include, comma-separated")
	tag := fs.String("tag", "dev", "tag of every image")
	ver := fs.String("version", "", "the org.opencontainers.image.version label (default: the tag)")
	revision := fs.String("revision", "", "VCS revision, for the org.opencontainers.image.revision label")
	created := fs.String("created", os.Getenv("SOURCE_DATE_EPOCH"), "creation time in Unix seconds, the commit's (default $SOURCE_DATE_EPOCH, else 0)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() > 0 {
		return fmt.Errorf("usage: images -o FILE [-bin DIR] [-arch amd64,arm64] [-images %s] [-tag dev] [-version V] [-revision SHA] [-created SECONDS]", strings.Join(ociimage.Names, ","))
	}
	var when time.Time
	if *created != "" {
		secs, err := strconv.ParseInt(*created, 10, 64)
		if err != nil {
			return fmt.Errorf("invalid -created %q: want Unix seconds", *created)
		}
		when = time.Unix(secs, 0).UTC()
	} else {
		when = time.Unix(0, 0).UTC()
	}
	opts := ociimage.ImagesOptions{Bin: *bin, Arches: strings.Split(*arch, ","), Tag: *tag, Version: *ver, Revision: *revision, Created: when}
	specs, err := ociimage.Images(opts, strings.Split(*which, ",")...)
	if err != nil {
		return err
	}
	digests, err := ociimage.Write(*out, specs...)
	if err != nil {
		return err
	}
	st, err := os.Stat(*out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s (%.1f MB, linux/%s):\n", *out, float64(st.Size())/1e6, strings.Join(opts.Arches, ", linux/"))
	for _, image := range strings.Split(*which, ",") {
		ref := ociimage.Ref(image, *tag)
		fmt.Fprintf(stdout, "  %s@%s\n", ref, digests[ref])
	}
	return nil
}
