package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func mustListen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func TestDialAtStart(t *testing.T) {
	ln := mustListen(t)
	go echo(ln)
	got := dialAtStart(context.Background(), ln.Addr().String(), "pod-a")
	if !got.OK || got.Reply != "first pod-a" || got.Local == "" || got.Err != "" {
		t.Errorf("dial the echo server = %+v, want ok with reply %q", got, "first pod-a")
	}

	closed := mustListen(t)
	addr := closed.Addr().String()
	closed.Close()
	if got := dialAtStart(context.Background(), addr, "pod-a"); got.OK || got.Err == "" {
		t.Errorf("dial a closed port = %+v, want an error", got)
	}
}

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(handler("pod-a"))
	defer srv.Close()
	get := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, step := range []struct {
		method, path string
		code         int
		body         string // a prefix
	}{
		{"GET", "/healthz", 200, "ok"},
		{"GET", "/readyz", 200, "ok"},
		{"GET", "/", 200, "hello from pod-a to 127.0.0.1:"},
		{"GET", "/fail", 405, ""},
		{"POST", "/fail", 200, "failing"},
		{"GET", "/healthz", 500, "failed"},
		{"GET", "/readyz", 200, "ok"},
		{"GET", "/nope", 404, ""},
	} {
		code, body := get(step.method, step.path)
		if code != step.code || !strings.HasPrefix(body, step.body) {
			t.Errorf("%s %s = %d %q, want %d %q...", step.method, step.path, code, body, step.code, step.body)
		}
	}
}

// TestRun runs the command with a dial at start and stops it as SIGTERM
// would.
func TestRun(t *testing.T) {
	ln := mustListen(t)
	go echo(ln)
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-http", "127.0.0.1:0", "-echo", "127.0.0.1:0", "-dial-at-start", ln.Addr().String()}, &out)
	}()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not stop within 5 s of its context's end")
	}
	var res dialResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || !res.OK {
		t.Errorf("output %q: %+v (%v), want one line of a dial that worked", out.String(), res, err)
	}
}
