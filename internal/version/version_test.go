package version

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestGet(t *testing.T) {
	vcs := func(rev, modified string) *debug.BuildInfo {
		return &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}}
	}
	platform := runtime.GOOS + "/" + runtime.GOARCH
	for _, c := range []struct {
		name             string
		version, commit  string
		bi               *debug.BuildInfo
		wantVer, wantCom string
	}{
		{"stamped wins over the build info", "v1.2.3", "abc", vcs("def", "true"), "v1.2.3", "abc"},
		{"a clean checkout", "", "", vcs("def", "false"), "dev", "def"},
		{"a dirty checkout", "", "", vcs("def", "true"), "dev", "def-dirty"},
		{"go install module@version", "", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.3.0"}}, "v0.3.0", "unknown"},
		{"nothing recorded", "", "", nil, "dev", "unknown"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := get(c.version, c.commit, c.bi)
			if got.Version != c.wantVer || got.Commit != c.wantCom || got.Platform != platform {
				t.Errorf("get = %+v, want version %s commit %s platform %s", got, c.wantVer, c.wantCom, platform)
			}
			if c.bi != nil && c.bi.GoVersion != "" && got.GoVersion != c.bi.GoVersion {
				t.Errorf("GoVersion %s, want the build info's %s", got.GoVersion, c.bi.GoVersion)
			}
		})
	}
}
