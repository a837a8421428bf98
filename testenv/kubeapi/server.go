package kubeapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/meshredirect/meshredirect/testenv/proc"
)

// AdminUser is the user that [Server.AdminToken] authenticates as; it is in system:masters.
const AdminUser = "admin"

// User is an identity that gets a bearer token in the apiserver's --token-auth-file.
type User struct {
	// Name is the user name RBAC sees, e.g. "system:serviceaccount:istio-system:meshredirect".
	Name string
	// Groups are the user's groups; the apiserver adds system:authenticated itself.
	Groups []string
}

// ServiceAccount returns the User that the ServiceAccount ns/name authenticates as, with the
// groups the apiserver gives ServiceAccount tokens.
func ServiceAccount(ns, name string) User {
	return User{
		Name:   "system:serviceaccount:" + ns + ":" + name,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns},
	}
}

// Options configures [Start]. The zero value is a control plane with only the admin user.
type Options struct {
	// Users get a token each, next to the admin's; see [Server.Token]. None may be named
	// [AdminUser].
	Users []User
	// ServiceClusterIPRange is --service-cluster-ip-range; default 10.96.0.0/16.
	ServiceClusterIPRange string
	// ReadyTimeout bounds the wait for /readyz; default 90 s, which covers a loaded 2-core
	// machine (measured: ~4 s idle, up to ~27 s under load).
	ReadyTimeout time.Duration
	// ServiceAccountAdmission keeps the ServiceAccount admission plugin on, as a cluster has
	// it: pods get their ServiceAccount's token mounted, and a pod whose ServiceAccount does
	// not exist is refused. Without a controller-manager to create each namespace's default
	// ServiceAccount, leave it off.
	ServiceAccountAdmission bool
	// ExtraAPIServerArgs are appended to kube-apiserver's flags and so override them.
	ExtraAPIServerArgs []string
}

// Server is a running kube-apiserver and etcd, listening on loopback only.
type Server struct {
	// Host is the apiserver's URL, "https://127.0.0.1:<port>".
	Host string
	// CA is the PEM bundle that verifies Host: the apiserver's self-generated apiserver.crt.
	CA []byte
	// AdminToken is a bearer token for [AdminUser], a member of system:masters.
	AdminToken string

	dir       string
	tokens    map[string]string
	spawner   *proc.Spawner
	etcd      *proc.Process
	apiserver *proc.Process

	stopOnce sync.Once
	stopErr  error
}

// Start runs etcd and kube-apiserver from [Binaries] in a new temporary directory and waits
// until /readyz answers ok and the default namespace exists (within [Options.ReadyTimeout],
// failing at once if either process exits). ctx bounds the start only: the processes run until [Server.Stop],
// or until this process dies (they get SIGKILL then). On failure nothing is left running and
// the error carries the tail of the failing process's log.
func Start(ctx context.Context, opts Options) (_ *Server, err error) {
	apiserverBin, etcdBin, err := Binaries()
	if err != nil {
		return nil, err
	}
	if opts.ServiceClusterIPRange == "" {
		opts.ServiceClusterIPRange = "10.96.0.0/16"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 90 * time.Second
	}
	ctx, cancel := context.WithTimeoutCause(ctx, opts.ReadyTimeout,
		fmt.Errorf("not ready within %v: %w", opts.ReadyTimeout, context.DeadlineExceeded))
	defer cancel()

	removeStale(os.TempDir())
	dir, err := os.MkdirTemp("", "kubeapi-")
	if err != nil {
		return nil, fmt.Errorf("create control plane directory: %w", err)
	}
	s := &Server{dir: dir, tokens: map[string]string{}, spawner: proc.NewSpawner()}
	defer func() {
		if err != nil {
			_ = s.Stop()
		}
	}()
	if err := writeOwner(dir); err != nil {
		return nil, fmt.Errorf("create control plane directory: %w", err)
	}

	if err := s.writeAuth(opts.Users); err != nil {
		return nil, err
	}
	env := childEnv()

	var etcdURL string
	for attempt := 1; ; attempt++ {
		etcdURL, err = s.startEtcd(ctx, etcdBin, env)
		if errors.Is(err, errPortTaken) && attempt < 3 {
			continue
		}
		if err != nil {
			return nil, err
		}
		break
	}
	for attempt := 1; ; attempt++ {
		err = s.startAPIServer(ctx, apiserverBin, env, etcdURL, opts)
		if errors.Is(err, errPortTaken) && attempt < 3 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return s, nil
	}
}

// startEtcd runs a single-member etcd on two free loopback ports and waits for its /health.
func (s *Server) startEtcd(ctx context.Context, bin string, env []string) (string, error) {
	ports, err := freePorts(2)
	if err != nil {
		return "", fmt.Errorf("pick ports for etcd: %w", err)
	}
	client, peer := ports[0], ports[1]
	clientURL := "http://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	args := []string{
		"--name=kubeapi",
		"--data-dir=" + filepath.Join(s.dir, "etcd"),
		"--listen-client-urls=" + clientURL,
		"--advertise-client-urls=" + clientURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=kubeapi=" + peerURL,
		// Test data is thrown away: skip the fsyncs that make etcd slow on a busy disk.
		"--unsafe-no-fsync",
		"--log-level=warn",
	}
	s.etcd, err = proc.Start(s.spawner, s.dir, "etcd", bin, args, env)
	if err != nil {
		return "", err
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	err = s.poll(ctx, s.etcd, func() bool {
		resp, err := hc.Get(clientURL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if err != nil {
		return "", fmt.Errorf("wait for etcd: %w", err)
	}
	return clientURL, nil
}

// startAPIServer runs kube-apiserver on a free loopback port against etcdURL and waits until
// /readyz is ok and the default namespace exists.
func (s *Server) startAPIServer(ctx context.Context, bin string, env []string, etcdURL string, opts Options) error {
	ports, err := freePorts(1)
	if err != nil {
		return fmt.Errorf("pick port for kube-apiserver: %w", err)
	}
	port := ports[0]
	certDir := filepath.Join(s.dir, "certs")
	saKey := filepath.Join(s.dir, "sa.key")
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		// Without it the apiserver refuses a loopback advertise address, as it would publish
		// it in the default/kubernetes Endpoints.
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + certDir,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
		"--service-cluster-ip-range=" + opts.ServiceClusterIPRange,
		"--token-auth-file=" + filepath.Join(s.dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		// The agent's own pods are privileged; let tests create them.
		"--allow-privileged=true",
	}
	if !opts.ServiceAccountAdmission {
		// No controller-manager creates the default ServiceAccount the plugin would insist on.
		args = append(args, "--disable-admission-plugins=ServiceAccount")
	}
	args = append(args, opts.ExtraAPIServerArgs...)

	s.apiserver, err = proc.Start(s.spawner, s.dir, "kube-apiserver", bin, args, env)
	if err != nil {
		return err
	}
	s.Host = "https://127.0.0.1:" + strconv.Itoa(port)

	var hc *http.Client
	err = s.poll(ctx, s.apiserver, func() bool {
		if hc == nil {
			// apiserver.crt appears once the apiserver has generated its serving cert.
			ca, err := os.ReadFile(filepath.Join(certDir, "apiserver.crt"))
			if err != nil {
				return false
			}
			hc, err = clientFor(ca)
			if err != nil {
				return false
			}
			s.CA = ca
		}
		return s.get(hc, "/readyz") && s.get(hc, "/api/v1/namespaces/default")
	})
	if hc != nil {
		hc.CloseIdleConnections()
	}
	if err != nil {
		return fmt.Errorf("wait for kube-apiserver at %s: %w", s.Host, err)
	}
	return nil
}

// get reports whether GET path with the admin token answers 200.
func (s *Server) get(hc *http.Client, path string) bool {
	req, err := http.NewRequest(http.MethodGet, s.Host+path, nil)
	if err != nil {
		return false
	}
	req.Header.Set("Authorization", "Bearer "+s.AdminToken)
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// poll calls ready until it returns true, failing early with the log's tail if c exits and
// with both logs' tails if ctx ends first.
func (s *Server) poll(ctx context.Context, c *proc.Process, ready func() bool) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if ready() {
			return nil
		}
		select {
		case <-c.Done():
			if portTaken(c) {
				return fmt.Errorf("%w: %w", errPortTaken, c.ExitError())
			}
			return c.ExitError()
		case <-ctx.Done():
			return fmt.Errorf("%w:\n%s", context.Cause(ctx), s.Logs())
		case <-tick.C:
		}
	}
}

// Token returns the bearer token of user, which must be [AdminUser] or one of
// [Options.Users]; for any other it returns "".
func (s *Server) Token(user string) string {
	return s.tokens[user]
}

// Logs returns the last lines of etcd's and kube-apiserver's logs, for a test failure message.
// They are gone after [Server.Stop].
func (s *Server) Logs() string {
	var out string
	for _, c := range []*proc.Process{s.etcd, s.apiserver} {
		if c != nil {
			out += "--- " + c.Name + " log (last lines) ---\n" + c.Tail() + "\n"
		}
	}
	return out
}

// Stop stops kube-apiserver and waits for it, then etcd, then removes the temporary directory.
// Each gets SIGTERM and, after 10 s, SIGKILL. The order matters: an apiserver whose etcd has
// gone away can hang for minutes. Stop is safe to call more than once.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		var errs []error
		if s.apiserver != nil {
			s.Resume() // a paused process would sit on its SIGTERM
		}
		for _, c := range []*proc.Process{s.apiserver, s.etcd} {
			if c != nil {
				errs = append(errs, c.Stop())
			}
		}
		s.spawner.Close()
		if err := os.RemoveAll(s.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove control plane directory: %w", err))
		}
		s.stopErr = errors.Join(errs...)
	})
	return s.stopErr
}

// freePorts returns n distinct loopback TCP ports that were free a moment ago. Another process
// may take one before the child binds it; Start retries on errPortTaken.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		// Hold each listener until all are picked so that the kernel cannot hand out the
		// same port twice.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// clientFor returns an HTTP client that trusts only the PEM certificates in ca.
func clientFor(ca []byte) (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, errors.New("parse apiserver CA: no certificate")
	}
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		},
	}, nil
}

// Pause freezes kube-apiserver (SIGSTOP): clients' requests and watches
// hang as they would against an unreachable control plane, until Resume.
func (s *Server) Pause() error {
	return s.apiserver.Cmd.Process.Signal(syscall.SIGSTOP)
}

// Resume lets a paused kube-apiserver run again (SIGCONT).
func (s *Server) Resume() error {
	return s.apiserver.Cmd.Process.Signal(syscall.SIGCONT)
}
