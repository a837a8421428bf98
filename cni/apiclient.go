package cni

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// DefaultAPITimeout bounds the plugin's questions to the API server while
// the agent is down (a pod and its namespace: two GETs).
const DefaultAPITimeout = 10 * time.Second

// ErrUndecided wraps every reason the plugin cannot tell from the API
// whether a pod is ambient: no kubeconfig, the API unreachable, refused or
// slow, the pod missing or another one of its name. The plugin then treats
// the pod as ambient.
var ErrUndecided = errors.New("cannot tell from the API whether the pod is ambient")

// objectMeta is all the plugin reads of a pod or a namespace.
type objectMeta struct {
	UID    string            `json:"uid"`
	Labels map[string]string `json:"labels"`
}

// apiClient reads pods and namespaces with nothing but net/http: client-go
// would add megabytes to a binary that runs for every pod of the node.
type apiClient struct {
	access APIAccess
	hc     *http.Client
}

func newAPIClient(a APIAccess) (*apiClient, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(a.CA) {
		return nil, fmt.Errorf("no PEM certificate in the CA of %s", a.Server)
	}
	return &apiClient{access: a, hc: &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}}, nil
}

// get reads the metadata of the object at path (/api/v1/...), named what
// in errors.
func (c *apiClient) get(ctx context.Context, path, what string) (objectMeta, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.access.Server+path, nil)
	if err != nil {
		return objectMeta{}, fmt.Errorf("get %s: %w", what, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.access.Token)
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return objectMeta{}, fmt.Errorf("get %s: %w", what, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return objectMeta{}, fmt.Errorf("get %s from %s: %w", what, c.access.Server, err)
	}
	if resp.StatusCode != http.StatusOK {
		// The API server's Status says why (not found, forbidden for
		// whom); its message is enough.
		var status struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(raw, &status) != nil || status.Message == "" {
			status.Message = string(raw)
		}
		return objectMeta{}, fmt.Errorf("get %s from %s: %s: %s", what, c.access.Server, resp.Status, status.Message)
	}
	var obj struct {
		Metadata objectMeta `json:"metadata"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return objectMeta{}, fmt.Errorf("get %s from %s: bad object: %w", what, c.access.Server, err)
	}
	return obj.Metadata, nil
}

// AmbientFromAPI reads the pod of req and its namespace from the API
// server and applies AmbientRequested to their labels: the plugin's
// decision while the agent is down. Any error wraps ErrUndecided, and the
// caller must then treat the pod as ambient. A pod whose UID is not
// req.UID (the kubelet's K8S_POD_UID; another pod of the same name took
// its place) is undecided too.
//
// It applies only the label rule, not the rest of agent.Decide: a pod that
// asks for ambient but opts out (a sidecar, redirection disabled) is
// reported ambient, and waits for the agent like any ambient pod. The
// plugin cannot apply all of Decide (the ztunnel selector is the agent's
// flag), and a pod it lets start must be one the agent would never
// capture.
func AmbientFromAPI(ctx context.Context, a APIAccess, req PodRequest) (bool, string, error) {
	c, err := newAPIClient(a)
	if err != nil {
		return false, "", fmt.Errorf("%w: %v", ErrUndecided, err)
	}
	podPath := "/api/v1/namespaces/" + url.PathEscape(req.Namespace) + "/pods/" + url.PathEscape(req.Name)
	pod, err := c.get(ctx, podPath, "pod "+req.Namespace+"/"+req.Name)
	if err != nil {
		return false, "", fmt.Errorf("%w: %v", ErrUndecided, err)
	}
	if req.UID != "" && pod.UID != req.UID {
		return false, "", fmt.Errorf("%w: pod %s/%s in the API has UID %s, not the sandbox's %s",
			ErrUndecided, req.Namespace, req.Name, pod.UID, req.UID)
	}
	ns, err := c.get(ctx, "/api/v1/namespaces/"+url.PathEscape(req.Namespace), "namespace "+req.Namespace)
	if err != nil {
		return false, "", fmt.Errorf("%w: %v", ErrUndecided, err)
	}
	ambient, reason := AmbientRequested(pod.Labels, ns.Labels, true)
	return ambient, reason, nil
}

// AmbientFromKubeconfig is AmbientFromAPI with the access of the kubeconfig
// at path (ReadKubeconfig); a kubeconfig it cannot read leaves the pod
// undecided too.
func AmbientFromKubeconfig(ctx context.Context, path string, req PodRequest) (bool, string, error) {
	a, err := ReadKubeconfig(path)
	if err != nil {
		return false, "", fmt.Errorf("%w: %v", ErrUndecided, err)
	}
	return AmbientFromAPI(ctx, a, req)
}
