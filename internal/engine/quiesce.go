package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/autosnap/autosnap/internal/driver"
	"github.com/autosnap/autosnap/internal/naming"
	"github.com/autosnap/autosnap/internal/watchdog"
)

func consistencyFor(g driver.Guest, quiesce bool) driver.Consistency {
	switch {
	case !g.State.Active():
		return driver.ConsistencyOffline
	case quiesce:
		return driver.ConsistencyQuiesced
	}
	return driver.ConsistencyCrash
}

func describeConsistency(c driver.Consistency) string {
	switch c {
	case driver.ConsistencyQuiesced:
		return "quiesced through the guest agent"
	case driver.ConsistencyOffline:
		return "guest shut off"
	}
	return "crash-consistent only"
}

// create takes the snapshot; with --quiesce auto a failed freeze falls back to a
// crash-consistent snapshot, and the output says so.
func (j *Job) create(ctx context.Context, gr *guestRun, name string, quiesce bool) bool {
	g := gr.res.Guest
	s, err := j.createOnce(ctx, gr, name, quiesce)
	if err != nil && quiesce && j.quiesce() == QuiesceAuto && errors.Is(err, driver.ErrAgent) && ctx.Err() == nil {
		gr.printf("WARNING: quiesce failed (%v); retrying crash-consistent", err)
		quiesce = false
		s, err = j.createOnce(ctx, gr, name, false)
	}
	if err != nil {
		gr.fail("create failed", err)
		return false
	}
	gr.res.Consistency = consistencyFor(g, quiesce)
	if s.Consistency != "" {
		gr.res.Consistency = s.Consistency
	}
	gr.printf("Snapshot %s created (%s)", name, describeConsistency(gr.res.Consistency))
	return true
}

func (j *Job) createOnce(ctx context.Context, gr *guestRun, name string, quiesce bool) (driver.Snapshot, error) {
	g := gr.res.Guest
	opts := driver.CreateOptions{Name: name, Memory: j.Memory, Quiesce: quiesce,
		Description: naming.Description(map[string]string{"consistency": string(consistencyFor(g, quiesce))})}
	if q, ok := j.Driver.(driver.Quiescer); ok && quiesce && j.Watchdog != nil {
		return j.frozenCreate(ctx, gr, q, opts)
	}
	cctx, cancel := j.opCtx(ctx)
	defer cancel()
	return j.Driver.CreateSnapshot(cctx, g, opts)
}

// freezeTimeout bounds the agent's freeze and thaw calls.
const freezeTimeout = 10 * time.Second

// frozenCreate freezes the guest's filesystems, takes the snapshot and thaws, with the
// watchdog armed for the whole window: the guest is thawed on every error path, on
// SIGINT/SIGTERM (ctx) and, through the watchdog, even if autosnap is killed.
func (j *Job) frozenCreate(ctx context.Context, gr *guestRun, q driver.Quiescer, opts driver.CreateOptions) (driver.Snapshot, error) {
	g := gr.res.Guest
	actx, cancel := context.WithTimeout(ctx, freezeTimeout)
	id, err := j.Watchdog.Arm(actx, g.Key())
	cancel()
	if err != nil {
		gr.printf("WARNING: freeze watchdog unavailable (%v); letting the hypervisor quiesce", err)
		cctx, cancel := j.opCtx(ctx)
		defer cancel()
		return j.Driver.CreateSnapshot(cctx, g, opts)
	}
	start := time.Now()
	fctx, cancel := context.WithTimeout(ctx, min(freezeTimeout, j.timeout()))
	n, ferr := q.Freeze(fctx, g)
	cancel()
	var snap driver.Snapshot
	var cerr error
	if ferr == nil {
		if j.HoldFrozen > 0 {
			select {
			case <-time.After(j.HoldFrozen):
			case <-ctx.Done():
			}
		}
		o := opts
		o.Quiesce = false // frozen already
		cctx, cancel := j.opCtx(ctx)
		snap, cerr = j.Driver.CreateSnapshot(cctx, g, o)
		cancel()
	}
	// Thaw even after a failed freeze (the agent may have frozen some filesystems) and
	// even when ctx is done: this must not be skipped.
	terr := j.thaw(g, q)
	window := time.Since(start)
	if terr != nil {
		// Leave the watchdog armed: it keeps trying until the bound.
		gr.printf("ERROR: guest %s may still be frozen: thaw failed: %v; the watchdog retries within %s", g.Name, terr, watchdog.DefaultBound)
		return snap, fmt.Errorf("guest %s: thaw failed: %w", g.Name, terr)
	}
	dctx, cancel := context.WithTimeout(context.Background(), freezeTimeout)
	derr := j.Watchdog.Disarm(dctx, id)
	cancel()
	if errors.Is(derr, watchdog.ErrFired) && cerr == nil {
		gr.printf("WARNING: the guest stayed frozen longer than %s and the watchdog thawed it: snapshot %s may be only crash-consistent", watchdog.DefaultBound, opts.Name)
	}
	if ferr != nil {
		return snap, fmt.Errorf("guest %s: freezing filesystems failed: %w", g.Name, ferr)
	}
	if cerr == nil {
		gr.printf("Filesystems frozen for %s (%d filesystems)", window.Round(100*time.Microsecond), n)
	}
	return snap, cerr
}

// thaw retries for up to freezeTimeout, independent of the job's context.
func (j *Job) thaw(g driver.Guest, q driver.Quiescer) error {
	ctx, cancel := context.WithTimeout(context.Background(), freezeTimeout)
	defer cancel()
	var err error
	for attempt := 0; ; attempt++ {
		if _, err = q.Thaw(ctx, g); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt+1) * 50 * time.Millisecond):
		}
	}
}

func (j *Job) timeout() time.Duration {
	if j.Timeout > 0 {
		return j.Timeout
	}
	return 30 * time.Second
}

func (j *Job) quiesce() Quiesce {
	if j.Quiesce == "" {
		return QuiesceAuto
	}
	return j.Quiesce
}

// decideQuiesce pings the agent of a running guest. A guest found frozen (left so by a
// crashed earlier run or another tool) is thawed with a warning first, whatever the
// mode. ok=false means the guest failed.
func (j *Job) decideQuiesce(ctx context.Context, gr *guestRun) (quiesce, ok bool) {
	g := gr.res.Guest
	mode := j.quiesce()
	if !g.State.Active() {
		return false, true
	}
	pinger, can := j.Driver.(driver.AgentPinger)
	var err error
	switch {
	case g.State != driver.StateRunning:
		err = fmt.Errorf("guest is %s", g.State)
	case !can:
		err = fmt.Errorf("the %s driver cannot reach guest agents: %w", j.Driver.Name(), driver.ErrUnsupported)
	default:
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = pinger.AgentPing(pctx, g)
		cancel()
	}
	if err == nil {
		j.thawIfFrozen(ctx, gr)
	}
	// A memory snapshot is restored together with RAM, so freezing adds nothing.
	if mode == QuiesceOff || j.Memory {
		return false, true
	}
	if err == nil {
		return true, true
	}
	if mode == QuiesceOn {
		gr.fail("cannot quiesce", fmt.Errorf("guest %s: --quiesce on, but the guest agent does not answer (%v): install and start qemu-guest-agent in the guest, or use --quiesce auto", g.Name, err))
		return false, false
	}
	gr.printf("Guest agent not available (%v): snapshot will be crash-consistent only", err)
	return false, true
}

func (j *Job) thawIfFrozen(ctx context.Context, gr *guestRun) {
	q, ok := j.Driver.(driver.Quiescer)
	if !ok || j.DryRun {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	frozen, err := q.FrozenState(sctx, gr.res.Guest)
	cancel()
	if err != nil || !frozen {
		return
	}
	if err := j.thaw(gr.res.Guest, q); err != nil {
		gr.printf("WARNING: guest %s was found frozen and could not be thawed: %v", gr.res.Guest.Name, err)
		return
	}
	gr.printf("WARNING: guest %s was found with frozen filesystems (left by an interrupted run or another tool); thawed them", gr.res.Guest.Name)
}
