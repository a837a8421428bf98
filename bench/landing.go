package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
)

// csumErrors reads TcpInCsumErrors (nstat's name; Tcp InCsumErrors in
// /proc/net/snmp) of ns: /proc/thread-self follows the reading thread's
// netns, /proc/self would show the process's.
func csumErrors(ns *testenv.Namespace) (uint64, error) {
	var v uint64
	err := ns.Do(func() error {
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		var header []string
		s := bufio.NewScanner(f)
		for s.Scan() {
			fields := strings.Fields(s.Text())
			if len(fields) == 0 || fields[0] != "Tcp:" {
				continue
			}
			if header == nil {
				header = fields
				continue
			}
			for i, name := range header {
				if name == "InCsumErrors" && i < len(fields) {
					v, err = strconv.ParseUint(fields[i], 10, 64)
					return err
				}
			}
		}
		return errors.New("no Tcp InCsumErrors in /proc/net/snmp")
	})
	return v, err
}

// landing counts TcpInCsumErrors in every namespace of a copy.
type landing map[string]uint64

func readLanding(c *Copy) (landing, error) {
	l := landing{}
	for name, ns := range c.namespaces() {
		v, err := csumErrors(ns)
		if err != nil {
			return nil, fmt.Errorf("copy %s: read TcpInCsumErrors in the %s's netns: %w", c.Mode, name, err)
		}
		l[name] = v
	}
	return l, nil
}

// delta returns after - before per namespace, and the namespace that
// counted the most.
func (after landing) delta(before landing) (map[string]uint64, string) {
	d := map[string]uint64{}
	best := ""
	for k, v := range after {
		d[k] = v - before[k]
		if best == "" || d[k] > d[best] || (d[k] == d[best] && k < best) {
			best = k
		}
	}
	return d, best
}

// verdicts reads the eBPF copy's per-verdict packet counters.
func verdicts(c *Copy) (map[string]uint64, error) {
	if c.DP == nil {
		return nil, nil
	}
	st, err := c.DP.Maps().Stats.Read()
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, v := range maps.Verdicts() {
		out[v.String()] = st[v].Packets
	}
	return out, nil
}
