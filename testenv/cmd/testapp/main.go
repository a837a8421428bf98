// Command testapp is the application the pods of a real-node test run
// (image meshredirect.test/testapp, built by internal/ociimage): an HTTP
// server with the probes a kubelet calls, a TCP echo server, and dials at
// start that show whether a pod's very first packets are redirected.
//
//	-http ADDR           (default :8080) GET /healthz: 200 "ok", or 500 once POST /fail was
//	                     called (the liveness probe then fails and the kubelet
//	                     restarts the container); GET /readyz: 200;
//	                     GET /: "hello from HOST to LOCAL from REMOTE"
//	-echo ADDR           a TCP echo server (default :9000): bytes back until EOF
//	-dial-at-start ADDR  (repeatable) before serving, dial ADDR over TCP (5 s
//	                     timeout), write "first HOST\n", read a line back and
//	                     print one JSON line on standard output:
//	                     {"dial":..,"local":..,"ok":..,"err":..,"reply":..}
//
// An address such as ":8080" listens on IPv4 and IPv6. Logs are plain lines
// on standard error. SIGTERM or SIGINT stops it within a second or two (the
// HTTP server shut down, the echo listener closed) with exit status 0.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("testapp: ")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// dialTimeout bounds each dial at start and its reply.
const dialTimeout = 5 * time.Second

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("testapp", flag.ContinueOnError)
	httpAddr := fs.String("http", ":8080", "HTTP address (/healthz, /readyz, /, POST /fail); empty for none")
	echoAddr := fs.String("echo", ":9000", "TCP echo address; empty for none")
	var dials listFlag
	fs.Var(&dials, "dial-at-start", "host:port to dial before serving (repeatable)")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("read hostname: %w", err)
	}

	// First, before any listener: the point is the pod's first packet.
	enc := json.NewEncoder(stdout)
	for _, addr := range dials {
		if err := enc.Encode(dialAtStart(ctx, addr, host)); err != nil {
			return fmt.Errorf("print dial to %s: %w", addr, err)
		}
	}

	errs := make(chan error, 2)
	if *echoAddr != "" {
		ln, err := net.Listen("tcp", *echoAddr)
		if err != nil {
			return fmt.Errorf("listen for echo on %s: %w", *echoAddr, err)
		}
		defer ln.Close()
		log.Printf("echo on %s", ln.Addr())
		go func() { errs <- echo(ln) }()
	}
	var srv *http.Server
	if *httpAddr != "" {
		ln, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			return fmt.Errorf("listen for HTTP on %s: %w", *httpAddr, err)
		}
		srv = &http.Server{Handler: handler(host), ReadHeaderTimeout: 10 * time.Second}
		log.Printf("http on %s", ln.Addr())
		go func() { errs <- srv.Serve(ln) }()
	}

	select {
	case <-ctx.Done():
		log.Print("stopping")
	case err := <-errs:
		return err
	}
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close() // a client still holding a connection does not keep the pod
		}
	}
	return nil
}

// dialResult is the line printed for one dial at start.
type dialResult struct {
	Dial  string `json:"dial"`
	Local string `json:"local,omitempty"`
	OK    bool   `json:"ok"`
	Err   string `json:"err,omitempty"`
	Reply string `json:"reply,omitempty"`
}

// dialAtStart dials addr, says "first HOST" and reads one line back.
func dialAtStart(ctx context.Context, addr, host string) dialResult {
	res := dialResult{Dial: addr}
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer conn.Close()
	res.Local = conn.LocalAddr().String()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	if _, err := fmt.Fprintf(conn, "first %s\n", host); err != nil {
		res.Err = fmt.Sprintf("write: %v", err)
		return res
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	res.Reply = strings.TrimSuffix(line, "\n")
	if err != nil {
		res.Err = fmt.Sprintf("read: %v", err)
		return res
	}
	res.OK = true
	return res
}

// echo serves ln until it is closed: every connection gets its bytes back.
func echo(ln net.Listener) error {
	for {
		conn, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		go func() {
			defer conn.Close()
			n, err := io.Copy(conn, conn)
			log.Printf("echo %s -> %s: %d bytes (%v)", conn.RemoteAddr(), conn.LocalAddr(), n, err)
		}()
	}
}

// handler serves the HTTP endpoints for host.
func handler(host string) http.Handler {
	var failed atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if failed.Load() {
			http.Error(w, "failed (POST /fail)", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("POST /fail", func(w http.ResponseWriter, r *http.Request) {
		failed.Store(true)
		log.Printf("POST /fail from %s: /healthz fails from now on", r.RemoteAddr)
		io.WriteString(w, "failing\n")
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		fmt.Fprintf(w, "hello from %s to %v from %s\n", host, local, r.RemoteAddr)
	})
	return mux
}
