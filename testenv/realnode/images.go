package realnode

import (
	"context"
	"fmt"
	"maps"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/meshredirect/meshredirect/internal/ociimage"
)

// The node's images, as `make image` and the images command name them.
var (
	// AgentImage is the release image the chart's DaemonSet runs.
	AgentImage = ociimage.Ref(ociimage.Agent, "dev")
	// ZtunnelImage is the ztunnel stand-in.
	ZtunnelImage = ociimage.Ref(ociimage.Ztunnel, "dev")
	// TestAppImage is the application of the test pods.
	TestAppImage = ociimage.Ref(ociimage.TestApp, "dev")
	// PauseImage is the pods' sandbox image (containerd's sandbox_image).
	PauseImage = ociimage.Ref(ociimage.Pause, "dev")
)

// commands are the static binaries the images hold, by package.
var commands = map[string]string{
	"meshredirect":     "./cmd/meshredirect",
	"meshredirect-cni": "./cmd/meshredirect-cni",
	"ztunnel-standin":  "./testenv/cmd/ztunnel-standin",
	"testapp":          "./testenv/cmd/testapp",
	"pause":            "./testenv/cmd/pause",
}

// buildImages builds the project's static binaries from this checkout and writes the four
// images into one archive, which startContainerd imports: the archive `make image` and
// `make test-images` write (an OCI image layout, each image an index of its platforms), for this
// machine's arch alone (a second arch would double the build for nothing the node runs). The
// archive is written by the images command, as `make image` writes the release image, not in
// this process: under -race the compression alone took a minute of each Start.
func (n *Node) buildImages(ctx context.Context) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	bin := filepath.Join(n.dir, "bin")
	n.Bin = filepath.Join(bin, runtime.GOARCH)
	tools := filepath.Join(n.dir, "tools")
	for _, b := range []struct {
		dir  string
		pkgs []string
	}{{n.Bin, slices.Sorted(maps.Values(commands))}, {tools, []string{"./testenv/cmd/images"}}} {
		cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-trimpath", "-o", b.dir + "/"}, b.pkgs...)...)
		cmd.Dir = root
		cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %v: %v: %s", b.pkgs, err, out)
		}
	}
	n.images = filepath.Join(n.dir, "images.tar")
	cmd := exec.CommandContext(ctx, filepath.Join(tools, "images"), "-bin", bin, "-arch", runtime.GOARCH, "-tag", "dev", "-o", n.images)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("write the images: %v: %s", err, out)
	}
	return nil
}

// moduleRoot is the directory of the module this test runs in.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the module's root: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}
