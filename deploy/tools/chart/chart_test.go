package chart

import (
	"bytes"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

const (
	chartDir      = "../../charts/meshredirect"
	manifestPath  = "../../meshredirect.yaml"
	uninstallPath = "../../meshredirect-uninstall.yaml"
	rulesFile     = "files/clusterrole-rules.yaml"
)

// capabilities are the ones the agent's container adds, all others dropped; the README and
// values.yaml say why each is there. capabilitiesLiftMemlock are those with liftMemlock: true,
// for kernels before 5.11.
var (
	capabilities            = []corev1.Capability{"BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}
	capabilitiesLiftMemlock = []corev1.Capability{"BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE", "SYS_PTRACE"}
)

// defaultArgs are the agent's arguments with the chart's default values: every flag, the
// agent's defaults made explicit.
var defaultArgs = []string{
	"agent",
	"--node-name=$(NODE_NAME)",
	"--pin-dir=/sys/fs/bpf/meshredirect",
	"--proc-sys-net=/host/proc/sys/net",
	"--pods-max-entries=65536",
	"--attach-mode=auto",
	"--priority=2",
	"--redirect-peer=auto",
	"--capture-dns=false",
	"--udp=pass",
	"--dns-resolvers=",
	"--fail-open=false",
	"--ztunnel-mode=inpod",
	"--zds-socket=/var/run/ztunnel/ztunnel.sock",
	"--ztunnel-selector=app=ztunnel",
	"--exclude-namespaces=kube-system,istio-system",
	"--config-file=/etc/ambient-config/config.json",
	"--node-ip=",
	"--netns-dir=/var/run/netns,/run/netns",
	"--resync-period=5m0s",
	"--log-format=json",
	"--log-level=info",
	"--metrics-addr=:15014",
	"--mount-bpffs=auto",
	"--replace-incompatible-pins=true",
	"--cni-install=true",
	"--cni-socket=/var/run/meshredirect/cni.sock",
	"--cni-conf-dir=/etc/cni/net.d",
	"--cni-bin-dir=/opt/cni/bin",
	"--cni-plugin=/usr/local/bin/meshredirect-cni",
}

// mustRender renders the chart with vals over the defaults, failing tb on error.
func mustRender(tb testing.TB, opts Options) *Rendered {
	tb.Helper()
	r, err := Render(chartDir, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

// decode decodes obj into out, refusing fields out's type does not have.
func decode(tb testing.TB, obj *Object, out any) {
	tb.Helper()
	if obj == nil {
		tb.Fatalf("no object to decode into %T", out)
	}
	if err := yaml.UnmarshalStrict([]byte(obj.YAML), out); err != nil {
		tb.Fatalf("decode %s %s (%s): %v", obj.Kind, obj.Name, obj.Source, err)
	}
}

// daemonSet returns the rendered DaemonSet and its one container.
func daemonSet(tb testing.TB, r *Rendered) (*appsv1.DaemonSet, *corev1.Container) {
	tb.Helper()
	var ds appsv1.DaemonSet
	decode(tb, r.Find("DaemonSet"), &ds)
	spec := ds.Spec.Template.Spec
	if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 || len(spec.EphemeralContainers) != 0 {
		tb.Fatalf("pod has %d containers, %d init containers: want the agent alone", len(spec.Containers), len(spec.InitContainers))
	}
	return &ds, &spec.Containers[0]
}

// values builds a values map from YAML text, as a -f file would give.
func values(tb testing.TB, text string) map[string]any {
	tb.Helper()
	v, err := chartutil.ReadValues([]byte(text))
	if err != nil {
		tb.Fatalf("values %q: %v", text, err)
	}
	return v
}

func TestLint(t *testing.T) {
	for _, tt := range []struct {
		name   string
		values map[string]any
	}{
		{"defaults", nil},
		{"every value changed", values(t, nonDefaultValues)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			kv := chartutil.KubeVersion{Version: KubeVersion, Major: "1", Minor: "37"}
			l := lint.AllWithKubeVersion(chartDir, tt.values, Namespace, &kv)
			for _, m := range l.Messages {
				// The one message `helm lint` gives every chart without an icon; the project
				// has none to point at.
				if m.Severity == support.InfoSev && strings.Contains(m.Err.Error(), "icon is recommended") {
					continue
				}
				t.Errorf("helm lint: %s", m)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	r := mustRender(t, Options{})
	var kinds []string
	for _, o := range r.Objects {
		kinds = append(kinds, o.Kind+"/"+o.Name)
	}
	if want := []string{"ServiceAccount/meshredirect", "ClusterRole/meshredirect", "ClusterRoleBinding/meshredirect", "DaemonSet/meshredirect"}; !slices.Equal(kinds, want) {
		t.Errorf("objects = %v, want %v in install order", kinds, want)
	}

	ds, c := daemonSet(t, r)
	spec := ds.Spec.Template.Spec
	if ds.Namespace != Namespace {
		t.Errorf("namespace %q, want %q", ds.Namespace, Namespace)
	}
	if !spec.HostNetwork || !spec.HostPID || spec.HostIPC {
		t.Errorf("hostNetwork=%v hostPID=%v hostIPC=%v, want true true false", spec.HostNetwork, spec.HostPID, spec.HostIPC)
	}
	if spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy %q, want ClusterFirstWithHostNet", spec.DNSPolicy)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", spec.PriorityClassName)
	}
	if want := []corev1.Toleration{{Operator: corev1.TolerationOpExists}}; !cmp.Equal(spec.Tolerations, want) {
		t.Errorf("tolerations %+v, want every taint tolerated: %+v", spec.Tolerations, want)
	}
	if spec.ServiceAccountName != "meshredirect" {
		t.Errorf("serviceAccountName %q", spec.ServiceAccountName)
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxUnavailable.String() != "1" || us.RollingUpdate.MaxSurge.String() != "0" {
		t.Errorf("updateStrategy %+v, want RollingUpdate maxUnavailable 1 maxSurge 0", us)
	}
	if !cmp.Equal(ds.Spec.Selector.MatchLabels, map[string]string{"app.kubernetes.io/name": "meshredirect", "app.kubernetes.io/instance": "meshredirect"}) {
		t.Errorf("selector %v", ds.Spec.Selector.MatchLabels)
	}
	if c.Image != "ghcr.io/meshredirect/meshredirect:0.1.0" || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %q %q", c.Image, c.ImagePullPolicy)
	}
	if diff := cmp.Diff(defaultArgs, c.Args); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
	if len(c.Command) != 0 {
		t.Errorf("command %v overrides the image's entrypoint", c.Command)
	}

	// The downward API: the node the agent serves, and who it is.
	wantEnv := []corev1.EnvVar{
		{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
	}
	if diff := cmp.Diff(wantEnv, c.Env); diff != "" {
		t.Errorf("env (-want +got):\n%s", diff)
	}

	if want := []corev1.ContainerPort{{Name: "metrics", ContainerPort: 15014, Protocol: corev1.ProtocolTCP}}; !cmp.Equal(c.Ports, want) {
		t.Errorf("ports %+v, want %+v", c.Ports, want)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe: %+v, want GET %s", p.name, p.probe, p.path)
			continue
		}
		if g := p.probe.HTTPGet; g.Path != p.path || g.Port.String() != "metrics" {
			t.Errorf("%s probe: GET %s on %s, want %s on the metrics port", p.name, g.Path, g.Port.String(), p.path)
		}
		if p.probe.PeriodSeconds == 0 || p.probe.TimeoutSeconds == 0 || p.probe.FailureThreshold == 0 {
			t.Errorf("%s probe timing left to the API's defaults: %+v", p.name, p.probe)
		}
	}
	if c.LivenessProbe != nil && c.LivenessProbe.InitialDelaySeconds < 5 {
		t.Errorf("liveness probe starts after %ds: too early for a loaded node", c.LivenessProbe.InitialDelaySeconds)
	}

	want := map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "15014", "prometheus.io/path": "/metrics"}
	if got := ds.Spec.Template.Annotations; !cmp.Equal(got, want) {
		t.Errorf("pod annotations %v, want %v", got, want)
	}
	if got := c.Resources.Limits.Memory(); got.Cmp(resource.MustParse("256Mi")) != 0 {
		t.Errorf("memory limit %v", got)
	}
	if want := map[string]string{"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}; !cmp.Equal(spec.NodeSelector, want) {
		t.Errorf("nodeSelector %v, want %v", spec.NodeSelector, want)
	}
}

// mount is a volume mount with the host path behind it.
type mount struct {
	HostPath, Type, MountPath string
	Propagation               corev1.MountPropagationMode
	ReadOnly                  bool
}

// mounts returns the container's mounts, failing tb on a volume that is not a hostPath.
func mounts(tb testing.TB, ds *appsv1.DaemonSet, c *corev1.Container) []mount {
	tb.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		vols[v.Name] = v
	}
	var out []mount
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok || v.HostPath == nil {
			tb.Fatalf("mount %s: volume %+v, want a hostPath", m.Name, v)
		}
		var typ string
		if v.HostPath.Type != nil {
			typ = string(*v.HostPath.Type)
		}
		var prop corev1.MountPropagationMode
		if m.MountPropagation != nil {
			prop = *m.MountPropagation
		}
		out = append(out, mount{v.HostPath.Path, typ, m.MountPath, prop, m.ReadOnly})
	}
	if len(vols) != len(out) {
		tb.Errorf("%d volumes, %d mounted: every volume must be used", len(vols), len(out))
	}
	return out
}

func TestVolumes(t *testing.T) {
	ds, c := daemonSet(t, mustRender(t, Options{}))
	want := []mount{
		// The host's bpffs, so that the pins outlive the container. Not Bidirectional: the
		// agent mounts nothing there, and only privileged containers may (TestDryRun).
		{"/sys/fs/bpf", "DirectoryOrCreate", "/sys/fs/bpf", corev1.MountPropagationHostToContainer, false},
		// Writable net sysctls (rp_filter): the runtime mounts /proc/sys read-only, and runc
		// refuses a mount under /proc (TestNoMountUnderProc).
		{"/proc/sys/net", "Directory", "/host/proc/sys/net", "", false},
		{"/etc/ambient-config", "DirectoryOrCreate", "/etc/ambient-config", "", false},
		// ztunnel's ZDS socket: ztunnel's pod connects to it (in-pod mode).
		{"/var/run/ztunnel", "DirectoryOrCreate", "/var/run/ztunnel", "", false},
		// The CNI plugin's socket: the plugin runs on the host.
		{"/var/run/meshredirect", "DirectoryOrCreate", "/var/run/meshredirect", "", false},
		// The node's CNI configuration and plugins: the plugin is installed there.
		{"/etc/cni/net.d", "DirectoryOrCreate", "/etc/cni/net.d", "", false},
		{"/opt/cni/bin", "DirectoryOrCreate", "/opt/cni/bin", "", false},
		{"/var/run/netns", "DirectoryOrCreate", "/var/run/netns", corev1.MountPropagationHostToContainer, true},
		{"/run/netns", "DirectoryOrCreate", "/run/netns", corev1.MountPropagationHostToContainer, true},
	}
	if diff := cmp.Diff(want, mounts(t, ds, c)); diff != "" {
		t.Errorf("mounts (-want +got):\n%s", diff)
	}
}

// podSpecs are the pod templates of both DaemonSets, the chart's (with the defaults and with
// every value changed) and the uninstall manifest's.
func podSpecs(t *testing.T) map[string]corev1.PodSpec {
	t.Helper()
	out := map[string]corev1.PodSpec{}
	for name, vals := range map[string]map[string]any{"chart defaults": nil, "chart, every value changed": values(t, nonDefaultValues)} {
		var ds appsv1.DaemonSet
		decode(t, mustRender(t, Options{Values: vals}).Find("DaemonSet"), &ds)
		out[name] = ds.Spec.Template.Spec
	}
	out[uninstallPath] = uninstallDaemonSet(t).Spec.Template.Spec
	return out
}

// TestNoMountUnderProc: no container mounts anything at or under /proc. runc refuses such a
// destination ("cannot be mounted because it is inside /proc", libcontainer's
// checkProcMount; only lxcfs's files are let through), so the pod would never start under
// containerd or CRI-O. The host's /proc/sys/net is at /host/proc/sys/net instead, and the
// container that writes sysctls is told so with --proc-sys-net.
func TestNoMountUnderProc(t *testing.T) {
	for name, spec := range podSpecs(t) {
		hostPaths := map[string]string{}
		for _, v := range spec.Volumes {
			if v.HostPath != nil {
				hostPaths[v.Name] = v.HostPath.Path
			}
		}
		var containers []corev1.Container
		containers = append(containers, spec.InitContainers...)
		containers = append(containers, spec.Containers...)
		for _, c := range containers {
			procSysNet := ""
			for _, m := range c.VolumeMounts {
				if p := path.Clean(m.MountPath); p == "/proc" || strings.HasPrefix(p, "/proc/") {
					t.Errorf("%s: container %s mounts %s at %s, inside /proc: runc refuses it", name, c.Name, m.Name, m.MountPath)
				}
				if hostPaths[m.Name] == "/proc/sys/net" {
					procSysNet = m.MountPath
				}
			}
			if procSysNet == "" {
				continue
			}
			if want := "--proc-sys-net=" + procSysNet; !slices.Contains(c.Args, want) {
				t.Errorf("%s: container %s mounts the host's /proc/sys/net at %s without %s: %v", name, c.Name, procSysNet, want, c.Args)
			}
		}
	}
}

// TestSysResourceOnlyWithLiftMemlock: SYS_RESOURCE, needed before 5.11 only and missing from
// some hosts' bounding set (where runc fails the container: "unable to apply caps"), is asked
// for only with liftMemlock: true, and never by uninstall, which loads nothing.
func TestSysResourceOnlyWithLiftMemlock(t *testing.T) {
	for _, tt := range []struct {
		values string
		want   bool
	}{{"{}", false}, {"liftMemlock: false", false}, {"liftMemlock: true", true}} {
		_, c := daemonSet(t, mustRender(t, Options{Values: values(t, tt.values)}))
		if got := slices.Contains(c.SecurityContext.Capabilities.Add, "SYS_RESOURCE"); got != tt.want {
			t.Errorf("%s: SYS_RESOURCE added %v, want %v", tt.values, got, tt.want)
		}
	}
	for _, c := range uninstallDaemonSet(t).Spec.Template.Spec.InitContainers {
		if c.SecurityContext != nil && c.SecurityContext.Capabilities != nil && slices.Contains(c.SecurityContext.Capabilities.Add, "SYS_RESOURCE") {
			t.Errorf("%s: container %s adds SYS_RESOURCE", uninstallPath, c.Name)
		}
	}
}

func TestSecurityContext(t *testing.T) {
	for _, tt := range []struct {
		name   string
		values map[string]any
	}{
		{"defaults", nil},
		// No value may loosen what the template fixes.
		{"every value changed", values(t, nonDefaultValues)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ds, c := daemonSet(t, mustRender(t, Options{Values: tt.values}))
			sc := c.SecurityContext
			if sc == nil || sc.Capabilities == nil {
				t.Fatalf("securityContext %+v, want capabilities", sc)
			}
			if sc.Privileged == nil || *sc.Privileged {
				t.Errorf("privileged %v, want false", sc.Privileged)
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("allowPrivilegeEscalation %v, want false", sc.AllowPrivilegeEscalation)
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("readOnlyRootFilesystem %v, want true", sc.ReadOnlyRootFilesystem)
			}
			if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
				t.Errorf("runAsUser %v, want 0 (capabilities of another user do not survive exec)", sc.RunAsUser)
			}
			if sc.ProcMount != nil {
				t.Errorf("procMount %v", *sc.ProcMount)
			}
			if want := []corev1.Capability{"ALL"}; !slices.Equal(sc.Capabilities.Drop, want) {
				t.Errorf("capabilities drop %v, want %v", sc.Capabilities.Drop, want)
			}
			want := capabilities
			if tt.values != nil { // liftMemlock: true
				want = capabilitiesLiftMemlock
			}
			if !slices.Equal(sc.Capabilities.Add, want) {
				t.Errorf("capabilities add %v, want exactly %v", sc.Capabilities.Add, want)
			}
			if ps := ds.Spec.Template.Spec.SecurityContext; ps != nil && (ps.RunAsNonRoot != nil || len(ps.Sysctls) > 0) {
				t.Errorf("pod securityContext %+v", ps)
			}
			for _, m := range mounts(t, ds, c) {
				if m.Propagation == corev1.MountPropagationBidirectional {
					t.Errorf("mount %s is Bidirectional: only privileged containers may", m.MountPath)
				}
			}
			if tt.values == nil {
				want := &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
				if !cmp.Equal(sc.SeccompProfile, want) {
					t.Errorf("seccompProfile %+v, want RuntimeDefault", sc.SeccompProfile)
				}
			}
		})
	}
}

// TestEveryFlagHasAValue checks the rendered arguments against `meshredirect agent --help`,
// built from this checkout: a flag added to the agent without a value in the chart fails here.
func TestEveryFlagHasAValue(t *testing.T) {
	help := run(t, agentBinary(t), "agent", "--help")
	// "      --pin-dir string   bpffs directory ..." or "  -h, --help ..."
	re := regexp.MustCompile(`(?m)^\s+(?:-\w, )?(--[a-z0-9-]+)`)
	var flags []string
	for _, m := range re.FindAllStringSubmatch(help, -1) {
		flags = append(flags, m[1])
	}
	if len(flags) < 10 {
		t.Fatalf("found %d flags in `agent --help`:\n%s", len(flags), help)
	}
	// Not values, on purpose: the pod is in the node's netns, and the agent uses the
	// in-cluster ServiceAccount; the plugin's kubeconfig goes in cni.confDir, the host
	// directory the chart mounts for it (--cni-kubeconfig's default).
	notValues := map[string]bool{"--help": true, "--kubeconfig": true, "--node-netns": true, "--cni-kubeconfig": true}
	_, c := daemonSet(t, mustRender(t, Options{}))
	passed := map[string]bool{}
	for _, a := range c.Args[1:] {
		name, _, _ := strings.Cut(a, "=")
		passed[name] = true
	}
	for _, f := range flags {
		switch {
		case notValues[f] && passed[f]:
			t.Errorf("%s is passed, but documented as not a value", f)
		case !notValues[f] && !passed[f]:
			t.Errorf("agent flag %s has no value in the chart (values.yaml, templates/daemonset.yaml, deploy/README.md)", f)
		}
		delete(passed, f)
	}
	for f := range passed {
		t.Errorf("the chart passes %s, which `meshredirect agent` does not have", f)
	}
}

// nonDefaultValues changes every value of the chart at once (TestLint, TestSecurityContext,
// TestDryRun); TestValues changes them one at a time.
const nonDefaultValues = `
image: {repository: registry.example/mesh/agent, tag: v9.9.9, pullPolicy: Always}
imagePullSecrets: [{name: regcred}]
fullnameOverride: mesh-agent
serviceAccount: {create: true, name: mesh-agent-sa, annotations: {team: mesh}}
pinDir: /sys/fs/bpf/mesh2
podsMaxEntries: 1000000
attachMode: tc
priority: 1
redirectPeer: "false"
captureDNS: true
failOpen: true
ztunnelMode: node
zdsSocket: /run/zt/zds.sock
ztunnelSelector: app.kubernetes.io/name=ztunnel,tier in (mesh)
excludeNamespaces: [kube-system, istio-system, monitoring]
configFile: {dir: /var/lib/ambient, name: ambient.json}
nodeIPs: [192.0.2.10, "2001:db8::10"]
netnsDirs: [/run/netns, /var/run/docker/netns]
resyncPeriod: 90s
logFormat: text
logLevel: debug
metrics: {port: 19090, scrape: false}
extraArgs: ["--log-level=warn"]
tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
priorityClassName: system-cluster-critical
nodeSelector: {mesh: enabled}
affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: mesh, operator: In, values: [enabled]}]}]}}}
podAnnotations: {example.com/owner: mesh}
podLabels: {team: mesh}
updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 10%, maxSurge: 0}}
terminationGracePeriodSeconds: 5
resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {memory: 1Gi}}
readinessProbe: {initialDelaySeconds: 1, periodSeconds: 3, timeoutSeconds: 1, failureThreshold: 5}
livenessProbe: {initialDelaySeconds: 30, periodSeconds: 20, timeoutSeconds: 3, failureThreshold: 6}
appArmorProfile: {type: RuntimeDefault}
seccompProfile: {type: Unconfined}
seLinuxOptions: null
cni: {install: true, socket: /run/mesh/agent.sock, confDir: /etc/kubernetes/cni/net.d, binDir: /home/kubernetes/bin, plugin: /usr/local/bin/meshredirect-cni}
liftMemlock: true
`

// TestValues changes one value at a time and checks the one flag or field it must change:
// every other argument stays as with the defaults.
func TestValues(t *testing.T) {
	for _, tt := range []struct {
		name   string
		values string
		// arg replaces the default argument of the same flag (or is appended).
		arg string
		// check looks at the rest; nil when arg says it all.
		check func(t *testing.T, r *Rendered, ds *appsv1.DaemonSet, c *corev1.Container)
	}{
		{name: "pinDir", values: "pinDir: /sys/fs/bpf/mesh2", arg: "--pin-dir=/sys/fs/bpf/mesh2"},
		{name: "podsMaxEntries", values: "podsMaxEntries: 1000000", arg: "--pods-max-entries=1000000"},
		{name: "attachMode", values: "attachMode: tcx", arg: "--attach-mode=tcx"},
		{name: "priority", values: "priority: 1", arg: "--priority=1"},
		{name: "redirectPeer string", values: `redirectPeer: "false"`, arg: "--redirect-peer=false"},
		{name: "redirectPeer bool", values: "redirectPeer: true", arg: "--redirect-peer=true"},
		{name: "captureDNS", values: "captureDNS: true", arg: "--capture-dns=true"},
		{name: "udp", values: "udp: drop", arg: "--udp=drop"},
		{name: "dnsResolvers", values: `dnsResolvers: [10.96.0.10, "fd00::a"]`, arg: "--dns-resolvers=10.96.0.10,fd00::a"},
		{name: "failOpen", values: "failOpen: true", arg: "--fail-open=true"},
		{name: "ztunnelMode node", values: "ztunnelMode: node", arg: "--ztunnel-mode=node",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, c *corev1.Container) {
				for _, m := range mounts(t, ds, c) {
					if m.HostPath == "/var/run/ztunnel" {
						t.Errorf("node mode mounts ztunnel's ZDS socket directory: %+v", m)
					}
				}
			}},
		{name: "zdsSocket", values: "zdsSocket: /run/zt/zds.sock", arg: "--zds-socket=/run/zt/zds.sock",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, c *corev1.Container) {
				assertMount(t, mounts(t, ds, c), mount{"/run/zt", "DirectoryOrCreate", "/run/zt", "", false})
			}},
		{name: "ztunnelSelector", values: "ztunnelSelector: app in (ztunnel,ztunnel-v2)", arg: "--ztunnel-selector=app in (ztunnel,ztunnel-v2)"},
		{name: "excludeNamespaces", values: "excludeNamespaces: [kube-system, monitoring]", arg: "--exclude-namespaces=kube-system,monitoring"},
		{name: "excludeNamespaces empty", values: "excludeNamespaces: []", arg: "--exclude-namespaces="},
		{name: "configFile", values: "configFile: {dir: /var/lib/ambient/, name: ambient.json}", arg: "--config-file=/var/lib/ambient/ambient.json",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, c *corev1.Container) {
				assertMount(t, mounts(t, ds, c), mount{"/var/lib/ambient/", "DirectoryOrCreate", "/var/lib/ambient/", "", false})
			}},
		{name: "nodeIPs", values: `nodeIPs: [192.0.2.10, "2001:db8::10"]`, arg: "--node-ip=192.0.2.10,2001:db8::10"},
		{name: "netnsDirs", values: "netnsDirs: [/var/run/docker/netns]", arg: "--netns-dir=/var/run/docker/netns",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, c *corev1.Container) {
				ms := mounts(t, ds, c)
				assertMount(t, ms, mount{"/var/run/docker/netns", "DirectoryOrCreate", "/var/run/docker/netns", corev1.MountPropagationHostToContainer, true})
				for _, m := range ms {
					if strings.HasSuffix(m.MountPath, "/netns") && m.MountPath != "/var/run/docker/netns" {
						t.Errorf("%s still mounted", m.MountPath)
					}
				}
			}},
		{name: "resyncPeriod", values: "resyncPeriod: 90s", arg: "--resync-period=90s"},
		{name: "logFormat", values: "logFormat: text", arg: "--log-format=text"},
		{name: "logLevel", values: "logLevel: debug", arg: "--log-level=debug"},
		{name: "metrics.port", values: "metrics: {port: 19090}", arg: "--metrics-addr=:19090",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, c *corev1.Container) {
				if len(c.Ports) != 1 || c.Ports[0].ContainerPort != 19090 || c.Ports[0].Name != "metrics" {
					t.Errorf("ports %+v, want metrics 19090", c.Ports)
				}
				if got := ds.Spec.Template.Annotations["prometheus.io/port"]; got != "19090" {
					t.Errorf("prometheus.io/port %q", got)
				}
			}},
		{name: "metrics.scrape", values: "metrics: {scrape: false}",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, _ *corev1.Container) {
				if a := ds.Spec.Template.Annotations; len(a) != 0 {
					t.Errorf("pod annotations %v, want none", a)
				}
			}},
		{name: "cni.install", values: "cni: {install: false}", arg: "--cni-install=false",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, c *corev1.Container) {
				for _, m := range mounts(t, ds, c) {
					if m.HostPath == "/etc/cni/net.d" || m.HostPath == "/opt/cni/bin" {
						t.Errorf("CNI directory %s mounted without the install", m.HostPath)
					}
				}
			}},
		{name: "cni.socket", values: "cni: {socket: /run/mesh/agent.sock}", arg: "--cni-socket=/run/mesh/agent.sock",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, c *corev1.Container) {
				assertMount(t, mounts(t, ds, c), mount{"/run/mesh", "DirectoryOrCreate", "/run/mesh", "", false})
			}},
		{name: "mountBPFFS", values: "mountBPFFS: never", arg: "--mount-bpffs=never"},
		{name: "replaceIncompatiblePins", values: "replaceIncompatiblePins: false", arg: "--replace-incompatible-pins=false"},
		{name: "cni.confDir", values: "cni: {confDir: /etc/kubernetes/cni/net.d}", arg: "--cni-conf-dir=/etc/kubernetes/cni/net.d"},
		{name: "cni.binDir", values: "cni: {binDir: /home/kubernetes/bin}", arg: "--cni-bin-dir=/home/kubernetes/bin"},
		{name: "cni.plugin", values: "cni: {plugin: /opt/meshredirect/cni}", arg: "--cni-plugin=/opt/meshredirect/cni"},
		{name: "extraArgs", values: `extraArgs: ["--log-level=warn"]`, arg: "--log-level=warn"},
		{name: "image", values: "image: {repository: registry.example/mesh/agent, tag: v9.9.9, pullPolicy: Always}",
			check: func(t *testing.T, _ *Rendered, _ *appsv1.DaemonSet, c *corev1.Container) {
				if c.Image != "registry.example/mesh/agent:v9.9.9" || c.ImagePullPolicy != corev1.PullAlways {
					t.Errorf("image %s, pull %s", c.Image, c.ImagePullPolicy)
				}
			}},
		{name: "imagePullSecrets", values: "imagePullSecrets: [{name: regcred}]",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, _ *corev1.Container) {
				if s := ds.Spec.Template.Spec.ImagePullSecrets; len(s) != 1 || s[0].Name != "regcred" {
					t.Errorf("imagePullSecrets %v", s)
				}
			}},
		{name: "resources", values: "resources: {requests: {cpu: 100m}, limits: {memory: 1Gi}}",
			check: func(t *testing.T, _ *Rendered, _ *appsv1.DaemonSet, c *corev1.Container) {
				if cpu, mem := c.Resources.Requests.Cpu().String(), c.Resources.Limits.Memory().String(); cpu != "100m" || mem != "1Gi" {
					t.Errorf("resources %+v", c.Resources)
				}
			}},
		{name: "nodeSelector", values: "nodeSelector: {mesh: enabled}",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, _ *corev1.Container) {
				// Helm merges maps: the defaults stay unless set to null.
				want := map[string]string{"mesh": "enabled", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
				if got := ds.Spec.Template.Spec.NodeSelector; !cmp.Equal(got, want) {
					t.Errorf("nodeSelector %v", got)
				}
			}},
		// The READMEs' way onto arm64 nodes: --set 'nodeSelector.kubernetes\.io/arch=null'
		// (TestArchPinLifted checks that Helm parses it into this).
		{name: "nodeSelector arch lifted", values: "nodeSelector: {kubernetes.io/arch: null}",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, _ *corev1.Container) {
				want := map[string]string{"kubernetes.io/os": "linux"}
				if got := ds.Spec.Template.Spec.NodeSelector; !cmp.Equal(got, want) {
					t.Errorf("nodeSelector %v", got)
				}
			}},
		{name: "affinity", values: "affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: mesh, operator: Exists}]}]}}}",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, _ *corev1.Container) {
				if a := ds.Spec.Template.Spec.Affinity; a == nil || a.NodeAffinity == nil {
					t.Errorf("affinity %+v", a)
				}
			}},
		{name: "tolerations", values: "tolerations: [{key: dedicated, operator: Equal, value: mesh, effect: NoSchedule}]",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, _ *corev1.Container) {
				want := []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "mesh", Effect: corev1.TaintEffectNoSchedule}}
				if got := ds.Spec.Template.Spec.Tolerations; !cmp.Equal(got, want) {
					t.Errorf("tolerations %+v", got)
				}
			}},
		{name: "priorityClassName", values: "priorityClassName: system-cluster-critical",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, _ *corev1.Container) {
				if got := ds.Spec.Template.Spec.PriorityClassName; got != "system-cluster-critical" {
					t.Errorf("priorityClassName %q", got)
				}
			}},
		{name: "podAnnotations", values: "podAnnotations: {example.com/owner: mesh}",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, _ *corev1.Container) {
				a := ds.Spec.Template.Annotations
				if a["example.com/owner"] != "mesh" || a["prometheus.io/scrape"] != "true" {
					t.Errorf("pod annotations %v", a)
				}
			}},
		{name: "podLabels", values: "podLabels: {team: mesh}",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, _ *corev1.Container) {
				if l := ds.Spec.Template.Labels; l["team"] != "mesh" || l["app.kubernetes.io/name"] != "meshredirect" {
					t.Errorf("pod labels %v", l)
				}
			}},
		{name: "serviceAccount.name", values: "serviceAccount: {name: mesh-agent-sa}",
			check: func(t *testing.T, r *Rendered, ds *appsv1.DaemonSet, _ *corev1.Container) {
				assertServiceAccount(t, r, ds, "mesh-agent-sa", true)
			}},
		{name: "serviceAccount.create", values: "serviceAccount: {create: false, name: existing}",
			check: func(t *testing.T, r *Rendered, ds *appsv1.DaemonSet, _ *corev1.Container) {
				assertServiceAccount(t, r, ds, "existing", false)
			}},
		{name: "fullnameOverride", values: "fullnameOverride: mesh-agent",
			check: func(t *testing.T, r *Rendered, _ *appsv1.DaemonSet, _ *corev1.Container) {
				for _, o := range r.Objects {
					if o.Name != "mesh-agent" {
						t.Errorf("%s named %s", o.Kind, o.Name)
					}
				}
			}},
		{name: "updateStrategy", values: "updateStrategy: {type: OnDelete, rollingUpdate: null}",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, _ *corev1.Container) {
				if us := ds.Spec.UpdateStrategy; us.Type != appsv1.OnDeleteDaemonSetStrategyType || us.RollingUpdate != nil {
					t.Errorf("updateStrategy %+v", us)
				}
			}},
		{name: "terminationGracePeriodSeconds", values: "terminationGracePeriodSeconds: 5",
			check: func(t *testing.T, _ *Rendered, ds *appsv1.DaemonSet, _ *corev1.Container) {
				if g := ds.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g != 5 {
					t.Errorf("terminationGracePeriodSeconds %v", g)
				}
			}},
		{name: "probes", values: "{readinessProbe: {periodSeconds: 3}, livenessProbe: {initialDelaySeconds: 30}}",
			check: func(t *testing.T, _ *Rendered, _ *appsv1.DaemonSet, c *corev1.Container) {
				if c.ReadinessProbe.PeriodSeconds != 3 || c.LivenessProbe.InitialDelaySeconds != 30 || c.LivenessProbe.HTTPGet.Path != "/healthz" {
					t.Errorf("probes %+v %+v", c.ReadinessProbe, c.LivenessProbe)
				}
			}},
		{name: "liftMemlock", values: "liftMemlock: true",
			check: func(t *testing.T, _ *Rendered, _ *appsv1.DaemonSet, c *corev1.Container) {
				if got := c.SecurityContext.Capabilities.Add; !slices.Equal(got, capabilitiesLiftMemlock) {
					t.Errorf("capabilities add %v, want %v", got, capabilitiesLiftMemlock)
				}
			}},
		{name: "security profiles", values: "{appArmorProfile: {type: Localhost, localhostProfile: meshredirect}, seccompProfile: {type: Unconfined}, seLinuxOptions: null}",
			check: func(t *testing.T, _ *Rendered, _ *appsv1.DaemonSet, c *corev1.Container) {
				sc := c.SecurityContext
				if sc.AppArmorProfile == nil || *sc.AppArmorProfile.LocalhostProfile != "meshredirect" ||
					sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeUnconfined || sc.SELinuxOptions != nil {
					t.Errorf("securityContext %+v", sc)
				}
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := mustRender(t, Options{Values: values(t, tt.values)})
			ds, c := daemonSet(t, r)
			want := slices.Clone(defaultArgs)
			if tt.arg != "" {
				flag, _, _ := strings.Cut(tt.arg, "=")
				i := slices.IndexFunc(want, func(a string) bool { return strings.HasPrefix(a, flag+"=") })
				if i < 0 || strings.HasPrefix(tt.name, "extraArgs") {
					want = append(want, tt.arg)
				} else {
					want[i] = tt.arg
				}
			}
			if diff := cmp.Diff(want, c.Args); diff != "" {
				t.Errorf("args (-want +got):\n%s", diff)
			}
			if tt.check != nil {
				tt.check(t, r, ds, c)
			}
		})
	}
}

func assertMount(t *testing.T, ms []mount, want mount) {
	t.Helper()
	if !slices.Contains(ms, want) {
		t.Errorf("no mount %+v among %+v", want, ms)
	}
}

// assertServiceAccount checks that the DaemonSet runs as name, that the binding names it, and
// that the ServiceAccount is rendered only when created.
func assertServiceAccount(t *testing.T, r *Rendered, ds *appsv1.DaemonSet, name string, created bool) {
	t.Helper()
	if got := ds.Spec.Template.Spec.ServiceAccountName; got != name {
		t.Errorf("serviceAccountName %q, want %q", got, name)
	}
	var b rbacv1.ClusterRoleBinding
	decode(t, r.Find("ClusterRoleBinding"), &b)
	if len(b.Subjects) != 1 || b.Subjects[0].Name != name || b.Subjects[0].Namespace != Namespace {
		t.Errorf("binding subjects %+v, want %s/%s", b.Subjects, Namespace, name)
	}
	sa := r.Find("ServiceAccount")
	switch {
	case created && (sa == nil || sa.Name != name):
		t.Errorf("ServiceAccount %+v, want %s", sa, name)
	case !created && sa != nil:
		t.Errorf("ServiceAccount %s rendered with serviceAccount.create=false", sa.Name)
	}
}

// TestSchemaRefuses checks that values the agent would refuse at start fail at install.
func TestSchemaRefuses(t *testing.T) {
	for _, tt := range []struct{ values, want string }{
		{"attachMode: bpf", "attachMode"},
		{"redirectPeer: maybe", "redirectPeer"},
		{"logLevel: trace", "logLevel"},
		{"logFormat: yaml", "logFormat"},
		{"pinDir: /tmp/pins", "pinDir"},
		{"podsMaxEntries: 0", "podsMaxEntries"},
		{"priority: 70000", "priority"},
		{"resyncPeriod: 300", "resyncPeriod"},
		{"resyncPeriod: 5 minutes", "resyncPeriod"},
		{"metrics: {port: 0}", "port"},
		{"captureDNS: \"yes\"", "captureDNS"},
		{"liftMemlock: \"true\"", "liftMemlock"},
		{"udp: reject", "udp"},
		{"dnsResolvers: [kube-dns]", "dnsResolvers"},
		{"configFile: {dir: etc, name: config.json}", "dir"},
		{"configFile: {dir: /etc, name: a/config.json}", "name"},
		{"excludeNamespaces: kube-system", "excludeNamespaces"},
		{"cni: {socket: cni.sock}", "socket"},
		{"cni: {plugin: meshredirect-cni}", "plugin"},
		{"resyncPeriod: 10ms", "resyncPeriod"},
		{"resyncPeriod: 500ms500ms", "resyncPeriod"},
		{"updateStrategy: {rollingUpdate: {maxUnavailable: 1, maxSurge: 1}}", "maxSurge"},
		{"updateStrategy: {rollingUpdate: {maxUnavailable: 1, maxSurge: 10%}}", "maxSurge"},
		{"updateStrategy: {rollingUpdate: {maxUnavailable: 0, maxSurge: 0}}", "maxUnavailable"},
		{"updateStrategy: {type: Recreate}", "type"},
		{"zdsSocket: /" + strings.Repeat("a", 107), "zdsSocket"},
		{"nodeIPs: [127.0.0.1]", "nodeIPs"},
		{"monitoring: {podMonitor: {enabled: \"yes\"}}", "enabled"},
		{"monitoring: {podMonitor: {enabled: true, interval: 30 seconds}}", "interval"},
		{"monitoring: {prometheusRule: {enabled: true, dropsPerSecond: -1}}", "dropsPerSecond"},
		{"monitoring: {dashboard: {enabled: true, namespace: Monitoring}}", "namespace"},
		{"readinessProbe: {periodSeconds: -1}", "periodSeconds"},
	} {
		t.Run(tt.values, func(t *testing.T) {
			_, err := Render(chartDir, Options{Values: values(t, tt.values)})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("render with %s: %v, want an error naming %s", tt.values, err, tt.want)
			}
		})
	}
	for _, tt := range []struct{ values, want string }{
		{"serviceAccount: {create: false}", "serviceAccount.name is required"},
		{`cni: {socket: ""}`, "cni.install needs cni.socket"},
	} {
		_, err := Render(chartDir, Options{Values: values(t, tt.values)})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("render with %s: %v, want %q", tt.values, err, tt.want)
		}
	}
}

// TestClusterRoleRules checks that the ClusterRole has exactly the rules of the file the
// agent's tests bind, and that the template includes that file instead of a copy.
func TestClusterRoleRules(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir, rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	var want []rbacv1.PolicyRule
	if err := yaml.UnmarshalStrict(raw, &want); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		values map[string]any
	}{{"defaults", nil}, {"every value changed", values(t, nonDefaultValues)}} {
		r := mustRender(t, Options{Values: tt.values})
		var role rbacv1.ClusterRole
		decode(t, r.Find("ClusterRole"), &role)
		if diff := cmp.Diff(want, role.Rules); diff != "" {
			t.Errorf("%s: ClusterRole rules differ from %s (-file +rendered):\n%s", tt.name, rulesFile, diff)
		}
		if role.AggregationRule != nil {
			t.Errorf("%s: aggregation rule %+v", tt.name, role.AggregationRule)
		}
	}
	tpl, err := os.ReadFile(filepath.Join(chartDir, "templates/clusterrole.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(tpl, []byte(`.Files.Get "`+rulesFile+`"`)) {
		t.Errorf("templates/clusterrole.yaml does not include %s", rulesFile)
	}
	for _, copied := range []string{"verbs:", "apiGroups:", "resources:"} {
		if bytes.Contains(tpl, []byte(copied)) {
			t.Errorf("templates/clusterrole.yaml has %q: the rules belong in %s only", copied, rulesFile)
		}
	}
}

func TestNotes(t *testing.T) {
	for _, tt := range []struct {
		values string
		want   []string
	}{
		{"{}", []string{"rollout status daemonset/meshredirect", "dropped (fail closed)", "port 15014", "meshredirect uninstall", "kube-system, istio-system"}},
		{"{ztunnelMode: node, failOpen: true, metrics: {port: 19090}, excludeNamespaces: []}", []string{"passed (fail open)", "port 19090", "no namespace excluded"}},
		// In-pod mode has no fail open: a pod ztunnel has not taken has no listener.
		{"{failOpen: true}", []string{"dropped (fail closed)", "once ztunnel has taken it over ZDS (/var/run/ztunnel/ztunnel.sock)"}},
	} {
		notes := mustRender(t, Options{Values: values(t, tt.values)}).Notes
		for _, w := range tt.want {
			if !strings.Contains(notes, w) {
				t.Errorf("NOTES.txt with %s lacks %q:\n%s", tt.values, w, notes)
			}
		}
	}
}

// TestManifestUpToDate fails when deploy/meshredirect.yaml is not what the chart renders now.
func TestManifestUpToDate(t *testing.T) {
	fresh, err := Manifest(chartDir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	committed, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatalf("%v (run make manifests)", err)
	}
	if !bytes.Equal(committed, fresh) {
		diff := cmp.Diff(strings.Split(string(committed), "\n"), strings.Split(string(fresh), "\n"))
		t.Errorf("deploy/meshredirect.yaml differs from the chart: run make manifests (-committed +fresh):\n%s", diff)
	}
	// Every object of the file is in the namespace it creates, or cluster-scoped.
	for _, doc := range strings.Split(string(fresh), "\n---\n")[1:] {
		var head struct {
			Kind     string
			Metadata struct{ Name, Namespace string }
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatal(err)
		}
		cluster := head.Kind == "Namespace" || strings.HasPrefix(head.Kind, "ClusterRole")
		if (head.Metadata.Namespace == Namespace) == cluster {
			t.Errorf("%s %s in namespace %q", head.Kind, head.Metadata.Name, head.Metadata.Namespace)
		}
	}
}

// TestUninstallManifest checks that deploy/meshredirect-uninstall.yaml, written by hand, runs
// the image of the chart and cleans the paths the chart's defaults use.
func TestUninstallManifest(t *testing.T) {
	ds := uninstallDaemonSet(t)
	if len(ds.Spec.Template.Spec.InitContainers) != 1 {
		t.Fatalf("%d init containers", len(ds.Spec.Template.Spec.InitContainers))
	}
	u := ds.Spec.Template.Spec.InitContainers[0]
	_, agent := daemonSet(t, mustRender(t, Options{}))
	if u.Image != agent.Image {
		t.Errorf("uninstall image %s, the chart's %s", u.Image, agent.Image)
	}
	if u.Args[0] != "uninstall" {
		t.Errorf("args %v", u.Args)
	}
	for _, a := range u.Args[1:] {
		if !slices.Contains(agent.Args, a) {
			t.Errorf("uninstall %s: the agent has %v", a, agent.Args)
		}
	}
	if !ds.Spec.Template.Spec.HostNetwork || !ds.Spec.Template.Spec.HostPID {
		t.Error("uninstall must run in the node's network and PID namespaces")
	}
}

// uninstallDaemonSet decodes the DaemonSet of deploy/meshredirect-uninstall.yaml.
func uninstallDaemonSet(tb testing.TB) *appsv1.DaemonSet {
	tb.Helper()
	raw, err := os.ReadFile(uninstallPath)
	if err != nil {
		tb.Fatal(err)
	}
	docs := strings.Split(string(raw), "\n---\n")
	var ds appsv1.DaemonSet
	decode(tb, &Object{Kind: "DaemonSet", YAML: docs[len(docs)-1]}, &ds)
	return &ds
}

// TestNoCNIPlugin: with the plugin off (no install, no socket) nothing of it
// is passed or mounted.
func TestNoCNIPlugin(t *testing.T) {
	ds, c := daemonSet(t, mustRender(t, Options{Values: values(t, `cni: {socket: "", install: false}`)}))
	for _, want := range []string{"--cni-socket=", "--cni-install=false"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("args lack %s: %v", want, c.Args)
		}
	}
	for _, m := range mounts(t, ds, c) {
		switch m.HostPath {
		case "/var/run/meshredirect", "/etc/cni/net.d", "/opt/cni/bin":
			t.Errorf("%s mounted without the plugin", m.HostPath)
		}
	}
}
