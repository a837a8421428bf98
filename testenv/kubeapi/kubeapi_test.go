package kubeapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshredirect/meshredirect/testenv/proc"
)

var (
	agent  = ServiceAccount("meshredirect-system", "meshredirect")
	nobody = User{Name: "nobody", Groups: []string{"testers"}}
)

func TestMain(m *testing.M) {
	os.Exit(Main(m, Options{Users: []User{agent, nobody}}))
}

// call sends method path to srv with token's bearer and returns the status and body.
func call(tb testing.TB, srv *Server, token, method, path string, body any) (int, []byte) {
	tb.Helper()
	hc, err := clientFor(srv.CA)
	if err != nil {
		tb.Fatal(err)
	}
	defer hc.CloseIdleConnections()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			tb.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(tb.Context(), method, srv.Host+path, rd)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, out
}

func TestVersion(t *testing.T) {
	srv := Shared(t)
	code, body := call(t, srv, srv.AdminToken, "GET", "/version", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /version = %d: %s", code, body)
	}
	var v struct{ GitVersion, Major, Minor string }
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != Version || v.Major != "1" || v.Minor != "37" {
		t.Errorf("GET /version = %+v, want %s (1.37)", v, Version)
	}
}

func TestAccess(t *testing.T) {
	srv := Shared(t)
	for _, tt := range []struct {
		name  string
		token string
		path  string
		want  int
	}{
		{"admin lists namespaces", srv.AdminToken, "/api/v1/namespaces", http.StatusOK},
		{"admin lists pods", srv.AdminToken, "/api/v1/pods", http.StatusOK},
		{"unbound user cannot list pods", srv.Token(nobody.Name), "/api/v1/pods", http.StatusForbidden},
		{"unbound service account cannot list pods", srv.Token(agent.Name), "/api/v1/pods", http.StatusForbidden},
		{"unknown token is unauthenticated", "not-a-token", "/api/v1/pods", http.StatusUnauthorized},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.token == "" {
				t.Fatal("no token")
			}
			if code, body := call(t, srv, tt.token, "GET", tt.path, nil); code != tt.want {
				t.Errorf("GET %s = %d, want %d: %s", tt.path, code, tt.want, body)
			}
		})
	}
}

// TestServiceAccountIdentity checks that the apiserver sees the token user with its groups,
// which RBAC bindings for the agent will match on.
func TestServiceAccountIdentity(t *testing.T) {
	srv := Shared(t)
	review := map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
	code, body := call(t, srv, srv.Token(agent.Name), "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
	if code != http.StatusCreated {
		t.Fatalf("POST selfsubjectreviews = %d: %s", code, body)
	}
	var got struct {
		Status struct {
			UserInfo struct {
				Username string
				Groups   []string
			} `json:"userInfo"`
		}
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	ui := got.Status.UserInfo
	if ui.Username != agent.Name || !strings.Contains(strings.Join(ui.Groups, ","), "system:serviceaccounts:meshredirect-system") {
		t.Errorf("userInfo = %+v, want %s in its namespace's group", ui, agent.Name)
	}
}

func TestCreateNamespace(t *testing.T) {
	srv := Shared(t)
	name := "kubeapi-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	ns := map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name}}
	if code, body := call(t, srv, srv.AdminToken, "POST", "/api/v1/namespaces", ns); code != http.StatusCreated {
		t.Fatalf("POST namespace %s = %d: %s", name, code, body)
	}
	if code, body := call(t, srv, srv.AdminToken, "GET", "/api/v1/namespaces/"+name, nil); code != http.StatusOK {
		t.Fatalf("GET namespace %s = %d: %s", name, code, body)
	}
	if code, body := call(t, srv, srv.Token(nobody.Name), "POST", "/api/v1/namespaces", ns); code != http.StatusForbidden {
		t.Errorf("POST namespace as %s = %d, want 403: %s", nobody.Name, code, body)
	}
}

func TestKubeconfig(t *testing.T) {
	srv := Shared(t)
	kc := string(srv.Kubeconfig(agent.Name))
	for _, want := range []string{
		"server: " + strconv.Quote(srv.Host),
		"token: " + strconv.Quote(srv.Token(agent.Name)),
		"user: " + strconv.Quote(agent.Name),
		"certificate-authority-data: ",
	} {
		if !strings.Contains(kc, want) {
			t.Errorf("kubeconfig lacks %q:\n%s", want, kc)
		}
	}
	if srv.Kubeconfig("stranger") != nil || srv.Token("stranger") != "" {
		t.Error("unknown user has a kubeconfig or token")
	}
}

// TestStopLeavesNothing runs a control plane of its own, reports what it costs, and checks
// that Stop leaves no process and no directory behind.
func TestStopLeavesNothing(t *testing.T) {
	requireBinaries(t)
	begin := time.Now()
	srv, err := Start(t.Context(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ready in %v", time.Since(begin).Round(time.Millisecond))
	if code, body := call(t, srv, srv.AdminToken, "GET", "/api/v1/namespaces", nil); code != http.StatusOK {
		t.Errorf("GET /api/v1/namespaces = %d: %s", code, body)
	}
	pids := map[string]int{}
	for _, c := range []*proc.Process{srv.apiserver, srv.etcd} {
		pids[c.Name] = c.Cmd.Process.Pid
		t.Logf("%s: pid %d, %s", c.Name, c.Cmd.Process.Pid, rss(c.Cmd.Process.Pid))
	}

	begin = time.Now()
	if err := srv.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	t.Logf("stopped in %v", time.Since(begin).Round(time.Millisecond))
	if err := srv.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}

	for name, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s (pid %d) still exists after Stop: kill 0 = %v", name, pid, err)
		}
		if left := inGroup(t, pid); len(left) > 0 {
			t.Errorf("processes %v still in %s's process group after Stop", left, name)
		}
	}
	if _, err := os.Stat(srv.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory %s still there after Stop: %v", srv.dir, err)
	}
}

func TestStartFailsEarly(t *testing.T) {
	requireBinaries(t)
	tmp := isolateTempDir(t)
	// An unknown flag makes kube-apiserver exit at once: Start must say so, with its log,
	// well before the ready timeout, and clean up etcd and its directory.
	begin := time.Now()
	_, err := Start(t.Context(), Options{ExtraAPIServerArgs: []string{"--no-such-flag"}})
	if err == nil {
		t.Fatal("Start with a bad flag succeeded")
	}
	t.Logf("Start: %.400v", err)
	if took := time.Since(begin); took > 60*time.Second {
		t.Errorf("Start took %v to fail", took)
	}
	if !strings.Contains(err.Error(), "kube-apiserver exited early") || !strings.Contains(err.Error(), "no-such-flag") {
		t.Errorf("error lacks the exit and the log's tail: %v", err)
	}
	assertEmpty(t, tmp)
}

func TestStartTimesOut(t *testing.T) {
	requireBinaries(t)
	tmp := isolateTempDir(t)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := Start(ctx, Options{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Start within 50ms = %v, want a deadline error", err)
	}
	assertEmpty(t, tmp)
}

func TestBinariesMissing(t *testing.T) {
	t.Setenv("MESHREDIRECT_KUBE_CACHE", t.TempDir())
	if _, _, err := Binaries(); !errors.Is(err, ErrNoBinaries) || !strings.Contains(err.Error(), "make kube-bins") {
		t.Errorf("Binaries() in an empty cache = %v, want ErrNoBinaries with a hint", err)
	}
	for _, tt := range []struct {
		ci       string
		wantSkip bool
	}{
		{"", true},
		{"false", true},
		{"true", false},
		{"1", false},
	} {
		t.Run("CI="+tt.ci, func(t *testing.T) {
			t.Setenv("CI", tt.ci)
			tb := &recordTB{TB: t}
			requireBinaries(tb)
			if tb.skipped != tt.wantSkip || tb.failed == tt.wantSkip {
				t.Errorf("skipped=%v failed=%v, want skipped=%v", tb.skipped, tb.failed, tt.wantSkip)
			}
		})
	}
}

// recordTB records Skipf and Fatalf instead of ending the test.
type recordTB struct {
	testing.TB
	skipped, failed bool
}

func (r *recordTB) Skipf(string, ...any)  { r.skipped = true }
func (r *recordTB) Fatalf(string, ...any) { r.failed = true }

// rss returns the resident set size of pid as /proc reports it.
func rss(pid int) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return "RSS " + strings.TrimSpace(v)
		}
	}
	return "RSS unknown"
}

// inGroup returns the processes whose process group is pgid, from /proc.
func inGroup(tb testing.TB, pgid int) []int {
	tb.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		tb.Fatal(err)
	}
	var pids []int
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid pgrp ...; comm may contain spaces, so start after ')'.
		rest := string(b[bytes.LastIndexByte(b, ')')+1:])
		f := strings.Fields(rest)
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
			pids = append(pids, pid)
		}
	}
	return pids
}

// isolateTempDir points os.TempDir, where Start makes its directory, at a directory of the
// test's own, so that other control planes on the machine do not count as leaks.
func isolateTempDir(t *testing.T) string {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	return tmp
}

// assertEmpty fails t if dir has any entry.
func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	left, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("%s left in %s", e.Name(), dir)
	}
}

func TestRemoveStale(t *testing.T) {
	tmp := t.TempDir()
	for name, owner := range map[string]string{
		"kubeapi-live":   fmt.Sprintf("%d %s", os.Getpid(), procStart(os.Getpid())),
		"kubeapi-reused": fmt.Sprintf("%d 1", os.Getpid()), // same pid, other process
		"kubeapi-gone":   "2147483647 1",
		"kubeapi-new":    "", // no owner file yet
	} {
		dir := filepath.Join(tmp, name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if owner != "" {
			if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(owner), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	removeStale(tmp)
	var left []string
	entries, _ := os.ReadDir(tmp)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if got, want := strings.Join(left, " "), "kubeapi-live kubeapi-new"; got != want {
		t.Errorf("after removeStale: %s, want %s", got, want)
	}
}
