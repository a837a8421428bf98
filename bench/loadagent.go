package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"fortio.org/fortio/fhttp"
	"fortio.org/log"
)

// loadRequest is what the benchmark asks its load generator for, one
// JSON line on its standard input.
type loadRequest struct {
	URL         string  `json:"url"`
	QPS         float64 `json:"qps"` // -1: as fast as possible
	DurationMs  int64   `json:"duration_ms"`
	Connections int     `json:"connections"`
	// NoKeepAlive puts each request on a connection of its own: connect,
	// GET with "Connection: close", read, close (fortio's -keepalive=false).
	NoKeepAlive bool `json:"no_keepalive,omitempty"`
}

// loadResult is the load generator's answer, one JSON line.
type loadResult struct {
	QPS      float64 `json:"qps"`
	Requests int64   `json:"requests"`
	Errors   int64   `json:"errors"`
	P50us    float64 `json:"p50_us"`
	P90us    float64 `json:"p90_us"`
	P99us    float64 `json:"p99_us"`
	P999us   float64 `json:"p999_us"`
	Err      string  `json:"error,omitempty"`
}

// serveMain is `bench serve -ports 8080[,15001]`: fortio's echo server
// (fortio.org/fortio/fhttp, v1.68.2) on each port, in the server pod. It
// prints "ready" once it listens and runs until killed.
func serveMain(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	ports := fs.String("ports", "8080", "comma-separated `ports` to serve HTTP on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log.SetLogLevel(log.Warning)
	for _, p := range strings.Split(*ports, ",") {
		if _, addr := fhttp.Serve(p, ""); addr == nil {
			return fmt.Errorf("serve HTTP on port %s: cannot listen", p)
		}
	}
	fmt.Println("ready")
	select {}
}

// loadMain is `bench load`: fortio's HTTP load generator as a library, in
// the client pod, driven by JSON lines on standard input (a loadRequest
// each, a loadResult answered on standard output), so that one process
// lives through every run and its start is not counted. Latencies are kept
// at 1 µs resolution (fortio's -r 0.000001).
func loadMain() error {
	log.SetLogLevel(log.Warning)
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req loadRequest
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			out.Encode(loadResult{Err: "decode request: " + err.Error()})
			continue
		}
		out.Encode(runFortio(req))
	}
	return in.Err()
}

// runFortio runs one fortio HTTP test.
func runFortio(req loadRequest) loadResult {
	o := fhttp.HTTPRunnerOptions{}
	o.URL = req.URL
	o.QPS = req.QPS
	o.Duration = time.Duration(req.DurationMs) * time.Millisecond
	o.NumThreads = req.Connections
	o.RunnerOptions.Resolution = 0.000001
	o.Percentiles = []float64{50, 90, 99, 99.9}
	o.DisableKeepAlive = req.NoKeepAlive
	o.Out = io.Discard
	res, err := fhttp.RunHTTPTest(&o)
	if err != nil {
		return loadResult{Err: fmt.Sprintf("fortio run against %s: %v", req.URL, err)}
	}
	r := loadResult{QPS: res.ActualQPS}
	if h := res.DurationHistogram; h != nil {
		r.Requests = h.Count
		for _, p := range h.Percentiles {
			switch p.Percentile {
			case 50:
				r.P50us = p.Value * 1e6
			case 90:
				r.P90us = p.Value * 1e6
			case 99:
				r.P99us = p.Value * 1e6
			case 99.9:
				r.P999us = p.Value * 1e6
			}
		}
	}
	r.Errors = r.Requests - res.RetCodes[200]
	return r
}
