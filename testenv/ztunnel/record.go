package ztunnel

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Record is what the stand-in knows of one flow: a TCP connection accepted
// on 15001 or 15006, a CONNECT stream on 15008, a DNS query on 15053.
type Record struct {
	// ID numbers the records from 1 in the order the flows began.
	ID int `json:"id"`
	// Listener is the port the flow arrived on: 15001, 15006, 15008, 15053.
	Listener int `json:"listener"`
	// Proto is "tcp", "hbone" or "dns".
	Proto string `json:"proto"`
	// Source is the client: the accepted connection's remote address, the
	// query's sender.
	Source netip.AddrPort `json:"source"`
	// OrigDst is the original destination: what SO_ORIGINAL_DST says of
	// the accepted connection (a connection NAT redirected), else its
	// local address (on 15008 the outer connection's local address); the
	// query's destination.
	OrigDst netip.AddrPort `json:"origDst"`
	// Target is where the stand-in connected: OrigDst on 15001 and 15006,
	// the CONNECT authority on 15008. Not set for DNS.
	Target netip.AddrPort `json:"target,omitzero"`
	// Tunnel is, in in-pod mode, the HBONE listener an outbound flow
	// (15001) went through to Target: Target's IP with port 15008, when
	// the stand-in serves the pod that holds Target. Zero when it
	// connected to Target in plaintext.
	Tunnel netip.AddrPort `json:"tunnel,omitzero"`
	// Upstream is the local address of the stand-in's connection to
	// Target: its IP is the source the target saw.
	Upstream netip.AddrPort `json:"upstream,omitzero"`
	// ClientToServer and ServerToClient count the bytes carried each way
	// (for DNS: the query's and the reply's size). Final once End is set.
	ClientToServer int64 `json:"clientToServer"`
	ServerToClient int64 `json:"serverToClient"`
	// Start and End bound the flow; End is zero while it is open.
	Start time.Time `json:"start"`
	End   time.Time `json:"end,omitzero"`
	// Err says why the flow failed, if it did.
	Err string `json:"error,omitempty"`
	// DNS describes a DNS query (Listener 15053).
	DNS *DNSQuery `json:"dns,omitempty"`
	// Pod is the pod whose listener took the flow, in in-pod mode (as the
	// ZDS add named it); zero in node mode.
	Pod PodInfo `json:"pod,omitzero"`
}

// DNSQuery is a DNS question and the stand-in's answer.
type DNSQuery struct {
	Name    string       `json:"name"`
	Type    string       `json:"type"`
	RCode   string       `json:"rcode"`
	Answers []netip.Addr `json:"answers,omitempty"`
}

// Done reports whether the flow has ended.
func (r Record) Done() bool { return !r.End.IsZero() }

// recorder keeps the records and wakes waiters when one changes.
type recorder struct {
	mu      sync.Mutex
	recs    []Record // recs[i].ID == i+1
	changed chan struct{}
}

func newRecorder() *recorder {
	return &recorder{changed: make(chan struct{})}
}

// begin stores r, stamped with an ID and a start time, and returns the ID.
func (rc *recorder) begin(r Record) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	r.ID = len(rc.recs) + 1
	r.Start = time.Now()
	rc.recs = append(rc.recs, r)
	rc.notify()
	return r.ID
}

// update changes the record with that ID.
func (rc *recorder) update(id int, fn func(r *Record)) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	fn(&rc.recs[id-1])
	rc.notify()
}

// end closes the record: byte counts and the error, if any.
func (rc *recorder) end(id int, c2s, s2c int64, err error) {
	rc.update(id, func(r *Record) {
		r.ClientToServer, r.ServerToClient = c2s, s2c
		r.End = time.Now()
		if err != nil {
			r.Err = err.Error()
		}
	})
}

func (rc *recorder) notify() {
	close(rc.changed)
	rc.changed = make(chan struct{})
}

func (rc *recorder) snapshot() ([]Record, <-chan struct{}) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	recs := slices.Clone(rc.recs)
	for i := range recs {
		if d := recs[i].DNS; d != nil {
			c := *d
			c.Answers = slices.Clone(d.Answers)
			recs[i].DNS = &c
		}
	}
	return recs, rc.changed
}

// Records returns a copy of every record so far, in ID order.
func (s *Server) Records() []Record {
	recs, _ := s.rec.snapshot()
	return recs
}

// WaitFor returns the first record for which match is true, waiting for
// new records and for changes to existing ones until ctx ends. A flow's
// record changes when it begins, when its upstream connection is made and
// when it ends; match r.Done() to wait for final byte counts.
func (s *Server) WaitFor(ctx context.Context, match func(Record) bool) (Record, error) {
	for {
		recs, changed := s.rec.snapshot()
		for _, r := range recs {
			if match(r) {
				return r, nil
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return Record{}, fmt.Errorf("wait for a ztunnel record: %w (%d records, none matches)", ctx.Err(), len(recs))
		}
	}
}

// WriteJSON writes the records as a JSON array.
func (s *Server) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	recs := s.Records()
	if recs == nil {
		recs = []Record{}
	}
	return enc.Encode(recs)
}
