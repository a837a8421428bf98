package ociimage

import (
	"debug/elf"
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"time"
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

// Licenses is the org.opencontainers.image.licenses label of every image
// (the repository's LICENSE, as an SPDX expression).
const Licenses = "Apache-2.0"

// descriptions are the org.opencontainers.image.description labels.
var descriptions = map[string]string{
	Agent:   "meshredirect: the node agent that redirects ambient pods' traffic into ztunnel with eBPF on TC hooks, and its chained CNI plugin",
	Ztunnel: "meshredirect's ztunnel stand-in, for tests",
	TestApp: "meshredirect's test application, for tests",
	Pause:   "meshredirect's pod sandbox process, for tests",
}

// ReleaseArches are the platforms (linux/GOARCH) of the release image.
var ReleaseArches = []string{"amd64", "arm64"}

// ImagesOptions says where the binaries of Images are and how to label the
// images.
type ImagesOptions struct {
	// Bin is the directory holding the static binaries, a directory per
	// GOARCH, each named as its command: amd64/meshredirect,
	// amd64/meshredirect-cni, amd64/ztunnel-standin, amd64/testapp,
	// amd64/pause (only those of the images and arches asked for).
	Bin string
	// Arches are the GOARCHes each image is built for, one manifest each in
	// the image's index: ReleaseArches if empty.
	Arches []string
	// Tag is every image's tag: "dev" if empty.
	Tag string
	// Version is the org.opencontainers.image.version label: Tag if empty.
	Version string
	// Revision is the VCS revision the binaries were built from, the
	// org.opencontainers.image.revision label; none if empty.
	Revision string
	// Created is the org.opencontainers.image.created label and the
	// config's creation time: the commit's time (SOURCE_DATE_EPOCH), so that
	// a checkout builds the same digests every time.
	Created time.Time
}

// elfMachines are the ELF machines of the GOARCHes an image can be built
// for.
var elfMachines = map[string]elf.Machine{
	"amd64":   elf.EM_X86_64,
	"arm64":   elf.EM_AARCH64,
	"arm":     elf.EM_ARM,
	"ppc64le": elf.EM_PPC64,
	"s390x":   elf.EM_S390,
	"riscv64": elf.EM_RISCV,
}

// Images returns the specs of the images named (Names if none), a spec per
// image and arch, for Write. The binaries must exist in opts.Bin, each a
// static ELF executable of its arch: a missing, empty, dynamic or foreign
// binary fails here rather than make an image that cannot start. They are
// read again when Write runs.
func Images(opts ImagesOptions, names ...string) ([]Spec, error) {
	if len(names) == 0 {
		names = Names
	}
	arches := opts.Arches
	if len(arches) == 0 {
		arches = ReleaseArches
	}
	tag := opts.Tag
	if tag == "" {
		tag = "dev"
	}
	ver := opts.Version
	if ver == "" {
		ver = tag
	}
	var specs []Spec
	for _, image := range names {
		if !slices.Contains(Names, image) {
			return nil, fmt.Errorf("build spec of image %q: unknown image (one of %v)", image, Names)
		}
		for _, arch := range arches {
			if _, ok := elfMachines[arch]; !ok {
				return nil, fmt.Errorf("build spec of image %s: unknown arch %q", image, arch)
			}
			s := spec(image, filepath.Join(opts.Bin, arch))
			s.Ref = Ref(image, tag)
			s.Arch = arch
			s.Created = opts.Created
			s.Labels = map[string]string{
				"org.opencontainers.image.title":       repositories[image],
				"org.opencontainers.image.description": descriptions[image],
				"org.opencontainers.image.source":      Source,
				"org.opencontainers.image.version":     ver,
				"org.opencontainers.image.licenses":    Licenses,
				"org.opencontainers.image.created":     opts.Created.UTC().Format(time.RFC3339),
			}
			if opts.Revision != "" {
				s.Labels["org.opencontainers.image.revision"] = opts.Revision
			}
			for _, f := range s.Files {
				if err := checkBinary(f.Source, arch); err != nil {
					return nil, fmt.Errorf("build spec of image %s for linux/%s: %w (run make image, or build the binary with CGO_ENABLED=0 GOARCH=%s)", image, arch, err, arch)
				}
			}
			specs = append(specs, s)
		}
	}
	return specs, nil
}

// checkBinary checks that the file at p is a static ELF executable for arch.
func checkBinary(p, arch string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	defer f.Close()
	if f.Machine != elfMachines[arch] {
		return fmt.Errorf("%s is for %v, not %s", p, f.Machine, arch)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: the images have no libc", p)
		}
	}
	return nil
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
