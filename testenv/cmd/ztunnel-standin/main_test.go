package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
	"github.com/meshredirect/meshredirect/zds"
)

// The test binary doubles as the command: run with this variable set, it
// runs main instead of the tests, so the tests need no `go build`.
const runMainEnv = "ZTUNNEL_STANDIN_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestCommand runs the command in ztunnel's namespace, started inside it
// or opening it with -netns, carries a TCP flow and a DNS query through it
// and reads its records from the admin endpoint, from the file on SIGUSR1
// and from the file at exit.
func TestCommand(t *testing.T) {
	for _, mode := range []string{"started inside", "-netns"} {
		t.Run(mode, func(t *testing.T) {
			node := testenv.NewNode(t, testenv.NodeOptions{})
			client := node.AddPod("client", testenv.Ambient)
			server := node.AddPod("server", testenv.Ambient)
			zt := node.AddZtunnel()
			node.SteerToZtunnel(client, server)
			server.StartEcho(ztunnel.PortOutbound)
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()

			records := filepath.Join(t.TempDir(), "records.json")
			cmd := exec.Command(os.Args[0],
				"-records", records,
				"-admin", "127.0.0.1:15000",
				"-dns", "server.default.svc.cluster.local="+server.IPv4.String()+","+server.IPv6.String(),
			)
			cmd.Env = append(os.Environ(), runMainEnv+"=1")
			cmd.Stderr = os.Stderr
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if mode == "-netns" {
				cmd.Args = append(cmd.Args, "-netns", zt.Path())
				err = cmd.Start()
			} else {
				err = zt.Start(cmd)
			}
			if err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			t.Cleanup(func() {
				// Before the node's teardown: the process holds ztunnel's
				// namespace.
				cmd.Process.Kill()
				<-exited
			})
			ready := make(chan string, 1)
			go func() {
				line, _ := bufio.NewReader(stdout).ReadString('\n')
				ready <- line
				io.Copy(io.Discard, stdout)
				exited <- cmd.Wait()
			}()
			select {
			case line := <-ready:
				if line != "ready\n" {
					t.Fatalf("command printed %q, want ready", line)
				}
			case <-ctx.Done():
				t.Fatal("command not ready")
			}

			// A proxied flow and a DNS query.
			c, err := client.DialContext(ctx, "tcp4", netip.AddrPortFrom(server.IPv4, ztunnel.PortOutbound).String())
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("hello"))
			if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
				t.Fatal(err)
			}
			c.Close()
			u, err := client.Dial("udp6", netip.AddrPortFrom(testenv.ServiceIPv6(53), ztunnel.PortDNS).String())
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			q := dnsmessage.Message{Questions: []dnsmessage.Question{{
				Name: dnsmessage.MustNewName("server.default.svc.cluster.local."), Type: dnsmessage.TypeAAAA, Class: dnsmessage.ClassINET,
			}}}
			b, _ := q.Pack()
			u.Write(b)
			u.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := u.Read(make([]byte, 512)); err != nil {
				t.Fatalf("no dns reply: %v", err)
			}

			check := func(how string, recs []ztunnel.Record) {
				t.Helper()
				if len(recs) != 2 || recs[0].Listener != ztunnel.PortOutbound || recs[0].Upstream.Addr() != client.IPv4 ||
					recs[1].DNS == nil || len(recs[1].DNS.Answers) != 1 || recs[1].DNS.Answers[0] != server.IPv6 {
					t.Errorf("records from %s: %+v", how, recs)
				}
			}

			// The admin endpoint, in ztunnel's namespace. Wait for the TCP
			// flow's record to end (the echo server closes after the client).
			hc := &http.Client{Transport: &http.Transport{DialContext: zt.DialContext}}
			var recs []ztunnel.Record
			for {
				recs = nil
				resp, err := hc.Get("http://127.0.0.1:15000/records")
				if err != nil {
					t.Fatal(err)
				}
				err = json.NewDecoder(resp.Body).Decode(&recs)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				if len(recs) == 2 && recs[0].Done() || ctx.Err() != nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			hc.CloseIdleConnections()
			check("admin endpoint", recs)

			// SIGUSR1: the file.
			cmd.Process.Signal(syscall.SIGUSR1)
			var fileRecs []ztunnel.Record
			for {
				data, err := os.ReadFile(records)
				if err == nil {
					if err := json.Unmarshal(data, &fileRecs); err != nil {
						t.Fatalf("records file: %v\n%s", err, data)
					}
					break
				}
				if ctx.Err() != nil {
					t.Fatal("no records file after SIGUSR1")
				}
				time.Sleep(10 * time.Millisecond)
			}
			check("file on SIGUSR1", fileRecs)

			// SIGTERM: a clean exit, the file rewritten.
			os.Remove(records)
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-exited:
				exited <- err // for the cleanup
				if err != nil {
					t.Fatalf("exit: %v", err)
				}
			case <-ctx.Done():
				t.Fatal("no exit after SIGTERM")
			}
			data, err := os.ReadFile(records)
			if err != nil {
				t.Fatal(err)
			}
			fileRecs = nil
			if err := json.Unmarshal(data, &fileRecs); err != nil {
				t.Fatal(err)
			}
			check("file at exit", fileRecs)
		})
	}
}

// TestFlags: bad flags are errors.
func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-dns", "noequals"},
		{"-dns", "a=notanip"},
		{"-dns-answer", "x"},
		{"-netns", "/nonexistent"},
	} {
		if err := run(args); err == nil {
			t.Errorf("run(%q) succeeded", args)
		}
	}
}

// TestCommandInPod runs the command with -zds in ztunnel's namespace: it
// connects to the agent's ZDS server, an add opens the pod's listeners in
// the pod's namespace, /zds shows the pod, and a del closes them.
func TestCommandInPod(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	pod := node.AddPod("a", testenv.Ambient)
	zt := node.AddZtunnel()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "ztunnel.sock")
	srv, err := zds.Listen(zds.ServerOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ctx)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})

	cmd := exec.Command(os.Args[0], "-zds", path, "-admin", "127.0.0.1:15000")
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	cmd.Stderr = os.Stderr
	if err := zt.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if err := srv.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	w := zds.Workload{UID: "uid-a", Info: zds.WorkloadInfo{Name: "a", Namespace: "ns1"}, Netns: pod.Path()}
	if err := srv.Add(ctx, w); err != nil {
		t.Fatal(err)
	}
	hbone := netip.AddrPortFrom(pod.IPv4, ztunnel.PortHBONE).String()
	c, err := pod.Dial("tcp4", hbone)
	if err != nil {
		t.Fatalf("pod's 15008 after add: %v", err)
	}
	c.Close()

	var state struct {
		ZDS  ztunnel.ZDSState   `json:"zds"`
		Pods []ztunnel.PodState `json:"pods"`
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: zt.DialContext}}
	resp, err := hc.Get("http://127.0.0.1:15000/zds")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&state)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !state.ZDS.Connected || len(state.Pods) != 1 || state.Pods[0].UID != "uid-a" || !state.Pods[0].Up {
		t.Errorf("/zds: %+v", state)
	}

	if err := srv.Del(ctx, "uid-a"); err != nil {
		t.Fatal(err)
	}
	if c, err := pod.Dial("tcp4", hbone); err == nil {
		c.Close()
		t.Error("pod's 15008 still open after del")
	}
}
