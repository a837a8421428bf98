package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/meshredirect/meshredirect/dataplane"
)

// TestWriteStatusInPod: the status table has an in-pod section, with each
// pod's programs, policy routing and ztunnel's ack, only when there are
// in-pod pods; the JSON of a node without any is what it was before
// (no inPod key).
func TestWriteStatusInPod(t *testing.T) {
	var b bytes.Buffer
	if err := writeStatus(&b, dataplane.Status{}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "IN-POD") {
		t.Errorf("in-pod section on a node without in-pod pods:\n%s", &b)
	}
	j, err := json.Marshal(dataplane.Status{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(j), "inPod") {
		t.Errorf("JSON of a node without in-pod pods has inPod: %s", j)
	}

	st := dataplane.Status{InPod: []dataplane.InPodStatus{{
		Namespace: "app", Name: "client", IPs: []string{"198.18.16.1", "fd10::1"}, Netns: "/run/netns/cni-1",
		Interface: "eth0", Mode: "tcx", PolicyRouting: true, Ztunnel: "acked",
		Programs: []dataplane.InPodProgram{{Name: "pod_egress", Interface: "eth0", Direction: "egress", Mode: "tcx"}},
	}, {
		IPs: []string{"198.18.16.2"}, Netns: "/proc/42/ns/net", Interface: "eth0", Mode: "missing",
	}}}
	b.Reset()
	if err := writeStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"ztunnel: in each pod", "IN-POD POD", "app/client", "198.18.16.1,fd10::1", "/run/netns/cni-1", "pod_egress@eth0/egress", "acked",
		"/proc/42/ns/net", "missing", "2 pods captured in their netns"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}
