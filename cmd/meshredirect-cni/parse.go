package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/meshredirect/meshredirect/cni"
)

// parse reads the configuration, the previous result and the pod's
// identity: everything the plugin takes from outside (FuzzPluginConfig).
func parse(args *skel.CmdArgs) (*netConf, *current.Result, cni.PodRequest, error) {
	conf := &netConf{}
	if err := json.Unmarshal(args.StdinData, conf); err != nil {
		return nil, nil, cni.PodRequest{}, fmt.Errorf("parse meshredirect-cni configuration: %w", err)
	}
	nullSafe(conf.RawPrevResult)
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, nil, cni.PodRequest{}, fmt.Errorf("parse the previous result: %w", err)
	}
	var prev *current.Result
	if conf.PrevResult != nil {
		r, err := current.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return nil, nil, cni.PodRequest{}, fmt.Errorf("convert the previous result: %w", err)
		}
		prev = r
	}
	var ka k8sArgs
	if err := types.LoadArgs(args.Args, &ka); err != nil {
		return nil, nil, cni.PodRequest{}, fmt.Errorf("parse CNI_ARGS: %w", err)
	}
	req := cni.PodRequest{
		Namespace: string(ka.K8S_POD_NAMESPACE), Name: string(ka.K8S_POD_NAME), UID: string(ka.K8S_POD_UID),
		ContainerID: args.ContainerID, Netns: args.Netns,
	}
	if prev != nil {
		for _, ip := range prev.IPs {
			// The CNI library keeps an "ips" entry that is null, or has
			// no address, as it finds it: skipped, not a nil dereference
			// (which would fail DEL, which must succeed) nor "<nil>" sent
			// to the agent as an address.
			if ip == nil || ip.Address.IP == nil {
				continue
			}
			req.IPs = append(req.IPs, ip.Address.IP.String())
		}
	}
	return conf, prev, req, nil
}

// nullSafe works around containernetworking/cni#1191 (v1.3.0): the
// library's version converters dereference a null entry of a result's
// "ips" or "interfaces" list, so that a primary CNI's result with one
// would crash the plugin (FuzzPluginConfig found it). Null addresses are
// dropped; null interfaces become empty ones, as "ips" refer to
// interfaces by their index. Keys are matched as encoding/json matches
// them, without regard to case ("Interfaces" and "INTERFACES" fill the
// same field, the last one winning), or a differently spelled key would
// slip past (FuzzPluginConfig found that too).
func nullSafe(result map[string]any) {
	for key, value := range result {
		list, ok := value.([]any)
		if !ok {
			continue
		}
		switch {
		case strings.EqualFold(key, "ips"):
			result[key] = slices.DeleteFunc(list, func(v any) bool { return v == nil })
		case strings.EqualFold(key, "interfaces"):
			for i, v := range list {
				if v == nil {
					list[i] = map[string]any{}
				}
			}
		}
	}
}
