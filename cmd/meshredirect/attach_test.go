package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/meshredirect/meshredirect/internal/testutil"
)

// TestAttachListDetach drives the operator commands on a veth in a
// namespace of the test's own, in both modes.
func TestAttachListDetach(t *testing.T) {
	for _, mode := range []string{"tcx", "tc"} {
		t.Run(mode, func(t *testing.T) {
			ns := testutil.NewNetns(t)
			testutil.MustDo(t, ns, func() error {
				if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "host0"}, PeerName: "pod0"}); err != nil {
					return err
				}
				l, err := netlink.LinkByName("host0")
				if err != nil {
					return err
				}
				return netlink.LinkSetUp(l)
			})
			path := fmt.Sprintf("/proc/self/fd/%d", int(ns))
			pins := filepath.Join(testutil.BPFFS(t), "meshredirect")
			common := []string{"--netns", path, "--pin-dir", pins}

			for _, prog := range []string{"app_outbound", "app_inbound"} {
				out, err := runCmd(t, append([]string{"attach", "--program", prog, "--interface", "host0", "--mode", mode}, common...)...)
				if err != nil {
					t.Fatalf("attach %s: %v\n%s", prog, err, out)
				}
				if !strings.Contains(out, "attached:") {
					t.Errorf("attach printed %q", out)
				}
			}

			out, err := runCmd(t, append([]string{"list", "--json"}, common...)...)
			if err != nil {
				t.Fatal(err)
			}
			var list []attachmentJSON
			if err := json.Unmarshal([]byte(out), &list); err != nil {
				t.Fatalf("list --json: %v\n%s", err, out)
			}
			got := map[string]string{}
			for _, a := range list {
				got[a.Direction] = a.Program
				if a.Interface != "host0" || a.Mode != mode {
					t.Errorf("listed %+v", a)
				}
			}
			if got["ingress"] != "app_outbound" || got["egress"] != "app_inbound" || len(list) != 2 {
				t.Errorf("list = %+v", list)
			}
			if out, _ := runCmd(t, append([]string{"list"}, common...)...); !strings.Contains(out, "app_outbound") {
				t.Errorf("list table:\n%s", out)
			}

			if out, err := runCmd(t, append([]string{"detach", "--interface", "host0"}, common...)...); err != nil {
				t.Fatalf("detach: %v\n%s", err, out)
			}
			out, err = runCmd(t, append([]string{"list"}, common...)...)
			if err != nil || !strings.Contains(out, "no meshredirect program") {
				t.Errorf("after detach, list: %v\n%s", err, out)
			}
		})
	}
}

func TestAttachBadInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"attach", "--program", "nope", "--interface", "x"}, `no program called "nope"`},
		{[]string{"attach", "--program", "app_outbound"}, `required flag(s) "interface"`},
		{[]string{"attach", "--program", "app_outbound", "--interface", "x", "--direction", "up"}, "invalid direction"},
		{[]string{"attach", "--program", "app_outbound", "--interface", "x", "--mode", "fast"}, "unknown attach mode"},
	} {
		_, err := runCmd(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.args, err, c.want)
		}
	}
}
