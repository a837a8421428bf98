package tc

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/nlmsg"
)

// errDumpInterrupted is nlmsg's: a dump the kernel flagged NLM_F_DUMP_INTR,
// which is retried.
var errDumpInterrupted = nlmsg.ErrDumpInterrupted

// retrier retries operations that failed for a reason that goes away on
// its own.
type retrier struct {
	// attempts is how many times an operation is tried in all.
	attempts int
	// backoff is the pause after the first failure; it doubles after each.
	backoff time.Duration
	// sleep pauses; tests replace it.
	sleep func(time.Duration)
}

// defaultRetrier gives an operation five tries within 75ms of pauses: long
// enough for a lock holder or a burst of changes to pass, short enough not
// to stall a reconcile.
var defaultRetrier = retrier{attempts: 5, backoff: 5 * time.Millisecond, sleep: time.Sleep}

// do calls fn until it succeeds, fails for good, or has been tried
// r.attempts times. The error of the last try is returned, noting the
// number of tries when there was more than one.
func (r retrier) do(fn func() error) error {
	pause := r.backoff
	for try := 1; ; try++ {
		err := fn()
		if err == nil || !transient(err) {
			return err
		}
		if try >= r.attempts {
			return fmt.Errorf("%w (tried %d times)", err, try)
		}
		r.sleep(pause)
		pause *= 2
	}
}

// transient reports whether err may go away when the operation is retried:
//
//   - EBUSY: the object is being changed by someone else (for example a
//     qdisc or a tcx entry in the middle of an update);
//   - EAGAIN, EINTR: the kernel asked us to try again, or a signal
//     interrupted the system call;
//   - ENOBUFS: the socket's receive buffer overflowed during a dump, or the
//     kernel was short of memory for the reply;
//   - an interrupted dump.
func transient(err error) bool {
	return errors.Is(err, unix.EBUSY) ||
		errors.Is(err, unix.EAGAIN) ||
		errors.Is(err, unix.EINTR) ||
		errors.Is(err, unix.ENOBUFS) ||
		errors.Is(err, errDumpInterrupted)
}
