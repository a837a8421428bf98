package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/meshredirect/meshredirect/resolve"
	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/tc"
)

// ZtunnelNetns finds the network namespaces of the ztunnels the datapath
// was set up for, from the kernel alone (for uninstall, which must work
// without the API): the interfaces carrying ztunnel_ingress are ztunnel's
// host veths, and their peers' netns ids lead to a path.
func ZtunnelNetns(tcPinDir string, rcfg resolve.Config) ([]string, error) {
	m, err := tc.New(tc.Config{NetnsPath: rcfg.NodeNetns, PinDir: tcPinDir})
	if err != nil {
		return nil, err
	}
	defer m.Close()
	all, err := m.ListAll()
	if err != nil {
		return nil, err
	}
	r, err := resolve.New(rcfg)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var (
		paths []string
		errs  []error
	)
	for _, a := range all {
		if a.Name != mrasm.ZtunnelIngress && a.ProgramName != mrasm.ZtunnelIngress {
			continue
		}
		nsid, err := peerNetnsID(rcfg.NodeNetns, a.Ifindex)
		if err == nil {
			var path string
			if path, err = r.NetnsPath(nsid); err == nil {
				paths = append(paths, path)
				continue
			}
		}
		errs = append(errs, fmt.Errorf("ztunnel's veth %s: %w", a.Ifname, err))
	}
	return paths, errors.Join(errs...)
}

// RemoveAnnotations removes ambient.istio.io/redirection=enabled from every
// pod of node, and returns how many it changed.
func RemoveAnnotations(ctx context.Context, client kubernetes.Interface, node string) (int, error) {
	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return 0, fmt.Errorf("list pods of node %s: %w", node, err)
	}
	patch := []byte(fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, RedirectionAnnotation))
	n := 0
	var errs []error
	for _, p := range pods.Items {
		if p.Annotations[RedirectionAnnotation] != RedirectionEnabled {
			continue
		}
		if _, err := client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
			errs = append(errs, fmt.Errorf("patch pod %s/%s status: %w", p.Namespace, p.Name, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// peerNetnsID returns the netns id (as the node's netns numbers them) of
// the peer of veth ifindex.
func peerNetnsID(nodeNetns string, ifindex int) (int, error) {
	h := &netlink.Handle{}
	if nodeNetns != "" {
		ns, err := netns.GetFromPath(nodeNetns)
		if err != nil {
			return 0, fmt.Errorf("open netns %s: %w", nodeNetns, err)
		}
		defer ns.Close()
		if h, err = netlink.NewHandleAt(ns); err != nil {
			return 0, err
		}
		defer h.Close()
	}
	l, err := h.LinkByIndex(ifindex)
	if err != nil {
		return 0, err
	}
	if l.Attrs().NetNsID < 0 {
		return 0, fmt.Errorf("interface %s: its peer is in the same netns", l.Attrs().Name)
	}
	return l.Attrs().NetNsID, nil
}
