package cni

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// fakeAPI serves pods and namespaces as the API server does, to the bearer
// token it was given; a token it was not given gets 403 with the API
// server's message, as RBAC would.
type fakeAPI struct {
	token      string
	pods       map[string]objectMeta // "ns/name"
	namespaces map[string]objectMeta
	delay      time.Duration
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case <-time.After(f.delay):
	case <-r.Context().Done(): // the client gave up
		return
	}
	status := func(code int, msg string) {
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(map[string]any{"kind": "Status", "status": "Failure", "message": msg, "code": code})
	}
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		status(http.StatusForbidden, `pods is forbidden: User "system:anonymous" cannot get resource "pods"`)
		return
	}
	var obj objectMeta
	var ok bool
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/v1/namespaces/"), "/")
	switch {
	case len(parts) == 1:
		obj, ok = f.namespaces[parts[0]]
	case len(parts) == 3 && parts[1] == "pods":
		obj, ok = f.pods[parts[0]+"/"+parts[2]]
	}
	if !ok {
		status(http.StatusNotFound, fmt.Sprintf("%s not found", r.URL.Path))
		return
	}
	json.NewEncoder(w).Encode(map[string]any{"metadata": obj, "spec": map[string]any{"containers": []any{}}})
}

// startFakeAPI serves f over TLS and returns the access the agent would
// give the plugin.
func startFakeAPI(t *testing.T, f *fakeAPI) APIAccess {
	t.Helper()
	srv := httptest.NewTLSServer(f)
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return APIAccess{Server: srv.URL, CA: ca, Token: f.token}
}

func labelled(mode string) map[string]string {
	if mode == "" {
		return nil
	}
	return map[string]string{DataplaneModeLabel: mode}
}

// TestAmbientFromAPI: the plugin's decision while the agent is down, one
// row per case of the label rule; the pod's UID is checked when the
// kubelet gives one.
func TestAmbientFromAPI(t *testing.T) {
	f := &fakeAPI{token: "t0k3n",
		namespaces: map[string]objectMeta{"plain": {}, "mesh": {Labels: labelled(ModeAmbient)}, "odd": {Labels: labelled("Ambient")}},
		pods: map[string]objectMeta{
			"plain/web":    {UID: "u1"},
			"plain/asks":   {UID: "u2", Labels: labelled(ModeAmbient)},
			"mesh/web":     {UID: "u3"},
			"mesh/out":     {UID: "u4", Labels: labelled(ModeNone)},
			"mesh/typo":    {UID: "u5", Labels: labelled("Ambient")},
			"odd/web":      {UID: "u6"},
			"plain/capsed": {UID: "u7", Labels: labelled("Ambient")},
		}}
	access := startFakeAPI(t, f)
	for _, c := range []struct {
		ns, name, uid string
		ambient       bool
		reason        string
	}{
		{"plain", "web", "u1", false, "no ambient label"},
		{"plain", "web", "", false, "no ambient label"}, // no K8S_POD_UID: not checked
		{"plain", "asks", "u2", true, "pod label istio.io/dataplane-mode=ambient"},
		{"mesh", "web", "u3", true, "namespace label istio.io/dataplane-mode=ambient"},
		{"mesh", "out", "u4", false, "pod label istio.io/dataplane-mode=none"},
		{"mesh", "typo", "u5", true, `"Ambient" is not ambient or none: ignored`},
		{"odd", "web", "u6", false, `namespace label istio.io/dataplane-mode="Ambient" is not ambient`},
		{"plain", "capsed", "u7", false, `"Ambient" is not ambient or none: ignored`},
	} {
		t.Run(c.ns+"/"+c.name, func(t *testing.T) {
			ambient, reason, err := AmbientFromAPI(context.Background(), access, PodRequest{Namespace: c.ns, Name: c.name, UID: c.uid})
			if err != nil {
				t.Fatal(err)
			}
			if ambient != c.ambient || !strings.Contains(reason, c.reason) {
				t.Errorf("ambient %v (%s), want %v (%s)", ambient, reason, c.ambient, c.reason)
			}
		})
	}
}

// TestAmbientFromAPIUndecided: whatever keeps the plugin from an answer is
// an error wrapping ErrUndecided that says what it was; the plugin then
// treats the pod as ambient.
func TestAmbientFromAPIUndecided(t *testing.T) {
	f := &fakeAPI{token: "t0k3n", namespaces: map[string]objectMeta{"plain": {}},
		pods: map[string]objectMeta{"plain/web": {UID: "u1"}, "gone/web": {UID: "u2"}}}
	access := startFakeAPI(t, f)
	down := startFakeAPI(t, &fakeAPI{})
	down.Server = "https://127.0.0.1:1" // nothing listens
	slow := startFakeAPI(t, &fakeAPI{token: "t0k3n", delay: 2 * time.Second})
	withToken := func(a APIAccess, token string) APIAccess { a.Token = token; return a }
	withCA := func(a APIAccess, ca []byte) APIAccess { a.CA = ca; return a }
	for _, c := range []struct {
		name   string
		access APIAccess
		req    PodRequest
		want   string
	}{
		{"wrong token", withToken(access, "stale"), PodRequest{Namespace: "plain", Name: "web"}, "403 Forbidden: pods is forbidden"},
		{"no such pod", access, PodRequest{Namespace: "plain", Name: "db"}, "404 Not Found"},
		{"another pod of the name", access, PodRequest{Namespace: "plain", Name: "web", UID: "u0"}, "has UID u1, not the sandbox's u0"},
		{"namespace not readable", access, PodRequest{Namespace: "gone", Name: "web"}, "get namespace gone"},
		{"API down", down, PodRequest{Namespace: "plain", Name: "web"}, "connection refused"},
		{"certificate of another CA", withCA(access, otherCA(t)), PodRequest{Namespace: "plain", Name: "web"}, "certificate"},
		{"no CA", withCA(access, nil), PodRequest{Namespace: "plain", Name: "web"}, "no PEM certificate"},
		{"timeout", slow, PodRequest{Namespace: "plain", Name: "web"}, "deadline exceeded"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			ambient, _, err := AmbientFromAPI(ctx, c.access, c.req)
			if !errors.Is(err, ErrUndecided) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("ambient %v, error %v; want ErrUndecided saying %q", ambient, err, c.want)
			}
		})
	}
}

// otherCA is a CA that did not sign the fake API server's certificate
// (httptest's servers all share one).
func otherCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
