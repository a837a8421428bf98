package realnode

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
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
// images into one archive, which startContainerd imports.
func (n *Node) buildImages(ctx context.Context) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	n.Bin = filepath.Join(n.dir, "bin")
	args := []string{"build", "-trimpath", "-o", n.Bin + "/"}
	for _, pkg := range commands {
		args = append(args, pkg)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v: %s", err, out)
	}
	specs, err := ociimage.Images(ociimage.ImagesOptions{Bin: n.Bin, Tag: "dev"})
	if err != nil {
		return err
	}
	n.images = filepath.Join(n.dir, "images.tar")
	return ociimage.Write(n.images, specs...)
}

// moduleRoot is the directory of the module this test runs in.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the module's root: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}
