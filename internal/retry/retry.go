// Package retry is autosnap's one retry and polling helper, with its policies stated
// here and nowhere else: Default for retrying, Poll for watching a job, Locked for
// waiting on a lock another program holds.
//
// The policy, stated once: the first retry waits 25 ms, each next one twice as long,
// at most 500 ms, every wait varied by ±20 % so that parallel waiters (several guests,
// several runs) do not retry in lockstep; retrying ends when the caller's context is
// done or the operation fails permanently. Callers bound the total time with that
// context, never with a count of attempts.
package retry

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// Backoff is an exponential backoff with jitter.
type Backoff struct {
	Initial time.Duration // wait before the first retry
	Max     time.Duration // longest wait
	Factor  float64       // growth per retry, ≥ 1
	Jitter  float64       // each wait is varied by up to ± this fraction, in [0, 1)
}

// Default is the policy every retry loop of autosnap uses (see the package comment).
var Default = Backoff{Initial: 25 * time.Millisecond, Max: 500 * time.Millisecond, Factor: 2, Jitter: 0.2}

// Poll is the policy for watching a job make progress (a block commit, a hypervisor
// task): small jobs end within milliseconds, so the first look comes after 1 ms; long
// ones are looked at every 100 ms, often enough for a live progress bar and the stall
// timeout.
var Poll = Backoff{Initial: time.Millisecond, Max: 100 * time.Millisecond, Factor: 2}

// Locked is the policy for waiting on something another program holds (a Proxmox VE
// guest lock during a backup): a lock is held for seconds, so asking more often than
// every 2 s only adds load.
var Locked = Backoff{Initial: 200 * time.Millisecond, Max: 2 * time.Second, Factor: 2, Jitter: 0.2}

// Sleep waits d or until ctx is done, and returns ctx.Err() in the latter case.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Delay returns the wait before retry n (0 is the first), jitter applied.
func (b Backoff) Delay(n int) time.Duration {
	d := float64(b.Initial)
	for i := 0; i < n && d < float64(b.Max); i++ {
		d *= max(b.Factor, 1)
	}
	d = min(d, float64(b.Max))
	if b.Jitter > 0 {
		d *= 1 + b.Jitter*(2*rand.Float64()-1)
	}
	return time.Duration(d)
}

type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent marks an error that retrying cannot fix: Do returns it at once.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// Do calls op until it returns nil, returns an error marked Permanent, or ctx is
// done, waiting b.Delay between attempts. It returns nil on success, the permanent
// error (unwrapped), or — when ctx ends first — op's last error, or ctx.Err() if op
// never ran. op is always called at least once, even with ctx already done, so a
// last-chance operation (a thaw after SIGTERM) still gets one attempt.
func Do(ctx context.Context, b Backoff, op func() error) error {
	for n := 0; ; n++ {
		err := op()
		if err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return p.err
		}
		t := time.NewTimer(b.Delay(n))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}
