package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// Namespaces of the test workloads: one in ambient mode, one outside the mesh.
const (
	AmbientNamespace = "ambient"
	PlainNamespace   = "plain"
)

// ztunnelYAML is the ztunnel stand-in as Istio's ztunnel chart runs ztunnel: a DaemonSet in
// istio-system labelled app=ztunnel, not privileged, with NET_ADMIN, SYS_ADMIN and NET_RAW,
// and (in-pod mode) the ZDS socket's directory from the host. Its admin API (records, ZDS
// state) listens on the pod IP's port 15000, which the node reaches.
const ztunnelYAML = `apiVersion: v1
kind: Namespace
metadata:
  name: istio-system
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: ztunnel
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: ztunnel
  template:
    metadata:
      labels:
        app: ztunnel
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: istio-proxy
          image: %[1]s
          imagePullPolicy: Never
          args: %[2]s
          readinessProbe:
            httpGet:
              path: /healthz
              port: 15000
            periodSeconds: 1
          securityContext:
            privileged: false
            runAsUser: 0
            capabilities:
              drop: [ALL]
              add: [NET_ADMIN, SYS_ADMIN, NET_RAW]
          volumeMounts:
            - name: zds
              mountPath: /var/run/ztunnel
      volumes:
        - name: zds
          hostPath:
            path: /var/run/ztunnel
            type: DirectoryOrCreate
`

// ZtunnelManifest returns the stand-in's DaemonSet for mode "inpod" (ZDS over the hostPath
// socket) or "node" (transparent listeners in its own netns).
func ZtunnelManifest(mode string) []byte {
	args := `["-admin", "0.0.0.0:15000", "-zds", "/var/run/ztunnel/ztunnel.sock"]`
	if mode == "node" {
		args = `["-admin", "0.0.0.0:15000"]`
	}
	return fmt.Appendf(nil, ztunnelYAML, ZtunnelImage, args)
}

// namespacesYAML are the workloads' namespaces.
const namespacesYAML = `apiVersion: v1
kind: Namespace
metadata:
  name: ambient
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Namespace
metadata:
  name: plain
`

// NamespacesManifest returns the [AmbientNamespace] and [PlainNamespace].
func NamespacesManifest() []byte { return []byte(namespacesYAML) }

// appYAML is a test application pod with the probes the kubelet sends over the pod's network.
const appYAML = `apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  namespace: %[2]s
  labels:
    app: %[1]s
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: app
      image: %[3]s
      imagePullPolicy: Never
      args: %[4]s
      ports:
        - containerPort: 8080
        - containerPort: 9000
      readinessProbe:
        httpGet:
          path: /readyz
          port: 8080
        periodSeconds: 1
      livenessProbe:
        httpGet:
          path: /healthz
          port: 8080
        # testapp serves HTTP only after its dials at start: give them their timeout.
        initialDelaySeconds: 6
        periodSeconds: 1
        failureThreshold: 2
`

// AppManifest returns a test application pod ns/name (testenv/cmd/testapp: HTTP probes on 8080,
// a TCP echo on 9000) with extra arguments.
func AppManifest(ns, name string, extra ...string) []byte {
	args, _ := json.Marshal(append([]string{"-http", ":8080", "-echo", ":9000"}, extra...))
	return fmt.Appendf(nil, appYAML, name, ns, TestAppImage, args)
}

// PodAddrs returns a pod's IPs, IPv4 first.
func PodAddrs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// PodNetns opens the network namespace that holds addr: a pod's, as its CNI ADD made it
// (containerd bind-mounts it under /run/netns). The caller closes it.
func PodNetns(addr netip.Addr) (netns.NsHandle, error) {
	paths, _ := filepath.Glob("/run/netns/*")
	for _, p := range paths {
		h, err := netns.GetFromPath(p)
		if err != nil {
			continue
		}
		nl, err := netlink.NewHandleAt(h)
		if err != nil {
			h.Close()
			continue
		}
		addrs, _ := nl.AddrList(nil, netlink.FAMILY_ALL)
		nl.Close()
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
				return h, nil
			}
		}
		h.Close()
	}
	return -1, fmt.Errorf("no network namespace under /run/netns holds %s", addr)
}

// Standin is the admin API of the ztunnel stand-in's pod.
type Standin struct {
	// URL is "http://<pod IP>:15000".
	URL string
}

// Records returns the stand-in's records so far.
func (s Standin) Records(ctx context.Context) ([]ztunnel.Record, error) {
	var recs []ztunnel.Record
	return recs, s.get(ctx, "/records", &recs)
}

// Pods returns the pods ztunnel's stand-in was given over ZDS (in-pod mode).
func (s Standin) Pods(ctx context.Context) ([]ztunnel.PodState, error) {
	var v struct {
		Pods []ztunnel.PodState `json:"pods"`
	}
	return v.Pods, s.get(ctx, "/zds", &v)
}

func (s Standin) get(ctx context.Context, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("stand-in %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("stand-in %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// imageRepo and imageTag split a reference "repo:tag".
func imageRepo(ref string) string { return ref[:strings.LastIndex(ref, ":")] }
func imageTag(ref string) string  { return ref[strings.LastIndex(ref, ":")+1:] }
