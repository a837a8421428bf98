package dataplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/meshredirect/meshredirect/maps"
)

// MonitorOptions configure [Monitor].
type MonitorOptions struct {
	// PinDir is the bpffs directory of the pins; empty means
	// DefaultPinDir.
	PinDir string
	// AllVerdicts asks for an event of every packet, not only of those
	// dropped. It costs every packet of the node a helper call and a
	// record (BenchmarkMonitor in asm: tens of ns) while it lasts.
	AllVerdicts bool
	// Lost, if set, is called when the programs have counted events lost
	// since Monitor started (the ring buffer was full: the reader, or
	// another monitor's, fell behind), with their number so far. Monitor
	// looks every half lease, and calls it only when the number grew.
	Lost func(n uint64)
}

// ErrNoMonitor is returned by Monitor when the pins have no events map:
// the agent that made them predates the monitor.
var ErrNoMonitor = errors.New("the node's maps have no events ring buffer")

// Monitor calls fn with each event the programs of the node write, from
// the pinned maps, until ctx is done (it then returns nil) or fn fails. It
// works beside a running agent, or without one, and changes nothing the
// agent uses.
//
// The programs write events only while the monitor map's deadline is
// ahead: Monitor moves it maps.MonitorLease ahead, again every half lease,
// and never back: other monitors may be attached, and one killed without
// cleaning up stops costing the programs when its lease ends. Events that
// find the ring buffer full are lost (a flood of drops faster than the
// reader): the programs count them, and o.Lost hears of them. Monitor
// reads as fast as fn returns.
//
// The programs attached by an agent older than the maps' events map write
// none: the node must run this version's programs (status shows whether
// they are this build's).
func Monitor(ctx context.Context, o MonitorOptions, fn func(Event) error) error {
	if err := liftMemlock(); err != nil {
		return fmt.Errorf("lift RLIMIT_MEMLOCK: %w", err)
	}
	cfg := Config{PinDir: o.PinDir}
	set, err := maps.OpenPinned(cfg.pinDir())
	if err != nil {
		return err
	}
	defer set.Close()
	if set.Events == nil || set.Monitor.Map == nil {
		return fmt.Errorf("monitor %s: %w (restart the agent with this version)", cfg.pinDir(), ErrNoMonitor)
	}
	r, err := ringbuf.NewReader(set.Events)
	if err != nil {
		return fmt.Errorf("read events of %s: %w", cfg.pinDir(), err)
	}
	defer r.Close()

	var lost0, lost uint64
	extend := func(first bool) (time.Time, error) {
		v, err := set.Monitor.Extend(o.AllVerdicts)
		if err != nil {
			return time.Time{}, fmt.Errorf("monitor %s: %w", cfg.pinDir(), err)
		}
		// Events lost before this monitor started are not its own.
		if first {
			lost0 = v.Lost
		} else if n := v.Lost - lost0; v.Lost > lost0 && n > lost && o.Lost != nil {
			lost = n
			o.Lost(n)
		}
		return time.Now().Add(maps.MonitorLease / 2), nil
	}
	next, err := extend(true)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { r.Close() })
	defer stop()
	var rec ringbuf.Record
	for {
		if !time.Now().Before(next) {
			if next, err = extend(false); err != nil {
				return err
			}
		}
		r.SetDeadline(next)
		err := r.ReadInto(&rec)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue
		case err != nil:
			return fmt.Errorf("read events of %s: %w", cfg.pinDir(), err)
		}
		e, err := DecodeEvent(rec.RawSample, time.Now())
		if err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}
