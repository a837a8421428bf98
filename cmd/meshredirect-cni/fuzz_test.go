package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/meshredirect/meshredirect/cni"
)

// Seeds of FuzzPluginConfig: what runtimes send. The previous result is
// a separate input, spliced into the configuration, so that the fuzzer
// mutates a result without first having to keep the configuration
// around it valid. testdata/fuzz has these as files too, and what earlier
// runs found.
var (
	seedConfigs = []string{
		// Chained as the installer writes the entry.
		`{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"meshredirect-cni","socket":"/var/run/meshredirect/cni.sock",` +
			`"excludeNamespaces":["kube-system","istio-system"],"timeoutSeconds":30,"kubeconfig":"/etc/cni/net.d/meshredirect-kubeconfig"}`,
		`{"cniVersion":"0.3.1","name":"k8s-pod-network","type":"meshredirect-cni"}`,
		`{"cniVersion":"0.4.0","name":"cbr0","type":"meshredirect-cni","timeoutSeconds":5}`,
		`{"cniVersion":"1.1.0","name":"n","type":"meshredirect-cni"}`,
		`{"cniVersion":"0.2.0","name":"old","type":"meshredirect-cni"}`,
		`{"cniVersion":"0.4.0","name":"nulls","type":"meshredirect-cni"}`,
		`{}`,
	}
	seedResults = []string{
		// ptp's 1.0.0 result.
		`{"cniVersion":"1.0.0","interfaces":[{"name":"veth1","mac":"aa:bb:cc:dd:ee:ff"},{"name":"eth0","sandbox":"/var/run/netns/cni-1"}],` +
			`"ips":[{"interface":1,"address":"10.1.0.5/24","gateway":"10.1.0.1"},{"interface":1,"address":"fd00::5/64"}],` +
			`"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}`,
		// 0.3.1 (Calico, Flannel): ips carry a version.
		`{"cniVersion":"0.3.1","interfaces":[{"name":"cali1"}],"ips":[{"version":"4","address":"192.168.1.7/32"},{"version":"6","address":"fd00:1::7/128"}],"dns":{}}`,
		// 0.4.0, a bridge result with a gateway.
		`{"cniVersion":"0.4.0","interfaces":[{"name":"cni0"},{"name":"veth2"},{"name":"eth0","sandbox":"/proc/1/ns/net"}],` +
			`"ips":[{"version":"4","interface":2,"address":"10.244.0.9/24","gateway":"10.244.0.1"}]}`,
		// 1.1.0 with no address.
		`{"cniVersion":"1.1.0"}`,
		`{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.4/24","gateway":"10.0.0.1"},"ip6":{"ip":"fd00::4/64"}}`,
		// JSON's null where the spec has none.
		`{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","mac":null}],"ips":[{"version":"4","interface":0,"address":"10.0.0.1/24","gateway":null}],"routes":null,"dns":null}`,
		// DEL's configuration has no previous result.
		``,
	}
	seedArgs = []string{
		"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=3f1c0ffee;K8S_POD_UID=4d2a6b1e-8f0e-4c55-9d7e-2b1f0a6c3e11",
		"K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1",
		"",
	}
)

// withPrevResult puts prevResult into the configuration config, when both
// are JSON; otherwise config is used as it is.
func withPrevResult(config, prevResult []byte) []byte {
	if len(prevResult) == 0 || !json.Valid(prevResult) {
		return config
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(config, &obj) != nil || obj == nil {
		return config
	}
	obj["prevResult"] = prevResult
	b, err := json.Marshal(obj)
	if err != nil {
		return config
	}
	return b
}

// FuzzPluginConfig feeds parse what the runtime hands the plugin: the
// configuration with the primary CNI's result on stdin, CNI_ARGS,
// CNI_CONTAINERID and CNI_NETNS. It must never panic, and every address it
// sends the agent must be one. What it accepts, written again as a runtime
// would from the fields the plugin uses (the configuration's, the pod's
// identity, the addresses of the previous result), must parse to the same
// configuration and the same request to the agent. The result ADD prints,
// the previous one in the configuration's version, must not panic either.
func FuzzPluginConfig(f *testing.F) {
	for i, c := range seedConfigs {
		f.Add([]byte(c), []byte(seedResults[i]), seedArgs[i%len(seedArgs)], "3f1c0ffee", "/var/run/netns/cni-1")
	}
	f.Fuzz(func(t *testing.T, config, prevResult []byte, cniArgs, containerID, netns string) {
		stdin := withPrevResult(config, prevResult)
		args := &skel.CmdArgs{ContainerID: containerID, Netns: netns, IfName: "eth0", Args: cniArgs, Path: "/opt/cni/bin", StdinData: stdin}
		conf, prev, req, err := parse(args)
		if err != nil {
			return
		}
		if req.ContainerID != containerID || req.Netns != netns {
			t.Fatalf("request %+v does not carry CNI_CONTAINERID %q and CNI_NETNS %q", req, containerID, netns)
		}
		for _, ip := range req.IPs {
			if _, err := netip.ParseAddr(ip); err != nil {
				t.Fatalf("the agent would be sent %q as an address (from %s)", ip, stdin)
			}
		}
		if prev != nil {
			// What cmdAdd prints (types.PrintResult, to stdout).
			if r, err := prev.GetAsVersion(conf.CNIVersion); err == nil {
				if _, err := json.Marshal(r); err != nil {
					t.Fatalf("the result ADD would print does not marshal: %v", err)
				}
			}
		}

		again := map[string]any{"cniVersion": conf.CNIVersion, "name": conf.Name, "type": conf.Type,
			"socket": conf.Socket, "excludeNamespaces": conf.ExcludeNamespaces, "timeoutSeconds": conf.TimeoutSeconds,
			"kubeconfig": conf.Kubeconfig}
		ipsKept := false
		if prev != nil {
			if r, ok := resultOf(req.IPs, conf.CNIVersion); ok {
				again["prevResult"], ipsKept = r, true
			}
		}
		stdin2, err := json.Marshal(again)
		if err != nil {
			t.Fatal(err)
		}
		args2 := *args
		args2.StdinData, args2.Args = stdin2, kubeletArgs(req)
		conf2, prev2, req2, err := parse(&args2)
		if err != nil {
			t.Fatalf("parse accepted\n%s\nCNI_ARGS %q\nbut not the same written again:\n%s\nCNI_ARGS %q\n%v", stdin, cniArgs, stdin2, args2.Args, err)
		}
		if conf2.CNIVersion != conf.CNIVersion || conf2.Socket != conf.Socket || conf2.TimeoutSeconds != conf.TimeoutSeconds || conf2.Kubeconfig != conf.Kubeconfig ||
			!slices.Equal(conf2.ExcludeNamespaces, conf.ExcludeNamespaces) {
			t.Errorf("configuration changed:\n%+v\n%+v", conf, conf2)
		}
		if ipsKept && prev2 == nil {
			t.Fatalf("the previous result was lost:\n%s", stdin2)
		}
		if !ipsKept {
			// The addresses cannot be written in the configuration's
			// version (0.2.0 has one per family; no version at all):
			// only CNI_ARGS round-trips.
			req.IPs, req2.IPs = nil, nil
		}
		// The order of the addresses is not kept: 0.x results have one
		// slot per family, which a misplaced address changes.
		slices.Sort(req.IPs)
		slices.Sort(req2.IPs)
		if fmt.Sprint(req2) != fmt.Sprint(req) {
			t.Errorf("request changed:\n%+v\n%+v\nfrom\n%s\nCNI_ARGS %q", req, req2, stdin2, args2.Args)
		}
	})
}

// resultOf writes a previous result with ips, as a primary CNI of version
// would.
func resultOf(ips []string, version string) (types.Result, bool) {
	r := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	for _, s := range ips {
		ip := net.ParseIP(s)
		bits := 128
		if ip.To4() != nil {
			bits = 32
		}
		r.IPs = append(r.IPs, &current.IPConfig{Address: net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}})
	}
	out, err := r.GetAsVersion(version)
	return out, err == nil
}

// kubeletArgs writes CNI_ARGS as the kubelet does for req.
func kubeletArgs(req cni.PodRequest) string {
	pairs := []string{"IgnoreUnknown=1"}
	for _, kv := range [][2]string{{"K8S_POD_NAMESPACE", req.Namespace}, {"K8S_POD_NAME", req.Name}, {"K8S_POD_UID", req.UID}} {
		if kv[1] != "" {
			pairs = append(pairs, kv[0]+"="+kv[1])
		}
	}
	return strings.Join(pairs, ";")
}

// TestParseSeeds pins what parse makes of the seeds a runtime sends.
func TestParseSeeds(t *testing.T) {
	args := &skel.CmdArgs{ContainerID: "c1", Netns: "/var/run/netns/cni-1", IfName: "eth0", Args: seedArgs[0],
		StdinData: withPrevResult([]byte(seedConfigs[0]), []byte(seedResults[0]))}
	conf, prev, req, err := parse(args)
	if err != nil {
		t.Fatal(err)
	}
	if prev == nil || conf.Socket != "/var/run/meshredirect/cni.sock" || conf.TimeoutSeconds != 30 || conf.Kubeconfig != "/etc/cni/net.d/meshredirect-kubeconfig" || !slices.Equal(conf.ExcludeNamespaces, []string{"kube-system", "istio-system"}) {
		t.Errorf("conf %+v, prev %v", conf, prev)
	}
	want := cni.PodRequest{Namespace: "default", Name: "web-0", UID: "4d2a6b1e-8f0e-4c55-9d7e-2b1f0a6c3e11", ContainerID: "c1",
		Netns: "/var/run/netns/cni-1", IPs: []string{"10.1.0.5", "fd00::5"}}
	if fmt.Sprint(req) != fmt.Sprint(want) {
		t.Errorf("request %+v, want %+v", req, want)
	}
	args.StdinData = withPrevResult([]byte(seedConfigs[1]), []byte(seedResults[1]))
	if _, _, req, err := parse(args); err != nil || !slices.Equal(req.IPs, []string{"192.168.1.7", "fd00:1::7"}) {
		t.Errorf("0.3.1: %v, %v", req.IPs, err)
	}
}

// TestParseMalformedPrevResult: what FuzzPluginConfig found. An "ips"
// entry that is null crashed the plugin (parse's own loop for 1.x
// results, the CNI library's converter for 0.3.x and 0.4.0 ones), so
// that DEL, which must succeed, failed; an entry without an address was
// sent to the agent as "<nil>". A null interface crashed the library too.
func TestParseMalformedPrevResult(t *testing.T) {
	for _, prev := range []string{
		`{"cniVersion":"1.0.0","ips":[null,{"address":"10.0.0.1/24"}]}`,
		`{"cniVersion":"0.3.1","ips":[null,{"version":"4","address":"10.0.0.1/24"}]}`,
		`{"cniVersion":"1.0.0","ips":[{},{"address":"10.0.0.1/24"}]}`,
		`{"cniVersion":"0.4.0","ips":[{"version":"4"},{"version":"4","address":"10.0.0.1/24"}]}`,
		`{"cniVersion":"0.4.0","interfaces":[null,{"name":"eth0"}],"ips":[{"version":"4","interface":1,"address":"10.0.0.1/24"}]}`,
	} {
		var version struct{ CNIVersion string }
		json.Unmarshal([]byte(prev), &version)
		conf := fmt.Sprintf(`{"cniVersion":%q,"name":"n","type":"meshredirect-cni","prevResult":%s}`, version.CNIVersion, prev)
		_, res, req, err := parse(&skel.CmdArgs{StdinData: []byte(conf), Args: seedArgs[0]})
		if err != nil || !slices.Equal(req.IPs, []string{"10.0.0.1"}) {
			t.Errorf("%s: IPs %q, %v", prev, req.IPs, err)
			continue
		}
		if _, err := res.GetAsVersion(version.CNIVersion); err != nil { // what ADD prints
			t.Errorf("%s: as %s: %v", prev, version.CNIVersion, err)
		}
	}
}
