package backup

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/engine"
	"github.com/autosnap/autosnap/internal/retry"
	"github.com/autosnap/autosnap/internal/watchdog"
)

// freezeTimeout bounds the agent's freeze and thaw calls.
const freezeTimeout = 10 * time.Second

func (j *Job) quiesceMode() engine.Quiesce {
	if j.Quiesce == "" {
		return engine.QuiesceAuto
	}
	return j.Quiesce
}

// decideQuiesce says whether to freeze a guest for its backup: only a running guest
// whose agent answers, with the watchdog available. --quiesce on fails the guest
// otherwise; auto says the backup will be crash-consistent. ok=false means the guest
// failed.
func (j *Job) decideQuiesce(ctx context.Context, r *run) (quiesce, ok bool) {
	g := r.res.Guest
	mode := j.quiesceMode()
	if mode == engine.QuiesceOff || !g.State.Active() {
		return false, true
	}
	_, canFreeze := j.Driver.(driver.Quiescer)
	pinger, canPing := j.Driver.(driver.AgentPinger)
	var err error
	switch {
	case g.State != driver.StateRunning:
		err = fmt.Errorf("guest is %s", g.State)
	case !canFreeze || !canPing:
		err = fmt.Errorf("the %s driver cannot freeze guests: %w", j.Driver.Name(), driver.ErrUnsupported)
	case j.Guard == nil:
		err = errors.New("the freeze watchdog is not running")
	default:
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = pinger.AgentPing(pctx, g)
		cancel()
	}
	if err == nil {
		return true, true
	}
	if mode == engine.QuiesceOn {
		r.fail("cannot quiesce", fmt.Errorf("guest %s: --quiesce on, but it cannot be frozen (%v): install and start qemu-guest-agent in the guest, or use --quiesce auto", g.Name, err))
		return false, false
	}
	r.printf("Guest agent not available (%v): the backup will be crash-consistent only", err)
	return false, true
}

// freezer is the BackupRequest.Freeze of a quiesced backup: it arms the watchdog,
// freezes the guest's filesystems and returns the thaw, which thaws (retrying),
// disarms and reports how long the guest stayed frozen. With --quiesce auto a failed
// freeze becomes a crash-consistent backup with a warning; with on it fails the backup.
func (j *Job) freezer(r *run) func(ctx context.Context) (func(), error) {
	g := r.res.Guest
	q := j.Driver.(driver.Quiescer)
	return func(ctx context.Context) (func(), error) {
		actx, cancel := context.WithTimeout(ctx, freezeTimeout)
		id, err := j.Guard.Arm(actx, g.Key())
		cancel()
		if err != nil {
			return j.noFreeze(r, fmt.Errorf("freeze watchdog unavailable: %w", err))
		}
		start := time.Now()
		fctx, cancel := context.WithTimeout(ctx, freezeTimeout)
		n, ferr := q.Freeze(fctx, g)
		cancel()
		thaw := func() error {
			// Thaw even after a failed freeze: the agent may have frozen some
			// filesystems. Independent of ctx: this must not be skipped.
			tctx, cancel := context.WithTimeout(context.Background(), freezeTimeout)
			defer cancel()
			terr := retry.Do(tctx, retry.Default, func() error { _, err := q.Thaw(tctx, g); return err })
			if terr != nil {
				r.printf("ERROR: guest %s may still be frozen: thaw failed: %v; the watchdog retries within %s", g.Name, terr, watchdog.DefaultBound)
				return terr
			}
			dctx, cancel2 := context.WithTimeout(context.Background(), freezeTimeout)
			defer cancel2()
			if errors.Is(j.Guard.Disarm(dctx, id), watchdog.ErrFired) {
				r.printf("WARNING: the guest stayed frozen longer than %s and the watchdog thawed it: the backup may be only crash-consistent", watchdog.DefaultBound)
				r.res.Consistency = driver.ConsistencyCrash
			}
			return nil
		}
		if ferr != nil {
			_ = thaw()
			return j.noFreeze(r, fmt.Errorf("freezing filesystems: %w", ferr))
		}
		r.res.Consistency = driver.ConsistencyQuiesced
		return func() {
			if thaw() == nil {
				r.printf("Filesystems frozen for %s (%d filesystems)", time.Since(start).Round(100*time.Microsecond), n)
			}
		}, nil
	}
}

// noFreeze handles a freeze that could not be done: an error with --quiesce on, a
// crash-consistent backup with a warning with auto.
func (j *Job) noFreeze(r *run, err error) (func(), error) {
	if j.quiesceMode() == engine.QuiesceOn {
		return nil, fmt.Errorf("guest %s: --quiesce on: %w", r.res.Guest.Name, err)
	}
	r.printf("WARNING: %v; the backup is crash-consistent only", err)
	r.res.Consistency = driver.ConsistencyCrash
	return func() {}, nil
}
