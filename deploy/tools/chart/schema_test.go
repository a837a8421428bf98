package chart

import (
	"os/exec"
	"strings"
	"testing"
)

// TestSchemaRefusesUnknownKeys: a misspelt or unknown key at any level of the values fails the
// install instead of being ignored.
func TestSchemaRefusesUnknownKeys(t *testing.T) {
	for _, v := range []string{
		"resyncPeriods: 1m",
		"image: {repo: x}",
		"serviceAccount: {annotation: {a: b}}",
		"configFile: {path: /etc/x}",
		"cni: {installed: true}",
		"metrics: {scrapes: true}",
		"monitoring: {serviceMonitor: {enabled: true}}",
		"monitoring: {podMonitor: {enabled: true, intervall: 1m}}",
		"monitoring: {prometheusRule: {enabled: true, label: {a: b}}}",
		"monitoring: {dashboard: {enabled: true, folder: x}}",
		"updateStrategy: {rollingUpdate: {maxUnavailable: 1, maxSurge: 0, partition: 1}}",
		"readinessProbe: {httpGet: {path: /, port: 80}}",
		"livenessProbe: {exec: {command: [true]}}",
	} {
		_, err := Render(chartDir, Options{Values: values(t, v)})
		if err == nil || !strings.Contains(err.Error(), "additional properties") {
			t.Errorf("render with %s: %v, want an error naming the unknown key", v, err)
		}
	}
}

// agentBoundaries are values at the edge of what the agent accepts at start, each on the side
// the schema says: accepted ones render and the agent takes their arguments, refused ones fail
// the schema and, rendered without it, make the agent stop at its flags.
var agentBoundaries = []struct {
	values   string
	accepted bool
}{
	{"{}", true},
	{"resyncPeriod: 1s", true},
	{"resyncPeriod: 1000ms", true},
	{"resyncPeriod: 0.5s1s", true},
	{"resyncPeriod: 1h30m", true},
	{"resyncPeriod: 10ms", false},
	{"resyncPeriod: 999ms", false},
	{"resyncPeriod: 0.9s", false},
	{"resyncPeriod: 0s", false},
	{"resyncPeriod: 999999999ns", false},
	{"podsMaxEntries: 1", true},
	{"podsMaxEntries: 4294967295", true},
	{"podsMaxEntries: 0", false},
	{"podsMaxEntries: 4294967296", false},
	{"nodeIPs: [192.0.2.10, 0.1.2.3, 169.254.1.1, \"fe80::1\", \"2001:db8::1\"]", true},
	{"nodeIPs: [127.0.0.1]", false},
	{"nodeIPs: [0.0.0.0]", false},
	{"nodeIPs: [224.0.0.1]", false},
	{"nodeIPs: [255.255.255.255]", false},
	{"nodeIPs: [\"::1\"]", false},
	{"nodeIPs: [\"ff02::1\"]", false},
	{"nodeIPs: [\"::\"]", false},
	{"dnsResolvers: [10.96.0.10]", true},
	{"dnsResolvers: [239.1.1.1]", false},
	{"attachMode: tcx", true},
	{"attachMode: tcx6", false},
	{"redirectPeer: true", true},
	{"redirectPeer: \"yes\"", false},
	{"logLevel: warn", true},
	{"logLevel: warning", false},
	{"ztunnelMode: node", true},
	{"ztunnelMode: sidecar", false},
	{"udp: drop", true},
	{"udp: reject", false},
	{"mountBPFFS: never", true},
	{"mountBPFFS: sometimes", false},
	{`cni: {install: false, socket: ""}`, true},
}

// TestSchemaAgreesWithAgent renders each of agentBoundaries and hands the arguments to the
// agent built from this checkout: where the schema accepts, the agent's flag validation must
// pass (it then stops later, at the kubeconfig the test points nowhere); where the schema
// refuses, the agent must refuse too. So the schema and the agent cannot drift apart.
func TestSchemaAgreesWithAgent(t *testing.T) {
	bin := agentBinary(t)
	for _, tt := range agentBoundaries {
		t.Run(tt.values, func(t *testing.T) {
			_, err := Render(chartDir, Options{Values: values(t, tt.values)})
			if tt.accepted != (err == nil) {
				t.Fatalf("schema: render with %s: %v, want accepted=%v", tt.values, err, tt.accepted)
			}
			r, err := Render(chartDir, Options{Values: values(t, tt.values), SkipSchema: true})
			if err != nil {
				t.Fatal(err)
			}
			_, c := daemonSet(t, r)
			args := append([]string{}, c.Args...)
			for i, a := range args {
				args[i] = strings.ReplaceAll(a, "$(NODE_NAME)", "node-1")
			}
			// Flags are checked first; then the capabilities, then the kubeconfig.
			out, err := exec.Command(bin, append(args, "--kubeconfig=/nonexistent/kubeconfig")...).CombinedOutput()
			if err == nil {
				t.Fatalf("the agent started with %v", args)
			}
			passed := strings.Contains(string(out), "load kubeconfig /nonexistent/kubeconfig") || strings.Contains(string(out), "missing capability")
			// config() says "invalid --flag ..."; pflag, for a value out of the flag's type,
			// "invalid argument ... for --flag".
			refused := strings.Contains(string(out), "invalid --") || strings.Contains(string(out), "invalid argument")
			switch {
			case tt.accepted && !passed:
				t.Errorf("the schema accepts %s, the agent does not:\n%s", tt.values, out)
			case !tt.accepted && !refused:
				t.Errorf("the schema refuses %s, the agent takes it:\n%s", tt.values, out)
			}
		})
	}
}
