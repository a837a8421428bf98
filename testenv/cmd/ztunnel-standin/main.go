// Command ztunnel-standin runs the ztunnel stand-in (package
// testenv/ztunnel) as a process, for demos and benchmarks: listeners on
// 15001, 15006, 15008 (TCP) and 15053 (UDP), IPv4 and IPv6, in ztunnel's
// network namespace.
//
// Start it inside ztunnel's namespace (testenv's pod.Start forks it from a
// thread in the namespace; `nsenter --net=PATH` works too), or give it
// -netns PATH (testenv's pod.Path(), a file under /run/netns) to open its
// sockets there from wherever it runs. It needs CAP_NET_ADMIN.
//
// With -zds PATH it runs in in-pod mode instead, as ztunnel of Istio 1.21
// and later: it opens no proxy listeners in its own namespace but dials the
// node agent's ZDS socket at PATH (redialling until it exits) and opens
// each added pod's listeners inside that pod's namespace (CAP_SYS_ADMIN
// too, for setns). "ready" then means started, not connected; GET /zds on
// the admin address shows the connection and the pods.
//
// Once its listeners are open it prints "ready" on standard output. Its
// records (one per connection, CONNECT stream or DNS query) are available
// three ways:
//
//	-records FILE  written as a JSON array on SIGUSR1 and when it exits
//	               (SIGINT, SIGTERM), atomically (a temporary file renamed)
//	-admin ADDR    GET http://ADDR/records in ztunnel's namespace
//	               (and GET /healthz)
//
// Usage:
//
//	ztunnel-standin [-netns PATH] [-zds PATH [-no-port-reuse]] [-records FILE]
//	    [-admin 127.0.0.1:15000] [-dns name=ip,ip]... [-dns-answer ip,ip]
//	    [-hbone-own-source] [-v]
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"

	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel-standin:", err)
		os.Exit(1)
	}
}

// dnsFlag collects -dns name=ip,ip flags.
type dnsFlag map[string][]netip.Addr

func (f dnsFlag) String() string { return fmt.Sprint(map[string][]netip.Addr(f)) }

func (f dnsFlag) Set(v string) error {
	name, list, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("want name=ip[,ip...], got %q", v)
	}
	addrs, err := parseAddrs(list)
	if err != nil {
		return err
	}
	f[name] = append(f[name], addrs...)
	return nil
}

func parseAddrs(list string) ([]netip.Addr, error) {
	var addrs []netip.Addr
	for _, s := range strings.Split(list, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, a)
	}
	return addrs, nil
}

func run(args []string) error {
	fs := flag.NewFlagSet("ztunnel-standin", flag.ContinueOnError)
	var (
		nsPath    = fs.String("netns", "", "open the sockets in the network namespace at `PATH` (default: the process's own)")
		records   = fs.String("records", "", "write the records as JSON to `FILE` on SIGUSR1 and at exit")
		admin     = fs.String("admin", "", "serve GET /records and /healthz on `ADDR` in ztunnel's namespace")
		dnsAnswer = fs.String("dns-answer", "", "answer every name not given with -dns with these `IPs` (comma separated)")
		ownSource = fs.Bool("hbone-own-source", false, "connect to CONNECT targets from ztunnel's own address, not the HBONE peer's")
		verbose   = fs.Bool("v", false, "log every flow")
		zdsPath   = fs.String("zds", "", "in-pod mode: dial the node agent's ZDS socket at `PATH` (Istio's is /var/run/ztunnel/ztunnel.sock) and open each pod's listeners in its namespace")
		noReuse   = fs.Bool("no-port-reuse", false, "in-pod mode: no SO_REUSEPORT on the pods' listeners (ztunnel's INPOD_PORT_REUSE=false)")
		dns       = dnsFlag{}
	)
	fs.Var(dns, "dns", "answer `name=ip[,ip...]` (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	opts := ztunnel.Options{
		DNS:            dns,
		HBONEOwnSource: *ownSource,
		AdminAddr:      *admin,
		ZDS:            *zdsPath,
		NoPortReuse:    *noReuse,
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	}
	if *dnsAnswer != "" {
		addrs, err := parseAddrs(*dnsAnswer)
		if err != nil {
			return fmt.Errorf("-dns-answer: %w", err)
		}
		opts.DNSAnswer = addrs
	}
	if *nsPath != "" {
		ns, err := netns.GetFromPath(*nsPath)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", *nsPath, err)
		}
		defer ns.Close()
		opts.Netns = ns
	}

	// Before "ready": a SIGUSR1 sent as soon as the harness reads it must
	// not find the default action (exit).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGINT, syscall.SIGTERM)
	s, err := ztunnel.Start(opts)
	if err != nil {
		return err
	}
	fmt.Println("ready")

	for sig := range sigs {
		if sig == syscall.SIGUSR1 {
			if err := writeRecords(s, *records); err != nil {
				opts.Logger.Error("write records", "err", err)
			}
			continue
		}
		break
	}
	cerr := s.Close()
	if err := writeRecords(s, *records); err != nil {
		return err
	}
	return cerr
}

// writeRecords writes the records to path atomically; nothing without a
// path.
func writeRecords(s *ztunnel.Server, path string) error {
	if path == "" {
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".records-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := s.WriteJSON(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
