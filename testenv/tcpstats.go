package testenv

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netns"

	"github.com/meshredirect/meshredirect/internal/testutil"
)

// TCPCounters are a netns's TCP retransmission counters: segments sent
// again (Tcp: RetransSegs in /proc/net/snmp), and from TcpExt in
// /proc/net/netstat the SYNs among them (TCPSynRetrans), the
// retransmission timer's firings (TCPTimeouts) and the tail loss probes
// (TCPLossProbes, RFC 8985).
type TCPCounters struct {
	RetransSegs, SynRetrans, Timeouts, LossProbes int64
}

// Sub returns the counts of c since d.
func (c TCPCounters) Sub(d TCPCounters) TCPCounters {
	return TCPCounters{c.RetransSegs - d.RetransSegs, c.SynRetrans - d.SynRetrans, c.Timeouts - d.Timeouts, c.LossProbes - d.LossProbes}
}

// Lost counts the segments sent again because one was lost: every
// retransmission but the tail loss probes. A probe is sent when an ACK is
// a few RTTs late, as the delayed ACKs of a pod's lo make it in in-pod
// mode (measured: one or two per 500 requests with no agent restart, each
// answered by a DSACK, so the original had arrived); it stalls nothing.
func (c TCPCounters) Lost() int64 { return max(c.RetransSegs-c.LossProbes, 0) }

func (c TCPCounters) String() string {
	return fmt.Sprintf("%d segments sent again (%d SYNs, %d tail loss probes), %d retransmission timeouts",
		c.RetransSegs, c.SynRetrans, c.LossProbes, c.Timeouts)
}

// ReadTCPCounters reads ns's counters: /proc/thread-self/net is the netns
// of the calling thread, which Do has moved into ns (/proc/self/net would
// be the process's first thread's).
func ReadTCPCounters(ns netns.NsHandle) (TCPCounters, error) {
	var c TCPCounters
	err := testutil.Do(ns, func() error {
		var err error
		if c.RetransSegs, err = procNetCounter("/proc/thread-self/net/snmp", "Tcp:", "RetransSegs"); err != nil {
			return err
		}
		for name, v := range map[string]*int64{"TCPSynRetrans": &c.SynRetrans, "TCPTimeouts": &c.Timeouts, "TCPLossProbes": &c.LossProbes} {
			if *v, err = procNetCounter("/proc/thread-self/net/netstat", "TcpExt:", name); err != nil {
				return err
			}
		}
		return nil
	})
	return c, err
}

// procNetCounter reads one counter of a /proc/net file of header and value
// lines, each pair beginning with prefix.
func procNetCounter(path, prefix, name string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var header []string
	s := bufio.NewScanner(f)
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) == 0 || fields[0] != prefix {
			continue
		}
		if header == nil {
			header = fields
			continue
		}
		if i := slices.Index(header, name); i > 0 && i < len(fields) {
			return strconv.ParseInt(fields[i], 10, 64)
		}
		header = nil
	}
	if err := s.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no %s %s in %s", prefix, name, path)
}
