package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// KubeconfigName is the plugin's kubeconfig in the CNI configuration
// directory, unless the agent is told another path. Its name does not end
// in .conf, .conflist or .json, so libcni never takes it for a network.
const KubeconfigName = "meshredirect-kubeconfig"

// APIAccess is how the plugin reaches the API server while the agent is
// down: the agent's server, CA and ServiceAccount token, which the agent
// writes into a kubeconfig next to the conflist (as istio-cni does with
// its own).
type APIAccess struct {
	// Server is the API server's URL, https://host:port.
	Server string
	// CA is the PEM bundle that verifies Server.
	CA []byte
	// Token is a bearer token with get on pods and namespaces.
	Token string
}

// kubeconfig is the subset of a kubeconfig file that Kubeconfig writes and
// ReadKubeconfig reads. JSON is YAML, so kubectl reads the file too.
type kubeconfig struct {
	APIVersion     string        `json:"apiVersion"`
	Kind           string        `json:"kind"`
	Clusters       []namedObject `json:"clusters"`
	Users          []namedObject `json:"users"`
	Contexts       []namedObject `json:"contexts"`
	CurrentContext string        `json:"current-context"`
}

// namedObject is an entry of a kubeconfig's clusters, users or contexts:
// the one pointer that the list is of is set.
type namedObject struct {
	Name    string       `json:"name"`
	Cluster *kubeCluster `json:"cluster,omitempty"`
	User    *kubeUser    `json:"user,omitempty"`
	Context *kubeContext `json:"context,omitempty"`
}

type kubeCluster struct {
	Server string `json:"server"`
	// CAData is base64 in the file, as []byte is in JSON.
	CAData []byte `json:"certificate-authority-data"`
}

type kubeUser struct {
	Token string `json:"token"`
}

type kubeContext struct {
	Cluster string `json:"cluster"`
	User    string `json:"user"`
}

// Kubeconfig returns a kubeconfig file, in JSON, that reaches a.Server as
// a.Token.
func (a APIAccess) Kubeconfig() []byte {
	k := kubeconfig{APIVersion: "v1", Kind: "Config", CurrentContext: PluginType,
		Clusters: []namedObject{{Name: PluginType, Cluster: &kubeCluster{Server: a.Server, CAData: a.CA}}},
		Users:    []namedObject{{Name: PluginType, User: &kubeUser{Token: a.Token}}},
		Contexts: []namedObject{{Name: PluginType, Context: &kubeContext{Cluster: PluginType, User: PluginType}}}}
	b, _ := json.MarshalIndent(k, "", "  ") // strings and bytes only: cannot fail
	return append(b, '\n')
}

// ReadKubeconfig reads a kubeconfig in JSON, as Kubeconfig writes it: the
// server and CA of the current context's cluster and its user's token.
func ReadKubeconfig(path string) (APIAccess, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return APIAccess{}, fmt.Errorf("read kubeconfig: %w", err)
	}
	var k kubeconfig
	if err := json.Unmarshal(raw, &k); err != nil {
		return APIAccess{}, fmt.Errorf("parse kubeconfig %s (JSON, as the agent writes it): %w", path, err)
	}
	var a APIAccess
	cluster, user, found := "", "", false
	for _, c := range k.Contexts {
		if c.Name == k.CurrentContext && c.Context != nil {
			cluster, user, found = c.Context.Cluster, c.Context.User, true
		}
	}
	if !found {
		return APIAccess{}, fmt.Errorf("kubeconfig %s: no context %q (its current-context)", path, k.CurrentContext)
	}
	found = false
	for _, c := range k.Clusters {
		if c.Name == cluster && c.Cluster != nil {
			a.Server, a.CA, found = c.Cluster.Server, c.Cluster.CAData, true
		}
	}
	if !found || a.Server == "" || len(a.CA) == 0 {
		return APIAccess{}, fmt.Errorf("kubeconfig %s: cluster %q has no server or certificate-authority-data", path, cluster)
	}
	found = false
	for _, u := range k.Users {
		if u.Name == user && u.User != nil {
			a.Token, found = u.User.Token, true
		}
	}
	if !found || a.Token == "" {
		return APIAccess{}, fmt.Errorf("kubeconfig %s: user %q has no token", path, user)
	}
	return a, nil
}

// WriteKubeconfig writes a's kubeconfig to path, mode 0600 (it holds a
// token), through a temporary file renamed over it, unless path holds
// exactly that already. It reports whether it wrote.
func WriteKubeconfig(path string, a APIAccess) (bool, error) {
	want := a.Kubeconfig()
	if have, err := os.ReadFile(path); err == nil && bytes.Equal(have, want) {
		return false, nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("read kubeconfig: %w", err)
	}
	if err := writeFileAtomic(path, want, 0o600); err != nil {
		return false, fmt.Errorf("install the plugin's kubeconfig: %w", err)
	}
	return true, nil
}
