// Package version says which build of meshredirect is running: the version
// and commit stamped at build time (go build -ldflags "-X ..."), or, in a
// binary built without them (go install, go run), what the Go toolchain
// recorded of the checkout (runtime/debug.ReadBuildInfo).
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Stamped at build time by the Makefile and the Dockerfile:
//
//	-ldflags "-X github.com/meshredirect/meshredirect/internal/version.version=v0.2.0
//	          -X github.com/meshredirect/meshredirect/internal/version.commit=<sha>"
//
// Unexported, so that nothing but the linker sets them.
var (
	version string
	commit  string
)

// Info is what a build says of itself.
type Info struct {
	// Version is the release (git describe: v0.2.0, v0.2.0-3-gabc1234-dirty),
	// the module's version for go install module@version, or "dev".
	Version string `json:"version"`
	// Commit is the full VCS revision, with "-dirty" when the checkout had
	// uncommitted changes (vcs.modified); "unknown" when nothing recorded it.
	Commit string `json:"commit"`
	// GoVersion is the Go toolchain that built the binary (go1.26.8).
	GoVersion string `json:"goVersion"`
	// Platform is GOOS/GOARCH of the binary (linux/amd64).
	Platform string `json:"platform"`
}

// Get returns this binary's Info.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return get(version, commit, bi)
}

// get fills what the linker did not stamp from bi (nil when the binary has no
// build information).
func get(version, commit string, bi *debug.BuildInfo) Info {
	info := Info{Version: version, Commit: commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi != nil {
		info.GoVersion = bi.GoVersion
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		if info.Commit == "" {
			var modified bool
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					info.Commit = s.Value
				case "vcs.modified":
					modified = s.Value == "true"
				}
			}
			if info.Commit != "" && modified {
				info.Commit += "-dirty"
			}
		}
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	return info
}

// String is the one line `meshredirect --version` prints.
func (i Info) String() string {
	return fmt.Sprintf("meshredirect %s (commit %s, %s, %s)", i.Version, i.Commit, i.GoVersion, i.Platform)
}
