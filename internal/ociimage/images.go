package ociimage

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
)

// The images of this project, by the names Images and the images command
// take.
const (
	// Agent is the release image: the agent and its CNI plugin, as the
	// Dockerfile at the repository's root builds it, minus distroless.
	Agent = "agent"
	// Ztunnel is the ztunnel stand-in (testenv/cmd/ztunnel-standin).
	Ztunnel = "ztunnel"
	// TestApp is the test application pods run on a real node
	// (testenv/cmd/testapp).
	TestApp = "testapp"
	// Pause is the pod sandbox's process (testenv/cmd/pause), the kubelet's
	// --pod-infra-container-image (containerd's sandbox_image).
	Pause = "pause"
)

// Names are all the images, in the order Images returns them.
var Names = []string{Agent, Ztunnel, TestApp, Pause}

// Registry is the registry host of every image: a name no registry answers
// to, so a runtime that does not find the image imported says so rather than
// pulling something else.
const Registry = "meshredirect.test"

// Source is the org.opencontainers.image.source label of every image.
const Source = "https://github.com/meshredirect/meshredirect"

// repositories maps an image to its repository under Registry.
var repositories = map[string]string{
	Agent:   "meshredirect",
	Ztunnel: "ztunnel-standin",
	TestApp: "testapp",
	Pause:   "pause",
}

// Ref returns the reference of image (one of Names) at tag:
// Ref(TestApp, "dev") is "meshredirect.test/testapp:dev". It returns the
// empty string for an unknown image.
func Ref(image, tag string) string {
	repo, ok := repositories[image]
	if !ok {
		return ""
	}
	return Registry + "/" + repo + ":" + tag
}

// ImagesOptions says where the binaries of Images are and how to label the
// images.
type ImagesOptions struct {
	// Bin is the directory holding the static binaries, named as their
	// commands: meshredirect, meshredirect-cni, ztunnel-standin, testapp,
	// pause (only those of the images asked for).
	Bin string
	// Tag is every image's tag and its org.opencontainers.image.version
	// label: "dev" if empty.
	Tag string
	// Revision is the VCS revision the binaries were built from, the
	// org.opencontainers.image.revision label; none if empty.
	Revision string
}

// Images returns the specs of the images named (Names if none), for Write.
// The binaries must exist in opts.Bin; they are read when Write runs.
func Images(opts ImagesOptions, names ...string) ([]Spec, error) {
	if len(names) == 0 {
		names = Names
	}
	tag := opts.Tag
	if tag == "" {
		tag = "dev"
	}
	var specs []Spec
	for _, image := range names {
		if !slices.Contains(Names, image) {
			return nil, fmt.Errorf("build spec of image %q: unknown image (one of %v)", image, Names)
		}
		s := spec(image, opts.Bin)
		s.Ref = Ref(image, tag)
		s.Labels = map[string]string{
			"org.opencontainers.image.title":   repositories[image],
			"org.opencontainers.image.source":  Source,
			"org.opencontainers.image.version": tag,
		}
		if opts.Revision != "" {
			s.Labels["org.opencontainers.image.revision"] = opts.Revision
		}
		for _, f := range s.Files {
			if _, err := os.Stat(f.Source); err != nil {
				return nil, fmt.Errorf("build spec of image %s: %w (run make image, or build the binary with CGO_ENABLED=0)", image, err)
			}
		}
		specs = append(specs, s)
	}
	return specs, nil
}

// spec returns the files and config of image, its binaries taken from bin.
func spec(image, bin string) Spec {
	program := func(p string) File {
		return File{Path: p, Mode: 0o755, Source: filepath.Join(bin, path.Base(p))}
	}
	switch image {
	case Agent:
		// The Dockerfile's final stage: keep the two in step.
		return Spec{
			Files: []File{
				program("/meshredirect"),
				// Where the agent's --cni-plugin (and the chart's cni.plugin)
				// expect it.
				program("/usr/local/bin/meshredirect-cni"),
			},
			Entrypoint: []string{"/meshredirect"},
			Cmd:        []string{"agent"},
			// Root, on purpose: the agent's capabilities are lost when a
			// non-root user execs (the Dockerfile says more).
			User: "0:0",
		}
	case Ztunnel:
		return Spec{Files: []File{program("/ztunnel-standin")}, Entrypoint: []string{"/ztunnel-standin"}}
	case TestApp:
		return Spec{Files: []File{program("/testapp")}, Entrypoint: []string{"/testapp"}}
	default: // Pause
		return Spec{Files: []File{program("/pause")}, Entrypoint: []string{"/pause"}}
	}
}
