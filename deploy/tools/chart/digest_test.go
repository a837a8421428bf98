package chart

import (
	"strings"
	"testing"
)

// TestImageDigest: with image.digest set, the DaemonSet runs
// repository@digest (the digest `make image` prints), the tag ignored;
// without it, repository:tag; the schema refuses a digest that is not
// sha256:<64 hex>.
func TestImageDigest(t *testing.T) {
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tt := range []struct{ values, want string }{
		{"image: {repository: registry.example/mesh/agent, tag: v9.9.9}", "registry.example/mesh/agent:v9.9.9"},
		{"image: {repository: registry.example/mesh/agent, digest: " + digest + "}", "registry.example/mesh/agent@" + digest},
		{"image: {repository: registry.example/mesh/agent, tag: v9.9.9, digest: " + digest + "}", "registry.example/mesh/agent@" + digest},
	} {
		_, c := daemonSet(t, mustRender(t, Options{Values: values(t, tt.values)}))
		if c.Image != tt.want {
			t.Errorf("%s: image %s, want %s", tt.values, c.Image, tt.want)
		}
	}
	for _, bad := range []string{"sha256:0123", "v9.9.9", "sha512:" + strings.Repeat("0", 128), strings.TrimPrefix(digest, "sha256:")} {
		_, err := Render(chartDir, Options{Values: values(t, "image: {digest: \""+bad+"\"}")})
		if err == nil || !strings.Contains(err.Error(), "digest") {
			t.Errorf("render with image.digest %s: %v, want an error naming digest", bad, err)
		}
	}
}
